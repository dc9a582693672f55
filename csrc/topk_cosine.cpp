// topk_cosine: corpus tiles are packed once and streamed through the register-blocked
// micro-kernel (stream_tiles in simd.h, shared with contrastive.cpp); each tile's scores go
// straight into per-query result heaps (the result handler below), so no Q x N matrix ever
// exists. The plain reference loop is topk_reference.cpp. Shaped like faiss's split of
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

// Result handler of one corpus split: per-query bounded heaps of capacity K = k + skip_top for
// all Q queries, plus the filters.
class TopkHandler {
 public:
  explicit TopkHandler(const TopkArgs& a) : a_(a), K_(a.k + a.skip_top), heap_(a.Q * K_), size_(a.Q, 0) {}

  // Candidates of query q: scores s[0:n] of ids id0 .. id0+n-1 (ids ascending across calls).
  void add_row(const SimdKernels& kern, int64_t q, const float* s, int n, int64_t id0, int32_t* idx) {
    const float inf = std::numeric_limits<float>::infinity();
    Entry* h = &heap_[q * K_];
    int& sz = size_[q];
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

  const Entry* entries(int64_t q) const { return &heap_[q * K_]; }
  int size(int64_t q) const { return size_[q]; }

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
  if (kern.reference) return topk_cosine_reference(a, scores, ids);
  if (a.Q <= 0 || a.k <= 0) return;
  int T = a.threads;
#ifdef _OPENMP
  if (T <= 0) T = omp_get_max_threads();
#else
  T = 1;
#endif
  T = std::max(1, T);
  // A packed tile of about 384 KiB stays in L2 while every query block streams past it.
  const TileGeometry t = tile_geometry(kern, a.d, 384 * 1024, 4096);
  const int64_t nblocks = (a.Q + t.mr - 1) / t.mr;
  const int64_t ntiles = (a.N + t.nc - 1) / t.nc;
  std::vector<float> zero_row(a.d, 0.f);

  // Work items are (query chunk) x (corpus split). Each item packs the corpus tiles of its split
  // and feeds its split's heaps, so threads never wait on each other (no per-tile barrier: on a
  // shared machine a descheduled thread would stall the rest). The one rule:
  //  - query chunks: 2 per thread when there are at least 4 row blocks per thread, else 1. Every
  //    chunk re-packs its corpus range (~1/(chunk rows) of its arithmetic), so chunks stay big.
  //  - corpus splits: 4 per chunk with several chunks (8 items per thread, to balance a busy
  //    core), 2 per thread with one chunk, 1 with one thread. A split re-packs nothing but owns
  //    heaps for all Q queries, so splits are capped to keep their heaps within
  //    max(one set, 256 MiB) (see topk_cosine.h).
  //  - if that leaves fewer than 2 items per thread (a small corpus, or the cap), the queries are
  //    chunked further instead: more re-packing, but no idle thread.
  int64_t nchunks = (nblocks >= 4 * (int64_t)T) ? std::min<int64_t>(nblocks, 2 * (int64_t)T) : 1;
  int64_t nsplits = T == 1 ? 1 : std::min<int64_t>(ntiles, nchunks > 1 ? 4 : 2 * (int64_t)T);
  const int64_t set_bytes = a.Q * ((int64_t)(a.k + a.skip_top) * (int64_t)sizeof(Entry) + (int64_t)sizeof(int));
  nsplits = std::max<int64_t>(1, std::min<int64_t>(nsplits, ((int64_t)256 << 20) / set_bytes));
  if (nchunks * nsplits < 2 * (int64_t)T)
    nchunks = std::min<int64_t>(nblocks, (2 * (int64_t)T + nsplits - 1) / nsplits);
  const int64_t blocks_per_chunk = (nblocks + nchunks - 1) / nchunks;
  nchunks = (nblocks + blocks_per_chunk - 1) / blocks_per_chunk;  // none empty
  const int64_t tiles_per_split = (ntiles + nsplits - 1) / nsplits;
  nsplits = (ntiles + tiles_per_split - 1) / tiles_per_split;
  std::vector<TopkHandler> handlers;
  handlers.reserve(nsplits);
  for (int64_t i = 0; i < nsplits; ++i) handlers.emplace_back(a);

#pragma omp parallel num_threads(T)
  {
    std::vector<float> packed(t.packed_floats);
    std::vector<float> cbuf((size_t)t.mr * t.nc);
    std::vector<int32_t> idx(t.nc);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < nchunks * nsplits; ++item) {
      const int64_t chunk = item / nsplits, split = item % nsplits;
      const int64_t q_begin = chunk * blocks_per_chunk * t.mr;
      const int64_t q_end = std::min(a.Q, q_begin + blocks_per_chunk * t.mr);
      const int64_t d_begin = split * tiles_per_split * t.nc;
      const int64_t d_end = std::min(a.N, d_begin + tiles_per_split * t.nc);
      TopkHandler& h = handlers[split];
      stream_tiles(kern, t, a.d, a.queries, q_begin, q_end, a.corpus, d_begin, d_end, zero_row.data(),
                   packed.data(), cbuf.data(), [](int64_t, int) {},
                   [&](int64_t tile0, int n, int64_t q0, const float* c) {
                     const int valid = (int)std::min<int64_t>(t.mr, q_end - q0);
                     for (int i = 0; i < valid; ++i)
                       h.add_row(kern, q0 + i, c + (int64_t)i * t.nc, n, tile0, idx.data());
                   });
    }
    std::vector<const TopkHandler*> parts;
    for (auto& h : handlers) parts.push_back(&h);
    std::vector<Entry> buf;
#pragma omp for schedule(static)
    for (int64_t q = 0; q < a.Q; ++q) finalize(a, parts, q, buf, scores, ids);
  }
}

}  // namespace ft
