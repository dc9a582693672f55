// The instruction-set-independent kernel templates. Each simd_<isa>.cpp includes this file
// after defining its vector type V (reg, W, zero, load, loadu, store, set1, fmadd, add) and
// instantiates make_kernels<V, MR, NV>() with its own compiler flags. Nothing here may
// depend on the instruction set except through V.
#pragma once
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace ft {
namespace impl {

// exp(x) for a SIMD register, Cephes' expf polynomial (max error ~1 ulp on [-87, 88]);
// inputs below -87.3 give ~0, which is what a softmax wants for masked (-inf) entries.
template <class V>
static inline typename V::reg cephes_exp(typename V::reg x) {
  x = V::min(V::max(x, V::set1(-87.3f)), V::set1(88.3f));
  const typename V::reg n = V::floor(V::fmadd(x, V::set1(1.44269504088896341f), V::set1(0.5f)));
  x = V::fmadd(n, V::set1(-0.693359375f), x);
  x = V::fmadd(n, V::set1(2.12194440e-4f), x);
  typename V::reg y = V::set1(1.9875691500e-4f);
  y = V::fmadd(y, x, V::set1(1.3981999507e-3f));
  y = V::fmadd(y, x, V::set1(8.3334519073e-3f));
  y = V::fmadd(y, x, V::set1(4.1665795894e-2f));
  y = V::fmadd(y, x, V::set1(1.6666665459e-1f));
  y = V::fmadd(y, x, V::set1(5.0000001201e-1f));
  y = V::fmadd(y, V::mul(x, x), V::add(x, V::set1(1.0f)));
  return V::mul(y, V::pow2(n));
}

// One register-blocked micro-tile: MR rows of A against one packed panel of NR = NV*W columns.
// Accumulates over k in a fixed order (k ascending, one fused multiply-add per step), so equal
// documents always get bit-identical scores wherever they sit in a tile.
template <class V, int MR, int NV>
static inline void micro(const float* const* a, int k0, const float* bp, int kc, float* c,
                         int64_t ldc, bool accumulate) {
  constexpr int NR = NV * V::W;
  typename V::reg r[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) r[i][j] = V::zero();
  const float* ap[MR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) ap[i] = a[i] + k0;
#pragma GCC unroll 4
  for (int k = 0; k < kc; ++k) {
    typename V::reg b[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) b[j] = V::load(bp + (int64_t)k * NR + j * V::W);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const typename V::reg ai = V::set1(ap[i][k]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) r[i][j] = V::fmadd(ai, b[j], r[i][j]);
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      float* dst = c + i * ldc + j * V::W;
      V::storeu(dst, accumulate ? V::add(V::loadu(dst), r[i][j]) : r[i][j]);
    }
}

template <class V, int MR, int NV>
static void tile_scores(const float* const* a, const float* bp, int d, int kc, int npanels,
                        float* c, int64_t ldc, bool accumulate) {
  constexpr int NR = NV * V::W;
  const int64_t chunk_stride = (int64_t)kc * npanels * NR;
  int ci = 0;
  for (int k0 = 0; k0 < d; k0 += kc, ++ci) {
    const int kcc = (d - k0) < kc ? (d - k0) : kc;
    const float* chunk = bp + ci * chunk_stride;
    for (int p = 0; p < npanels; ++p)
      micro<V, MR, NV>(a, k0, chunk + (int64_t)p * kcc * NR, kcc, c + p * NR, ldc, accumulate || k0 > 0);
  }
}

template <class V>
static int select_range(const float* s, int n, float lo, float hi, int32_t* out) {
  int cnt = 0;
  int j = 0;
  for (; j + V::W <= n; j += V::W) {
    uint64_t m = V::mask_range(V::loadu(s + j), lo, hi);
    while (m) {
      out[cnt++] = j + __builtin_ctzll(m);
      m &= m - 1;
    }
  }
  for (; j < n; ++j)
    if (s[j] > lo && s[j] <= hi) out[cnt++] = j;
  return cnt;
}

template <class V>
static float row_max(const float* s, int n) {
  float m = -__builtin_inff();
  int j = 0;
  if (n >= V::W) {
    typename V::reg acc = V::loadu(s);
    for (j = V::W; j + V::W <= n; j += V::W) acc = V::max(acc, V::loadu(s + j));
    m = V::hmax(acc);
  }
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

template <class V>
static float sum_exp(const float* s, int n, float scale, float shift) {
  const typename V::reg vs = V::set1(scale), vsh = V::set1(-shift);
  typename V::reg acc = V::zero();
  int j = 0;
  for (; j + V::W <= n; j += V::W) acc = V::add(acc, V::exp(V::fmadd(V::loadu(s + j), vs, vsh)));
  float total = V::hsum(acc);
  for (; j < n; ++j) total += V::exp1(V::fma1(s[j], scale, -shift));
  return total;
}

template <class V>
static void exp_scale(float* s, int n, float scale, const float* shift, const float* mult, bool per_col) {
  const typename V::reg vs = V::set1(scale);
  int j = 0;
  for (; j + V::W <= n; j += V::W) {
    const typename V::reg sh = per_col ? V::sub(V::zero(), V::loadu(shift + j)) : V::set1(-shift[0]);
    const typename V::reg mu = per_col ? V::loadu(mult + j) : V::set1(mult[0]);
    V::storeu(s + j, V::mul(mu, V::exp(V::fmadd(V::loadu(s + j), vs, sh))));
  }
  for (; j < n; ++j) {
    const int c = per_col ? j : 0;
    s[j] = mult[c] * V::exp1(V::fma1(s[j], scale, -shift[c]));
  }
}

template <class V, int MR, int NV>
SimdKernels make_kernels(const char* name, int kc) {
  SimdKernels k;
  k.name = name;
  k.mr = MR;
  k.nr = NV * V::W;
  k.kc = kc;
  k.tile_scores = &tile_scores<V, MR, NV>;
  k.select_range = &select_range<V>;
  k.row_max = &row_max<V>;
  k.sum_exp = &sum_exp<V>;
  k.exp_scale = &exp_scale<V>;
  return k;
}

}  // namespace impl
}  // namespace ft
