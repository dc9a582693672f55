"""Batch-invariant int8 for an exported graph: SmoothQuant, per-token int8, an int8 word-embedding table.

The graph quantised is the traced one re-optimised by onnxruntime's BERT fusions with the embedding
lookup left unfused (:func:`int8_base`), so that the word-embedding ``Gather`` can read int8 rows.
Then (:func:`_write_int8`):

* every weight ``MatMul`` reads its input quantised **per token** (one scale per row, max |x| / 127,
  uint8 with zero point 128) and holds int8 weights with one scale per output column, through
  onnxruntime's ``MatMulIntegerToFloat``; the row scales multiply the result. A row's codes depend
  on that row alone, so a text gets the same vector whatever its batch neighbours (dynamic
  per-tensor scales, used before, did not);
* every fused ``Attention`` becomes ``QAttention`` on an input quantised with a **static** scale, the
  calibrated range of its smoothed input (static: batch-independent too);
* the word-embedding table (30522 x 384 for MiniLM, a large part of the fp32 file) is stored as int8
  rows, one scale a row: a ``Gather`` of int8 rows times a ``Gather`` of their scales, so that the
  int8 file is far smaller than with an fp32 table (see docs/benchmarks.md).

SmoothQuant (alpha 0.7, an exact fp32 rewrite) comes first: each quantised input is read as X/s and
its weights hold s*W, with s from channel maxima over the parity batch plus up to
``CALIBRATION_TEXTS`` calibration texts: the user's own texts when given (``calibration_texts``;
evenly spaced over the list when there are more), otherwise the last 128 texts of the bundled sample
corpus. MiniLM then passes with every node in int8, batched and alone alike. Should a model still
miss the int8 bound + ``INT8_SEARCH_MARGIN``, the nodes whose smoothed inputs have the widest range
relative to their RMS are kept in fp32, a few more per try.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastembed_tune.core.errors import UserError
from fastembed_tune.data.bundled import SAMPLE_DIR
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.embed.parity import ParityError, passes

SMOOTH_ALPHA = 0.7
CALIBRATION_TEXTS = 128
INT8_SEARCH_MARGIN = 0.002
FP32_FALLBACK_STEPS = (0, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # nodes kept in fp32, per try
BUNDLED_SAMPLE = SAMPLE_DIR / "corpus.jsonl"
SOURCE_USER, SOURCE_BUNDLED = "calibration_texts", "bundled_sample"
SCHEME = (f"SmoothQuant (alpha {SMOOTH_ALPHA}) + per-token int8 MatMul, static int8 Attention input, "
          f"int8 per-channel weights, int8 word-embedding rows (batch-invariant)")

Feed = Dict[str, np.ndarray]
log = logging.getLogger(__name__)


@dataclass
class Int8Result:
    """What :func:`quantize_int8` wrote: its parity, the nodes kept in fp32, the calibration used.

    >>> Int8Result({"min_cosine": 0.995}, [], 36, {"source": SOURCE_BUNDLED, "texts": 128}).quantized
    36
    """

    parity: Dict
    kept_fp32: List[str]
    weight_nodes: int
    calibration: Dict  # {"source": SOURCE_USER or SOURCE_BUNDLED, "texts": how many were used}

    @property
    def quantized(self) -> int:
        """How many weight nodes are int8 (the rest are kept in fp32)."""
        return self.weight_nodes - len(self.kept_fp32)


# ---- calibration texts ------------------------------------------------------------------------------
def check_calibration_texts(texts: Optional[Sequence[str]]) -> Optional[List[str]]:
    """``texts`` as a list, or one clear ``UserError`` (not a list of strings, empty, a blank text).

    >>> check_calibration_texts(("a tuple", "a list"))
    ['a tuple', 'a list']
    >>> check_calibration_texts([])
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: calibration_texts is empty: give at least one text, or leave it out to calibrate on the bundled sample
    """
    if texts is None:
        return None
    if isinstance(texts, (str, bytes)):
        raise UserError("calibration_texts must be a list of texts, not a single string; wrap it: [text]")
    if isinstance(texts, Mapping):
        raise UserError("calibration_texts must be a list of texts, not a mapping; pass list(texts.values())")
    try:
        texts = list(texts)
    except TypeError:
        raise UserError(f"calibration_texts must be a list of texts, got {type(texts).__name__}") from None
    if not texts:
        raise UserError("calibration_texts is empty: give at least one text, or leave it out to calibrate on "
                        "the bundled sample")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserError(f"calibration_texts item {i} is a {type(t).__name__}, not a string")
        if not t.strip():
            raise UserError(f"calibration_texts item {i} is empty" + (" (only whitespace)" if t else ""))
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"calibration_texts item {i} holds a lone surrogate (not valid Unicode text)") from None
    return texts


def bundled_sample_texts(n: int = CALIBRATION_TEXTS) -> List[str]:
    """The last ``n`` texts of the bundled sample corpus, in file order ([] when it is not installed).

    >>> len(bundled_sample_texts(3))
    3
    """
    if not BUNDLED_SAMPLE.is_file():
        return []
    with open(BUNDLED_SAMPLE, encoding="utf-8") as f:
        lines = f.readlines()[-n:]
    texts = [str(json.loads(line).get("text", "")) for line in lines if line.strip()]
    return [t for t in texts if t.strip()]


def calibration_set(texts: Optional[Sequence[str]] = None) -> Tuple[List[str], str]:
    """(texts, source) to calibrate on besides the parity batch: up to ``CALIBRATION_TEXTS`` of the
    user's ``texts`` (evenly spaced over the list, in its order), or the bundled sample when None.

    >>> picked, source = calibration_set([f"text {i}" for i in range(1000)])
    >>> len(picked), picked[:2], source
    (128, ['text 0', 'text 7'], 'calibration_texts')
    """
    texts = check_calibration_texts(texts)
    if texts is None:
        return bundled_sample_texts(), SOURCE_BUNDLED
    if len(texts) > CALIBRATION_TEXTS:
        step = len(texts) / CALIBRATION_TEXTS
        texts = [texts[int(i * step)] for i in range(CALIBRATION_TEXTS)]
    return texts, SOURCE_USER


def calibration_feeds(tokenize: Callable[[List[str]], Feed], parity_batch: Sequence[str],
                      texts: Sequence[str]) -> List[Feed]:
    """Calibration batches made with ``tokenize`` (texts -> one padded feed, e.g.
    :meth:`OnnxEmbedder.tokenize <fastembed_tune.embed.onnx_embedder.OnnxEmbedder.tokenize>`): the parity batch
    (padded to its longest text, in chunks of 8 rows) and ``texts`` 16 a batch in their order (mixed
    lengths, natural padding). Channel maxima from the parity texts alone overfit: on held-out text
    the smoothed int8 graph did worse than no smoothing at all.

    >>> ids = lambda batch: {"input_ids": np.array([[len(t)] for t in batch])}
    >>> [f["input_ids"].shape for f in calibration_feeds(ids, ["a"] * 10, ["b"] * 17)]
    [(8, 1), (2, 1), (16, 1), (1, 1)]
    """
    full = tokenize(list(parity_batch))
    feeds = [{k: v[s:s + 8] for k, v in full.items()} for s in range(0, len(parity_batch), 8)]
    texts = list(texts)
    feeds += [tokenize(texts[s:s + 16]) for s in range(0, len(texts), 16)]
    return feeds


# ---- channel statistics and SmoothQuant -------------------------------------------------------------
def _name_nodes(path: Path) -> None:
    """Give every node a unique name (nodes are kept in fp32 by name)."""
    import onnx

    m = onnx.load(str(path))
    seen, changed = set(), False
    for i, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_fet{i}"
            changed = True
        seen.add(n.name)
    if changed:
        onnx.save(m, str(path))


def _weight_nodes(model) -> list:
    """MatMul / fused Attention nodes with a constant weight: what int8 quantises."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Attention")
            and len(n.input) > 1 and n.input[1] in inits]


