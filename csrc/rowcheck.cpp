#include "rowcheck.h"

#include <cmath>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ft {

RowCheck check_rows(const float* x, int64_t rows, int64_t d, double norm_tol, int threads) {
  const int64_t none = std::numeric_limits<int64_t>::max();
  int64_t first_nf = none, first_bad = none;
#ifdef _OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#endif
#pragma omp parallel for schedule(static) reduction(min : first_nf, first_bad) num_threads(threads > 0 ? threads : 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * d;
    double ss = 0.0;
    bool finite = true;
    for (int64_t c = 0; c < d; ++c) {
      const float v = row[c];
      finite &= std::isfinite(v);
      ss += (double)v * v;
    }
    if (!finite && r < first_nf) first_nf = r;
    if (finite && norm_tol >= 0 && std::fabs(std::sqrt(ss) - 1.0) > norm_tol && r < first_bad) first_bad = r;
  }
  RowCheck out;
  if (first_nf != none) {
    out.nonfinite_row = first_nf;
    for (int64_t c = 0; c < d; ++c)
      if (!std::isfinite(x[first_nf * d + c])) {
        out.nonfinite_col = c;
        break;
      }
  }
  if (first_bad != none) {
    out.badnorm_row = first_bad;
    double ss = 0.0;
    for (int64_t c = 0; c < d; ++c) ss += (double)x[first_bad * d + c] * x[first_bad * d + c];
    out.badnorm = std::sqrt(ss);
  }
  return out;
}

}  // namespace ft
