// AVX2 int8 scan for CPUs without VNNI (compiled with -mavx2 -mfma only in this file): vpmaddubsw +
// vpmaddwd. Query codes are 7-bit ([-63, 63] + 64 <= 127) so the int16 pair sums of vpmaddubsw
// (<= 2 * 127 * 127) never saturate. 4 queries x 1 panel (16 rows = 2 ymm) per micro-tile.
#include <immintrin.h>

#include "lowp_impl.h"

namespace ft {
namespace {
struct VAvx2i {
  using ireg = __m256i;
  using freg = __m256;
  static constexpr int W = 8;
  static inline ireg izero() { return _mm256_setzero_si256(); }
  static inline ireg iload(const int8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static inline ireg bcast4(const uint8_t* p) { return _mm256_set1_epi32(*(const int32_t*)p); }
  static inline ireg dot4(ireg acc, ireg a, ireg b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
  }
  static inline ireg iload32(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static inline ireg isub(ireg a, ireg b) { return _mm256_sub_epi32(a, b); }
  template <int S>
  static inline ireg slli(ireg a) { return _mm256_slli_epi32(a, S); }
  static inline void istore(int32_t* p, ireg v) { _mm256_storeu_si256((__m256i*)p, v); }
  static inline freg fcvt(ireg a) { return _mm256_cvtepi32_ps(a); }
  static inline freg fload(const float* p) { return _mm256_loadu_ps(p); }
  static inline void fstore(float* p, freg v) { _mm256_storeu_ps(p, v); }
  static inline freg fset1(float x) { return _mm256_set1_ps(x); }
  static inline freg fmul(freg a, freg b) { return _mm256_mul_ps(a, b); }
  static inline freg fadd(freg a, freg b) { return _mm256_add_ps(a, b); }
  static inline freg fsub(freg a, freg b) { return _mm256_sub_ps(a, b); }
  static inline freg fmadd(freg a, freg b, freg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline uint64_t ge_mask(freg h, float t) {
    return (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(h, _mm256_set1_ps(t), _CMP_GE_OQ));
  }
};
}  // namespace

const LowpScan& lowp_scan_avx2() {
  static const LowpScan s = lowp_impl::make_lowp_scan<VAvx2i, 4, 1>("avx2", 63);
  return s;
}

}  // namespace ft