def activation_stats(fp32: Path, feeds: List[Feed]) -> Dict[str, dict]:
    """Per-channel ``max``/``min``/``sumsq`` (and row ``count``) of every weight node's input over the
    calibration feeds, by input name. Pad rows count too (they set the static Attention input range).

    >>> import onnx, tempfile
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["y"])],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    ...     [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")])
    >>> f = Path(tempfile.mkdtemp()) / "g.onnx"
    >>> onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(f))
    >>> st = activation_stats(f, [{"x": np.array([[1, -2], [3, 4]], np.float32)}])["h"]
    >>> st["max"].tolist(), st["min"].tolist(), st["count"]
    ([3.0, 4.0], [1.0, 0.0], 2)
    """
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(fp32))
    wanted = sorted({n.input[0] for n in _weight_nodes(m)} - {o.name for o in m.graph.output})
    for name in wanted:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del m
    stats: Dict[str, dict] = {}
    for part in feeds:
        for name, x in zip(wanted, sess.run(wanted, part)):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            st = stats.setdefault(name, {"max": np.full(x.shape[1], -np.inf), "min": np.full(x.shape[1], np.inf),
                                         "sumsq": np.zeros(x.shape[1]), "count": 0})
            st["max"] = np.maximum(st["max"], x.max(0))
            st["min"] = np.minimum(st["min"], x.min(0))
            st["sumsq"] += (x * x).sum(0)
            st["count"] += x.shape[0]
    return stats


