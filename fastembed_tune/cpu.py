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
