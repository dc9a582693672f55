// topk_cosine_lowp: an int8 scan finds candidates (lowp_scan_<isa>.cpp, chosen at run time by
// dispatch.cpp like the fp32 paths), then the candidates are rescored with the fp32 kernel's own
// micro-kernel (so scores are bit-identical to topk_cosine's) and ranked with its tie rule and
// filters. The error bound and the candidate rule are in lowp.h. The quantised corpus is pre-packed
// (quantise_corpus), so the scan streams it straight from memory (or a memory map) with no packing step.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>

#include "lowp.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ft {

// ---------------------------------------------------------------------------------------------
// Quantisation
// ---------------------------------------------------------------------------------------------
namespace {
constexpr double kUp = 1.0 + 1e-6;  // rounds a double-precision norm up past float rounding

// c = round(x / s), s = max|x| / qmax (float); returns s and fills |x|, |x - s c|, |s c| (in double).
float quantise_row(const float* x, int d, int qmax, int32_t* c, double& nx, double& ex, double& nxt) {
  float m = 0.f;
  for (int i = 0; i < d; ++i) m = std::max(m, std::fabs(x[i]));
  const float s = m > 0 ? m / (float)qmax : 0.f;
  double n2 = 0, e2 = 0, t2 = 0;
  for (int i = 0; i < d; ++i) {
    int32_t v = 0;
    if (s > 0) {
      const double r = std::nearbyint((double)x[i] / (double)s);
      v = (int32_t)std::max<double>(-qmax, std::min<double>(qmax, r));
    }
    c[i] = v;
    const double xt = (double)s * v, xi = x[i];
    n2 += xi * xi;
    e2 += (xi - xt) * (xi - xt);
    t2 += xt * xt;
  }
  nx = std::sqrt(n2) * kUp;
  ex = std::sqrt(e2) * kUp;
  nxt = std::sqrt(t2) * kUp;
  return s;
}

int threads_or_default(int t) {
#ifdef _OPENMP
  if (t <= 0) t = omp_get_max_threads();
#else
  t = 1;
#endif
  return std::max(1, t);
}

double now() {
#ifdef _OPENMP
  return omp_get_wtime();
#else
  return 0.0;
#endif
}
}  // namespace

void quantise_corpus(const float* x, int64_t N, int d, int threads, int8_t* codes, int32_t* colsum, float* scale,
                     float* nx, float* ex) {
  const int dpad = lowp_dpad(d);
  const int G = dpad / 4;
  const int64_t npad = lowp_npad(N);
  const int T = threads_or_default(threads);
#pragma omp parallel num_threads(T)
  {
    std::vector<int32_t> c(dpad, 0);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < npad; ++j) {
      double n = 0, e = 0, t = 0;
      float s = 0.f;
      std::fill(c.begin(), c.end(), 0);
      if (j < N) s = quantise_row(x + j * d, d, 127, c.data(), n, e, t);
      int32_t sum = 0;
      int8_t* dst = codes + (j / kLowpPanel) * (int64_t)G * 64 + (j % kLowpPanel) * 4;
      for (int g = 0; g < G; ++g)
        for (int b = 0; b < 4; ++b) {
          dst[g * 64 + b] = (int8_t)c[4 * g + b];
          sum += c[4 * g + b];
        }
      colsum[j] = sum;
      scale[j] = s;
      nx[j] = (float)n;
      ex[j] = (float)e;
    }
  }
}

void quantise_queries(const LowpScan& scan, const float* q, int64_t Q, int d, int dpad, uint8_t* codes, float* sq,
                      float* A, float* B) {
  const double u = std::ldexp(1.0, -24);
  const double gamma = (d + 2) * u / (1 - (d + 2) * u);
  std::vector<int32_t> c(d);
  for (int64_t i = 0; i < Q; ++i) {
    double nq, eq, nqt;
    sq[i] = quantise_row(q + i * d, d, scan.qmax, c.data(), nq, eq, nqt);
    uint8_t* dst = codes + i * dpad;
    for (int t = 0; t < dpad; ++t) dst[t] = (uint8_t)((t < d ? c[t] : 0) + scan.qoffset);
    A[i] = (float)((gamma * nq + eq + 16 * u * nqt) * (1 + 1e-5));
    B[i] = (float)(nqt * (1 + 16 * u) * (1 + 1e-5));
  }
}

