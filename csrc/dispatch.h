// Run-time choice of every CPU kernel family's instruction-set path: one CPU probe, one table per
// family, one convention for forcing a path. Shaped like faiss/utils/distances_dispatch.h.
//
// CPU probe (cpu_features): cpuid leaves 1 and 7 plus XGETBV, run once per process (a function-local
// static). A feature counts only when the OS also saves the registers it needs: AVX2/FMA need
// XCR0 bits 1-2 (XMM, YMM), the AVX-512 features also bits 5-7 (opmask, ZMM). Off x86 it is empty.
//
// Families (dispatch.cpp holds their tables; each row: a name, the CpuFeature bits its translation
// unit was compiled for, the function returning its kernel table):
//   fp32 SIMD (SimdKernels, simd.h)   avx512 (AVX512F+AVX2+FMA), avx2 (AVX2+FMA), scalar, reference
//   int8 scan (LowpScan, lowp.h)      avx512vnni (AVX512F+BW+VL+VNNI+AVX2+FMA), avx2 (AVX2+FMA),
//                                     scalar, reference
// Rows are best first; a row runs where the CPU has all its bits (scalar and reference: anywhere).
// "reference" selects the plain reference loops (*_reference.cpp) and is not a SIMD path: it is
// accepted everywhere but never listed by available_*() and never picked by "auto".
//
// Forcing a path: the argument (simd= / scan= in Python) names a row, or "auto" (or "").
// "auto" reads the family's environment variable, FASTEMBED_TUNE_<FAMILY>:
//   FASTEMBED_TUNE_SIMD=avx512|avx2|scalar|reference     fp32 kernels (topk_cosine, contrastive,
//                                                        the rescoring of topk_cosine_lowp)
//   FASTEMBED_TUNE_LOWP=avx512vnni|avx2|scalar|reference  the int8 scan of topk_cosine_lowp
// at every call (not cached, so a test may set it between calls); unset, empty or "auto" picks the
// first row this CPU runs. An explicit argument always wins over the variable. A name that is not
// a row, or a row this CPU cannot run, throws std::invalid_argument (whether it came from the
// argument or the variable), e.g. "unknown SIMD path 'sse9'; choose one of auto, scalar, avx2,
// avx512, reference" or "SIMD path 'avx512' is not supported by this CPU; it has: avx2, scalar".
// A name read from the variable prefixes the message with "VARIABLE=value: " (e.g.
// "FASTEMBED_TUNE_SIMD=sse9: unknown SIMD path 'sse9'; ..."): kernels.py turns those into a user
// error naming the variable, and keeps a bad argument a ValueError.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "simd.h"

namespace ft {

struct LowpScan;  // lowp.h

// Instruction-set features usable by this process (CPU and OS), as bits.
enum CpuFeature : uint32_t {
  kCpuAvx2 = 1u << 0,
  kCpuFma = 1u << 1,
  kCpuAvx512F = 1u << 2,
  kCpuAvx512BW = 1u << 3,
  kCpuAvx512VL = 1u << 4,
  kCpuAvx512Vnni = 1u << 5,
};

// The probe's result (computed on the first call, then cached).
uint32_t cpu_features();

// fp32 SIMD paths this CPU runs, best first (always ends with "scalar"; "reference" not listed).
std::vector<std::string> available_simd();
// The fp32 kernels for `name` ("auto", "avx512", "avx2", "scalar", "reference"); see above.
const SimdKernels& get_simd(const std::string& name);

// int8 scan paths this CPU runs, best first (always ends with "scalar"; "reference" not listed).
std::vector<std::string> available_lowp();
// The int8 scan for `name` ("auto", "avx512vnni", "avx2", "scalar", "reference"); see above.
const LowpScan& get_lowp(const std::string& name);

}  // namespace ft
