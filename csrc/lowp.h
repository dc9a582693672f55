// Reduced-precision (int8) candidate scan + exact fp32 rescoring: topk_cosine_lowp.
// Contract: docs/design.md "topk_cosine" (a reduced-precision scan may find candidates, but the
// returned top-k is the fp32-exact one). The result equals topk_cosine(args, fp32 kernel) bit for bit.
//
// Quantisation (per row, symmetric): x~ = s * c with c = round(x / s) in [-127, 127], s = max|x| / 127.
// Each row also carries rigorous upper bounds nx >= |x| and ex >= |x - x~| (L2). Queries are quantised
// the same way per call (qmax = 127, or 63 for the AVX2 path, whose vpmaddubsw would saturate on 8 bits)
// and stored as unsigned bytes c + offset; the scan computes sum (c_q + off) c_x - off * colsum(c_x).
//
// Error bound (see lowp_topk.cpp, bounds()): for the fp32 score s' of (q, x) as any fp32 path computes it
// and the approximate score a = fl(fl(I) * fl(s_q s_x)), I = c_q . c_x exact in int32,
//   |s' - a| <= e = A_q * nx + B_q * ex,
//   A_q = (gamma_{d+2} |q| + |q - q~| + 16u |q~|)(1 + 1e-5),  B_q = |q~| (1 + 16u)(1 + 1e-5)
// (u = 2^-24; gamma_{d+2} covers the fp32 dot product's rounding, 16u the roundings of a, e, a +- e).
// Candidates: L = (k + skip_top)-th largest a - e over rows that surely pass the filters (not excluded,
// a + e <= upper); every row with a + e >= L and a - e <= upper is rescored. A row left out has
// s' <= a + e < L <= s' of k + skip_top surely passing rows, so it cannot be in the answer.
// upper is topk_cosine's (topk_cosine.h, TopkArgs::upper): for max_ratio r and positive score p,
// p - (1 - min(r, 1)) * |p| rounded down to float, never above p, so a negative p keeps its margin
// and no candidate scoring above the positive passes; the scan and the rescoring compare with it alike.
#pragma once
#include <cstdint>

#include "simd.h"
#include "topk_cosine.h"

namespace ft {

constexpr int kLowpPanel = 16;  // corpus rows per packed panel

// A quantised corpus, packed for the scan: panel p (rows 16p .. 16p+15), 4-column group g, row r in the
// panel, byte t at codes[(p * G + g) * 64 + r * 4 + t] = c[16p + r][4g + t]; G = dpad / 4, dpad = d
// rounded up to 4. Rows past N and columns past d are zero. Per-row arrays have npad = 16 * panels entries.
struct QCorpus {
  const int8_t* codes = nullptr;
  const int32_t* colsum = nullptr;  // sum of the row's codes
  const float* scale = nullptr;     // s
  const float* nx = nullptr;        // >= |x|
  const float* ex = nullptr;        // >= |x - x~|
  int64_t N = 0;
  int d = 0, dpad = 0;
  int64_t panels() const { return (N + kLowpPanel - 1) / kLowpPanel; }
};

// Sizes a caller allocates for quantise_corpus.
inline int lowp_dpad(int d) { return (d + 3) / 4 * 4; }
inline int64_t lowp_npad(int64_t N) { return (N + kLowpPanel - 1) / kLowpPanel * kLowpPanel; }

// Fills codes[npad * dpad], colsum/scale/nx/ex[npad] from x [N, d] row-major. Multithreaded.
void quantise_corpus(const float* x, int64_t N, int d, int threads, int8_t* codes, int32_t* colsum,
                     float* scale, float* nx, float* ex);

// MR quantised queries for one scan call.
struct QBlock {
  const uint8_t* rows[64];  // codes + offset, dpad bytes each (zero rows past the real ones)
  float sq[64], A[64], B[64];
  float thr[64];  // per query: report columns whose a + e >= thr
};

// One instruction set's scan. bounds(): the MR queries of qb against panels [p0, p0 + np) of qc
// (np * 16 = n columns); writes lo = a - e and hi = a + e (row i at i * ldc), and the columns j with
// hi[j] >= qb.thr[i] (j < nvalid) to idx[i * ldc ...], their count to cnt[i]. With raw != nullptr it
// writes only the exact integer dots I (c_q . c_x, offset removed) to raw[i * ldc + j].
struct LowpScan {
  const char* name;
  bool reference = false;  // the plain loops of lowp_reference.cpp
  int mr;
  int qmax, qoffset;  // query codes in [-qmax, qmax], stored + qoffset
  void (*bounds)(const QBlock& qb, const QCorpus& qc, int64_t p0, int np, int nvalid, float* lo, float* hi,
                 int64_t ldc, int32_t* idx, int* cnt, int32_t* raw);
};

const LowpScan& lowp_scan_scalar();
#if defined(FT_HAVE_X86)
const LowpScan& lowp_scan_avx2();
const LowpScan& lowp_scan_avx512vnni();
#endif
// The scan paths are chosen at run time by dispatch.h (available_lowp, get_lowp; FASTEMBED_TUNE_LOWP).

// Quantises queries [Q, d] for `scan`: out codes [Q, dpad] (+ offset), per query sq, A, B (see above).
void quantise_queries(const LowpScan& scan, const float* q, int64_t Q, int d, int dpad, uint8_t* codes,
                      float* sq, float* A, float* B);

// topk_cosine with an int8 candidate scan: same result as topk_cosine(a, fkern) (ids and scores).
// Extra memory: per query batch of up to 16384 queries, their codes (dpad bytes each), per query a
// heap of k + skip_top floats and its candidates (8 bytes each; about twice the final candidate
// count), per thread an mr x nc block of bounds; no Q x N matrix. Requires N < 2^31.
// stats (optional, 4 entries): total candidates rescored, queries, seconds scanning, seconds rescoring.
void topk_cosine_lowp(const TopkArgs& a, const QCorpus& qc, const LowpScan& scan, const SimdKernels& fkern,
                      float* scores, int64_t* ids, double* stats);

// Exact integer dots c_q . c_x of `scan`'s quantisation, [Q, N] int32 (a test hook: every path
// against the reference loops).
void lowp_dots(const float* q, int64_t Q, const QCorpus& qc, const LowpScan& scan, int32_t* out);

}  // namespace ft
