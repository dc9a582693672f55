"""Which precision and engine to embed an export with, chosen on THIS CPU at run time.

The fastest path is not the same on every CPU: on an Intel Xeon with AMX, bf16 leads fp32 by far and
int8 runs about as fast as bf16; on AMD Zen 4 (AVX-512 VNNI, AVX512-BF16 without AMX) our int8 leads;
on AVX2-only CPUs int8 has no VNNI and fp32 may win (see docs/benchmarks.md). So:

* candidates, from :func:`fastembed_tune.core.cpu.cpu_features` and what the export holds: ``bf16``
  (OpenVINO reading the portable ``onnx/model.onnx``; onnxruntime has no bf16 GEMM on x86) where
  the CPU has AMX-BF16 or AVX512-BF16 and openvino is installed; ``int8`` (``model_int8.onnx``)
  where it exists; ``fp32`` (``model.onnx`` on onnxruntime) always; and ``fp32-openvino`` (the
  portable graph on OpenVINO in f32) where openvino is installed and the CPU has no native bf16:
  on an AVX2-only EPYC it ran ahead of onnxruntime fp32; and
  ``int8-openvino`` (the NNCF static int8 IR of :mod:`fastembed_tune.export.openvino_int8`, written by
  ``export --openvino-int8``) where it exists and openvino is installed: ahead of OpenVINO bf16 on
  an AMD Zen 4 with VNNI, behind OpenVINO f32 on an AVX2-only EPYC, so the probe decides;
* without a probe, the first by features: bf16 with AMX, int8 with VNNI (AVX512-VNNI, AVX-VNNI or
  AMX-INT8; the OpenVINO int8 IR before the onnxruntime graph), else fp32;
* with a probe (the default), each candidate embeds the same few texts: it must stay within its
  parity gate of the fp32 graph (bf16 >= ``BF16_MIN_COSINE``, int8 >= ``INT8_MIN_COSINE``; the fp32
  graph is itself gated >= 0.9999 to PyTorch at export) and the fastest passing one is chosen,
  unless a higher precision measured within :data:`PRECISION_MARGIN` of it (then that one: a lead
  within the noise is not worth the fidelity).

:func:`choose_precision` returns a :class:`Choice`; ``Choice.description`` is the one line to show
the user (``embed``, ``serve``, ``eval`` of an export), ``Choice.load()`` the embedder.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fastembed_tune.core.atomic import atomic_write, cache_dir
from fastembed_tune.core.cpu import EXACT_INT8_DOT, NATIVE_BF16, cpu_description, cpu_features, float_precision, has_any
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.layout import INT8_FILE, MODEL_FILE, OV_INT8_FILE, PORTABLE_FILE
from fastembed_tune.embed.onnx_embedder import STREAMS, UNFUSED_ATTENTION_MAX, OnnxEmbedder
from fastembed_tune.embed.parity import TYPICAL_TEXTS, cosines

BF16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99
GATES = {"fp32": 0.9999, "bf16": BF16_MIN_COSINE, "int8": INT8_MIN_COSINE}
PRECISIONS = ("bf16", "int8", "fp32")
PROBE_REPEATS = 2
# a candidate of a lower precision must measure this much faster than the most faithful one within
# reach to be chosen: a lead within the noise of the probe is no lead, and the vectors would lose
# fidelity for nothing (on an AMX Xeon the OpenVINO int8 IR and bf16 measured alike, and on short
# queries the IR strayed further from PyTorch fp32 than bf16; see docs/benchmarks.md)
PRECISION_MARGIN = 1.05
FIDELITY = {"fp32": 2, "bf16": 1, "int8": 0}
# candidate -> (precision, engine, file): what the probe measures
CANDIDATES = {"bf16": ("bf16", "openvino", PORTABLE_FILE), "int8": ("int8", "onnxruntime", INT8_FILE),
              "fp32": ("fp32", "onnxruntime", MODEL_FILE), "fp32-openvino": ("fp32", "openvino", PORTABLE_FILE),
              "int8-openvino": ("int8", "openvino", OV_INT8_FILE)}


@dataclass
class Choice:
    """A precision and engine for one export on this CPU, and why.

    >>> Choice("fp32", "onnxruntime", Path("m/model.onnx"), "no probe").candidate
    'fp32'
    """

    precision: str  # "bf16", "int8" or "fp32"
    engine: str  # "onnxruntime" or "openvino"
    file: Path
    reason: str
    measured: Dict[str, Dict] = field(default_factory=dict)  # candidate -> {"sent_per_s", "min_cosine"}
    threads: Optional[int] = None
    # the embedder that passed the parity gate for this choice (spin, one default stream): load() hands it over
    _embedder: Optional[OnnxEmbedder] = field(default=None, init=False, repr=False, compare=False)

    @property
    def candidate(self) -> str:
        """The key of :data:`CANDIDATES` this is (``"fp32-openvino"`` for fp32 on OpenVINO)."""
        return next(k for k, (p, e, _) in CANDIDATES.items() if (p, e) == (self.precision, self.engine))

    @property
    def description(self) -> str:
        """One line for the user: what runs, on which CPU, and why."""
        name = next((f for k, (_, _, f) in CANDIDATES.items() if k == self.candidate), self.file.name)
        return f"precision: {self.precision} ({self.engine}, {name}) — {self.reason}; CPU: {cpu_description()}"

    def load(self, spin: bool = True, streams: Optional[int] = None) -> OnnxEmbedder:
        """The embedder for this choice (``spin``, ``streams``: see :class:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder`)."""
        if self._embedder is not None and spin and streams is None:  # the one gated at the choice, opened so
            embedder, self._embedder = self._embedder, None
            return embedder
        return _open(self.candidate, self.file, self.threads, spin, streams)


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def candidates(export_dir: Union[str, os.PathLike], features: Optional[frozenset] = None,
               openvino: Optional[bool] = None) -> List[str]:
    """The candidates (keys of :data:`CANDIDATES`) this export can run as on a CPU with
    ``features`` (default: this CPU's), the one preferred by features first.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "model.onnx").touch(); (d / "model_int8.onnx").touch()
    >>> candidates(d, frozenset({"avx2"}), openvino=False), candidates(d, frozenset({"avx512_vnni"}), openvino=False)
    (['fp32', 'int8'], ['int8', 'fp32'])
    """
    d = Path(export_dir)
    f = cpu_features() if features is None else features
    ov = _openvino_available() if openvino is None else openvino
    bf16 = has_any(NATIVE_BF16, f)
    portable = (d / PORTABLE_FILE).is_file() and ov
    have = {"fp32": (d / MODEL_FILE).is_file(), "int8": (d / INT8_FILE).is_file(),
            "bf16": portable and bf16, "fp32-openvino": portable and not bf16,
            "int8-openvino": (d / OV_INT8_FILE).is_file() and ov}
    if "amx_bf16" in f:
        order = ["bf16", "int8-openvino", "int8", "fp32"]
    elif has_any(EXACT_INT8_DOT, f):
        order = ["int8-openvino", "int8", "bf16", "fp32", "fp32-openvino"]
    else:
        order = ["fp32", "int8", "bf16", "fp32-openvino", "int8-openvino"]
    return [p for p in order if have[p]]


def _file(export_dir: Path, candidate: str) -> Path:
    return export_dir / CANDIDATES[candidate][2]


def _choice(d: Path, candidate: str, reason: str, measured: Optional[Dict] = None,
            threads: Optional[int] = None) -> Choice:
    precision, engine, _ = CANDIDATES[candidate]
    return Choice(precision, engine, _file(d, candidate), reason, measured or {}, threads)


def _open(candidate: str, file: Path, threads: Optional[int], spin: bool = True,
          streams: Optional[int] = None) -> OnnxEmbedder:
    precision, engine, _ = CANDIDATES[candidate]
    if engine == "openvino":  # int8: its float remainder in bf16 where the CPU has it natively
        hint = {"bf16": "bf16", "int8": float_precision()}.get(precision, "f32")
        return OnnxEmbedder(file, threads=threads, engine="openvino", precision=hint, streams=streams)
    return OnnxEmbedder(file, threads=threads, spin=spin, streams=streams)


def _speed(emb: OnnxEmbedder, texts: List[str], batch_size: int) -> float:
    """Sentences per second of one timed pass over ``texts``."""
    t0 = time.perf_counter()
    emb.embed(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t0)


def _speeds(embedders: Dict[str, OnnxEmbedder], texts: List[str], batch_size: int) -> Dict[str, float]:
    """The best of :data:`PROBE_REPEATS` (at least one a candidate) interleaved passes per candidate,
    each round starting one candidate later: on a shared machine load drift hits every candidate
    alike, and no candidate always runs after the same one (of two identical OpenVINO models run
    back to back, the second did not run at the speed of the first on an AMX Xeon).

    >>> class E:
    ...     def embed(self, texts, batch_size): pass
    >>> sorted(_speeds({"a": E(), "b": E()}, ["x"], 1))
    ['a', 'b']
    """
    names = list(embedders)
    best = dict.fromkeys(names, 0.0)
    for r in range(max(PROBE_REPEATS, len(names))):
        for p in names[r % len(names):] + names[:r % len(names)]:
            best[p] = max(best[p], _speed(embedders[p], texts, batch_size))
    return best


def choose_precision(export_dir: Union[str, os.PathLike], probe: bool = True, threads: Optional[int] = None,
                     texts: Optional[Sequence[str]] = None, batch_size: int = 32,
                     allow: Sequence[str] = PRECISIONS, cache: bool = True) -> Choice:
    """The precision and engine to embed the export ``export_dir`` with on this CPU.

    ``probe``: measure every candidate on ``texts`` (default: 64 built-in sentences, a few seconds)
    and take the fastest within its parity gate of the fp32 graph (or a higher precision measured
    within :data:`PRECISION_MARGIN` of it); otherwise the first by CPU
    features. ``allow`` restricts the precisions considered (e.g. ``("fp32",)`` to force fp32).
    A candidate that fails to load, to run or to pass its gate (a damaged ``model_int8.onnx``) is
    left out with one warning line naming its file on stderr, and the reason kept in
    ``Choice.measured``. With ``cache`` (and the built-in probe texts) the measured choice is kept
    in :func:`~fastembed_tune.core.atomic.cache_dir` ``("precision")`` under a key of the export's files
    (path, size, mtime), this CPU, the threads and the runtimes' versions, so the probe runs once.
    A cached choice is a hint: it must pass its parity gate again on the parity texts (a few
    texts), else the export is measured again; a damaged cache entry is measured again too, and
    the entry rewritten.

    >>> from fastembed_tune.export.onnx import export_onnx                               # doctest: +SKIP
    >>> c = choose_precision("/tmp/minilm_onnx", threads=2)                        # doctest: +SKIP
    >>> c.precision in ("bf16", "int8", "fp32"), c.description.startswith("precision: ")  # doctest: +SKIP
    (True, True)
    """
    d = Path(export_dir)
    if not (d / MODEL_FILE).is_file():
        raise UserError(f"{d}: no {MODEL_FILE} here (is it an ONNX export directory?)")
    bad = [p for p in allow if p not in PRECISIONS]
    if bad or not allow:
        raise UserError(f"allow must name some of {', '.join(PRECISIONS)}, got {list(allow)!r}")
    order = [c for c in candidates(d) if CANDIDATES[c][0] in allow] or ["fp32"]
    if not probe or order == ["fp32"]:
        why = "chosen by CPU features" if len(order) > 1 else "the only candidate here"
        return _choice(d, order[0], why, threads=threads)
    key = _cache_key(d, order, threads, batch_size) if cache and not texts else None
    cached = _cache_read(key, order)
    choice = _regate(d, cached, threads, batch_size) if cached is not None else None
    if choice is None:
        choice = _measure(d, order, threads, list(texts) if texts else _probe_texts(), batch_size)
        if key is not None:
            _cache_write(key, {"precision": choice.candidate, "reason": choice.reason, "measured": choice.measured})
    return choice


def _regate(d: Path, cached: Dict, threads: Optional[int], batch_size: int) -> Optional[Choice]:
    """The cached choice if it passes its parity gate to the fp32 graph again on the parity texts
    (the fp32 graph is the reference itself), else None: measure again."""
    p = cached["precision"]
    choice = _choice(d, p, cached["reason"] + " (measured earlier on this CPU)", cached["measured"], threads)
    if p == "fp32":
        return choice
    ref = OnnxEmbedder(d / MODEL_FILE, threads=threads).embed(TYPICAL_TEXTS, batch_size=batch_size)
    embedder, _ = _try(d, p, threads, TYPICAL_TEXTS, batch_size, ref)
    if embedder is None:
        return None
    choice._embedder = embedder
    return choice


def _try(d: Path, p: str, threads: Optional[int], texts: List[str], batch_size: int,
         ref: np.ndarray) -> Tuple[Optional[OnnxEmbedder], Dict]:
    """Candidate ``p`` opened, run on ``texts`` and gated against ``ref`` (the fp32 graph's vectors of
    them): (its embedder, {"min_cosine"}), or (None, {"skipped": one line naming its file}) for a
    graph that cannot be read or run (truncated, garbage) or that gives other vectors."""
    file = _file(d, p)
    try:
        embedder = _open(p, file, threads)
        got = embedder.embed(texts, batch_size=batch_size, check_finite=False)  # also its warm-up
    except MemoryError:
        raise
    except Exception as e:  # any failure of a damaged graph, whichever runtime reports it and how
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, {"skipped": why if isinstance(e, UserError) and str(file) in why
                      else f"{file}: {type(e).__name__}: {why}"}
    c = cosines(got, ref)
    worst = float(c.min()) if np.isfinite(c).all() else float("nan")
    gate = GATES[CANDIDATES[p][0]]
    if not worst >= gate:  # NaN fails too
        return None, {"min_cosine": round(worst, 6), "skipped": f"{file}: min cosine {worst:.5f} to fp32 < {gate}"}
    return embedder, {"min_cosine": round(worst, 6)}


def _measure(d: Path, order: List[str], threads: Optional[int], probe_texts: List[str], batch_size: int) -> Choice:
    """Every candidate in ``order`` timed on ``probe_texts`` and gated against the fp32 graph."""
    fp32 = OnnxEmbedder(d / MODEL_FILE, threads=threads)
    ref = fp32.embed(probe_texts, batch_size=batch_size)  # also its warm-up
    measured: Dict[str, Dict] = {"fp32": {"min_cosine": 1.0}}
    loaded = {"fp32": fp32}
    for p in order:
        if p != "fp32":
            embedder, measured[p] = _try(d, p, threads, probe_texts, batch_size, ref)
            if embedder is not None:
                loaded[p] = embedder
    for p, speed in _speeds(loaded, probe_texts, batch_size).items():  # only the candidates that passed
        measured[p] = {"sent_per_s": round(speed, 1), **measured[p]}
    ok = {p: m for p, m in measured.items() if "skipped" not in m and p in order}
    if not ok:
        why = "; ".join(f"{p}: {m.get('skipped')}" for p, m in measured.items() if p != "fp32")
        raise UserError(f"{d}: no precision of {', '.join(order)} passed its parity gate here ({why})")
    for m in measured.values():  # left out, not silently (once: the choice is cached)
        if "skipped" in m:
            print(f"warning: {m['skipped']}; left out of the precision candidates", file=sys.stderr)
    fastest = max(ok[p]["sent_per_s"] for p in ok)
    near = [p for p in ok if ok[p]["sent_per_s"] * PRECISION_MARGIN >= fastest]  # within noise of the fastest
    best = max(near, key=lambda p: (FIDELITY[CANDIDATES[p][0]], ok[p]["sent_per_s"]))
    base = measured["fp32"]["sent_per_s"]
    others = ", ".join(f"{p} {m['sent_per_s']:.0f}" for p, m in measured.items() if p != best and "sent_per_s" in m)
    why = (f"measured {ok[best]['sent_per_s']:.0f} sent/s, {ok[best]['sent_per_s'] / base:.2f}x fp32"
           f"{' (' + others + ')' if others else ''}, min cosine {ok[best]['min_cosine']:.5f} to fp32")
    if ok[best]["sent_per_s"] < fastest:
        why += f" (faster ones within {PRECISION_MARGIN - 1:.0%} of it are of a lower precision)"
    choice = _choice(d, best, why, measured, threads)
    choice._embedder = loaded[best]
    return choice


def _cache_key(d: Path, order: List[str], threads: Optional[int], batch_size: int) -> str:
    """What the measured choice depends on: the candidate files, the CPU, threads, runtimes, streams."""
    import onnxruntime

    files = []
    for p in order:
        st = _file(d, p).stat()
        files.append([p, st.st_size, st.st_mtime_ns])
    try:
        import openvino
        ov = openvino.__version__
    except ImportError:
        ov = None
    what = [str(d.resolve()), files, cpu_description(), threads, batch_size, onnxruntime.__version__, ov, PROBE_REPEATS,
            STREAMS, "interleaved", PRECISION_MARGIN, UNFUSED_ATTENTION_MAX]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]


def _cache_read(key: Optional[str], order: List[str]) -> Optional[Dict]:
    """The cache entry under ``key`` as :func:`_cache_write` wrote it, choosing one of ``order``; None
    when there is none or it is damaged (not JSON, a key missing or of another type, a precision
    that is not a candidate here): measure again.

    >>> _cache_read(None, ["fp32"]) is None
    True
    """
    if key is None:
        return None
    try:
        got = json.loads((cache_dir("precision") / f"{key}.json").read_text())
    except (OSError, ValueError):  # no cache, not UTF-8, not JSON
        return None
    if not isinstance(got, dict) or not isinstance(got.get("reason"), str):
        return None
    measured = got.get("measured")
    if not (isinstance(measured, dict) and all(k in CANDIDATES and isinstance(v, dict) for k, v in measured.items())):
        return None
    return got if isinstance(got.get("precision"), str) and got["precision"] in order else None


def _cache_write(key: str, value: Dict) -> None:
    try:
        atomic_write(cache_dir("precision") / f"{key}.json", lambda f: f.write(json.dumps(value)))
    except OSError:
        pass  # a read-only home: measure again next time


def _probe_texts() -> List[str]:
    """64 texts of mixed length: the parity sentences and pairs of them joined."""
    pairs = [a + " " + b for a, b in zip(TYPICAL_TEXTS, TYPICAL_TEXTS[1:] + TYPICAL_TEXTS[:1])]
    return (TYPICAL_TEXTS + pairs)[:64] + ["ok"]
