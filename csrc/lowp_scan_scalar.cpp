// The portable int8 scan: plain integers through the same panel template as the SIMD paths (one
// "lane" per vector). The readable reference loops are lowp_reference.cpp (scan="reference").
#include <cstring>

#include "lowp_impl.h"

namespace ft {
namespace {
struct VScalar {
  using ireg = int32_t;
  using freg = float;
  static constexpr int W = 1;
  static inline ireg izero() { return 0; }
  static inline ireg iload(const int8_t* p) {  // the 4 codes of one row, packed as in a 32-bit lane
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  static inline ireg bcast4(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  static inline ireg dot4(ireg acc, ireg a, ireg b) {
    uint8_t ab[4];
    int8_t bb[4];
    std::memcpy(ab, &a, 4);
    std::memcpy(bb, &b, 4);
    return acc + ab[0] * bb[0] + ab[1] * bb[1] + ab[2] * bb[2] + ab[3] * bb[3];
  }
  static inline ireg iload32(const int32_t* p) { return *p; }
  static inline ireg isub(ireg a, ireg b) { return a - b; }
  template <int S>
  static inline ireg slli(ireg a) { return a * (1 << S); }
  static inline void istore(int32_t* p, ireg v) { *p = v; }
  static inline freg fcvt(ireg a) { return (float)a; }
  static inline freg fload(const float* p) { return *p; }
  static inline void fstore(float* p, freg v) { *p = v; }
  static inline freg fset1(float x) { return x; }
  static inline freg fmul(freg a, freg b) { return a * b; }
  static inline freg fadd(freg a, freg b) { return a + b; }
  static inline freg fsub(freg a, freg b) { return a - b; }
  static inline freg fmadd(freg a, freg b, freg c) { return a * b + c; }
  static inline uint64_t ge_mask(freg h, float t) { return h >= t ? 1u : 0u; }
};
}  // namespace

const LowpScan& lowp_scan_scalar() {
  static const LowpScan s = lowp_impl::make_lowp_scan<VScalar, 4, 1>("scalar", 127);
  return s;
}

}  // namespace ft