def _smooth_scales(stats: dict, weight: np.ndarray, alpha: float = SMOOTH_ALPHA) -> np.ndarray:
    """SmoothQuant scales s (X/s times s*W): move activation outliers into the weight rows."""
    xs = np.maximum(np.maximum(np.abs(stats["max"]), np.abs(stats["min"])), 1e-5)
    ws = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    return np.clip(xs ** alpha / ws ** (1 - alpha), 1e-2, 1e2).astype(np.float32)


def _spread(stats: dict, scale: np.ndarray) -> float:
    """(max - min) / RMS of the smoothed input: how coarse per-tensor uint8 levels are for it."""
    rms = np.sqrt((stats["sumsq"] / scale.astype(np.float64) ** 2).sum() / (stats["count"] * len(scale)))
    return float(((stats["max"] / scale).max() - (stats["min"] / scale).min()) / max(rms, 1e-12))


def ranked_nodes(fp32: Path, stats: Dict[str, dict]) -> List[str]:
    """Weight node names, the widest smoothed input range (relative to its RMS) first."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(fp32))
    inits = {i.name: i for i in m.graph.initializer}
    spread = {}
    for n in _weight_nodes(m):
        w = numpy_helper.to_array(inits[n.input[1]])
        st = stats[n.input[0]]
        spread[n.name] = _spread(st, _smooth_scales(st, w)) if w.ndim == 2 else float("inf")
    return sorted(spread, key=lambda k: -spread[k])


# ---- int8 ---------------------------------------------------------------------------------------------
def _const(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _row_quantizer(p: str, x: str, k: int, opset: int) -> list:
    """Nodes that quantise every row (token) of ``x`` [..., k] on its own: ``{p}_xq`` uint8 [rows, k]
    (round(x / scale) + 128), ``{p}_xscale`` [rows, 1] with scale = max |row| / 127. A row's codes
    depend on that row alone: this is what makes the int8 graph batch-invariant."""
    from onnx import TensorProto, helper

    mk = helper.make_node
    reduce = (mk("ReduceMax", [f"{p}_abs", "fet_q_axis1"], [f"{p}_amax"], name=f"{p}_amax", keepdims=0)
              if opset >= 18 else mk("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], name=f"{p}_amax", axes=[1], keepdims=0))
    return [
        mk("Reshape", [x, f"fet_q_rows{k}"], [f"{p}_x2"], name=f"{p}_x2"),
        mk("Abs", [f"{p}_x2"], [f"{p}_abs"], name=f"{p}_abs"),
        reduce,
        mk("Max", [f"{p}_amax", "fet_q_eps"], [f"{p}_amaxc"], name=f"{p}_amaxc"),
        mk("Div", [f"{p}_amaxc", "fet_q_127"], [f"{p}_s"], name=f"{p}_s"),
        mk("Shape", [f"{p}_s"], [f"{p}_n"], name=f"{p}_n"),
        mk("ConstantOfShape", [f"{p}_n"], [f"{p}_zp"], name=f"{p}_zp",
           value=helper.make_tensor("v", TensorProto.UINT8, [1], [128])),
        mk("QuantizeLinear", [f"{p}_x2", f"{p}_s", f"{p}_zp"], [f"{p}_xq"], name=f"{p}_xq", axis=0),
        mk("Unsqueeze", [f"{p}_s", "fet_q_axis1"], [f"{p}_xscale"], name=f"{p}_xscale"),
        mk("Shape", [x], [f"{p}_shape"], name=f"{p}_shape", end=-1),
    ]


def _int8_matmul(n, p: str, wq: str, wscale: str) -> list:
    """``MatMul(x, W)`` on :func:`_row_quantizer`'s rows: onnxruntime's ``MatMulIntegerToFloat`` (int8
    GEMM, column scales applied in its output stage), the row scales, then the original shape."""
    from onnx import helper

    mk, q, o = helper.make_node, n.name, n.output[0]
    return [
        mk("MatMulIntegerToFloat", [f"{p}_xq", wq, "fet_q_one", wscale, "fet_q_zp"], [f"{q}_yw"], name=f"{q}_mmi",
           domain="com.microsoft"),
        mk("Mul", [f"{q}_yw", f"{p}_xscale"], [f"{q}_y2"], name=f"{q}_y2"),
        mk("Concat", [f"{p}_shape", f"{q}_n"], [f"{q}_shape"], name=f"{q}_shape", axis=0),
        mk("Reshape", [f"{q}_y2", f"{q}_shape"], [o], name=q),
    ]


def _static_attention(n, x: str, stats: dict, w: np.ndarray, inv_s: Optional[np.ndarray]) -> Tuple[list, list]:
    """A fused ``Attention`` node as onnxruntime's ``QAttention`` on an int8 input with a STATIC scale
    (the calibrated range of its smoothed input) and per-column int8 weights: (nodes, initializers).
    A static scale does not depend on the batch, so neither does the result."""
    from onnx import helper

    p = n.name
    inv = np.ones(w.shape[0], np.float32) if inv_s is None else inv_s
    hi = float(max((stats["max"] * inv).max(), 0.0))
    lo = float(min((stats["min"] * inv).min(), 0.0))
    scale = np.float32(max(hi - lo, 1e-8) / 255.0)
    zp = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    wq, ws = quantize_weight(w, axis=0)
    inits = [_const(f"{p}_in_scale", scale), _const(f"{p}_in_zp", zp), _const(f"{p}_w_int8", wq),
             _const(f"{p}_w_scale", ws.ravel()), _const(f"{p}_w_zp", np.zeros(w.shape[1], np.int8))]
    ins = list(n.input) + [""] * (4 - len(n.input))
    nodes = [helper.make_node("QuantizeLinear", [x, f"{p}_in_scale", f"{p}_in_zp"], [f"{p}_xq"], name=f"{p}_xq"),
             helper.make_node("QAttention", [f"{p}_xq", f"{p}_w_int8", ins[2], f"{p}_in_scale", f"{p}_w_scale",
                                             ins[3], f"{p}_in_zp", f"{p}_w_zp"], list(n.output)[:1], name=p,
                              domain="com.microsoft", **{a.name: helper.get_attribute_value(a) for a in n.attribute})]
    return nodes, inits


def quantize_weight(w: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w`` with one scale per slice along ``axis`` (max |w| / 127): (int8, scale),
    ``scale`` keeping the reduced axis so that ``q * scale`` approximates ``w``.

    >>> q, s = quantize_weight(np.array([[1.0, -0.5], [0.25, 2.0]], np.float32), axis=0)
    >>> q.tolist(), s.ravel().tolist()
    ([[127, -32], [32, 127]], [0.007874015718698502, 0.015748031437397003])
    """
    amax = np.abs(w).max(axis=axis, keepdims=True).astype(np.float32)
    scale = np.maximum(amax, 1e-12) / np.float32(127)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def _word_embedding_gather(model, inits: dict):
    """The ``Gather`` that reads the word-embedding table with ``input_ids`` (None when not found)."""
    for n in model.graph.node:
        if (n.op_type == "Gather" and n.input[1] == "input_ids" and n.input[0] in inits
                and len(inits[n.input[0]].dims) == 2):
            return n
    return None


