// The int8 scan, plain reference (scan="reference"): for one query, the exact integer dot of its
// codes with every corpus row's codes (read through the packed layout's formula), the bounds
// a - e, a + e as lowp.h defines them, L over every surely passing row, and the candidate list.
// No tiling, no heaps, no SIMD; O(N) memory per query. Tests compare every scan path to it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lowp.h"

namespace ft {

int32_t lowp_dot_reference(const QCorpus& qc, const uint8_t* qcodes, int qoffset, int64_t j) {
  const int G = qc.dpad / 4;
  int32_t dot = 0;
  for (int c = 0; c < qc.d; ++c) {
    const int32_t qv = (int32_t)qcodes[c] - qoffset;
    const int32_t xv = qc.codes[(j / kLowpPanel) * (int64_t)G * 64 + (c / 4) * 64 + (j % kLowpPanel) * 4 + c % 4];
    dot += qv * xv;
  }
  return dot;
}

void lowp_candidates_reference(const TopkArgs& a, int64_t q, const QCorpus& qc, const uint8_t* qcodes, int qoffset,
                               float sq, float A, float B, std::vector<int64_t>& out) {
  const float inf = std::numeric_limits<float>::infinity();
  const float upper = a.upper ? a.upper[q] : inf;
  std::vector<float> lo(qc.N), hi(qc.N), sure;
  std::vector<char> keep(qc.N, 0);
  for (int64_t j = 0; j < qc.N; ++j) {
    bool ex = false;
    if (a.excl_ptr)
      for (int64_t t = a.excl_ptr[q]; t < a.excl_ptr[q + 1]; ++t) ex |= a.excl_ids[t] == j;
    if (ex) continue;
    const float approx = (float)lowp_dot_reference(qc, qcodes, qoffset, j) * (qc.scale[j] * sq);
    const float e = A * qc.nx[j] + B * qc.ex[j];
    lo[j] = approx - e;
    hi[j] = approx + e;
    if (lo[j] > upper) continue;  // surely fails max_ratio
    keep[j] = 1;
    if (hi[j] <= upper) sure.push_back(lo[j]);
  }
  const size_t K = (size_t)a.k + a.skip_top;
  float L = -inf;
  if (sure.size() >= K) {
    std::sort(sure.begin(), sure.end(), [](float x, float y) { return x > y; });
    L = sure[K - 1];
  }
  out.clear();
  for (int64_t j = 0; j < qc.N; ++j)
    if (keep[j] && hi[j] >= L) out.push_back(j);
}

}  // namespace ft