// ---------------------------------------------------------------------------------------------
// Candidate state, rescoring
// ---------------------------------------------------------------------------------------------
namespace {
struct Cand {
  float hi;
  uint32_t id;
};

struct QState {
  std::vector<float> heap;  // min-heap of the best lower bounds a - e of surely passing rows (<= K)
  std::vector<Cand> cand;   // rows with a + e >= L at the time they were seen
  size_t cap = 256;
};

bool excluded(const TopkArgs& a, int64_t q, int64_t id) {
  if (!a.excl_ptr) return false;
  return std::binary_search(a.excl_ids + a.excl_ptr[q], a.excl_ids + a.excl_ptr[q + 1], id);
}

inline float current_L(const QState& s, int K) {
  return (int)s.heap.size() == K ? s.heap.front() : -std::numeric_limits<float>::infinity();
}

// One query's reported columns of a scanned tile (row0: the tile's first corpus row).
void take(const TopkArgs& a, int K, int64_t q, QState& s, const float* lo, const float* hi, const int32_t* idx,
          int cnt, int64_t row0) {
  const float upper = a.upper ? a.upper[q] : std::numeric_limits<float>::infinity();
  float L = current_L(s, K);
  for (int t = 0; t < cnt; ++t) {
    const int j = idx[t];
    const float h = hi[j];
    if (!(h >= L)) continue;
    const float l = lo[j];
    if (l > upper) continue;  // surely fails max_ratio
    const int64_t id = row0 + j;
    if (excluded(a, q, id)) continue;
    s.cand.push_back({h, (uint32_t)id});
    if (h <= upper) {  // surely passes: its lower bound counts towards L
      if ((int)s.heap.size() < K) {
        s.heap.push_back(l);
        std::push_heap(s.heap.begin(), s.heap.end(), std::greater<float>());
      } else if (l > s.heap.front()) {
        std::pop_heap(s.heap.begin(), s.heap.end(), std::greater<float>());
        s.heap.back() = l;
        std::push_heap(s.heap.begin(), s.heap.end(), std::greater<float>());
      }
      L = current_L(s, K);
    }
  }
  if (s.cand.size() > s.cap) {
    s.cand.erase(std::remove_if(s.cand.begin(), s.cand.end(), [L](const Cand& c) { return c.hi < L; }), s.cand.end());
    s.cap = std::max<size_t>(256, 2 * s.cand.size());
  }
}

struct Entry {
  float s;
  int64_t id;
};

// fp32 scores of a panel of queries against their candidates, bit-identical to topk_cosine(fkern):
// the same micro-kernel and chunk depth, with the roles swapped: the nr queries are the packed B
// panel and the candidate rows the A rows (read in place, no gather or packing). Each score is
// fma(x[k], q[k], r) over k ascending per depth chunk, chunks added in order: the same operations
// as fma(q[k], x[k], r) since a product commutes exactly (and so does a*b + c on the scalar path).
struct Rescorer {
  const TopkArgs& a;
  const SimdKernels& k;
  TileGeometry g{};
  std::vector<float> packed, c, zero;
  Rescorer(const TopkArgs& a_, const SimdKernels& k_) : a(a_), k(k_) {
    if (!k.reference) {
      g = tile_geometry(k, a.d, 0, k.nr);  // one panel of nr queries
      packed.resize(g.packed_floats);
      c.resize((size_t)g.mr * g.nr);
      zero.assign(a.d, 0.f);
    }
  }
  int panel() const { return k.reference ? 1 : g.nr; }
  // Queries q0 .. q0 + nq - 1 (nq <= panel()); cands[i]: query q0 + i's candidate ids; out[i] the scores.
  void score(int64_t q0, int nq, const std::vector<int64_t>* cands, std::vector<float>* out) {
    if (k.reference) {  // topk_reference.cpp's arithmetic
      for (int i = 0; i < nq; ++i) {
        const float* qr = a.queries + (q0 + i) * a.d;
        out[i].resize(cands[i].size());
        for (size_t t = 0; t < cands[i].size(); ++t) {
          const float* x = a.corpus + cands[i][t] * a.d;
          double dot = 0.0;
          for (int c = 0; c < a.d; ++c) dot += (double)qr[c] * (double)x[c];
          out[i][t] = (float)dot;
        }
      }
      return;
    }
    pack_panels(a.queries + q0 * a.d, a.d, nq, a.d, g.kc, g.nr, 1, 0, 1, packed.data());
    const float* rows[64];
    int qi[64];
    size_t ti[64];
    int fill = 0;
    auto flush = [&]() {
      for (int i = fill; i < g.mr; ++i) rows[i] = zero.data();
      k.tile_scores(rows, packed.data(), a.d, g.kc, 1, c.data(), g.nr, false);
      for (int i = 0; i < fill; ++i) out[qi[i]][ti[i]] = c[(size_t)i * g.nr + qi[i]];
      fill = 0;
    };
    for (int i = 0; i < nq; ++i) {
      out[i].resize(cands[i].size());
      for (size_t t = 0; t < cands[i].size(); ++t) {
        rows[fill] = a.corpus + cands[i][t] * a.d;
        qi[fill] = i;
        ti[fill] = t;
        if (++fill == g.mr) flush();
      }
    }
    if (fill) flush();
  }
};

// Ranks rescored candidates with topk_cosine's filters and tie rule; writes row q of the output.
void finish(const TopkArgs& a, int64_t q, std::vector<Entry>& e, float* scores, int64_t* ids) {
  const float upper = a.upper ? a.upper[q] : std::numeric_limits<float>::infinity();
  const float ninf = -std::numeric_limits<float>::infinity();
  e.erase(std::remove_if(e.begin(), e.end(), [&](const Entry& x) { return !(x.s > ninf) || !(x.s <= upper); }),
          e.end());
  const size_t need = (size_t)a.skip_top + a.k;
  auto better = [](const Entry& x, const Entry& y) { return x.s > y.s || (x.s == y.s && x.id < y.id); };
  if (e.size() > need) {
    std::nth_element(e.begin(), e.begin() + need, e.end(), better);
    e.resize(need);
  }
  std::sort(e.begin(), e.end(), better);
  for (int r = 0; r < a.k; ++r) {
    const size_t src = (size_t)a.skip_top + r;
    scores[q * a.k + r] = src < e.size() ? e[src].s : ninf;
    ids[q * a.k + r] = src < e.size() ? e[src].id : -1;
  }
}

// The plain reference loops (lowp_reference.cpp).
}  // namespace

