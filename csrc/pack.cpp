// Packing of row-major matrices into the panel layout of the micro-kernels (see simd.h).
#include <vector>

#include "simd.h"

namespace ft {

void pack_panels(const float* src, int64_t ld, int64_t rows, int d, int kc, int nr, int npanels,
                 int p_begin, int p_end, float* dst) {
  const int64_t chunk_stride = (int64_t)kc * npanels * nr;
  std::vector<float> zeros(d, 0.f);
  const float* rp[64];
  for (int p = p_begin; p < p_end; ++p) {
    for (int j = 0; j < nr; ++j) {
      const int64_t row = (int64_t)p * nr + j;
      rp[j] = row < rows ? src + row * ld : zeros.data();
    }
    int ci = 0;
    for (int k0 = 0; k0 < d; k0 += kc, ++ci) {
      const int kcc = (d - k0) < kc ? (d - k0) : kc;
      float* panel = dst + ci * chunk_stride + (int64_t)p * kcc * nr;
      // Writes are sequential; the nr source rows are each read sequentially.
      for (int k = 0; k < kcc; ++k)
        for (int j = 0; j < nr; ++j) panel[(int64_t)k * nr + j] = rp[j][k0 + k];
    }
  }
}

void pack_panels_kn(const float* src, int64_t ld, int krows, int ncols, int K, int kc, int nr,
                    int npanels, float* dst) {
  const int64_t chunk_stride = (int64_t)kc * npanels * nr;
  int ci = 0;
  for (int k0 = 0; k0 < K; k0 += kc, ++ci) {
    const int kcc = (K - k0) < kc ? (K - k0) : kc;
    for (int p = 0; p < npanels; ++p) {
      float* panel = dst + ci * chunk_stride + (int64_t)p * kcc * nr;
      const int j0 = p * nr;
      const int w = ncols - j0 >= nr ? nr : (ncols - j0 > 0 ? ncols - j0 : 0);
      for (int k = 0; k < kcc; ++k) {
        float* out = panel + (int64_t)k * nr;
        const int kk = k0 + k;
        int j = 0;
        if (kk < krows) {
          const float* s = src + (int64_t)kk * ld + j0;
          for (; j < w; ++j) out[j] = s[j];
        }
        for (; j < nr; ++j) out[j] = 0.f;
      }
    }
  }
}

}  // namespace ft