@dataclass
class _Int8Graph:
    """The int8 graph :func:`_write_int8` builds, node by node in the fp32 graph's order: its nodes,
    the initializers to add and to drop, and the row widths its per-token quantisers reshape to."""

    inits: dict
    uses: Dict[str, int]  # tensor name -> how many nodes read it
    stats: Dict[str, dict]
    smooth: bool
    opset: int
    nodes: list = field(default_factory=list)
    add: list = field(default_factory=list)
    drop: set = field(default_factory=set)
    widths: set = field(default_factory=set)

    def weight(self, name: str) -> np.ndarray:
        """The initializer ``name`` as float32."""
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name]).astype(np.float32)

    def drop_if_sole(self, name: str) -> None:
        """Drop the fp32 initializer ``name`` when the node replaced was its only reader."""
        if self.uses.get(name) == 1:
            self.drop.add(name)


def _input_uses(model) -> Dict[str, int]:
    """How many nodes read each tensor name."""
    uses: Dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return uses


def _int8_targets(model, inits: dict, stats: Dict[str, dict], keep: set) -> Tuple[Dict[str, list], set]:
    """(input -> the quantised MatMuls reading it, names of the fused Attentions to quantise): every
    2-d weight node not in ``keep``; an Attention only when its input has statistics."""
    groups: Dict[str, list] = {}
    attention = set()
    for n in _weight_nodes(model):
        if n.name in keep or len(inits[n.input[1]].dims) != 2:
            continue
        if n.op_type == "MatMul":
            groups.setdefault(n.input[0], []).append(n)
        elif n.input[0] in stats:
            attention.add(n.name)
    return groups, attention


