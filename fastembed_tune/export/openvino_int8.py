"""Static int8 for the OpenVINO runtime: NNCF post-training quantisation of the portable graph.

The onnxruntime int8 graph (:mod:`fastembed_tune.export.quantize`) runs onnxruntime's contrib operators;
OpenVINO cannot read it. Here the portable ``onnx/model.onnx`` (standard operators) is quantised
with NNCF into an OpenVINO IR, ``openvino/openvino_model_qint8_quantized.xml`` (+ ``.bin``: the
file name sentence-transformers gives its own static int8 OpenVINO export):

* ``nncf.quantize`` with ``preset=MIXED`` (per-tensor uint8 activations with a zero point,
  per-channel int8 weights), ``model_type=TRANSFORMER`` (NNCF's SmoothQuant first) and fast bias
  correction. Activation scales are STATIC (calibrated), so a text's vector depends on that text
  alone once it is run at the same padded length: :class:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder`'s
  length buckets do that, and the export checks it (batched vs alone >= 0.99999);
* calibrated on batches padded exactly as at run time (length buckets), from the user's
  calibration texts (else the bundled sample), plus their first 1-4 words: short inputs (queries,
  one-word texts) have activation ranges long texts never show, and without them a one-token
  text lost most of its fidelity on MiniLM;
* the MatMuls of two activations (Q.K^T, softmax.V) stay in floating point, and so do the
  fewest weight MatMuls needed to reach the int8 gate, the widest input range relative to its RMS
  first (:func:`fastembed_tune.export.quantize.ranked_nodes`, the same ranking the onnxruntime int8 search
  uses). On all-MiniLM-L6-v2 that ranking names the FFN output dense (after GELU) of layers 2, 0, 1
  first; keeping those three in float is what a hand search found.

Where it pays: CPUs with VNNI (AVX512-VNNI, AVX-VNNI, AMX). On an AMD Zen 4 (AVX-512 VNNI + BF16) it
ran ahead of OpenVINO bf16, the best peer there (``benchmarks/openvino_int8.py``); on an AVX2-only
EPYC (no VNNI) it ran behind OpenVINO f32 (see docs/benchmarks.md), so
:func:`fastembed_tune.embed.precision.choose_precision` only ships it where the probe measures it fastest.
Needs the ``openvino`` and ``nncf`` packages (``pip install 'fastembed-tune[openvino]'``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder, bucket_batches
from fastembed_tune.embed.parity import passes

KEEP_FLOAT_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 36)  # weight MatMuls kept in float, per try
SEARCH_MARGIN = 0.002
CALIBRATION_BATCH = 16
SCHEME = ("NNCF static int8 (preset MIXED, transformer SmoothQuant, fast bias correction): per-tensor uint8 "
          "activations, per-channel int8 weights; activation x activation MatMuls in float")

log = logging.getLogger(__name__)


@dataclass
class OvInt8Result:
    """What :func:`quantize_openvino_int8` wrote: its parity, the weight MatMuls kept in float.

    >>> OvInt8Result({"min_cosine": 0.993}, ["a", "b"], 36, 256).quantized
    34
    """

    parity: Dict
    kept_float: List[str]
    weight_nodes: int
    calibration_texts: int

    @property
    def quantized(self) -> int:
        """How many weight MatMuls are int8."""
        return self.weight_nodes - len(self.kept_float)


def nncf_available() -> bool:
    """Whether ``openvino`` and ``nncf`` can be imported here.

    >>> isinstance(nncf_available(), bool)
    True
    """
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def with_short_texts(texts: Sequence[str]) -> List[str]:
    """``texts`` and, after them, each text's first 1, 2, 3 or 4 words (in turn): calibration for
    short inputs such as queries.

    >>> with_short_texts(["a b c d e", "f g h"])
    ['a b c d e', 'f g h', 'a', 'f g']
    """
    texts = list(texts)
    return texts + [" ".join(t.split()[: 1 + i % 4]) for i, t in enumerate(texts)]


def bucket_feeds(embedder: OnnxEmbedder, texts: Sequence[str], batch_size: int = CALIBRATION_BATCH) -> list:
    """Input dicts for ``texts`` cut and padded as :meth:`OnnxEmbedder.embed` runs them (one length
    bucket a batch), ``batch_size`` texts at most a batch.

    >>> e = OnnxEmbedder("/tmp/minilm_onnx/onnx/model.onnx")                     # doctest: +SKIP
    >>> [f["input_ids"].shape for f in bucket_feeds(e, ["a b", "c", "a long text of words"])]  # doctest: +SKIP
    [(1, 8), (2, 4)]
    """
    enc = embedder.encodings(texts)
    lengths = [len(e.ids) for e in enc]
    buckets = [embedder.padded_length(n) for n in lengths]
    return [embedder.feed([enc[i] for i in idx]) for idx in bucket_batches(buckets, lengths, batch_size)]


def matmul_names(portable: Path) -> tuple:
    """(weight MatMul names, activation x activation MatMul names) of an ONNX graph."""
    import onnx

    m = onnx.load(str(portable))
    consts = {i.name for i in m.graph.initializer}
    consts |= {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    mm = [n for n in m.graph.node if n.op_type == "MatMul"]
    return ([n.name for n in mm if n.input[1] in consts], [n.name for n in mm if n.input[1] not in consts])


def _write(portable: Path, dst: Path, feeds: list, ignored: List[str]) -> None:
    """One NNCF int8 IR of ``portable`` into ``dst`` with the nodes ``ignored`` left in float."""
    import nncf
    import openvino as ov

    q = nncf.quantize(ov.Core().read_model(str(portable)), nncf.Dataset(feeds),
                      preset=nncf.QuantizationPreset.MIXED, model_type=nncf.ModelType.TRANSFORMER,
                      subset_size=len(feeds), fast_bias_correction=True,
                      ignored_scope=nncf.IgnoredScope(names=list(ignored), validate=False))
    dst.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(dst))  # weights int8, the float remainder fp16 on disk


def quantize_openvino_int8(portable: Path, dst: Path, check: Callable[[Path], Dict], min_cosine: float,
                           calibration_texts: Optional[Sequence[str]] = None) -> OvInt8Result:
    """NNCF static int8 of the portable graph ``portable`` into the OpenVINO IR ``dst``, keeping the
    fewest weight MatMuls in float that reach ``min_cosine + SEARCH_MARGIN`` (else the best try).

    ``check(path)`` returns the parity of an IR (:func:`fastembed_tune.embed.parity.check_parity` through an
    ``OnnxEmbedder(path, engine="openvino")``). Calibration: :func:`fastembed_tune.export.quantize.calibration_set`
    of ``calibration_texts`` (up to 128 of the user's texts, else the bundled sample) plus their
    first words (:func:`with_short_texts`), in length buckets as at run time.

    >>> r = quantize_openvino_int8(Path("/tmp/minilm_onnx/onnx/model.onnx"),
    ...                            Path("/tmp/q/openvino/model.xml"), check, 0.99)  # doctest: +SKIP
    >>> r.kept_float[:1]                                                         # doctest: +SKIP
    ['/transformer/encoder/layer.2/output/dense/MatMul']
    """
    if not nncf_available():
        raise UserError("OpenVINO int8 needs the openvino and nncf packages: pip install 'fastembed-tune[openvino]'")
    from fastembed_tune.export.quantize import activation_stats, calibration_set, ranked_nodes

    texts, _ = calibration_set(calibration_texts)
    texts = with_short_texts(texts)
    feeds = bucket_feeds(OnnxEmbedder(portable, threads=None), texts)
    weights, activations = matmul_names(portable)
    stats = activation_stats(portable, feeds)
    if not all(np.isfinite(st[k]).all() for st in stats.values() for k in ("max", "min", "sumsq")):
        raise UserError(f"{portable}: the graph's activations hold NaN/Inf on the calibration texts")
    ranked = [n for n in ranked_nodes(portable, stats) if n in set(weights)]
    steps = sorted({k for k in KEEP_FLOAT_STEPS if k < len(ranked)} | {len(ranked)})
    best = None
    for k in steps:
        _write(portable, dst, feeds, activations + ranked[:k])
        parity = check(dst)
        log.info("OpenVINO int8 with %d of %d weight MatMuls in float: min cosine %.5f", k, len(ranked),
                 parity["min_cosine"])
        if best is None or parity["min_cosine"] > best[0]["min_cosine"] or not passes(best[0], -1.0):
            best = (parity, k)
        if passes(parity, min_cosine + SEARCH_MARGIN):
            break
    parity, k = best
    if k != steps[-1] and not passes(parity, min_cosine + SEARCH_MARGIN):  # the last try is on disk
        _write(portable, dst, feeds, activations + ranked[:k])
    return OvInt8Result(parity, ranked[:k], len(ranked), len(texts))
