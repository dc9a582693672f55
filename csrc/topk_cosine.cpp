// topk_cosine: corpus tiles are packed once and streamed through the register-blocked
// micro-kernel (simd_impl.h); each tile's scores go straight into per-query result heaps
// (the result handler below), so no Q x N matrix ever exists. Shaped like faiss's split of
// distance computation (exhaustive_inner_product_seq / blas) from its ResultHandler.
#include "topk_cosine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ft {
namespace {

struct Entry {
  float s;
  int64_t id;
};

// a is a worse result than b: lower score, or the same score and a larger id.
inline bool worse(const Entry& a, const Entry& b) { return a.s < b.s || (a.s == b.s && a.id > b.id); }
struct WorseCmp {  // std heap with the worst entry on top
  bool operator()(const Entry& a, const Entry& b) const { return worse(b, a); }
};

// Result handler: per-query bounded heaps of capacity K = k + skip_top, plus the filters.
class TopkHandler {
 public:
  TopkHandler(const TopkArgs& a, int64_t nq) : a_(a), K_(a.k + a.skip_top), heap_(nq * K_), size_(nq, 0) {}

  // Candidates of query q: scores s[0:n] of ids id0 .. id0+n-1 (ids ascending across calls).
  void add_row(const SimdKernels& kern, int64_t q, int64_t hq, const float* s, int n, int64_t id0,
               int32_t* idx) {
    const float inf = std::numeric_limits<float>::infinity();
    Entry* h = &heap_[hq * K_];
    int& sz = size_[hq];
    const float hi = a_.upper ? a_.upper[q] : inf;
    const float lo = sz < K_ ? -inf : h[0].s;
    const int cnt = kern.select_range(s, n, lo, hi, idx);
    for (int t = 0; t < cnt; ++t) {
      const Entry e{s[idx[t]], id0 + idx[t]};
      if (sz == K_ && !(e.s > h[0].s)) continue;  // later ids lose ties
      if (excluded(q, e.id)) continue;
      if (sz < K_) {
        h[sz++] = e;
        std::push_heap(h, h + sz, WorseCmp());
      } else {
        std::pop_heap(h, h + sz, WorseCmp());
        h[sz - 1] = e;
        std::push_heap(h, h + sz, WorseCmp());
      }
    }
  }

  const Entry* entries(int64_t hq) const { return &heap_[hq * K_]; }
  int size(int64_t hq) const { return size_[hq]; }

 private:
  bool excluded(int64_t q, int64_t id) const {
    if (!a_.excl_ptr) return false;
    const int64_t* b = a_.excl_ids + a_.excl_ptr[q];
    const int64_t* e = a_.excl_ids + a_.excl_ptr[q + 1];
    return std::binary_search(b, e, id);
  }
  const TopkArgs& a_;
  int K_;
  std::vector<Entry> heap_;
  std::vector<int> size_;
};

struct Tiling {
  int mr, nr, kc, npanels, nc;
  int64_t packed_floats;
};

Tiling make_tiling(const SimdKernels& kern, int d) {
  Tiling t;
  t.mr = kern.mr;
  t.nr = kern.nr;
  t.kc = chunk_depth(kern, d);
  // A packed tile of about 384 KiB stays in L2 while every query block streams past it.
  const int64_t target = (384 * 1024) / (4 * (int64_t)d);
  t.npanels = (int)std::max<int64_t>(1, std::min<int64_t>(target / t.nr, 4096 / t.nr));
  t.nc = t.npanels * t.nr;
  const int nchunks = (d + t.kc - 1) / t.kc;
  t.packed_floats = (int64_t)nchunks * t.kc * t.nc;
  return t;
}

// Scores query rows [q0, q0+mr) against one packed tile and feeds the handler.
void score_block(const TopkArgs& a, const SimdKernels& kern, const Tiling& t, const float* packed,
                 int64_t tile0, int tile_rows, int64_t q0, int64_t hq0, const float* zero_row,
                 float* cbuf, int32_t* idx, TopkHandler& handler) {
  const float* rows[64];
  const int mr_valid = (int)std::min<int64_t>(t.mr, a.Q - q0);
  for (int i = 0; i < t.mr; ++i) rows[i] = i < mr_valid ? a.queries + (q0 + i) * a.d : zero_row;
  kern.tile_scores(rows, packed, a.d, t.kc, t.npanels, cbuf, t.nc, false);
  for (int i = 0; i < mr_valid; ++i)
    handler.add_row(kern, q0 + i, hq0 + i, cbuf + (int64_t)i * t.nc, tile_rows, tile0, idx);
}

void finalize(const TopkArgs& a, const std::vector<const TopkHandler*>& parts, int64_t q,
              std::vector<Entry>& buf, float* scores, int64_t* ids) {
  buf.clear();
  for (const TopkHandler* h : parts) buf.insert(buf.end(), h->entries(q), h->entries(q) + h->size(q));
  std::sort(buf.begin(), buf.end(), [](const Entry& x, const Entry& y) { return worse(y, x); });
  for (int j = 0; j < a.k; ++j) {
    const size_t src = (size_t)a.skip_top + j;
    if (src < buf.size()) {
      scores[q * a.k + j] = buf[src].s;
      ids[q * a.k + j] = buf[src].id;
    } else {
      scores[q * a.k + j] = -std::numeric_limits<float>::infinity();
      ids[q * a.k + j] = -1;
    }
  }
}

}  // namespace