def _int8_embedding(g: _Int8Graph, n) -> None:
    """The word-embedding ``Gather`` as int8 rows: a ``Gather`` of int8 rows times a ``Gather`` of
    their scales."""
    from onnx import TensorProto, helper

    q, s = quantize_weight(g.weight(n.input[0]), axis=1)
    t, e = n.input[0], n.name
    g.add += [_const(f"{t}_int8", q), _const(f"{t}_scale", s)]
    g.nodes += [helper.make_node("Gather", [f"{t}_int8", n.input[1]], [f"{e}_q"], name=f"{e}_q", axis=0),
                helper.make_node("Cast", [f"{e}_q"], [f"{e}_f"], name=f"{e}_f", to=TensorProto.FLOAT),
                helper.make_node("Gather", [f"{t}_scale", n.input[1]], [f"{e}_s"], name=f"{e}_s", axis=0),
                helper.make_node("Mul", [f"{e}_f", f"{e}_s"], [n.output[0]], name=e)]
    g.drop_if_sole(t)


def _int8_attention(g: _Int8Graph, n) -> None:
    """A fused ``Attention`` as :func:`_static_attention`, on its smoothed input when smoothing."""
    from onnx import helper

    w = g.weight(n.input[1])
    x, inv_s = n.input[0], None
    if g.smooth:
        s = _smooth_scales(g.stats[x], w)
        inv_s = (1.0 / s).astype(np.float32)
        g.add.append(_const(f"{n.name}_smooth_inv", inv_s))
        g.nodes.append(helper.make_node("Mul", [x, f"{n.name}_smooth_inv"], [f"{n.name}_smoothed"],
                                        name=f"{n.name}_smooth"))
        x, w = f"{n.name}_smoothed", w * s[:, None]
    more_nodes, more_inits = _static_attention(n, x, g.stats[n.input[0]], w, inv_s)
    g.nodes += more_nodes
    g.add += more_inits
    g.drop_if_sole(n.input[1])


def _int8_group_input(g: _Int8Graph, x: str, group: list, p: str) -> None:
    """What the MatMuls reading ``x`` share, placed before the first of them: the smoothing (one
    scale for all their weights), the per-token row quantiser, and their int8 weights."""
    from onnx import helper

    ws = [g.weight(m.input[1]) for m in group]
    k = ws[0].shape[0]
    g.widths.add(k)
    src = x
    if g.smooth and x in g.stats:
        s = _smooth_scales(g.stats[x], np.concatenate(ws, axis=1))
        g.add.append(_const(f"{p}_smooth_inv", (1.0 / s).astype(np.float32)))
        g.nodes.append(helper.make_node("Mul", [x, f"{p}_smooth_inv"], [f"{p}_smoothed"], name=f"{p}_smooth"))
        src = f"{p}_smoothed"
        ws = [w * s[:, None] for w in ws]
    g.nodes += _row_quantizer(p, src, k, g.opset)
    for m, w in zip(group, ws):
        wq, wscale = quantize_weight(w, axis=0)
        g.add += [_const(f"{m.name}_w_int8", wq), _const(f"{m.name}_w_scale", wscale.ravel()),
                  _const(f"{m.name}_n", np.array([w.shape[1]], np.int64))]
        g.drop_if_sole(m.input[1])