void lowp_candidates_reference(const TopkArgs& a, int64_t q, const QCorpus& qc, const uint8_t* qcodes, int qoffset,
                               float sq, float A, float B, std::vector<int64_t>& out);
int32_t lowp_dot_reference(const QCorpus& qc, const uint8_t* qcodes, int qoffset, int64_t j);

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------
void topk_cosine_lowp(const TopkArgs& a, const QCorpus& qc, const LowpScan& scan, const SimdKernels& fkern,
                      float* scores, int64_t* ids, double* stats) {
  if (stats) std::fill(stats, stats + 4, 0.0);
  if (a.Q <= 0 || a.k <= 0) return;
  const int T = threads_or_default(a.threads);
  const int K = a.k + a.skip_top;
  const int dpad = qc.dpad;
  const int64_t P = qc.panels();
  const int mr = scan.mr;
  // A tile of about 256 KiB of codes (an even number of panels) stays in L2 while query blocks pass.
  const int tp = std::max(2, std::min(256, (256 * 1024) / (kLowpPanel * dpad)) / 2 * 2);
  const int nc = tp * kLowpPanel;
  const int64_t ntiles = (P + tp - 1) / tp;
  const int64_t QB = std::min<int64_t>(a.Q, 16384);
  std::vector<uint8_t> qcodes((size_t)QB * dpad);
  std::vector<float> sq(QB), qA(QB), qB(QB);
  std::vector<uint8_t> zero_q(dpad, (uint8_t)scan.qoffset);
  double t_scan = 0, t_rescore = 0, ncand = 0;

  for (int64_t b0 = 0; b0 < a.Q; b0 += QB) {
    const int64_t nb = std::min(QB, a.Q - b0);
    const double t0 = now();
#pragma omp parallel for num_threads(T) schedule(static)
    for (int64_t i = 0; i < nb; ++i)
      quantise_queries(scan, a.queries + (b0 + i) * a.d, 1, a.d, dpad, qcodes.data() + i * dpad, &sq[i], &qA[i], &qB[i]);

    std::vector<std::vector<int64_t>> cands(nb);
    if (scan.reference) {
#pragma omp parallel for num_threads(T) schedule(dynamic, 1)
      for (int64_t i = 0; i < nb; ++i)
        lowp_candidates_reference(a, b0 + i, qc, qcodes.data() + i * dpad, scan.qoffset, sq[i], qA[i], qB[i], cands[i]);
    } else {
      const int64_t nblocks = (nb + mr - 1) / mr;
      int64_t nchunks = std::min<int64_t>(nblocks, 8 * (int64_t)T);
      int64_t nsplits = (T == 1 || nchunks >= 4 * (int64_t)T) ? 1 : std::min<int64_t>(ntiles, (4 * T + nchunks - 1) / nchunks);
      const int64_t bpc = (nblocks + nchunks - 1) / nchunks;
      nchunks = (nblocks + bpc - 1) / bpc;
      const int64_t tps = (ntiles + nsplits - 1) / nsplits;
      nsplits = (ntiles + tps - 1) / tps;
      std::vector<QState> st((size_t)nsplits * nb);
#pragma omp parallel num_threads(T)
      {
        std::vector<float> lo((size_t)mr * nc), hi((size_t)mr * nc);
        std::vector<int32_t> idx((size_t)mr * nc);
        std::vector<int> cnt(mr);
        QBlock qb;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < nchunks * nsplits; ++item) {
          const int64_t chunk = item / nsplits, split = item % nsplits;
          const int64_t q_begin = chunk * bpc * mr, q_end = std::min(nb, q_begin + bpc * mr);
          const int64_t tile_end = std::min(ntiles, (split + 1) * tps);
          for (int64_t tile = split * tps; tile < tile_end; ++tile) {
            const int64_t p0 = tile * tp;
            const int np = (int)std::min<int64_t>(tp, P - p0);
            const int nvalid = (int)std::min<int64_t>((int64_t)np * kLowpPanel, a.N - p0 * kLowpPanel);
            for (int64_t r0 = q_begin; r0 < q_end; r0 += mr) {
              for (int i = 0; i < mr; ++i) {
                const int64_t r = r0 + i;
                if (r < q_end) {
                  qb.rows[i] = qcodes.data() + r * dpad;
                  qb.sq[i] = sq[r];
                  qb.A[i] = qA[r];
                  qb.B[i] = qB[r];
                  qb.thr[i] = current_L(st[split * nb + r], K);
                } else {
                  qb.rows[i] = zero_q.data();
                  qb.sq[i] = qb.A[i] = qb.B[i] = 0.f;
                  qb.thr[i] = std::numeric_limits<float>::infinity();
                }
              }
              scan.bounds(qb, qc, p0, np, nvalid, lo.data(), hi.data(), nc, idx.data(), cnt.data(), nullptr);
              const int valid = (int)std::min<int64_t>(mr, q_end - r0);
              for (int i = 0; i < valid; ++i)
                take(a, K, b0 + r0 + i, st[split * nb + r0 + i], lo.data() + (size_t)i * nc, hi.data() + (size_t)i * nc,
                     idx.data() + (size_t)i * nc, cnt[i], p0 * kLowpPanel);
            }
          }
        }
        // merge the splits: L = K-th largest lower bound over all of them
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nb; ++i) {
          std::vector<float> lbs;
          for (int64_t s = 0; s < nsplits; ++s) {
            const QState& x = st[s * nb + i];
            lbs.insert(lbs.end(), x.heap.begin(), x.heap.end());
          }
          float L = -std::numeric_limits<float>::infinity();
          if ((int)lbs.size() >= K) {
            std::nth_element(lbs.begin(), lbs.begin() + (K - 1), lbs.end(), std::greater<float>());
            L = lbs[K - 1];
          }
          auto& out = cands[i];
          for (int64_t s = 0; s < nsplits; ++s) {
            QState& x = st[s * nb + i];
            for (const Cand& c : x.cand)
              if (c.hi >= L) out.push_back(c.id);
            std::vector<Cand>().swap(x.cand);
            std::vector<float>().swap(x.heap);
          }
        }
      }
    }
    const double t1 = now();
