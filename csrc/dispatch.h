// Run-time choice of the SIMD path, shaped like faiss/utils/distances_dispatch.h.
#pragma once
#include <string>
#include <vector>
#include "simd.h"

namespace ft {

// SIMD paths this CPU can run, best first (always ends with "scalar"; "reference", which every
// CPU runs, is not a SIMD path and is not listed).
std::vector<std::string> available_simd();

// The kernels for `name` ("auto", "scalar", "avx2", "avx512", "reference"). "auto" honours the
// FASTEMBED_TUNE_SIMD environment variable, else picks the best available path. "reference"
// selects the plain reference loops (SimdKernels::reference), for tests and benchmarks.
// Throws std::invalid_argument for an unknown name or one this CPU cannot run.
const SimdKernels& get_simd(const std::string& name);

}  // namespace ft
