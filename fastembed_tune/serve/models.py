"""The model ``serve`` serves: an ONNX export as it is, or a sentence-transformers directory exported
once into a cache (keyed by a fingerprint of its files), loaded into an engine and warmed up.

onnxruntime runs with thread spinning off: on a small machine idle spinning workers take the cores the
event loop needs between batches (measured in docs/benchmarks.md); ``FASTEMBED_TUNE_ORT_SPIN=1``
restores onnxruntime's default. The model runs one batch at a time on every thread (``streams=1``).
"""
from __future__ import annotations

import errno
import hashlib
import os
import sys
from pathlib import Path
from typing import Optional, Union

from fastembed_tune.core.atomic import cache_dir
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.layout import INT8_FILE, METADATA_FILE, MODEL_FILE
from fastembed_tune.serve.batching import OnnxEngine

GENERIC_DIR_NAMES = ("onnx", "model", "export", "onnx_int8")


def log(line: str) -> None:
    """The server's messages before uvicorn takes over: one line on stderr.

    >>> log("using the cached export /tmp/m")  # written to stderr
    """
    print(line, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """Where ``serve`` keeps exports of sentence-transformers directories: ``$FASTEMBED_TUNE_CACHE/onnx``,
    else ``$XDG_CACHE_HOME/fastembed-tune/onnx``, else ``~/.cache/fastembed-tune/onnx``.

    >>> default_cache_dir().name
    'onnx'
    """
    return cache_dir("onnx")


def directory_fingerprint(model_dir: Union[str, os.PathLike]) -> str:
    """sha256 (16 hex digits) of a directory's files: relative names and contents.

    >>> import tempfile; d = tempfile.mkdtemp(); _ = open(os.path.join(d, "a"), "w").write("x")
    >>> len(directory_fingerprint(d))
    16
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(root).parts)):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def resolve_model(model: Union[str, os.PathLike], int8: bool = False,
                  cache_dir: Union[str, os.PathLike, None] = None, log=log,
                  export_int8: Optional[bool] = None) -> Path:
    """The ONNX export directory to serve: ``model`` itself when it is one (with ``model_int8.onnx``
    when ``int8``); a sentence-transformers directory is exported first (parity-gated, with int8 when
    ``export_int8``, default ``int8``) into ``cache_dir`` under its fingerprint, and the cached export
    is reused while the model's files are unchanged.

    >>> resolve_model("/nonexistent")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --model /nonexistent: no such directory
    """
    p = Path(model)
    if not p.exists():
        raise UserError(f"--model {p}: no such directory")
    if not p.is_dir():
        raise UserError(f"--model {p}: give the export directory (with {MODEL_FILE}), not a file")
    if (p / MODEL_FILE).is_file():
        if int8 and not (p / INT8_FILE).is_file():
            raise UserError(f"--model {p}: no {INT8_FILE} here; export with --quantize int8 or serve without --int8")
        return p
    if not ((p / "modules.json").is_file() or (p / "config.json").is_file()):
        raise UserError(f"--model {p}: neither an ONNX export ({MODEL_FILE}) nor a sentence-transformers directory")
    out = Path(cache_dir) if cache_dir else default_cache_dir()
    out = out / f"{p.resolve().name}-{directory_fingerprint(p)}"
    int8 = int8 if export_int8 is None else export_int8 or int8
    if (out / METADATA_FILE).is_file() and (out / MODEL_FILE).is_file() and (not int8 or (out / INT8_FILE).is_file()):
        log(f"using the cached export {out}")
        return out
    log(f"exporting {p} to ONNX{' (+int8)' if int8 else ''} into {out} (parity-checked; once per model)")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_apart(p, out, int8)
    return out


def _export(src: str, out: str, int8: bool) -> None:
    from fastembed_tune.export.onnx import export_onnx

    export_onnx(src, out, quantize="int8" if int8 else None, warn=log)


def export_apart(src: Union[str, os.PathLike], out: Union[str, os.PathLike], int8: bool = False) -> None:
    """Export ``src`` into ``out`` (as ``export --quantize int8`` with ``int8``) in a fresh child process,
    so the server never loads torch: the export's runtime and its thread pools (torch's OpenMP workers,
    the parity and calibration sessions) end with the child, and the server process is the same whether
    the export was cached or not (in-process, a server stalled for minutes after an export). The child's
    :class:`UserError` (a parity refusal) and ``OSError`` (a full disk) are raised here as they are; a
    child killed (out of memory) is an ``OSError`` naming ``out``.

    >>> export_apart("models/mine", "/tmp/cache/mine-0123", int8=True)  # doctest: +SKIP
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_export, str(src), str(out), bool(int8)).result()
    except BrokenProcessPool:
        raise OSError(errno.ENOMEM, "the export process was killed (out of memory?); nothing was written",
                      str(out)) from None


def default_name(export_dir: Union[str, os.PathLike]) -> str:
    """The model id served when ``--name`` is not given: the export directory's name, with its parent's
    when the name alone says nothing (``runs/sample/onnx`` -> ``sample/onnx``).

    >>> default_name("runs/sample/onnx"), default_name("/models/support-minilm")
    ('sample/onnx', 'support-minilm')
    """
    p = Path(export_dir).resolve() if str(export_dir) in (".", "") else Path(export_dir)
    if p.name in GENERIC_DIR_NAMES and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name


def load_engine(export_dir: Union[str, os.PathLike], int8: bool = False, threads: Optional[int] = None,
                precision: Optional[str] = None, log=None) -> OnnxEngine:
    """An :class:`~fastembed_tune.serve.batching.OnnxEngine` over ``export_dir`` (``model_int8.onnx`` with
    ``int8``; ``precision="auto"`` or ``fp32``/``int8``/``bf16``: chosen as
    :func:`~fastembed_tune.embed.loader.load_embedder` does, the choice sent to ``log``), warmed up with
    one run (which also fixes its embedding size).

    >>> load_engine("/tmp/minilm_onnx").dim  # doctest: +SKIP
    384
    """
    from fastembed_tune.embed.loader import load_embedder

    # onnxruntime's idle worker threads spin for a while after each run; on a small machine they take
    # the cores the event loop and the tokenizer need between runs
    spin = os.environ.get("FASTEMBED_TUNE_ORT_SPIN", "0") == "1"
    # the batcher runs the runs of a window `streams` at a time, each whole on one stream
    emb = load_embedder(export_dir, int8=int8, threads=threads, precision=None if int8 else precision, spin=spin)
    if log is not None and getattr(emb, "choice", None) is not None:
        log(emb.choice.description)
    probe = emb.run(emb.tokenize(["warm up"]))
    if not emb.dim:
        emb.dim = int(probe.shape[1])
    return OnnxEngine(emb)
