// One pass over a row-major float32 matrix: the first non-finite value and the first row whose
// L2 norm is off 1 by more than a tolerance. Used to validate inputs without a temporary.
#pragma once
#include <cstdint>

namespace ft {

struct RowCheck {
  int64_t nonfinite_row = -1;  // first row holding NaN or Inf (-1: none)
  int64_t nonfinite_col = -1;
  int64_t badnorm_row = -1;    // first row with |norm - 1| > tol (-1: none or not checked)
  double badnorm = 0.0;        // that row's norm
};

RowCheck check_rows(const float* x, int64_t rows, int64_t d, double norm_tol, int threads);

}  // namespace ft
