// SIMD kernel table: the instruction-set-specific pieces every native kernel is built from.
// One translation unit per instruction set (simd_scalar.cpp, simd_avx2.cpp, simd_avx512.cpp)
// instantiates the templates of simd_impl.h with its own vector type and compiler flags;
// dispatch.cpp picks one at run time from the CPU's features (or FASTEMBED_TUNE_SIMD).
// A further table, "reference", has no pieces at all: it selects the plain reference loops
// (topk_reference.cpp, contrastive_reference.cpp) that tests compare every path to.
#pragma once
#include <algorithm>
#include <cstdint>

namespace ft {

struct SimdKernels {
  const char* name;
  // True only for the "reference" table: every function pointer below is null and each kernel's
  // entry point runs its plain reference loop instead (no packing, no tiling, no SIMD).
  bool reference = false;
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

// The geometry of the B tiles streamed past the micro-kernel: tiles of nc = npanels * nr rows
// of B (about tile_bytes of it, at most max_cols rows, at least one panel), packed in chunks of
// depth kc. packed_floats is the size of one packed tile.
struct TileGeometry {
  int mr, nr, kc, npanels, nc;
  int64_t packed_floats;
};

inline TileGeometry tile_geometry(const SimdKernels& kern, int d, int64_t tile_bytes, int max_cols) {
  TileGeometry g;
  g.mr = kern.mr;
  g.nr = kern.nr;
  g.kc = chunk_depth(kern, d);
  const int64_t target = tile_bytes / (4 * (int64_t)d);
  g.npanels = (int)std::max<int64_t>(1, std::min<int64_t>(target / g.nr, max_cols / g.nr));
  g.nc = g.npanels * g.nr;
  g.packed_floats = (int64_t)((d + g.kc - 1) / g.kc) * g.kc * g.nc;
  return g;
}

// The loop every kernel built on tile_scores shares. Rows [b_begin, b_end) of B ([*, d],
// row-major) are packed one tile at a time into `packed` (g.packed_floats); after each packing
// on_tile(t0, n) runs (t0: the tile's first row of B, n <= g.nc: its rows). Then rows
// [r0, r1) of A ([*, d], row-major) go past the tile in blocks of g.mr, starting at r0 (rows at or
// past r1 read zero_row, d zeros): c (g.mr x g.nc, row stride g.nc) receives the block's scores
// c[i][j] = A[b0 + i] . B[t0 + j] and on_block(t0, n, b0, c) consumes them (only rows
// b0 + i < r1 and columns j < n are real; on_block may overwrite c).
template <class OnTile, class OnBlock>
inline void stream_tiles(const SimdKernels& kern, const TileGeometry& g, int d, const float* A, int64_t r0,
                         int64_t r1, const float* B, int64_t b_begin, int64_t b_end, const float* zero_row,
                         float* packed, float* c, OnTile&& on_tile, OnBlock&& on_block) {
  const float* rows[64];  // g.mr <= 64
  for (int64_t t0 = b_begin; t0 < b_end; t0 += g.nc) {
    const int n = (int)std::min<int64_t>(g.nc, b_end - t0);
    pack_panels(B + t0 * d, d, n, d, g.kc, g.nr, g.npanels, 0, g.npanels, packed);
    on_tile(t0, n);
    for (int64_t b0 = r0; b0 < r1; b0 += g.mr) {
      for (int i = 0; i < g.mr; ++i) rows[i] = b0 + i < r1 ? A + (b0 + i) * d : zero_row;
      kern.tile_scores(rows, packed, d, g.kc, g.npanels, c, g.nc, false);
      on_block(t0, n, b0, c);
    }
  }
}

const SimdKernels& simd_scalar();
#if defined(FT_HAVE_X86)
const SimdKernels& simd_avx2();
const SimdKernels& simd_avx512();
#endif

}  // namespace ft
