// topk_cosine, the plain reference (simd="reference"): for each query, score every document,
// keep those that pass the filters, sort, return ranks skip_top .. skip_top + k - 1. No packing,
// no tiling, no SIMD, one thread; memory O(N). Tests compare every SIMD path to this, and this
// to numpy. Dot products accumulate in double, so its scores are at least as exact as any path's.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "topk_cosine.h"

namespace ft {

void topk_cosine_reference(const TopkArgs& a, float* scores, int64_t* ids) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::pair<float, int64_t>> pass;  // (score, id) of the documents passing every filter
  for (int64_t q = 0; q < a.Q; ++q) {
    pass.clear();
    for (int64_t j = 0; j < a.N; ++j) {
      double dot = 0.0;
      for (int c = 0; c < a.d; ++c) dot += (double)a.queries[q * a.d + c] * (double)a.corpus[j * a.d + c];
      const float s = (float)dot;
      if (!(s > -inf)) continue;                    // a -inf or NaN score (overflow) never passes
      if (a.upper && !(s <= a.upper[q])) continue;  // max_ratio: above the query's bound
      bool excluded = false;
      if (a.excl_ptr)
        for (int64_t e = a.excl_ptr[q]; e < a.excl_ptr[q + 1]; ++e) excluded |= a.excl_ids[e] == j;
      if (!excluded) pass.push_back({s, j});
    }
    // descending score, ties by the smaller id
    std::sort(pass.begin(), pass.end(), [](const std::pair<float, int64_t>& x, const std::pair<float, int64_t>& y) {
      return x.first > y.first || (x.first == y.first && x.second < y.second);
    });
    for (int r = 0; r < a.k; ++r) {
      const size_t src = (size_t)a.skip_top + r;
      scores[q * a.k + r] = src < pass.size() ? pass[src].first : -inf;
      ids[q * a.k + r] = src < pass.size() ? pass[src].second : -1;
    }
  }
}

}  // namespace ft