def _write_int8(fp32: Path, dst: Path, stats: Dict[str, dict], keep_fp32: List[str],
                smooth: bool = True) -> None:
    """Batch-invariant int8 of ``fp32`` (an onnxruntime-optimised graph, EmbedLayerNormalization left
    unfused) into ``dst``: every weight ``MatMul`` but ``keep_fp32`` per token (SmoothQuant first, one
    scale per input shared by the MatMuls reading it, which also share its quantised rows), every fused
    ``Attention`` as ``QAttention`` with a static calibrated input scale, and the word-embedding table
    as int8 rows (a ``Gather`` of int8 rows times a ``Gather`` of their scales)."""
    import onnx
    from onnx import helper

    m = onnx.load(str(fp32))
    inits = {i.name: i for i in m.graph.initializer}
    groups, attention = _int8_targets(m, inits, stats, set(keep_fp32))
    firsts = {grp[0].name for grp in groups.values()}
    member = {n.name: x for x, grp in groups.items() for n in grp}
    g = _Int8Graph(inits, _input_uses(m), stats, smooth, _opset(m))
    g.add += [_const("fet_q_eps", np.float32(1e-8)), _const("fet_q_127", np.float32(127)),
              _const("fet_q_one", np.float32(1)), _const("fet_q_zp", np.uint8(128)),
              _const("fet_q_axis1", np.array([1], np.int64))]
    emb = _word_embedding_gather(m, inits)
    for n in m.graph.node:
        if n is emb:
            _int8_embedding(g, n)
        elif n.name in attention:
            _int8_attention(g, n)
        elif n.name not in member:
            g.nodes.append(n)
        else:
            x = member[n.name]
            p = f"fet_q_{groups[x][0].name}"
            if n.name in firsts:
                _int8_group_input(g, x, groups[x], p)
            g.nodes += _int8_matmul(n, p, f"{n.name}_w_int8", f"{n.name}_w_scale")
    g.add += [_const(f"fet_q_rows{k}", np.array([-1, k], np.int64)) for k in sorted(g.widths)]
    kept = [i for i in m.graph.initializer if i.name not in g.drop]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept + g.add)
    del m.graph.node[:]
    m.graph.node.extend(g.nodes)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, str(dst))


def _search(fp32: Path, dst: Path, stats: Dict[str, dict], ranked: List[str],
            check: Callable[[Path], Dict], target: float) -> Tuple[Dict, int]:
    """(parity, k): the fewest top-ranked nodes kept in fp32 that reach ``target``, or else the best
    try; ``dst`` holds that graph."""
    n = len(ranked)
    steps = sorted({k for k in FP32_FALLBACK_STEPS if k < n} | {n})
    best = None
    for k in steps:
        _write_int8(fp32, dst, stats, ranked[:k])
        parity = check(dst)
        log.info("int8 with %d of %d weight nodes in fp32: min cosine %.5f", k, n, parity["min_cosine"])
        if best is None or parity["min_cosine"] > best[0]["min_cosine"] or not passes(best[0], -1.0):
            best = (parity, k)
        if passes(parity, target):
            return parity, k
    parity, k = best
    if k != steps[-1]:  # the file on disk is the last try; rebuild the best one
        _write_int8(fp32, dst, stats, ranked[:k])
    return parity, k


def quantize_int8(fp32: Path, dst: Path, parity_batch: Sequence[str], check: Callable[[Path], Dict],
                  min_cosine: float, calibration_texts: Optional[Sequence[str]] = None) -> Int8Result:
    """SmoothQuant + batch-invariant int8 (:func:`_write_int8`) of the graph ``fp32`` (best made by
    :func:`fastembed_tune.export.graph.int8_base`) into ``dst``, keeping the fewest sensitive nodes in
    fp32. Node names in ``fp32`` are made unique in place.

    ``check(path)`` returns the parity of a graph (:func:`fastembed_tune.embed.parity.check_parity`); the
    search stops at the first graph reaching ``min_cosine + INT8_SEARCH_MARGIN`` (else it keeps the
    best). Channel statistics come from ``parity_batch`` plus :func:`calibration_set` of
    ``calibration_texts``. NaN/Inf in those statistics is a ``ParityError``.

    >>> r = quantize_int8(Path("/tmp/minilm_onnx/model.onnx"), Path("/tmp/q/model_int8.onnx"),
    ...                   ["hello"], check, 0.99, ["my own texts"])  # doctest: +SKIP
    >>> r.calibration                                                 # doctest: +SKIP
    {'source': 'calibration_texts', 'texts': 1}
    """
    extra, source = calibration_set(calibration_texts)
    _name_nodes(fp32)
    stats = activation_stats(fp32, calibration_feeds(OnnxEmbedder(fp32, pad_multiple=0).tokenize, parity_batch, extra))
    if not all(np.isfinite(st[k]).all() for st in stats.values() for k in ("max", "min", "sumsq")):
        raise ParityError(f"ONNX export refused: the fp32 graph's activations hold NaN/Inf on the calibration "
                          f"texts ({source}); the model overflows on them")
    ranked = ranked_nodes(fp32, stats)
    parity, k = _search(fp32, dst, stats, ranked, check, min_cosine + INT8_SEARCH_MARGIN)
    return Int8Result(parity, ranked[:k], len(ranked), {"source": source, "texts": len(extra)})
