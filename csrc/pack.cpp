// Packing of row-major matrices into the panel layout of the micro-kernels (see simd.h).
#include "simd.h"

namespace ft {

void pack_panels(const float* src, int64_t ld, int64_t rows, int d, int kc, int nr, int npanels,
                 int p_begin, int p_end, float* dst) {
  const int64_t chunk_stride = (int64_t)kc * npanels * nr;
  int ci = 0;
  for (int k0 = 0; k0 < d; k0 += kc, ++ci) {
    const int kcc = (d - k0) < kc ? (d - k0) : kc;
    float* chunk = dst + ci * chunk_stride;
    for (int p = p_begin; p < p_end; ++p) {
      float* panel = chunk + (int64_t)p * kcc * nr;
      for (int j = 0; j < nr; ++j) {
        const int64_t row = (int64_t)p * nr + j;
        if (row < rows) {
          const float* s = src + row * ld + k0;
          for (int k = 0; k < kcc; ++k) panel[(int64_t)k * nr + j] = s[k];
        } else {
          for (int k = 0; k < kcc; ++k) panel[(int64_t)k * nr + j] = 0.f;
        }
      }
    }
  }
}

}  // namespace ft
