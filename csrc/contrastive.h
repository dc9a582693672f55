// Fused InfoNCE / MultipleNegativesRanking loss, tiled with an online log-sum-exp.
// Contract: docs/design.md "contrastive". Never allocates a B x M matrix: the forward
// keeps one running (max, sum) per row; the backward recomputes score tiles.
#pragma once
#include <cstdint>

#include "simd.h"

namespace ft {

struct ContrastiveArgs {
  const float* q = nullptr;      // [B, d]
  const float* docs = nullptr;   // [M, d]
  const int64_t* pos = nullptr;  // [B], row i's positive is docs[pos[i]]
  const int64_t* keys = nullptr; // [M] or nullptr: docs sharing row i's positive key are no negatives
  int64_t B = 0, M = 0;
  int d = 0;
  float scale = 20.f;
  int threads = 0;
};

// Returns the mean loss; writes each row's running max m[B] and sum s[B] of its masked, scaled
// logits (log-sum-exp = m + log s). The backward takes both so that its recomputed exponents
// are bit-identical to the forward's.
double contrastive_forward(const ContrastiveArgs& a, const SimdKernels& kern, float* m, float* s);

// Gradients of grad_out * mean loss: dq[B, d], ddocs[M, d] (overwritten).
// With `kern.reference` both entry points run the reference loops below instead.
void contrastive_backward(const ContrastiveArgs& a, const SimdKernels& kern, const float* m, const float* s,
                          float grad_out, float* dq, float* ddocs);

// The plain reference (contrastive_reference.cpp): the same loss, row statistics and gradients by
// nested loops over rows and docs, in double; one thread, O(M + (B + M) x d) extra memory. Its
// (m, s) and the fast path's are interchangeable inputs to either backward.
double contrastive_forward_reference(const ContrastiveArgs& a, float* m, float* s);
void contrastive_backward_reference(const ContrastiveArgs& a, const float* m, const float* s, float grad_out,
                                    float* dq, float* ddocs);

}  // namespace ft
