// Exact batched top-k inner product (cosine on L2-normalised rows), fused with selection.
// Contract: docs/design.md "topk_cosine".
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
  // max_ratio r with positive score p gives upper[q] = p - (1 - min(r, 1)) * |p| (r * p for p >= 0,
  // (2 - r) * p for p < 0), computed in double and rounded down to float (kernels.ratio_bound). Why
  // not r * p everywhere: for p < 0 it lies above p, so documents the model ranks above the positive
  // would come back as hard negatives; this keeps the same (1 - r) |p| margin below the positive on
  // both sides of 0 (continuous at 0), and never a bound above p, so a candidate scoring above the
  // positive is never a negative. The kernels take upper as given (any value but NaN).
  const float* upper = nullptr;
  int threads = 0;  // 0: OpenMP default
};

// Writes scores[Q*k] (descending) and ids[Q*k] (ties: smaller id first). A candidate passes
// when it is not excluded, scores <= upper[q] and scores above -inf (a -inf or NaN score, only
// possible when unnormalised inputs overflow, never passes); the best skip_top passing
// candidates are dropped and the next k returned. A query with fewer than k of them gets
// -inf / -1 in the remaining slots. `kern.reference` runs topk_cosine_reference instead.
//
// Never allocates Q x N. Extra memory, all of it (K = k + skip_top, T threads, S corpus splits):
//   result heaps   S x Q x (K x 16 + 4) bytes: each split owns heaps for all Q queries (merged at
//                  the end). S = 1 with one thread, else S <= 2T, and S is capped so that the S
//                  sets take at most max(one set, 256 MiB): S <= max(1, 256 MiB / (Q x (K x 16 + 4))).
//   per thread     one packed corpus tile, nc x d' x 4 bytes (nc = 384 KiB / (4 d) rows rounded
//                  down to whole panels of nr, at most 4096, at least nr; d' = d rounded up to
//                  whole depth chunks of a multiple of 8), an mr x nc float score block, nc int32
//                  indices, a d-float zero row while packing, and a merge buffer of up to
//                  S x K x 16 bytes.
//   shared         one zero row (d x 4 bytes).
void topk_cosine(const TopkArgs& args, const SimdKernels& kern, float* scores, int64_t* ids);

// The plain reference (topk_reference.cpp): the same result and the same filters by nested loops
// over queries and documents and one sort per query; one thread, O(N) extra memory.
void topk_cosine_reference(const TopkArgs& args, float* scores, int64_t* ids);

}  // namespace ft
