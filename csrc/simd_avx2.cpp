// AVX2 + FMA path (compiled with -mavx2 -mfma only in this file): 6x16 register tile.
#include <immintrin.h>

#include <cmath>

#include "simd_impl.h"

namespace ft {
namespace {
struct VAvx2 {
  using reg = __m256;
  static constexpr int W = 8;
  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static inline void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static inline reg set1(float x) { return _mm256_set1_ps(x); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static inline uint64_t mask_range(reg v, float lo, float hi) {
    const reg m = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(lo), _CMP_GT_OQ),
                                _mm256_cmp_ps(v, _mm256_set1_ps(hi), _CMP_LE_OQ));
    return (uint64_t)(unsigned)_mm256_movemask_ps(m);
  }
  static inline reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static inline reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static inline reg floor(reg a) { return _mm256_floor_ps(a); }
  static inline reg pow2(reg n) {  // 2^n for integral n in [-127, 128]
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_castsi256_ps(e);
  }
  static inline float hmax(reg a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static inline float hsum(reg a) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static inline reg exp(reg x) { return impl::cephes_exp<VAvx2>(x); }
  static inline float fma1(float a, float b, float c) { return std::fma(a, b, c); }
  static inline float exp1(float x) { return _mm256_cvtss_f32(exp(_mm256_set1_ps(x))); }
};
}  // namespace

const SimdKernels& simd_avx2() {
  static const SimdKernels k = impl::make_kernels<VAvx2, 6, 2>("avx2", 384);
  return k;
}

}  // namespace ft
