// The only file that knows about Python. Checks every argument again (the Python layer in
// fastembed_tune/kernels.py already gave the user a friendly message) and releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "contrastive.h"
#include "dispatch.h"
#include "lowp.h"
#include "rowcheck.h"
#include "topk_cosine.h"

namespace py = pybind11;

namespace {

template <class T>
const T* need(const py::array& a, const char* name, int ndim) {
  if (!py::isinstance<py::array_t<T>>(a) || !a.dtype().is(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + " has the wrong dtype");
  if (a.ndim() != ndim) throw py::value_error(std::string(name) + " has the wrong number of dimensions");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

// The exclusion lists (CSR) and the per-query upper bounds of a top-k search, checked, into a.
// The arrays are held by the caller's ep/ei/up for as long as the kernel reads them.
void set_filters(ft::TopkArgs& a, const py::object& excl_ptr, const py::object& excl_ids, const py::object& upper,
                 py::array& ep, py::array& ei, py::array& up) {
  if (!excl_ptr.is_none()) {
    ep = excl_ptr.cast<py::array>();
    ei = excl_ids.cast<py::array>();
    a.excl_ptr = need<int64_t>(ep, "exclude offsets", 1);
    a.excl_ids = need<int64_t>(ei, "exclude ids", 1);
    if (ep.shape(0) != a.Q + 1) throw py::value_error("exclude offsets must have Q + 1 entries");
    if (a.excl_ptr[0] != 0 || a.excl_ptr[a.Q] != ei.shape(0)) throw py::value_error("bad exclude offsets");
    for (int64_t i = 0; i < a.Q; ++i) {
      if (a.excl_ptr[i + 1] < a.excl_ptr[i]) throw py::value_error("exclude offsets must not decrease");
      for (int64_t j = a.excl_ptr[i]; j < a.excl_ptr[i + 1]; ++j) {
        if (a.excl_ids[j] < 0 || a.excl_ids[j] >= a.N) throw py::value_error("exclude id out of range");
        if (j > a.excl_ptr[i] && a.excl_ids[j] < a.excl_ids[j - 1]) throw py::value_error("exclude ids must be sorted per query");
      }
    }
  }
  if (!upper.is_none()) {
    up = upper.cast<py::array>();
    a.upper = need<float>(up, "upper bounds", 1);
    if (up.shape(0) != a.Q) throw py::value_error("upper bounds must have Q entries");
    for (int64_t i = 0; i < a.Q; ++i)
      if (std::isnan(a.upper[i])) throw py::value_error("upper bounds must not be NaN");
  }
}

py::tuple topk_cosine_py(py::array queries, py::array corpus, int k, py::object excl_ptr,
                         py::object excl_ids, py::object upper, int skip_top, int threads,
                         const std::string& simd) {
  const float* q = need<float>(queries, "queries", 2);
  const float* x = need<float>(corpus, "corpus", 2);
  ft::TopkArgs a;
  a.queries = q;
  a.corpus = x;
  a.Q = queries.shape(0);
  a.N = corpus.shape(0);
  if (queries.shape(1) != corpus.shape(1)) throw py::value_error("queries and corpus dimensions differ");
  if (queries.shape(1) <= 0 || queries.shape(1) > (1 << 20)) throw py::value_error("bad dimension");
  a.d = (int)queries.shape(1);
  if (a.N <= 0 || a.Q <= 0) throw py::value_error("empty queries or corpus");
  if (k <= 0 || k > a.N) throw py::value_error("k must be in [1, N]");
  if (skip_top < 0 || (int64_t)k + skip_top > (int64_t)1 << 30) throw py::value_error("bad skip_top");
  a.k = k;
  a.skip_top = skip_top;
  a.threads = threads;
  py::array ep, ei, up;  // keep the filter arrays alive while the kernel reads them
  set_filters(a, excl_ptr, excl_ids, upper, ep, ei, up);
  const ft::SimdKernels* kern;
  try {
    kern = &ft::get_simd(simd);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  py::array_t<float> scores({a.Q, (int64_t)k});
  py::array_t<int64_t> ids({a.Q, (int64_t)k});
  float* s = scores.mutable_data();
  int64_t* i = ids.mutable_data();
  {
    py::gil_scoped_release nogil;
    ft::topk_cosine(a, *kern, s, i);
  }
  return py::make_tuple(scores, ids);
}

py::dict check_rows_py(py::array x, double norm_tol, int threads) {
  const float* p = need<float>(x, "array", 2);
  ft::RowCheck r;
  {
    py::gil_scoped_release nogil;
    r = ft::check_rows(p, x.shape(0), x.shape(1), norm_tol, threads);
  }
  py::dict d;
  d["nonfinite_row"] = r.nonfinite_row;
  d["nonfinite_col"] = r.nonfinite_col;
  d["badnorm_row"] = r.badnorm_row;
  d["badnorm"] = r.badnorm;
  return d;
}

const ft::SimdKernels& simd_or_raise(const std::string& simd) {
  try {
    return ft::get_simd(simd);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// Shapes and bounds of a contrastive call, checked again here whatever Python did.
ft::ContrastiveArgs contrastive_args(const py::array& q, const py::array& docs, const py::array& pos,
                                     double scale, const py::object& keys, int threads, py::array& keys_arr) {
  ft::ContrastiveArgs a;
  a.q = need<float>(q, "q", 2);
  a.docs = need<float>(docs, "docs", 2);
  a.pos = need<int64_t>(pos, "pos", 1);
  a.B = q.shape(0);
  a.M = docs.shape(0);
  if (a.B <= 0 || a.M <= 0 || q.shape(1) <= 0) throw py::value_error("q and docs must be non-empty");
  if (q.shape(1) != docs.shape(1)) throw py::value_error("q and docs dimensions differ");
  if (q.shape(1) > (1 << 20)) throw py::value_error("bad dimension");
  a.d = (int)q.shape(1);
  if (pos.shape(0) != a.B) throw py::value_error("pos must have one entry per row of q");
  for (int64_t i = 0; i < a.B; ++i)
    if (a.pos[i] < 0 || a.pos[i] >= a.M) throw py::value_error("pos index out of range");
  if (!(scale > 0) || !std::isfinite(scale)) throw py::value_error("scale must be finite and > 0");
  a.scale = (float)scale;
  if (!keys.is_none()) {
    keys_arr = keys.cast<py::array>();
    a.keys = need<int64_t>(keys_arr, "doc_keys", 1);
    if (keys_arr.shape(0) != a.M) throw py::value_error("doc_keys must have one entry per doc");
  }
  a.threads = threads;
  return a;
}

py::tuple contrastive_forward_py(py::array q, py::array docs, py::array pos, double scale, py::object keys,
                                 int threads, const std::string& simd) {
  py::array keys_arr;
  const ft::ContrastiveArgs a = contrastive_args(q, docs, pos, scale, keys, threads, keys_arr);
  const ft::SimdKernels& kern = simd_or_raise(simd);
  py::array_t<float> rmax(a.B), rsum(a.B);
  float* pm = rmax.mutable_data();
  float* ps = rsum.mutable_data();
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = ft::contrastive_forward(a, kern, pm, ps);
  }
  return py::make_tuple(loss, rmax, rsum);
}

py::tuple contrastive_backward_py(py::array q, py::array docs, py::array pos, double scale, py::object keys,
                                  py::array rmax, py::array rsum, double grad_out, int threads,
                                  const std::string& simd) {
  py::array keys_arr;
  const ft::ContrastiveArgs a = contrastive_args(q, docs, pos, scale, keys, threads, keys_arr);
  const float* pm = need<float>(rmax, "row max", 1);
  const float* ps = need<float>(rsum, "row sum", 1);
  if (rmax.shape(0) != a.B || rsum.shape(0) != a.B) throw py::value_error("row statistics must have B entries");
  for (int64_t i = 0; i < a.B; ++i)
    if (!(ps[i] > 0) || !std::isfinite(pm[i])) throw py::value_error("row statistics are not from a forward pass");
  const ft::SimdKernels& kern = simd_or_raise(simd);
  py::array_t<float> dq({a.B, (int64_t)a.d});
  py::array_t<float> dd({a.M, (int64_t)a.d});
  float* pq = dq.mutable_data();
  float* pd = dd.mutable_data();
  {
    py::gil_scoped_release nogil;
    ft::contrastive_backward(a, kern, pm, ps, (float)grad_out, pq, pd);
  }
  return py::make_tuple(dq, dd);
}

// ---- reduced-precision scan (lowp.h) -------------------------------------------------------------
ft::QCorpus qcorpus_from(py::array codes, py::array colsum, py::array scale, py::array nx, py::array ex, int64_t N,
                         int d) {
  if (N <= 0 || N >= ((int64_t)1 << 31)) throw py::value_error("quantised corpus: N must be in [1, 2^31)");
  if (d <= 0 || d > 65536) throw py::value_error("quantised corpus: dimension must be in [1, 65536]");
  ft::QCorpus qc;
  qc.codes = need<int8_t>(codes, "quantised codes", 1);
  qc.colsum = need<int32_t>(colsum, "quantised colsum", 1);
  qc.scale = need<float>(scale, "quantised scale", 1);
  qc.nx = need<float>(nx, "quantised nx", 1);
  qc.ex = need<float>(ex, "quantised ex", 1);
  qc.N = N;
  qc.d = d;
  qc.dpad = ft::lowp_dpad(d);
  const int64_t npad = ft::lowp_npad(N);
  if (codes.shape(0) != npad * qc.dpad) throw py::value_error("quantised codes have the wrong size for N and d");
  if (colsum.shape(0) != npad || scale.shape(0) != npad || nx.shape(0) != npad || ex.shape(0) != npad)
    throw py::value_error("quantised per-row arrays have the wrong size for N");
  return qc;
}

const ft::LowpScan& lowp_or_raise(const std::string& scan) {
  try {
    return ft::get_lowp(scan);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

py::tuple quantise_corpus_py(py::array x, int threads) {
  const float* p = need<float>(x, "corpus", 2);
  const int64_t N = x.shape(0);
  if (N <= 0 || N >= ((int64_t)1 << 31)) throw py::value_error("corpus rows must be in [1, 2^31)");
  if (x.shape(1) <= 0 || x.shape(1) > 65536) throw py::value_error("corpus dimension must be in [1, 65536]");
  const int d = (int)x.shape(1);
  const int64_t npad = ft::lowp_npad(N);
  py::array_t<int8_t> codes(npad * ft::lowp_dpad(d));
  py::array_t<int32_t> colsum(npad);
  py::array_t<float> scale(npad), nx(npad), ex(npad);
  int8_t* c = codes.mutable_data();
  int32_t* cs = colsum.mutable_data();
  float *s = scale.mutable_data(), *n = nx.mutable_data(), *e = ex.mutable_data();
  {
    py::gil_scoped_release nogil;
    ft::quantise_corpus(p, N, d, threads, c, cs, s, n, e);
  }
  return py::make_tuple(codes, colsum, scale, nx, ex);
}

py::tuple topk_cosine_lowp_py(py::array queries, py::array corpus, int k, py::array codes, py::array colsum,
                              py::array scale, py::array nx, py::array ex, py::object excl_ptr, py::object excl_ids,
                              py::object upper, int skip_top, int threads, const std::string& simd,
                              const std::string& scan) {
  const float* q = need<float>(queries, "queries", 2);
  const float* x = need<float>(corpus, "corpus", 2);
  ft::TopkArgs a;
  a.queries = q;
  a.corpus = x;
  a.Q = queries.shape(0);
  a.N = corpus.shape(0);
  if (queries.shape(1) != corpus.shape(1)) throw py::value_error("queries and corpus dimensions differ");
  if (a.N <= 0 || a.Q <= 0) throw py::value_error("empty queries or corpus");
  const ft::QCorpus qc = qcorpus_from(codes, colsum, scale, nx, ex, a.N, (int)corpus.shape(1));
  a.d = qc.d;
  if (k <= 0 || k > a.N) throw py::value_error("k must be in [1, N]");
  if (skip_top < 0 || (int64_t)k + skip_top > (int64_t)1 << 30) throw py::value_error("bad skip_top");
  a.k = k;
  a.skip_top = skip_top;
  a.threads = threads;
  py::array ep, ei, up;  // keep the filter arrays alive while the kernel reads them
  set_filters(a, excl_ptr, excl_ids, upper, ep, ei, up);
  const ft::SimdKernels& kern = simd_or_raise(simd);
  const ft::LowpScan& ls = lowp_or_raise(scan);
  py::array_t<float> scores({a.Q, (int64_t)k});
  py::array_t<int64_t> ids({a.Q, (int64_t)k});
  py::array_t<double> stats(4);
  float* s = scores.mutable_data();
  int64_t* i = ids.mutable_data();
  double* st = stats.mutable_data();
  {
    py::gil_scoped_release nogil;
    ft::topk_cosine_lowp(a, qc, ls, kern, s, i, st);
  }
  return py::make_tuple(scores, ids, stats);
}

py::array lowp_dots_py(py::array queries, py::array codes, py::array colsum, py::array scale, py::array nx,
                       py::array ex, int64_t N, const std::string& scan) {
  const float* q = need<float>(queries, "queries", 2);
  const ft::QCorpus qc = qcorpus_from(codes, colsum, scale, nx, ex, N, (int)queries.shape(1));
  const ft::LowpScan& ls = lowp_or_raise(scan);
  const int64_t Q = queries.shape(0);
  py::array_t<int32_t> out({Q, N});
  int32_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    ft::lowp_dots(q, Q, qc, ls, o);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastembed-tune native kernels (see docs/design.md for the contracts)";
  m.def("topk_cosine", &topk_cosine_py, py::arg("queries"), py::arg("corpus"), py::arg("k"),
        py::arg("excl_ptr") = py::none(), py::arg("excl_ids") = py::none(), py::arg("upper") = py::none(),
        py::arg("skip_top") = 0, py::arg("threads") = 0, py::arg("simd") = "auto");
  m.def("contrastive_forward", &contrastive_forward_py, py::arg("q"), py::arg("docs"), py::arg("pos"),
        py::arg("scale"), py::arg("doc_keys") = py::none(), py::arg("threads") = 0, py::arg("simd") = "auto");
  m.def("contrastive_backward", &contrastive_backward_py, py::arg("q"), py::arg("docs"), py::arg("pos"),
        py::arg("scale"), py::arg("doc_keys"), py::arg("row_max"), py::arg("row_sum"), py::arg("grad_out"), py::arg("threads") = 0,
        py::arg("simd") = "auto");
  m.def("check_rows", &check_rows_py, py::arg("x"), py::arg("norm_tol") = -1.0, py::arg("threads") = 0);
  m.def("quantise_corpus", &quantise_corpus_py, py::arg("corpus"), py::arg("threads") = 0);
  m.def("topk_cosine_lowp", &topk_cosine_lowp_py, py::arg("queries"), py::arg("corpus"), py::arg("k"), py::arg("codes"),
        py::arg("colsum"), py::arg("scale"), py::arg("nx"), py::arg("ex"), py::arg("excl_ptr") = py::none(),
        py::arg("excl_ids") = py::none(), py::arg("upper") = py::none(), py::arg("skip_top") = 0,
        py::arg("threads") = 0, py::arg("simd") = "auto", py::arg("scan") = "auto");
  m.def("lowp_dots", &lowp_dots_py, py::arg("queries"), py::arg("codes"), py::arg("colsum"), py::arg("scale"),
        py::arg("nx"), py::arg("ex"), py::arg("N"), py::arg("scan") = "auto");
  m.def("available_lowp", &ft::available_lowp);
  m.def("lowp_name", [](const std::string& s) { return std::string(lowp_or_raise(s).name); }, py::arg("scan") = "auto");
  m.def("available_simd", &ft::available_simd);
  m.def("simd_name", [](const std::string& s) {
    try {
      return std::string(ft::get_simd(s).name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("simd") = "auto");
}
