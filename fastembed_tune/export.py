"""Export a sentence-transformers directory to ONE ONNX graph, optimise, quantise, and prove parity.

The graph goes from token ids (``input_ids``, ``attention_mask`` and, when the tokenizer produces them,
``token_type_ids``; dynamic batch and sequence axes) to ``sentence_embedding`` [batch, dim]: the
transformer, the pooling and, when the model normalises, the L2 normalisation, all inside. Beside it
the files that fastembed's custom-model loader and plain onnxruntime users expect::

    out_dir/
      model.onnx                  fp32, onnxruntime-optimised (fused Attention/LayerNorm when possible)
      model_int8.onnx             only with quantize="int8": dynamic int8 (QInt8 per-channel weights)
      tokenizer.json              truncation = max_seq_length, padding = longest in batch
      tokenizer_config.json       model_max_length = max_seq_length (fastembed truncates with it)
      special_tokens_map.json, config.json
      fastembed_tune_onnx.json    pooling, normalize, max_seq_length, dim, inputs, parity figures

fastembed: ``TextEmbedding.add_custom_model(..., pooling=PoolingType.DISABLED, normalization=False,
model_file="model.onnx" or "model_int8.onnx")``, since pooling and normalisation are in the graph.

Every export is checked against the PyTorch model (``EmbeddingModel.encode``) through the very path
users take (the Rust tokenizer written beside the graph + onnxruntime): a batch of 33 mixing a 1-token
text, typical sentences and a text of >= 512 tokens (truncated to max_seq_length), padded, and the
1-token, a typical and the long text alone (unpadded, batch 1). fp32 must reach a minimum cosine of
``FP32_MIN_COSINE`` (0.9999), int8 ``INT8_MIN_COSINE`` (0.99). Everything is written into a temp dir
beside ``out_dir`` and renamed into place only when every check passed; a refused export leaves nothing.

The "cosine ~0.90" trap (a plain ``torch.onnx.export(..., dynamo=False)`` of all-MiniLM-L6-v2 under
transformers 5). What we found, with torch 2.13 / transformers 5.24 / onnxruntime 1.32:

* The graph itself was not the culprit here: the legacy TorchScript exporter of the sdpa model gives
  cosine 1.0000 on every case once it is fed exactly the ids PyTorch sees. transformers 5 builds the
  attention mask in ``masking_utils``; for sdpa it *skips* the mask entirely when the example's mask is
  all ones (``_ignore_bidirectional_mask_sdpa``). Current versions guard that with ``is_tracing()``, but
  an exporter the guard does not recognise bakes in "no mask": the graph then attends to padding
  (cosine 0.40 for a padded short text in our reproduction; unpadded inputs still look perfect).
* What did reproduce ~0.90 on one unpadded text: the ``tokenizer.json`` shipped with the model
  (inherited from the hub repo) carries ``truncation: max_length 128`` and ``padding: Fixed 128``,
  while the model runs with ``max_seq_length`` 256 (sentence_bert_config.json). Anyone who feeds the
  graph from that file as-is (onnxruntime users, our first trial) cuts long texts at 128 tokens and
  pads every text to 128: cosine 0.906 for a single 600-word text. fastembed instead truncates at
  ``tokenizer_config.json``'s ``model_max_length`` (512): again not what the model was trained with.

The fix, all of it here: export with ``attn_implementation="eager"`` (the mask is always an explicit
computation on the ``attention_mask`` input; no data-dependent short-cut can fire) from a padded
2-row example of unequal lengths; rewrite ``tokenizer.json`` (truncation = max_seq_length, padding =
longest in batch, lower-casing when the model lower-cases) and ``tokenizer_config.json``
(``model_max_length``); and gate every export on parity over other lengths, other batch sizes, padded
and unpadded texts, through the written tokenizer. ``tests/test_export.py`` holds the regression tests.

int8: ``quantize_dynamic`` (QInt8 per-channel weights, uint8 per-tensor dynamic activations, every
MatMul and fused Attention with a constant weight). Plain, that gives MiniLM a min cosine of ~0.96 on
the parity batch: a 1-token text padded beside a 256-token one is quantised with a scale set by a few
outlier channels. So the graph is first smoothed (SmoothQuant, alpha 0.7, an exact fp32 rewrite):
each quantised node reads X/s through a ``Mul`` and holds s*W, with s from channel maxima over the
parity batch plus 128 texts of the bundled sample corpus (the 33 parity texts alone overfit). MiniLM
then passes with every node in int8 (min 0.992 on the parity batch; mean 0.997 / min 0.993 on 500
held-out corpus texts). Should a model still miss ``INT8_MIN_COSINE`` + 0.002, the nodes whose
smoothed inputs have the widest range relative to their RMS are kept in fp32, a few more per try; the
list is recorded in ``fastembed_tune_onnx.json``.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .atomic import honour_umask, output_lock, replace_dir, temp_dir
from .errors import UserError
from .inference import INT8_FILE, METADATA_FILE, MODEL_FILE, OnnxEmbedder
from .model import EmbeddingModel, pool

FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.99
INT8_SEARCH_MARGIN = 0.002
SMOOTH_ALPHA = 0.7
CALIBRATION_TEXTS = 128
LONG_TEXT_TOKENS = 520
ONE_TOKEN_TEXT = "hello"
TYPICAL_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "A tuple is a data object containing two or more components.",
    "Gradient descent updates parameters against the gradient of the loss.",
    "Paris is the capital and most populous city of France.",
    "Which file formats does the importer accept?",
    "TCP guarantees in-order delivery; UDP does not.",
    "She sells sea shells by the sea shore.",
    "A hash table maps keys to values with expected constant-time lookups, at the cost of extra memory.",
    "What is the difference between a process and a thread?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "ok",
    "The meeting was moved to Thursday at 3 pm because the room was double-booked.",
    "Embeddings map texts to vectors so that similar meanings end up close together.",
    "Error 404: the requested resource could not be found on this server.",
    "In functional languages, a list is a sequence of elements of the same type, "
    "built from an empty list and a cons cell that prepends one element.",
    "Compilers translate source code into machine code in several passes.",
    "Why is the sky blue?",
    "The mitochondria is the powerhouse of the cell.",
    "Shipping is free for orders over fifty dollars within the continental United States.",
    "Recursion: a function that calls itself on a smaller instance of the same problem.",
    "déjà vu, naïve café — accents and punctuation!",
    "Version 2.3.1 fixes a memory leak in the tokenizer and speeds up batching by 20%.",
    "A binary search halves the search interval at every step.",
    "Bring an umbrella; rain is expected this afternoon.",
    "SELECT name FROM users WHERE age > 30 ORDER BY name;",
    "The committee will publish its findings after reviewing all of the submitted evidence, "
    "including the testimony of several independent experts and the minutes of earlier meetings.",
    "Cats sleep for most of the day.",
    "Garbage collection reclaims memory occupied by objects that are no longer reachable.",
    "How many legs does a spider have?",
    "An operating system manages hardware resources and provides services to programs.",
]
assert len(TYPICAL_TEXTS) == 31

log = logging.getLogger(__name__)


class ParityError(UserError):
    """The exported graph does not reproduce the PyTorch model closely enough; nothing was written.

    >>> isinstance(ParityError("fp32 min cosine 0.9 < 0.9999"), UserError)
    True
    """


# ---- the graph ------------------------------------------------------------------------------
class _SentenceGraph(torch.nn.Module):
    """token ids -> pooled (and normalised) sentence embedding; the module that is traced."""

    def __init__(self, model: EmbeddingModel, use_token_type_ids: bool):
        super().__init__()
        self.transformer = model.transformer
        self.pooling = model.pooling
        self.normalize = model.normalize
        self.use_token_type_ids = use_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids:
            feats["token_type_ids"] = token_type_ids
        hidden = self.transformer(**feats, return_dict=True).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=1)
        return emb


def _uses_token_type_ids(model: EmbeddingModel) -> bool:
    names = list(getattr(model.tokenizer, "model_input_names", []) or [])
    params = inspect.signature(model.transformer.forward).parameters
    return "token_type_ids" in names and "token_type_ids" in params


def _trace_to_onnx(model: EmbeddingModel, path: Path, opset: int, input_names: List[str]) -> None:
    """Legacy (TorchScript) export of the eager-attention model from a padded 2-row example."""
    tf = model.transformer
    previous = getattr(tf.config, "_attn_implementation", None)
    if hasattr(tf, "set_attn_implementation"):
        tf.set_attn_implementation("eager")
    else:  # older transformers read the config attribute at forward time
        tf.config._attn_implementation = "eager"
    try:
        # two rows of unequal length: the mask has zeros, so no "all ones" short-cut can be traced in
        example = model.tokenize(["hello world",
                                  "a noticeably longer second example, so that the first row is padded"])
        args = tuple(example[k] for k in input_names)
        axes = {k: {0: "batch", 1: "sequence"} for k in input_names}
        axes["sentence_embedding"] = {0: "batch"}
        graph = _SentenceGraph(model, "token_type_ids" in input_names).eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(path), input_names=input_names,
                              output_names=["sentence_embedding"], dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        import onnx

        m = onnx.load(str(path))  # the tracer leaves the embedding width symbolic: state it
        dims = m.graph.output[0].type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        dims[1].Clear()
        dims[1].dim_value = model.dim
        onnx.save(m, str(path))
    finally:
        if previous is not None:
            if hasattr(tf, "set_attn_implementation"):
                tf.set_attn_implementation(previous)
            else:
                tf.config._attn_implementation = previous


# ---- tokenizer files ----------------------------------------------------------------------------
def _write_tokenizer_files(model: EmbeddingModel, out: Path) -> int:
    """Tokenizer files fixed to the model's real max_seq_length; returns the padding id."""
    from tokenizers import Tokenizer, normalizers

    tok = model.tokenizer
    tok.save_pretrained(str(out))
    model.transformer.config.to_json_file(str(out / "config.json"))
    special = {k: str(v) for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))

    tj = out / "tokenizer.json"
    if not tj.is_file():
        raise UserError("the model's tokenizer has no fast (Rust) tokenizer.json; ONNX export needs one")
    rust = Tokenizer.from_file(str(tj))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    pad_token = tok.pad_token or rust.id_to_token(pad_id) or "[PAD]"
    rust.enable_truncation(max_length=model.max_seq_length)
    rust.enable_padding(pad_id=pad_id, pad_token=pad_token, pad_type_id=0)  # longest in batch
    if model.do_lower_case:
        rust.normalizer = (normalizers.Sequence([rust.normalizer, normalizers.Lowercase()])
                           if rust.normalizer is not None else normalizers.Lowercase())
    rust.save(str(tj))

    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg["model_max_length"] = model.max_seq_length
    if "max_length" in cfg:
        cfg["max_length"] = model.max_seq_length
    cfg.pop("is_local", None)
    cfg.pop("local_files_only", None)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return int(pad_id)


