"""What this CPU is: its name and the instruction-set features that decide our fast paths.

Every benchmark prints :func:`cpu_description` above its table (a speed ratio holds on the CPU it
was measured on, no other), and run-time choices (precision, SIMD path) read :func:`cpu_features`.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache

FEATURES = ("avx", "fma", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    name, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = (s.strip() for s in line.partition(":"))
                if key == "model name" and name is None:
                    name = val
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(val.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_features() -> frozenset:
    """The features of :data:`FEATURES` this CPU reports (``/proc/cpuinfo``; empty where unreadable).

    >>> cpu_features() <= set(FEATURES)
    True
    """
    return frozenset(f for f in FEATURES if f in _cpuinfo()[1])


def cpu_description() -> str:
    """One line: the CPU's name, logical CPU count and its features that matter here.

    >>> "logical CPUs; features:" in cpu_description()
    True
    """
    have = " ".join(f for f in FEATURES if f in cpu_features()) or "none of " + ", ".join(FEATURES[:3])
    return f"{_cpuinfo()[0]} ({os.cpu_count()} logical CPUs; features: {have})"


X86 = ("x86_64", "amd64", "i386", "i686")
# Feature groups, defined here once: the fast paths that each group of features opens.
EXACT_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")  # u8 x s8 dot products summed in 32 bits
INT8_SCAN = EXACT_INT8_DOT + ("avx2",)  # the native int8 corpus scan (csrc/lowp_scan_*) beats fp32
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # bf16 arithmetic in hardware


def has_any(group: tuple, features: frozenset | None = None) -> bool:
    """Whether this CPU (or ``features``) has one of the features of ``group``.

    >>> has_any(NATIVE_BF16, frozenset({"avx2", "avx512_bf16"})), has_any(EXACT_INT8_DOT, frozenset({"avx2"}))
    (True, False)
    """
    f = cpu_features() if features is None else features
    return any(x in f for x in group)


def float_precision(features: frozenset | None = None) -> str:
    """The float precision OpenVINO runs the float part of a model in on a CPU with ``features``
    (default: this one): bf16 where the CPU has native bf16, else f32.

    >>> float_precision(frozenset({"avx2"})), float_precision(frozenset({"avx512_bf16"}))
    ('f32', 'bf16')
    """
    return "bf16" if has_any(NATIVE_BF16, features) else "f32"


def int8_pairs_saturate(features: frozenset | None = None, machine: str | None = None) -> bool:
    """Whether onnxruntime's u8 x s8 GEMM is inexact here: on x86 CPUs without VNNI or AMX (AVX2,
    AVX-512 without VNNI) it adds each pair of u8 x s8 products in 16 bits (``vpmaddubsw``), which
    saturates once the pair passes 32767 (255 x 127 x 2 = 64770). A u8 x u8 GEMM (widened to 16 bits
    first) is exact there.

    >>> int8_pairs_saturate(frozenset({"avx2"}), "x86_64")
    True
    >>> int8_pairs_saturate(frozenset({"avx2", "avx512_vnni"}), "x86_64"), int8_pairs_saturate(frozenset(), "aarch64")
    (False, False)
    """
    m = (platform.machine() if machine is None else machine).lower()
    return m in X86 and not has_any(EXACT_INT8_DOT, features)
