// Exact batched top-k inner product (cosine on L2-normalised rows), fused with selection.
// Contract: ../shared/DESIGN.md "topk_cosine".
#pragma once
#include <cstdint>

#include "simd.h"

namespace ft {

struct TopkArgs {
  const float* queries = nullptr;  // [Q, d] row-major
  const float* corpus = nullptr;   // [N, d] row-major
  int64_t Q = 0, N = 0;
  int d = 0;
  int k = 0;         // results per query
  int skip_top = 0;  // best `skip_top` passing candidates are dropped before the k returned
  // Excluded ids per query, CSR: excl_ids[excl_ptr[q] .. excl_ptr[q+1]) sorted ascending.
  const int64_t* excl_ptr = nullptr;
  const int64_t* excl_ids = nullptr;
  // Per-query upper bound: a candidate scoring above upper[q] is dropped (nullptr: none).
  const float* upper = nullptr;
  int threads = 0;  // 0: OpenMP default
};

// Writes scores[Q*k] (descending) and ids[Q*k] (ties: smaller id first). A query with fewer
// than k passing documents gets -inf / -1 in the remaining slots. Never allocates Q x N;
// extra memory is O(threads x tile + Q x (k + skip_top)).
void topk_cosine(const TopkArgs& args, const SimdKernels& kern, float* scores, int64_t* ids);

}  // namespace ft