# ---- parity ---------------------------------------------------------------------------------------
def _parity_texts(model: EmbeddingModel, parity_texts: Optional[Sequence[str]]) -> tuple:
    """(texts, cases): 33 texts (1-token, 31 typical, >=512 tokens) and the batches to run them in."""
    user = list(parity_texts or [])
    if any(not isinstance(t, str) or not t.strip() for t in user):
        raise UserError("parity_texts must be non-empty strings")
    typical = (user + [t for t in TYPICAL_TEXTS if t not in user])[:31]
    long_text, i = "", 0
    while len(model.tokenizer(long_text, truncation=False)["input_ids"]) < LONG_TEXT_TOKENS:
        long_text += TYPICAL_TEXTS[i % len(TYPICAL_TEXTS)] + " "
        i += 1
    texts = [ONE_TOKEN_TEXT] + typical + [long_text.strip()]
    cases = [("batch33_padded", list(range(33)), 33),
             ("batch1_one_token", [0], 1),
             ("batch1_sentence", [1], 1),
             ("batch1_long", [32], 1)]
    if len(user) > 31:
        texts += user[31:]
        cases.append(("parity_texts", list(range(33, len(texts))), 64))
    return texts, cases


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def _check(onnx_file: Path, texts: List[str], cases: list, ref: np.ndarray) -> Dict:
    """Min cosine to the PyTorch reference per case, through OnnxEmbedder (Rust tokenizer + ORT)."""
    emb = OnnxEmbedder(onnx_file)
    per_case, worst, worst_text = {}, 1.0, ""
    for name, idx, bs in cases:
        got = emb.embed([texts[i] for i in idx], batch_size=bs, check_finite=False)
        c = _cosines(got, ref[idx])
        c = np.where(np.isfinite(c), c, -np.inf)
        per_case[name] = round(float(c.min()), 6)
        if c.min() < worst:
            worst, worst_text = float(c.min()), texts[idx[int(c.argmin())]]
    if not np.isfinite(worst):  # NaN/Inf in the graph's output: a refusal, never a pass
        worst = float("nan")
    return {"min_cosine": round(worst, 6), "cases": per_case, "worst_text": worst_text[:60]}


