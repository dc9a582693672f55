"""The one way to load what embeds texts: :func:`load_embedder`.

An export directory opens as an :class:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder` at the
precision chosen for this CPU (:func:`~fastembed_tune.embed.precision.choose_precision`), a ``.onnx``
file as it is, and a sentence-transformers directory as the PyTorch
:class:`~fastembed_tune.embed.model.EmbeddingModel`. All of them have
``encode(texts, batch_size=, show_progress_bar=)``, so evaluation scores exactly what a user deploys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.layout import INT8_FILE, MODEL_FILE
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.embed.precision import PRECISIONS, choose_precision


def _is_onnx(p: Optional[Path]) -> bool:
    return p is not None and ((p.is_dir() and (p / MODEL_FILE).is_file()) or (p.is_file() and p.suffix == ".onnx"))


def _chosen(p: Path, precision: str, threads: Optional[int], spin: bool, streams: Optional[int]):
    """The export directory ``p`` opened at ``precision`` (``"auto"``: the probe's choice for this CPU)."""
    if precision != "auto" and precision not in PRECISIONS:
        raise UserError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if not (_is_onnx(p) and p.is_dir()):
        raise UserError(f"{p}: --precision {precision} needs an ONNX export directory (fastembed-tune export)")
    choice = choose_precision(p, threads=threads or None, allow=PRECISIONS if precision == "auto" else (precision,))
    if precision != "auto" and choice.precision != precision:
        raise UserError(f"{p}: precision {precision} is not available here ({choice.reason}; "
                        f"int8 needs model_int8.onnx, bf16 onnx/model.onnx, the openvino extra and a bf16 CPU)")
    embedder = choice.load(spin=spin, streams=streams)
    embedder.choice = choice
    return embedder


def _as_is(p: Optional[Path], int8: bool, threads: Optional[int], spin: bool, streams: Optional[int]):
    """``p`` loaded as it is: an ONNX graph (``int8``: the export's ``model_int8.onnx``) or a PyTorch model."""
    if _is_onnx(p):
        if int8:
            if p.is_file():
                raise UserError(f"{p}: --int8 needs the export directory, not one .onnx file")
            if not (p / INT8_FILE).is_file():
                raise UserError(f"{p}: no {INT8_FILE} here; export with --quantize int8")
            p = p / INT8_FILE
        return OnnxEmbedder(p, threads=threads or None, spin=spin, streams=streams)
    if int8:
        raise UserError(f"{p}: --int8 needs an ONNX export directory (fastembed-tune export --quantize int8)")
    from fastembed_tune.embed.model import EmbeddingModel

    if threads:
        import torch
        torch.set_num_threads(threads)
    return EmbeddingModel.load(p)


def load_embedder(path: Union[str, os.PathLike, None], precision: Optional[str] = "auto", *, int8: bool = False,
                  threads: Optional[int] = None, spin: bool = True, streams: Optional[int] = None,
                  log: Optional[Callable[[str], None]] = None):
    """What embeds texts from ``path``: an export directory, one ``.onnx`` file, or a
    sentence-transformers directory (``None``: the built-in MiniLM).

    ``precision`` (an export directory): ``"auto"`` (default) opens the fastest path that keeps the
    vectors for this CPU (measured once, then cached), or one of ``"fp32"``, ``"int8"``, ``"bf16"``;
    the embedder then carries the :class:`~fastembed_tune.embed.precision.Choice` as ``.choice`` and
    ``log`` gets its one-line description. ``None`` opens ``model.onnx`` as it is (``int8``:
    ``model_int8.onnx``). ``"auto"`` and ``"fp32"`` on a ``.onnx`` file or a PyTorch model load it as
    it is; ``"int8"`` and ``"bf16"`` there are refused. ``spin``, ``streams``: see
    :class:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder`.

    >>> from fastembed_tune.embed.model import default_model_path
    >>> emb = load_embedder(default_model_path())
    >>> type(emb).__name__, emb.encode(["a tuple"]).shape
    ('EmbeddingModel', (1, 384))
    """
    p = Path(path) if path is not None else None
    if int8 and precision not in (None, "auto", "int8"):
        raise UserError(f"give either --int8 or --precision {precision}, not both")
    as_is = precision in ("auto", "fp32") and not (_is_onnx(p) and p.is_dir())  # a PyTorch model or one .onnx file
    if precision is None or int8 or as_is:
        return _as_is(p, int8, threads, spin, streams)
    embedder = _chosen(p, precision, threads, spin, streams)
    if log is not None:
        log(embedder.choice.description)
    return embedder