#pragma omp parallel num_threads(T) reduction(+ : ncand)
    {
      Rescorer rs(a, fkern);
      const int P = rs.panel();
      std::vector<std::vector<float>> sc(P);
      std::vector<Entry> e;
#pragma omp for schedule(dynamic, 1)
      for (int64_t p0 = 0; p0 < nb; p0 += P) {
        const int nq = (int)std::min<int64_t>(P, nb - p0);
        for (int i = 0; i < nq; ++i) {
          std::sort(cands[p0 + i].begin(), cands[p0 + i].end());
          ncand += (double)cands[p0 + i].size();
        }
        rs.score(b0 + p0, nq, &cands[p0], sc.data());
        for (int i = 0; i < nq; ++i) {
          const auto& c = cands[p0 + i];
          e.resize(c.size());
          for (size_t t = 0; t < c.size(); ++t) e[t] = {sc[i][t], c[t]};
          finish(a, b0 + p0 + i, e, scores, ids);
          std::vector<int64_t>().swap(cands[p0 + i]);
        }
      }
    }
    const double t2 = now();
    t_scan += t1 - t0;
    t_rescore += t2 - t1;
  }
  if (stats) {
    stats[0] = ncand;
    stats[1] = (double)a.Q;
    stats[2] = t_scan;
    stats[3] = t_rescore;
  }
}