def _passes(parity: Optional[Dict], threshold: float) -> bool:
    """True only for a finite min cosine >= threshold (NaN compares false: refused)."""
    return parity is not None and bool(parity["min_cosine"] >= threshold)


# ---- optimisation and quantisation ------------------------------------------------------------------
def _optimize_transformers(src: Path, dst: Path, model: EmbeddingModel) -> None:
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    cfg = model.transformer.config
    om = optimizer.optimize_model(str(src), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                  hidden_size=int(cfg.hidden_size), opt_level=0, use_gpu=False)
    om.save_model_to_file(str(dst))


def _optimize_ort(src: Path, dst: Path, model: EmbeddingModel) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _name_nodes(path: Path) -> None:
    """Give every node a unique name (quantize_dynamic selects and excludes nodes by name)."""
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
    """MatMul / fused Attention nodes with a constant weight: what dynamic int8 quantises."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in ("MatMul", "Attention")
            and len(n.input) > 1 and n.input[1] in inits]


def _activation_stats(fp32: Path, feeds: List[Dict[str, np.ndarray]]) -> Dict[str, dict]:
    """Per-channel max/min/sum-of-squares of every weight node's input over the calibration feeds.

    Pad rows count too, as they do in the per-tensor scales of dynamic int8.
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


def _smooth_scales(stats: dict, weight: np.ndarray, alpha: Optional[float] = None) -> np.ndarray:
    """SmoothQuant scales s (X/s times s*W): move activation outliers into the weight rows."""
    alpha = SMOOTH_ALPHA if alpha is None else alpha
    xs = np.maximum(np.maximum(np.abs(stats["max"]), np.abs(stats["min"])), 1e-5)
    ws = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    return np.clip(xs ** alpha / ws ** (1 - alpha), 1e-2, 1e2).astype(np.float32)


