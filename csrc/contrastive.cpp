// contrastive: logits S = scale * q @ docs^T are produced one (MR rows x nc docs) tile at a
// time by the same tile loop and register-blocked micro-kernel as topk_cosine (stream_tiles in
// simd.h) and consumed at once:
//   forward  : online log-sum-exp per row (flash-attention's running max and sum);
//   backward : pass 1 (threads own query rows)  G = softmax - onehot, dq += G @ docs_tile;
//              pass 2 (threads own doc rows)    G^T recomputed,     ddocs += G^T @ q_tile.
// Owning rows in each pass means no atomics and no per-thread copies of the gradients.
// The plain reference loops are contrastive_reference.cpp.
#include "contrastive.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ft {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int n_threads(int t) {
#ifdef _OPENMP
  return t > 0 ? t : omp_get_max_threads();
#else
  (void)t;
  return 1;
#endif
}

// Docs that are not negatives for a row: those sharing its positive's key (positive excluded).
struct KeyGroups {
  std::unordered_map<int64_t, std::vector<int64_t>> groups;  // only keys held by >= 2 docs
  std::vector<char> in_group;                                // per doc
  explicit KeyGroups(const ContrastiveArgs& a) : in_group(a.keys ? a.M : 0, 0) {
    if (!a.keys) return;
    std::unordered_map<int64_t, int64_t> count;
    for (int64_t j = 0; j < a.M; ++j) ++count[a.keys[j]];
    for (int64_t j = 0; j < a.M; ++j)
      if (count[a.keys[j]] > 1) {
        groups[a.keys[j]].push_back(j);
        in_group[j] = 1;
      }
  }
  const std::vector<int64_t>* of_row(const ContrastiveArgs& a, int64_t i) const {
    if (!a.keys) return nullptr;
    auto it = groups.find(a.keys[a.pos[i]]);
    return it == groups.end() ? nullptr : &it->second;
  }
};

struct Geometry {
  TileGeometry t;      // doc tiles for S = q @ docs^T (and, in the backward, docs @ q^T)
  int dpanels, dpad;   // output panels over d for the gradient products
  int kc_nc;           // depth chunk when K = nc (the products)
};

Geometry geometry(const SimdKernels& kern, int d) {
  Geometry g;
  g.t = tile_geometry(kern, d, 256 * 1024, 512);
  g.dpanels = (d + g.t.nr - 1) / g.t.nr;
  g.dpad = g.dpanels * g.t.nr;
  g.kc_nc = std::min(g.t.nc, kern.kc);
  return g;
}

int64_t packed_size(int K, int kc, int npanels, int nr) {
  const int nch = (K + kc - 1) / kc;
  return (int64_t)nch * kc * npanels * nr;
}

// Per-thread scratch of the backward passes.
struct Scratch {
  std::vector<float> pk, pn, S;
  const float* gp[64];
  explicit Scratch(const Geometry& g)
      : pk(g.t.packed_floats),                                    // K = d, N = tile
        pn(packed_size(g.t.nc, g.kc_nc, g.dpanels, g.t.nr)),      // K = tile, N = d
        S((size_t)g.t.mr * g.t.nc) {}
};

// One backward pass, called inside the parallel region: threads own rows of `own` ([nown, d]) and
// write out[r] = sum over the tiles of `other` ([nother, d]) of G[r, c] * other[c], where G is the
// softmax recomputed exactly as in the forward (exp(scale * s - shift) * mult, shift and mult per
// row of `own` or, with per_col, per row of `other`) and then finished by fix(r, t0, n, grow):
// masked docs zeroed, the positive's -coef added. Pass 1 owns queries (dq), pass 2 owns docs (ddocs).
template <class Fix>
void gradient_pass(const Geometry& g, const SimdKernels& kern, const ContrastiveArgs& a, int T, Scratch& w,
                   const float* zeros, const float* own, int64_t nown, const float* other, int64_t nother,
                   const float* shift, const float* mult, bool per_col, Fix fix, float* out) {
  const TileGeometry& t = g.t;
  const int64_t blocks = (nown + t.mr - 1) / t.mr;
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(64, (blocks + 2 * T - 1) / (2 * T)));
  const int64_t nitems = (blocks + per - 1) / per;
  const int64_t rows_per_item = per * t.mr;
  std::vector<float> acc((size_t)rows_per_item * g.dpad);
