// The instruction-set-independent int8 scan template (see lowp.h). Each lowp_scan_<isa>.cpp defines
// its vector type V and instantiates make_lowp_scan<V, MR, NP>() with its own compiler flags.
// V provides: ireg, W (int32 lanes; 16 % W == 0), izero, iload (W*4 code bytes), bcast4 (4 query
// bytes as one int32, broadcast), dot4 (acc += 4 u8 x s8 products per lane), iload32, isub, slli<S>,
// istore; freg, fcvt (int32 -> float), fload, fstore, fset1, fmul, fadd, fsub, fmadd, ge_mask.
#pragma once
#include <cstdint>

#include "lowp.h"

namespace ft {
namespace lowp_impl {

// MR queries x NP panels (NP * 16 corpus rows), all of the depth.
template <class V, int SHIFT, int MR, int NP>
static inline void micro(const QBlock& qb, const QCorpus& qc, int64_t p0, int64_t p, int nvalid, float* lo,
                         float* hi, int64_t ldc, int32_t* idx, int* cnt, int32_t* raw) {
  constexpr int NV = kLowpPanel / V::W;  // vectors per panel
  const int G = qc.dpad / 4;
  typename V::ireg acc[MR][NP * NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NP * NV; ++v) acc[i][v] = V::izero();
  const int8_t* base = qc.codes + p * (int64_t)G * 64;
  const int64_t pstride = (int64_t)G * 64;
#pragma GCC unroll 2
  for (int g = 0; g < G; ++g) {
    typename V::ireg b[NP * NV];
#pragma GCC unroll 16
    for (int u = 0; u < NP; ++u)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) b[u * NV + v] = V::iload(base + u * pstride + (int64_t)g * 64 + v * V::W * 4);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename V::ireg a = V::bcast4(qb.rows[i] + 4 * g);
#pragma GCC unroll 16
      for (int v = 0; v < NP * NV; ++v) acc[i][v] = V::dot4(acc[i][v], a, b[v]);
    }
  }
  for (int v = 0; v < NP * NV; ++v) {
    const int64_t j0 = p * kLowpPanel + (int64_t)v * V::W;  // global row of the vector's lane 0
    const int lc = (int)(j0 - p0 * kLowpPanel);             // its column in the output block
    const typename V::ireg corr = V::template slli<SHIFT>(V::iload32(qc.colsum + j0));
    const typename V::freg sx = V::fload(qc.scale + j0), nx = V::fload(qc.nx + j0), ex = V::fload(qc.ex + j0);
    const uint64_t valid = lc >= nvalid ? 0 : (nvalid - lc >= V::W ? ~0ull : ((1ull << (nvalid - lc)) - 1));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename V::ireg I = V::isub(acc[i][v], corr);
      if (raw) {
        V::istore(raw + i * ldc + lc, I);
        continue;
      }
      const typename V::freg t = V::fmul(sx, V::fset1(qb.sq[i]));
      const typename V::freg a = V::fmul(V::fcvt(I), t);
      const typename V::freg e = V::fmadd(V::fset1(qb.A[i]), nx, V::fmul(V::fset1(qb.B[i]), ex));
      const typename V::freg h = V::fadd(a, e);
      V::fstore(lo + i * ldc + lc, V::fsub(a, e));
      V::fstore(hi + i * ldc + lc, h);
      uint64_t m = V::ge_mask(h, qb.thr[i]) & valid;
      while (m) {
        idx[i * ldc + cnt[i]++] = lc + __builtin_ctzll(m);
        m &= m - 1;
      }
    }
  }
}

template <class V, int SHIFT, int MR, int NP>
static void bounds(const QBlock& qb, const QCorpus& qc, int64_t p0, int np, int nvalid, float* lo, float* hi,
                   int64_t ldc, int32_t* idx, int* cnt, int32_t* raw) {
  for (int i = 0; i < MR; ++i) cnt[i] = 0;
  int u = 0;
  for (; u + NP <= np; u += NP) micro<V, SHIFT, MR, NP>(qb, qc, p0, p0 + u, nvalid, lo, hi, ldc, idx, cnt, raw);
  for (; u < np; ++u) micro<V, SHIFT, MR, 1>(qb, qc, p0, p0 + u, nvalid, lo, hi, ldc, idx, cnt, raw);
}

template <class V, int MR, int NP>
LowpScan make_lowp_scan(const char* name, int qmax) {
  LowpScan s;
  s.name = name;
  s.mr = MR;
  s.qmax = qmax;
  if (qmax == 127) {
    s.qoffset = 128;
    s.bounds = &bounds<V, 7, MR, NP>;
  } else {  // 63
    s.qoffset = 64;
    s.bounds = &bounds<V, 6, MR, NP>;
  }
  return s;
}

}  // namespace lowp_impl
}  // namespace ft
