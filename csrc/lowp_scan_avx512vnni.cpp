// AVX512-VNNI int8 scan (compiled with -mavx512f -mavx512bw -mavx512vnni only in this file):
// vpdpbusd, 8 queries x 2 panels (32 corpus rows) of int32 accumulators. Zen 4 runs it too.
#include <immintrin.h>

#include "lowp_impl.h"

namespace ft {
namespace {
struct VVnni512 {
  using ireg = __m512i;
  using freg = __m512;
  static constexpr int W = 16;
  static inline ireg izero() { return _mm512_setzero_si512(); }
  static inline ireg iload(const int8_t* p) { return _mm512_loadu_si512((const void*)p); }
  static inline ireg bcast4(const uint8_t* p) { return _mm512_set1_epi32(*(const int32_t*)p); }
  static inline ireg dot4(ireg acc, ireg a, ireg b) { return _mm512_dpbusd_epi32(acc, a, b); }
  static inline ireg iload32(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
  static inline ireg isub(ireg a, ireg b) { return _mm512_sub_epi32(a, b); }
  template <int S>
  static inline ireg slli(ireg a) { return _mm512_slli_epi32(a, S); }
  static inline void istore(int32_t* p, ireg v) { _mm512_storeu_si512((void*)p, v); }
  static inline freg fcvt(ireg a) { return _mm512_cvtepi32_ps(a); }
  static inline freg fload(const float* p) { return _mm512_loadu_ps(p); }
  static inline void fstore(float* p, freg v) { _mm512_storeu_ps(p, v); }
  static inline freg fset1(float x) { return _mm512_set1_ps(x); }
  static inline freg fmul(freg a, freg b) { return _mm512_mul_ps(a, b); }
  static inline freg fadd(freg a, freg b) { return _mm512_add_ps(a, b); }
  static inline freg fsub(freg a, freg b) { return _mm512_sub_ps(a, b); }
  static inline freg fmadd(freg a, freg b, freg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline uint64_t ge_mask(freg h, float t) {
    return (uint64_t)_mm512_cmp_ps_mask(h, _mm512_set1_ps(t), _CMP_GE_OQ);
  }
};
}  // namespace

const LowpScan& lowp_scan_avx512vnni() {
  static const LowpScan s = lowp_impl::make_lowp_scan<VVnni512, 8, 2>("avx512vnni", 127);
  return s;
}

}  // namespace ft