void lowp_dots(const float* q, int64_t Q, const QCorpus& qc, const LowpScan& scan, int32_t* out) {
  const int dpad = qc.dpad;
  std::vector<uint8_t> codes((size_t)std::max<int64_t>(Q, 1) * dpad);
  std::vector<float> sq(Q), A(Q), B(Q);
  quantise_queries(scan, q, Q, qc.d, dpad, codes.data(), sq.data(), A.data(), B.data());
  if (scan.reference) {
    for (int64_t i = 0; i < Q; ++i)
      for (int64_t j = 0; j < qc.N; ++j) out[i * qc.N + j] = lowp_dot_reference(qc, codes.data() + i * dpad, scan.qoffset, j);
    return;
  }
  const int64_t P = qc.panels();
  const int tp = 16, nc = tp * kLowpPanel, mr = scan.mr;
  std::vector<int32_t> raw((size_t)mr * nc), idx((size_t)mr * nc);
  std::vector<float> dummy((size_t)mr * nc);
  std::vector<int> cnt(mr);
  std::vector<uint8_t> zero_q(dpad, (uint8_t)scan.qoffset);
  QBlock qb;
  for (int64_t r0 = 0; r0 < Q; r0 += mr) {
    for (int i = 0; i < mr; ++i) {
      qb.rows[i] = r0 + i < Q ? codes.data() + (r0 + i) * dpad : zero_q.data();
      qb.sq[i] = qb.A[i] = qb.B[i] = 0.f;
      qb.thr[i] = 0.f;
    }
    for (int64_t p0 = 0; p0 < P; p0 += tp) {
      const int np = (int)std::min<int64_t>(tp, P - p0);
      const int nvalid = (int)std::min<int64_t>((int64_t)np * kLowpPanel, qc.N - p0 * kLowpPanel);
      scan.bounds(qb, qc, p0, np, nvalid, dummy.data(), dummy.data(), nc, idx.data(), cnt.data(), raw.data());
      for (int i = 0; i < mr && r0 + i < Q; ++i)
        for (int j = 0; j < nvalid; ++j) out[(r0 + i) * qc.N + p0 * kLowpPanel + j] = raw[(size_t)i * nc + j];
    }
  }
}

}  // namespace ft