void topk_cosine(const TopkArgs& a, const SimdKernels& kern, float* scores, int64_t* ids) {
  if (a.Q <= 0 || a.k <= 0) return;
  int T = a.threads;
#ifdef _OPENMP
  if (T <= 0) T = omp_get_max_threads();
#else
  T = 1;
#endif
  T = std::max(1, T);
  const Tiling t = make_tiling(kern, a.d);
  const int64_t nblocks = (a.Q + t.mr - 1) / t.mr;
  const int64_t ntiles = (a.N + t.nc - 1) / t.nc;
  std::vector<float> zero_row(a.d, 0.f);

  // Work items: (query chunk) x (corpus split). Each item packs its own corpus tiles and owns
  // its heaps, so threads never wait on each other (no per-tile barrier: on a shared machine a
  // descheduled thread would stall the rest). Many queries: 2 chunks per thread and one corpus
  // split (each chunk re-packs the corpus, which costs ~1/(chunk size) of the arithmetic).
  // Few queries: the corpus is split instead and the partial heaps are merged at the end.
  // Many queries: also split the corpus in 4, so there are 8 work items per thread to balance
  // a busy core (no extra packing: each item packs only its corpus range), while the extra
  // heaps stay small (<= 256 MiB, else one split).
  int64_t nchunks, nsplits;
  if (nblocks >= 4 * (int64_t)T) {
    nchunks = std::min<int64_t>(nblocks, 2 * (int64_t)T);
    const int64_t heap_bytes = a.Q * (int64_t)(a.k + a.skip_top) * (int64_t)sizeof(float) * 4;
    nsplits = (T > 1 && heap_bytes * 4 <= ((int64_t)256 << 20)) ? std::min<int64_t>(ntiles, 4) : 1;
  } else {
    nchunks = 1;
    nsplits = std::max<int64_t>(1, std::min<int64_t>(ntiles, 2 * (int64_t)T));
  }
  const int64_t blocks_per_chunk = (nblocks + nchunks - 1) / nchunks;
  const int64_t tiles_per_split = (ntiles + nsplits - 1) / nsplits;
  std::vector<TopkHandler> handlers;
  handlers.reserve(nsplits);
  for (int64_t i = 0; i < nsplits; ++i) handlers.emplace_back(a, a.Q);

#pragma omp parallel num_threads(T)
  {
    std::vector<float> packed(t.packed_floats);
    std::vector<float> cbuf((size_t)t.mr * t.nc);
    std::vector<int32_t> idx(t.nc);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < nchunks * nsplits; ++item) {
      const int64_t chunk = item / nsplits, split = item % nsplits;
      const int64_t b_begin = chunk * blocks_per_chunk, b_end = std::min(nblocks, b_begin + blocks_per_chunk);
      const int64_t t_begin = split * tiles_per_split, t_end = std::min(ntiles, t_begin + tiles_per_split);
      for (int64_t tile = t_begin; tile < t_end; ++tile) {
        const int64_t tile0 = tile * t.nc;
        const int rows = (int)std::min<int64_t>(t.nc, a.N - tile0);
        pack_panels(a.corpus + tile0 * a.d, a.d, rows, a.d, t.kc, t.nr, t.npanels, 0, t.npanels, packed.data());
        for (int64_t b = b_begin; b < b_end; ++b)
          score_block(a, kern, t, packed.data(), tile0, rows, b * t.mr, b * t.mr, zero_row.data(),
                      cbuf.data(), idx.data(), handlers[split]);
      }
    }
    std::vector<const TopkHandler*> parts;
    for (auto& h : handlers) parts.push_back(&h);
    std::vector<Entry> buf;
#pragma omp for schedule(static)
    for (int64_t q = 0; q < a.Q; ++q) finalize(a, parts, q, buf, scores, ids);
  }
}

}  // namespace ft