#pragma omp for schedule(dynamic, 1)
  for (int64_t item = 0; item < nitems; ++item) {
    const int64_t r0 = item * rows_per_item, r1 = std::min(nown, r0 + rows_per_item);
    std::fill(acc.begin(), acc.end(), 0.f);
    stream_tiles(
        kern, t, a.d, own, r0, r1, other, 0, nother, zeros, w.pk.data(), w.S.data(),
        [&](int64_t t0, int n) {  // the same tile as the K x N operand of the product
          pack_panels_kn(other + t0 * a.d, a.d, n, a.d, t.nc, g.kc_nc, t.nr, g.dpanels, w.pn.data());
        },
        [&](int64_t t0, int n, int64_t b0, float* S) {
          for (int i = 0; i < t.mr; ++i) {
            float* srow = S + (size_t)i * t.nc;
            const int64_t r = b0 + i;
            if (r >= r1) {
              std::fill(srow, srow + t.nc, 0.f);
              continue;
            }
            const int64_t at = per_col ? t0 : r;
            kern.exp_scale(srow, n, a.scale, shift + at, mult + at, per_col);
            std::fill(srow + n, srow + t.nc, 0.f);
            fix(r, t0, n, srow);
          }
          for (int i = 0; i < t.mr; ++i) w.gp[i] = S + (size_t)i * t.nc;
          kern.tile_scores(w.gp, w.pn.data(), t.nc, g.kc_nc, g.dpanels, acc.data() + (b0 - r0) * g.dpad, g.dpad,
                           true);
        });
    for (int64_t r = r0; r < r1; ++r)
      std::copy(acc.data() + (r - r0) * g.dpad, acc.data() + (r - r0) * g.dpad + a.d, out + r * a.d);
  }
}

}  // namespace


double contrastive_forward(const ContrastiveArgs& a, const SimdKernels& kern, float* m_out, float* s_out) {
  if (kern.reference) return contrastive_forward_reference(a, m_out, s_out);
  const Geometry g = geometry(kern, a.d);
  const TileGeometry& t = g.t;
  const KeyGroups kg(a);
  const int T = n_threads(a.threads);
  const int64_t nblocks = (a.B + t.mr - 1) / t.mr;
  // Row blocks big enough that re-packing the docs per block is cheap, small enough to balance.
  const int64_t per = std::max<int64_t>(1, std::min<int64_t>(64, (nblocks + 2 * T - 1) / (2 * T)));
  const int64_t nitems = (nblocks + per - 1) / per;
  std::vector<double> row_loss(a.B, 0.0);
  std::vector<float> zeros(std::max(a.d, 1), 0.f);

#pragma omp parallel num_threads(T)
  {
    std::vector<float> packed(t.packed_floats);
    std::vector<float> S((size_t)t.mr * t.nc);
    const int64_t rows_per_item = per * t.mr;
    std::vector<float> m(rows_per_item), s(rows_per_item), pl(rows_per_item);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < nitems; ++item) {
      const int64_t r0 = item * rows_per_item, r1 = std::min(a.B, r0 + rows_per_item);
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(s.begin(), s.end(), 0.f);
      std::fill(pl.begin(), pl.end(), 0.f);
      stream_tiles(kern, t, a.d, a.q, r0, r1, a.docs, 0, a.M, zeros.data(), packed.data(), S.data(),
                   [](int64_t, int) {},
                   [&](int64_t t0, int n, int64_t b0, float* c) {
                     for (int i = 0; i < t.mr && b0 + i < r1; ++i) {
                       const int64_t row = b0 + i, li = row - r0;
                       float* srow = c + (size_t)i * t.nc;
                       const int64_t p = a.pos[row];
                       if (p >= t0 && p < t0 + n) pl[li] = srow[p - t0] * a.scale;
                       if (const auto* grp = kg.of_row(a, row))
                         for (int64_t j : *grp)
                           if (j != p && j >= t0 && j < t0 + n) srow[j - t0] = kNegInf;
                       const float tmax = kern.row_max(srow, n) * a.scale;
                       if (tmax == kNegInf) continue;
                       const float mnew = std::max(m[li], tmax);
                       s[li] = (m[li] == kNegInf ? 0.f : s[li] * std::exp(m[li] - mnew)) +
                               kern.sum_exp(srow, n, a.scale, mnew);
                       m[li] = mnew;
                     }
                   });
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t li = row - r0;
        m_out[row] = m[li];
        s_out[row] = s[li];
        row_loss[row] = (double)m[li] + std::log((double)s[li]) - (double)pl[li];
      }
    }
  }
  double total = 0.0;
  for (double v : row_loss) total += v;
  return total / (double)a.B;
}

