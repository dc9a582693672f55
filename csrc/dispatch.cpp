#include "dispatch.h"

#include <cstdlib>
#include <stdexcept>

namespace ft {

// The table that selects the plain reference loops: no SIMD pieces (null pointers).
static const SimdKernels& simd_reference() {
  static const SimdKernels k = [] {
    SimdKernels r{};
    r.name = "reference";
    r.reference = true;
    return r;
  }();
  return k;
}

static bool cpu_has(const std::string& name) {
#if defined(FT_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#endif
  return name == "scalar" || name == "reference";
}

std::vector<std::string> available_simd() {
  std::vector<std::string> out;
  for (const char* n : {"avx512", "avx2"})
    if (cpu_has(n)) out.emplace_back(n);
  out.emplace_back("scalar");
  return out;
}

static const SimdKernels& by_name(const std::string& name) {
  if (name == "reference") return simd_reference();
  if (name == "scalar") return simd_scalar();
#if defined(FT_HAVE_X86)
  if (name == "avx2") return simd_avx2();
  if (name == "avx512") return simd_avx512();
#endif
  throw std::invalid_argument("unknown SIMD path '" + name +
                              "'; choose one of auto, scalar, avx2, avx512, reference");
}

const SimdKernels& get_simd(const std::string& requested) {
  std::string name = requested;
  if (name.empty() || name == "auto") {
    const char* env = std::getenv("FASTEMBED_TUNE_SIMD");
    name = (env && *env) ? std::string(env) : std::string("auto");
  }
  if (name == "auto") return by_name(available_simd().front());
  if (name != "scalar" && name != "avx2" && name != "avx512" && name != "reference") by_name(name);  // throws
  if (!cpu_has(name))
    throw std::invalid_argument("SIMD path '" + name + "' is not supported by this CPU; it has: " +
                                [] {
                                  std::string s;
                                  for (auto& n : available_simd()) s += (s.empty() ? "" : ", ") + n;
                                  return s;
                                }());
  return by_name(name);
}

}  // namespace ft
