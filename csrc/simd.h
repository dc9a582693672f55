// SIMD kernel table: the instruction-set-specific pieces every native kernel is built from.
// One translation unit per instruction set (simd_scalar.cpp, simd_avx2.cpp, simd_avx512.cpp)
// instantiates the templates of simd_impl.h with its own vector type and compiler flags;
// dispatch.cpp picks one at run time from the CPU's features (or FASTEMBED_TUNE_SIMD).
#pragma once
#include <cstdint>

namespace ft {

struct SimdKernels {
  const char* name;
  int mr;  // queries (rows of A) per micro-tile
  int nr;  // documents (columns of B) per packed panel
  int kc;  // max depth of one packed chunk (keeps a B panel in L1)

  // Scores of mr rows of A against one packed tile of B:
  //   C[i*ldc + j] = sum_k A_i[k] * B[j][k]      for i < mr (the table's), j < npanels*nr.
  // `a` holds mr row pointers (length d each). `bp` is the tile packed by pack_tile.
  // With accumulate, C += instead of C =.
  void (*tile_scores)(const float* const* a, const float* bp, int d, int kc, int npanels,
                      float* c, int64_t ldc, bool accumulate);

  // Indices j < n with lo < s[j] <= hi, written to out; returns how many.
  int (*select_range)(const float* s, int n, float lo, float hi, int32_t* out);

  // Softmax pieces for the contrastive kernel (exp: vectorised Cephes polynomial, ~1 ulp).
  float (*row_max)(const float* s, int n);
  // sum_j exp(scale * s[j] - shift)
  float (*sum_exp)(const float* s, int n, float scale, float shift);
  // s[j] = mult[c] * exp(scale * s[j] - shift[c]), c = j when per_col else 0. The exponent is
  // formed exactly as in sum_exp (one fused multiply-add), so recomputed probabilities match.
  void (*exp_scale)(float* s, int n, float scale, const float* shift, const float* mult, bool per_col);

};

// Depth of each packed chunk for a K-deep product: chunks of equal size (a multiple of 8, for
// aligned panel rows), none deeper than the kernel's kc. Shared by every kernel that packs.
inline int chunk_depth(const SimdKernels& kern, int K) {
  const int nch = (K + kern.kc - 1) / kern.kc;
  const int kc = ((K + nch - 1) / nch + 7) / 8 * 8;
  return K < kc ? K : kc;
}

// Packs panels [p_begin, p_end) of rows [0, rows) of a row-major matrix (row stride ld) into
// the chunked panel layout read by tile_scores: chunk c (depth kc_c = min(kc, d - c*kc)) at
// offset c*kc*npanels*nr, panel p at p*kc_c*nr inside it, element (k, j) at k*nr + j.
// Rows past `rows` are zero. Disjoint panel ranges may be packed by different threads.
// (B operand given transposed: its rows are the output columns.)
void pack_panels(const float* src, int64_t ld, int64_t rows, int d, int kc, int nr, int npanels,
                 int p_begin, int p_end, float* dst);

// The same layout for a B operand given as a row-major K x N matrix (row stride ld): element
// (k, j) = src[k*ld + j]; rows k >= krows and columns j >= ncols are zero.
void pack_panels_kn(const float* src, int64_t ld, int krows, int ncols, int K, int kc, int nr,
                    int npanels, float* dst);

const SimdKernels& simd_scalar();
#if defined(FT_HAVE_X86)
const SimdKernels& simd_avx2();
const SimdKernels& simd_avx512();
#endif

}  // namespace ft