void contrastive_backward(const ContrastiveArgs& a, const SimdKernels& kern, const float* rmax, const float* rsum,
                          float grad_out, float* dq, float* ddocs) {
  if (kern.reference) return contrastive_backward_reference(a, rmax, rsum, grad_out, dq, ddocs);
  const Geometry g = geometry(kern, a.d);
  const KeyGroups kg(a);
  const int T = n_threads(a.threads);
  const float coef = grad_out / (float)a.B * a.scale;  // d loss / d (q.doc) = scale * G / B
  std::vector<float> zeros(std::max(a.d, 1), 0.f);
  // rows_of_doc: CSR inverse of pos (which rows have doc j as their positive)
  std::vector<int64_t> rptr(a.M + 1, 0), rows_of(a.B);
  for (int64_t i = 0; i < a.B; ++i) ++rptr[a.pos[i] + 1];
  for (int64_t j = 0; j < a.M; ++j) rptr[j + 1] += rptr[j];
  {
    std::vector<int64_t> fill(rptr.begin(), rptr.end() - 1);
    for (int64_t i = 0; i < a.B; ++i) rows_of[fill[a.pos[i]]++] = i;
  }
  // softmax_ij = exp(scale*s_ij - rmax_i) / rsum_i: the 1/rsum is folded into the multiplier.
  std::vector<float> mult(a.B);
  for (int64_t i = 0; i < a.B; ++i) mult[i] = coef / rsum[i];

  // pass 1 (row = query): its masked docs out, -coef at its positive
  auto fix_query = [&](int64_t row, int64_t t0, int n, float* grow) {
    const int64_t p = a.pos[row];
    if (const auto* grp = kg.of_row(a, row))
      for (int64_t j : *grp)
        if (j != p && j >= t0 && j < t0 + n) grow[j - t0] = 0.f;
    if (p >= t0 && p < t0 + n) grow[p - t0] -= coef;
  };
  // pass 2 (row = doc): out for the queries that mask it, -coef for the queries it is the positive of
  auto fix_doc = [&](int64_t doc, int64_t t0, int n, float* grow) {
    if (a.keys && kg.in_group[doc])
      for (int c = 0; c < n; ++c) {
        const int64_t p = a.pos[t0 + c];
        if (p != doc && a.keys[p] == a.keys[doc]) grow[c] = 0.f;
      }
    for (int64_t r = rptr[doc]; r < rptr[doc + 1]; ++r) {
      const int64_t qi = rows_of[r];
      if (qi >= t0 && qi < t0 + n) grow[qi - t0] -= coef;
    }
  };

#pragma omp parallel num_threads(T)
  {
    Scratch w(g);
    gradient_pass(g, kern, a, T, w, zeros.data(), a.q, a.B, a.docs, a.M, rmax, mult.data(), false, fix_query, dq);
    gradient_pass(g, kern, a, T, w, zeros.data(), a.docs, a.M, a.q, a.B, rmax, mult.data(), true, fix_doc, ddocs);
  }
}

}  // namespace ft
