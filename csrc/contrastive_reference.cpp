// contrastive, the plain reference (simd="reference"): for each query row, every logit
// l_j = scale * q_i . doc_j in double, then the masked softmax and its gradient by nested loops.
// No packing, no tiling, no SIMD, one thread; memory O(M + (B + M) x d). Tests compare every
// SIMD path to this, and this to float64 torch.
#include <cmath>
#include <limits>
#include <vector>

#include "contrastive.h"

namespace ft {
namespace {

// Doc j is no negative for row i: it shares the key of row i's positive without being it.
bool masked(const ContrastiveArgs& a, int64_t i, int64_t j) {
  return a.keys && j != a.pos[i] && a.keys[j] == a.keys[a.pos[i]];
}

// l[j] = scale * q_i . doc_j for every doc j.
void logits(const ContrastiveArgs& a, int64_t i, std::vector<double>& l) {
  for (int64_t j = 0; j < a.M; ++j) {
    double dot = 0.0;
    for (int c = 0; c < a.d; ++c) dot += (double)a.q[i * a.d + c] * (double)a.docs[j * a.d + c];
    l[j] = (double)a.scale * dot;
  }
}

}  // namespace

double contrastive_forward_reference(const ContrastiveArgs& a, float* m, float* s) {
  std::vector<double> l(a.M);
  double total = 0.0;
  for (int64_t i = 0; i < a.B; ++i) {
    logits(a, i, l);
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < a.M; ++j)
      if (!masked(a, i, j) && l[j] > mx) mx = l[j];
    m[i] = (float)mx;  // the sum is taken about the max as stored, so the backward matches it
    double sum = 0.0;
    for (int64_t j = 0; j < a.M; ++j)
      if (!masked(a, i, j)) sum += std::exp(l[j] - m[i]);
    s[i] = (float)sum;
    total += (double)m[i] + std::log(sum) - l[a.pos[i]];  // log-sum-exp minus the positive's logit
  }
  return total / (double)a.B;
}

void contrastive_backward_reference(const ContrastiveArgs& a, const float* m, const float* s, float grad_out,
                                    float* dq, float* ddocs) {
  const double coef = (double)grad_out / (double)a.B * (double)a.scale;  // d mean loss / d (q_i . doc_j) per G
  std::vector<double> l(a.M), gq((size_t)a.B * a.d, 0.0), gd((size_t)a.M * a.d, 0.0);
  for (int64_t i = 0; i < a.B; ++i) {
    logits(a, i, l);
    for (int64_t j = 0; j < a.M; ++j) {
      if (masked(a, i, j)) continue;
      // G_ij = softmax_ij - [j is row i's positive]
      const double g = coef * (std::exp(l[j] - m[i]) / s[i] - (j == a.pos[i] ? 1.0 : 0.0));
      for (int c = 0; c < a.d; ++c) {
        gq[i * a.d + c] += g * a.docs[j * a.d + c];
        gd[j * a.d + c] += g * a.q[i * a.d + c];
      }
    }
  }
  for (size_t x = 0; x < gq.size(); ++x) dq[x] = (float)gq[x];
  for (size_t x = 0; x < gd.size(); ++x) ddocs[x] = (float)gd[x];
}

}  // namespace ft
