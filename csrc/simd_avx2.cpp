// AVX2 + FMA path (compiled with -mavx2 -mfma only in this file): 6x16 register tile.
#include <immintrin.h>

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
};
}  // namespace

const SimdKernels& simd_avx2() {
  static const SimdKernels k = impl::make_kernels<VAvx2, 6, 2>("avx2", 384);
  return k;
}

}  // namespace ft
