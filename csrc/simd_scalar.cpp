// The portable path: plain C++ floats through the same packed, register-blocked templates as the
// SIMD paths (so it exercises their tiling on any CPU). The readable reference loops, which tests
// compare every path to, are topk_reference.cpp and contrastive_reference.cpp (simd="reference").
#include <cmath>

#include "simd_impl.h"

namespace ft {
namespace {
struct VScalar {
  using reg = float;
  static constexpr int W = 1;
  static inline reg zero() { return 0.f; }
  static inline reg load(const float* p) { return *p; }
  static inline reg loadu(const float* p) { return *p; }
  static inline void storeu(float* p, reg v) { *p = v; }
  static inline reg set1(float x) { return x; }
  static inline reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static inline reg add(reg a, reg b) { return a + b; }
  static inline uint64_t mask_range(reg v, float lo, float hi) { return (v > lo && v <= hi) ? 1u : 0u; }
  static inline reg max(reg a, reg b) { return a > b ? a : b; }
  static inline reg min(reg a, reg b) { return a < b ? a : b; }
  static inline reg mul(reg a, reg b) { return a * b; }
  static inline reg sub(reg a, reg b) { return a - b; }
  static inline float hmax(reg a) { return a; }
  static inline float hsum(reg a) { return a; }
  static inline reg exp(reg x) { return std::exp(x); }  // libm
  static inline float exp1(float x) { return std::exp(x); }
  static inline float fma1(float a, float b, float c) { return a * b + c; }
};
}  // namespace

const SimdKernels& simd_scalar() {
  static const SimdKernels k = impl::make_kernels<VScalar, 4, 8>("scalar", 256);
  return k;
}

}  // namespace ft