def _spread(stats: dict, scale: np.ndarray) -> float:
    """(max - min) / RMS of the smoothed input: how coarse per-tensor uint8 levels are for it."""
    rms = np.sqrt((stats["sumsq"] / scale.astype(np.float64) ** 2).sum() / (stats["count"] * len(scale)))
    return float(((stats["max"] / scale).max() - (stats["min"] / scale).min()) / max(rms, 1e-12))


def _smoothed_copy(fp32: Path, dst: Path, stats: Dict[str, dict], skip: set) -> None:
    """An equivalent fp32 graph where each weight node to be quantised reads X/s and holds s*W."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(fp32))
    inits = {i.name: i for i in m.graph.initializer}
    quantised = {n.name for n in _weight_nodes(m)} - set(skip)  # node names are unique (_name_nodes)
    nodes = []
    for n in m.graph.node:
        if n.name in quantised and n.input[0] in stats:
            w = numpy_helper.to_array(inits[n.input[1]])
            if w.ndim == 2:
                s = _smooth_scales(stats[n.input[0]], w)
                inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), n.input[1]))
                m.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), f"{n.name}_smooth_inv"))
                nodes.append(helper.make_node("Mul", [n.input[0], f"{n.name}_smooth_inv"],
                                              [f"{n.name}_smoothed"], name=f"{n.name}_smooth"))
                n.input[0] = f"{n.name}_smoothed"
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(dst))


def _calibration_feeds(fp32: Path, parity_batch: List[str]) -> List[Dict[str, np.ndarray]]:
    """Calibration batches for SmoothQuant: the parity batch (padded to its longest text, in chunks
    of 8 rows) and ``CALIBRATION_TEXTS`` texts from the end of the bundled sample corpus, 16 a batch
    in file order (mixed lengths, natural padding). Channel maxima from the 33 parity texts alone
    overfit: on held-out text the int8 minimum cosine dropped from 0.98 (no smoothing) to 0.97."""
    probe = OnnxEmbedder(fp32)
    feeds = []
    full = probe._feed(probe.tokenizer.encode_batch(parity_batch))
    for s in range(0, len(parity_batch), 8):
        feeds.append({k: v[s:s + 8] for k, v in full.items()})
    extra: List[str] = []
    corpus = Path(__file__).parent / "sample_data" / "corpus.jsonl"
    if corpus.is_file():
        with open(corpus, encoding="utf-8") as f:
            lines = f.readlines()[-CALIBRATION_TEXTS:]
        extra = [str(json.loads(line).get("text", "")) for line in lines if line.strip()]
        extra = [t for t in extra if t.strip()]
    for s in range(0, len(extra), 16):
        feeds.append(probe._feed(probe.tokenizer.encode_batch(extra[s:s + 16])))
    return feeds


def _quantize_int8(fp32: Path, dst: Path, texts: List[str], cases: list, ref: np.ndarray) -> tuple:
    """SmoothQuant + dynamic int8, keeping the fewest sensitive nodes in fp32.

    Returns (parity, names kept in fp32, number of weight nodes).
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _name_nodes(fp32)
    stats = _activation_stats(fp32, _calibration_feeds(fp32, [texts[i] for i in cases[0][1]] + texts[33:]))
    m = onnx.load(str(fp32))
    inits = {i.name: i for i in m.graph.initializer}
    spread = {}
    for n in _weight_nodes(m):
        w = numpy_helper.to_array(inits[n.input[1]])
        st = stats[n.input[0]]
        spread[n.name] = _spread(st, _smooth_scales(st, w)) if w.ndim == 2 else float("inf")
    del m, inits
    ranked = sorted(spread, key=lambda k: -spread[k])
    n = len(ranked)
    steps = sorted({k for k in (0, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if k < n} | {n})
    target = INT8_MIN_COSINE + INT8_SEARCH_MARGIN
    smoothed = dst.with_name("_smoothed.onnx")

    def build(k: int) -> None:
        _smoothed_copy(fp32, smoothed, stats, set(ranked[:k]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(smoothed), str(dst), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Attention"], per_channel=True,
                             nodes_to_exclude=ranked[:k],
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        smoothed.unlink()

    best = None
    for k in steps:
        build(k)
        parity = _check(dst, texts, cases, ref)
        log.info("int8 with %d of %d weight nodes in fp32: min cosine %.5f", k, n, parity["min_cosine"])
        if best is None or parity["min_cosine"] > best[0]["min_cosine"] or not _passes(best[0], -1.0):
            best = (parity, k)
        if _passes(parity, target):
            return parity, ranked[:k], n
    parity, k = best
    if k != steps[-1]:  # the file on disk is the last try; rebuild the best one
        build(k)
    return parity, ranked[:k], n


# ---- the public entry point -----------------------------------------------------------------------
def export_onnx(model_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                quantize: Optional[str] = None, opset: int = 17, optimize: bool = True,
                parity_texts: Optional[Sequence[str]] = None, allow_fp32_int8: bool = False,
                warn=None) -> Dict:
    """Export ``model_dir`` to ``out_dir/model.onnx`` (+ ``model_int8.onnx`` with quantize="int8").

    Returns a summary: paths, dim, inputs, optimiser used, and the parity figures (min cosine to the
    PyTorch model per case). Raises ``UserError`` for bad input and ``ParityError`` (a UserError) when
    a graph does not reproduce the model (a NaN/Inf output is a refusal too); ``out_dir`` is then left
    untouched. When int8 parity is only reached by keeping every weight node in fp32, the "int8" file
    would be the fp32 graph: refused unless ``allow_fp32_int8``. Nodes kept in fp32 are reported
    through ``warn`` (a callable taking one line; default: stderr). ``out_dir`` is locked while it is
    written, and what an earlier killed export left beside it is removed first.

    >>> from fastembed_tune.model import default_model_path
    >>> info = export_onnx(default_model_path(), "/tmp/minilm_onnx", quantize="int8")  # doctest: +SKIP
    >>> info["parity"]["fp32"]["min_cosine"] >= FP32_MIN_COSINE                         # doctest: +SKIP
    True
    """
    if quantize not in (None, "int8"):
        raise UserError(f"quantize must be None or 'int8', got {quantize!r}")
    if not isinstance(opset, int) or not 14 <= opset <= 20:
        raise UserError(f"opset must be an integer from 14 to 20, got {opset!r}")
    src, out = Path(model_dir).resolve(), Path(out_dir).resolve()
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--output {out}: exists and is not a directory")
        if any(p for p in out.iterdir() if not p.name.startswith(".")) and not (out / METADATA_FILE).is_file():
            raise UserError(f"--output {out}: exists and is not an earlier ONNX export; choose an empty or new "
                            f"directory")
    if out == src or src.is_relative_to(out):
        raise UserError(f"--output {out}: the output directory would replace the model being exported")
    with output_lock(out):
        return _export_locked(src, out, quantize, opset, optimize, parity_texts, allow_fp32_int8,
                              warn or (lambda line: print(line, file=sys.stderr)))


def _export_locked(src: Path, out: Path, quantize: Optional[str], opset: int, optimize: bool,
                   parity_texts: Optional[Sequence[str]], allow_fp32_int8: bool, warn) -> Dict:
    """:func:`export_onnx` once the output is locked: trace, optimise, check, quantise, check, rename.
    One function on purpose: every step writes into the same temp folder that the last line renames."""
    model = EmbeddingModel.load(src)  # UserError for a directory that is not a model, or NaN weights
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if _uses_token_type_ids(model) else [])
    texts, cases = _parity_texts(model, parity_texts)
    ref = model.encode(texts, batch_size=64)

    tmp = temp_dir(out)
    try:
        pad_id = _write_tokenizer_files(model, tmp)
        meta = {"format": "fastembed_tune_onnx/1", "pooling": model.pooling, "normalize": model.normalize,
                "max_seq_length": model.max_seq_length, "dim": model.dim, "do_lower_case": model.do_lower_case,
                "inputs": input_names, "output": "sentence_embedding", "pad_id": pad_id, "opset": opset,
                "vocab_size": int(model.transformer.get_input_embeddings().weight.shape[0]),
                "files": {"fp32": MODEL_FILE}, "source_model": str(src)}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))

        raw = tmp / "_traced.onnx"
        try:
            _trace_to_onnx(model, raw, opset, input_names)
        except OSError:
            raise  # a full or read-only disk is the machine's fault, not the model's
        except Exception as e:  # an architecture the TorchScript exporter cannot trace
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(f"{src}: this model cannot be exported to ONNX ({first})") from e
        fp32 = tmp / MODEL_FILE
        tries = ([("onnxruntime.transformers", _optimize_transformers), ("onnxruntime-extended", _optimize_ort)]
                 if optimize else [])
        tries.append(("none", lambda s, d, m: shutil.copyfile(s, d)))
        attempts, parity, used = {}, None, None
        for name, fn in tries:
            try:
                fn(raw, fp32, model)
            except OSError:
                raise
            except Exception as e:  # an optimiser that cannot handle this graph: try the next one
                attempts[name] = f"failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
                continue
            parity = _check(fp32, texts, cases, ref)
            attempts[name] = parity["min_cosine"]
            if _passes(parity, FP32_MIN_COSINE):
                used = name
                break
        if used is None:
            raise ParityError(f"ONNX export refused: fp32 min cosine to the PyTorch model "
                              f"{parity and parity['min_cosine']} < {FP32_MIN_COSINE} (tries: {attempts})")
        raw.unlink()
        result = {"out_dir": str(out), "model": str(out / MODEL_FILE), "model_int8": None,
                  "dim": model.dim, "inputs": input_names, "optimizer": used,
                  "optimizer_attempts": attempts, "parity": {"fp32": parity}}
        meta["optimizer"] = used
        meta["parity"] = {"fp32": parity}

        if quantize == "int8":
            q_parity, kept, n = _quantize_int8(fp32, tmp / INT8_FILE, texts, cases, ref)
            if not _passes(q_parity, INT8_MIN_COSINE):
                raise ParityError(f"ONNX export refused: int8 min cosine to the PyTorch model "
                                  f"{q_parity['min_cosine']} < {INT8_MIN_COSINE}")
            if n == 0 or len(kept) == n:
                msg = (f"int8: none of the {n} weight nodes could be quantised within the parity bound, so "
                       f"{INT8_FILE} would be the fp32 graph")
                if not allow_fp32_int8:
                    raise ParityError(f"ONNX export refused: {msg}; export without --quantize, or pass "
                                      f"--allow-fp32-int8 to write it anyway")
                warn(f"warning: {msg} (written because --allow-fp32-int8 was given)")
            elif kept:
                warn(f"warning: int8: {len(kept)} of {n} weight nodes kept in fp32 to reach min cosine "
                     f">= {INT8_MIN_COSINE} (listed in {METADATA_FILE})")
            meta["files"]["int8"] = INT8_FILE
            meta["parity"]["int8"] = q_parity
            meta["int8"] = {"weight_nodes": n, "kept_fp32": kept, "quantized": n - len(kept),
                            "scheme": f"SmoothQuant (alpha {SMOOTH_ALPHA}) + dynamic int8: QInt8 "
                                      f"per-channel weights, MatMul and Attention"}
            result.update(model_int8=str(out / INT8_FILE), int8_kept_fp32=kept, int8_weight_nodes=n)
            result["parity"]["int8"] = q_parity
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        honour_umask(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
