// AVX-512F path (compiled with -mavx512f only in this file): 8x32 register tile.
#include <immintrin.h>

#include <cmath>

#include "simd_impl.h"

namespace ft {
namespace {
struct VAvx512 {
  using reg = __m512;
  static constexpr int W = 16;
  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  static inline reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static inline void storeu(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static inline reg set1(float x) { return _mm512_set1_ps(x); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static inline uint64_t mask_range(reg v, float lo, float hi) {
    const __mmask16 m1 = _mm512_cmp_ps_mask(v, _mm512_set1_ps(lo), _CMP_GT_OQ);
    return (uint64_t)_mm512_mask_cmp_ps_mask(m1, v, _mm512_set1_ps(hi), _CMP_LE_OQ);
  }
  static inline reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static inline reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static inline reg floor(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static inline reg pow2(reg n) {
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(e);
  }
  static inline float hmax(reg a) { return _mm512_reduce_max_ps(a); }
  static inline float hsum(reg a) { return _mm512_reduce_add_ps(a); }
  static inline reg exp(reg x) { return impl::cephes_exp<VAvx512>(x); }
  static inline float fma1(float a, float b, float c) { return std::fma(a, b, c); }
  static inline float exp1(float x) { return _mm512_cvtss_f32(exp(_mm512_set1_ps(x))); }
};
}  // namespace

const SimdKernels& simd_avx512() {
  static const SimdKernels k = impl::make_kernels<VAvx512, 8, 2>("avx512", 384);
  return k;
}

}  // namespace ft
