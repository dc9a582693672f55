// The one CPU dispatcher (see dispatch.h): the CPU probe, the table of each kernel family, and the
// resolution of a requested path name that every family shares.
#include "dispatch.h"

#include <cstdlib>
#include <stdexcept>

#include "lowp.h"

#if defined(FT_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define FT_CPUID 1
#endif

namespace ft {

// ---------------------------------------------------------------------------------------------
// CPU probe
// ---------------------------------------------------------------------------------------------
namespace {

#if defined(FT_CPUID)
// XCR0, the register states the OS saves on a context switch (only valid when OSXSAVE is set).
// Plain `xgetbv` bytes, so this file needs no -mxsave.
uint64_t xcr0() {
  uint32_t eax, edx;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

uint32_t probe() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
  if (!osxsave || !avx) return 0;  // no AVX usable: only scalar paths
  const uint64_t xcr = xcr0();
  const bool ymm = (xcr & 0x6) == 0x6;     // XMM and YMM state
  const bool zmm = (xcr & 0xe6) == 0xe6;   // and opmask, ZMM_Hi256, Hi16_ZMM state
  if (!ymm) return 0;
  if (__get_cpuid_max(0, nullptr) < 7) return fma ? (uint32_t)kCpuFma : 0u;
  __cpuid_count(7, 0, a, b, c, d);
  uint32_t f = 0;
  if (fma) f |= kCpuFma;
  if (b & (1u << 5)) f |= kCpuAvx2;
  if (zmm) {
    if (b & (1u << 16)) f |= kCpuAvx512F;
    if (b & (1u << 30)) f |= kCpuAvx512BW;
    if (b & (1u << 31)) f |= kCpuAvx512VL;
    if (c & (1u << 11)) f |= kCpuAvx512Vnni;
  }
  return f;
}
#else
uint32_t probe() { return 0; }
#endif

}  // namespace

uint32_t cpu_features() {
  static const uint32_t f = probe();
  return f;
}

// ---------------------------------------------------------------------------------------------
// Resolution shared by every family
// ---------------------------------------------------------------------------------------------
namespace {

constexpr const char* kReference = "reference";

template <class K>
struct KernelPath {
  const char* name;
  uint32_t needs;       // CpuFeature bits; the translation unit is compiled for them
  const K& (*table)();  // nullptr where this build has no such path (not x86)
};

template <class K>
struct KernelFamily {
  const char* what;  // "SIMD path", "int8 scan path": how messages name a path
  const char* env;   // the variable "auto" reads
  std::vector<KernelPath<K>> paths;  // best first, then "scalar", then "reference"

  bool runs(const KernelPath<K>& p) const { return p.table && (cpu_features() & p.needs) == p.needs; }

  std::vector<std::string> available() const {
    std::vector<std::string> out;
    for (const auto& p : paths)
      if (p.name != std::string(kReference) && runs(p)) out.emplace_back(p.name);
    return out;
  }

  const K& get(const std::string& requested) const {
    std::string name = requested;
    std::string from;  // "VARIABLE=value: " when the name came from the environment, so that the
                       // caller can tell the user's setting from a bad argument
    if (name.empty() || name == "auto") {
      const char* e = std::getenv(env);
      name = (e && *e) ? std::string(e) : std::string("auto");
      if (e && *e) from = std::string(env) + "=" + name + ": ";
    }
    if (name == "auto") name = available().front();
    for (const auto& p : paths) {
      if (name != p.name) continue;
      if (!runs(p)) {
        std::string have;
        for (const auto& n : available()) have += (have.empty() ? "" : ", ") + n;
        throw std::invalid_argument(from + std::string(what) + " '" + name +
                                    "' is not supported by this CPU; it has: " + have);
      }
      return p.table();
    }
    // "auto", then the paths from the portable one up, then "reference".
    std::string all = "auto";
    for (auto it = paths.rbegin(); it != paths.rend(); ++it)
      if (it->name != std::string(kReference)) all += std::string(", ") + it->name;
    throw std::invalid_argument(from + "unknown " + std::string(what) + " '" + name + "'; choose one of " + all +
                                ", " + kReference);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// fp32 SIMD family (simd.h)
// ---------------------------------------------------------------------------------------------
namespace {

// The table that selects the plain reference loops: no SIMD pieces (null pointers).
const SimdKernels& simd_reference() {
  static const SimdKernels k = [] {
    SimdKernels r{};
    r.name = kReference;
    r.reference = true;
    return r;
  }();
  return k;
}

#if defined(FT_HAVE_X86)
#define FT_X86_ONLY(f) &f
#else
#define FT_X86_ONLY(f) nullptr
#endif

const KernelFamily<SimdKernels>& simd_family() {
  static const KernelFamily<SimdKernels> f{
      "SIMD path",
      "FASTEMBED_TUNE_SIMD",
      {
          {"avx512", kCpuAvx512F | kCpuAvx2 | kCpuFma, FT_X86_ONLY(simd_avx512)},
          {"avx2", kCpuAvx2 | kCpuFma, FT_X86_ONLY(simd_avx2)},
          {"scalar", 0, &simd_scalar},
          {kReference, 0, &simd_reference},
      }};
  return f;
}

}  // namespace

std::vector<std::string> available_simd() { return simd_family().available(); }
const SimdKernels& get_simd(const std::string& name) { return simd_family().get(name); }

// ---------------------------------------------------------------------------------------------
// int8 scan family (lowp.h)
// ---------------------------------------------------------------------------------------------
namespace {

// The table that selects the plain reference loops (lowp_reference.cpp), with the scalar path's
// quantisation (qmax 127, like the VNNI path).
const LowpScan& lowp_scan_reference() {
  static const LowpScan s = [] {
    LowpScan r = lowp_scan_scalar();
    r.name = kReference;
    r.reference = true;
    return r;
  }();
  return s;
}

const KernelFamily<LowpScan>& lowp_family() {
  static const KernelFamily<LowpScan> f{
      "int8 scan path",
      "FASTEMBED_TUNE_LOWP",
      {
          {"avx512vnni", kCpuAvx512F | kCpuAvx512BW | kCpuAvx512VL | kCpuAvx512Vnni | kCpuAvx2 | kCpuFma,
           FT_X86_ONLY(lowp_scan_avx512vnni)},
          {"avx2", kCpuAvx2 | kCpuFma, FT_X86_ONLY(lowp_scan_avx2)},
          {"scalar", 0, &lowp_scan_scalar},
          {kReference, 0, &lowp_scan_reference},
      }};
  return f;
}

}  // namespace

std::vector<std::string> available_lowp() { return lowp_family().available(); }
const LowpScan& get_lowp(const std::string& name) { return lowp_family().get(name); }

}  // namespace ft
