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
                        float* c, int64_t ldc) {
  constexpr int NR = NV * V::W;
  const int64_t chunk_stride = (int64_t)kc * npanels * NR;
  int ci = 0;
  for (int k0 = 0; k0 < d; k0 += kc, ++ci) {
    const int kcc = (d - k0) < kc ? (d - k0) : kc;
    const float* chunk = bp + ci * chunk_stride;
    for (int p = 0; p < npanels; ++p)
      micro<V, MR, NV>(a, k0, chunk + (int64_t)p * kcc * NR, kcc, c + p * NR, ldc, k0 > 0);
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

template <class V, int MR, int NV>
SimdKernels make_kernels(const char* name, int kc) {
  SimdKernels k;
  k.name = name;
  k.mr = MR;
  k.nr = NV * V::W;
  k.kc = kc;
  k.tile_scores = &tile_scores<V, MR, NV>;
  k.select_range = &select_range<V>;
  return k;
}

}  // namespace impl
}  // namespace ft
