"""Export a sentence-transformers directory to ONE ONNX graph, optimise, quantise, and prove parity.

This module lays out the export folder and runs the stages in order; each stage is its own module:
:mod:`~fastembed_tune.export.graph` traces and optimises the graph, :mod:`~fastembed_tune.embed.parity` checks
it against the PyTorch model, :mod:`~fastembed_tune.export.quantize` makes the int8 graph. Beside the graph
go the files that fastembed's custom-model loader and plain onnxruntime users expect::

    out_dir/
      model.onnx                  fp32, onnxruntime-optimised (fused Attention/LayerNorm when possible)
      model_int8.onnx             only with quantize="int8": SmoothQuant + batch-invariant int8 (per-token
                                  MatMul, static-scale QAttention, int8 word-embedding rows)
      onnx/model.onnx             portable: standard ONNX operators only (any runtime: OpenVINO, optimum,
                                  transformers.js), outputs last_hidden_state and sentence_embedding
      modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/
                                  with onnx/model.onnx: SentenceTransformer(out_dir, backend="onnx")
      tokenizer.json              truncation = max_seq_length, padding = longest in batch
      tokenizer_config.json       model_max_length = max_seq_length (fastembed truncates with it)
      special_tokens_map.json, config.json
      fastembed_tune_onnx.json    pooling, normalize, max_seq_length, dim, inputs, parity figures,
                                  int8: nodes kept in fp32 and the calibration source

fastembed: ``TextEmbedding.add_custom_model(..., pooling=PoolingType.DISABLED, normalization=False,
model_file="model.onnx" or "model_int8.onnx")``, since pooling and normalisation are in the graph.

fp32 must reach a minimum cosine to the PyTorch model of ``FP32_MIN_COSINE`` (0.9999), int8
``INT8_MIN_COSINE`` (0.99), on the parity texts through the written tokenizer; int8 must also give a
text the same vector batched and alone (``BATCH_INVARIANCE_MIN_COSINE``, 0.99999). Everything is written
into a temp dir beside ``out_dir`` and renamed into place only when every check passed; a refused
export leaves nothing.

The low-cosine trap (a plain ``torch.onnx.export(..., dynamo=False)`` of all-MiniLM-L6-v2 under
transformers 5). What we found, with torch 2.13 / transformers 5.24 / onnxruntime 1.32:

* The graph itself was not the culprit here: the legacy TorchScript exporter of the sdpa model matches
  PyTorch on every case once it is fed exactly the ids PyTorch sees. transformers 5 builds the
  attention mask in ``masking_utils``; for sdpa it *skips* the mask entirely when the example's mask is
  all ones (``_ignore_bidirectional_mask_sdpa``). Current versions guard that with ``is_tracing()``, but
  an exporter the guard does not recognise bakes in "no mask": the graph then attends to padding
  (a padded short text comes out far from PyTorch's vector; unpadded inputs still look perfect).
* What did reproduce the low cosine on one unpadded text: the ``tokenizer.json`` shipped with the model
  (inherited from the hub repo) carries ``truncation: max_length 128`` and ``padding: Fixed 128``,
  while the model runs with ``max_seq_length`` 256 (sentence_bert_config.json). Anyone who feeds the
  graph from that file as-is (onnxruntime users, our first trial) cuts long texts at 128 tokens and
  pads every text to 128, so a long text loses its tail (see docs/benchmarks.md). fastembed instead
  truncates at ``tokenizer_config.json``'s ``model_max_length`` (512): again not what the model was trained with.

The fix: export with ``attn_implementation="eager"`` from a padded 2-row example of unequal lengths
(:func:`~fastembed_tune.export.graph.trace_to_onnx`); rewrite ``tokenizer.json`` (truncation =
max_seq_length, padding = longest in batch, lower-casing when the model lower-cases) and
``tokenizer_config.json`` (``model_max_length``) here; and gate every export on parity over other
lengths, other batch sizes, padded and unpadded texts, through the written tokenizer.
``tests/test_export.py`` holds the regression tests.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fastembed_tune.core.atomic import atomic_write, honour_umask, output_lock, replace_dir, temp_dir
from fastembed_tune.core.cpu import float_precision
from fastembed_tune.core.errors import UserError, naming
from fastembed_tune.embed.layout import INT8_FILE, METADATA_FILE, MODEL_FILE, OV_INT8_FILE, PORTABLE_FILE
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.embed.onnx_embedder import OnnxEmbedder
from fastembed_tune.embed.parity import ParityError, batch_invariance, check_parity, parity_texts, passes
from fastembed_tune.export.graph import graph_inputs, int8_base, optimizers, sentence_graph, trace_to_onnx
from fastembed_tune.export.quantize import SCHEME, Int8Result, check_calibration_texts, quantize_int8

__all__ = ["export_onnx", "ParityError", "FP32_MIN_COSINE", "INT8_MIN_COSINE", "BATCH_INVARIANCE_MIN_COSINE"]

FP32_MIN_COSINE = 0.9999
INT8_MIN_COSINE = 0.99
BATCH_INVARIANCE_MIN_COSINE = 0.99999  # int8: a text batched with others vs the same text alone
FORMAT = "fastembed_tune_onnx/1"

Check = Callable[[Path], Dict]  # an .onnx file -> its parity figures


@dataclass
class _Options:
    """What :func:`export_onnx` was asked for, checked."""

    quantize: Optional[str]
    opset: int
    optimize: bool
    parity_texts: Optional[Sequence[str]]
    allow_fp32_int8: bool
    warn: Callable[[str], None]
    calibration_texts: Optional[List[str]]
    openvino_int8: bool = False
    openvino_int8_optional: bool = False


# ---- the public entry point -----------------------------------------------------------------------
def export_onnx(model_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                quantize: Optional[str] = None, opset: int = 17, optimize: bool = True,
                parity_texts: Optional[Sequence[str]] = None, allow_fp32_int8: bool = False,
                warn: Optional[Callable[[str], None]] = None,
                calibration_texts: Optional[Sequence[str]] = None, openvino_int8: bool = False,
                openvino_int8_optional: bool = False) -> Dict:
    """Export ``model_dir`` to ``out_dir/model.onnx`` (+ ``model_int8.onnx`` with quantize="int8").

    Returns a summary: paths, dim, inputs, optimiser used, and the parity figures (min cosine to the
    PyTorch model per case). Raises ``UserError`` for bad input and ``ParityError`` (a UserError) when
    a graph does not reproduce the model (a NaN/Inf output is a refusal too); ``out_dir`` is then left
    untouched. When int8 parity is only reached by keeping every weight node in fp32, the "int8" file
    would be the fp32 graph: refused unless ``allow_fp32_int8``. Nodes kept in fp32 are reported
    through ``warn`` (a callable taking one line; default: stderr). ``calibration_texts`` (int8 only):
    the user's own texts to calibrate SmoothQuant on (up to 128 of them) instead of the bundled sample;
    the metadata records which was used. ``out_dir`` is locked while it is written, and what an
    earlier killed export left beside it is removed first. ``openvino_int8`` also writes the NNCF
    static int8 OpenVINO IR (:mod:`fastembed_tune.export.openvino_int8`, needs ``openvino`` and ``nncf``),
    gated like the int8 graph and calibrated on the same texts. With ``openvino_int8_optional`` an IR
    that misses a gate (or that NNCF fails on) is left out instead of refusing the export, and the reason
    is recorded (``result["openvino_int8_refused"]``, and in the metadata).

    >>> from fastembed_tune.embed.model import default_model_path
    >>> info = export_onnx(default_model_path(), "/tmp/minilm_onnx", quantize="int8")  # doctest: +SKIP
    >>> info["parity"]["fp32"]["min_cosine"] >= FP32_MIN_COSINE                         # doctest: +SKIP
    True
    """
    if quantize not in (None, "int8"):
        raise UserError(f"quantize must be None or 'int8', got {quantize!r}")
    if not isinstance(opset, int) or not 14 <= opset <= 20:
        raise UserError(f"opset must be an integer from 14 to 20, got {opset!r}")
    calibration = check_calibration_texts(calibration_texts)
    for name, flag in (("openvino_int8", openvino_int8), ("openvino_int8_optional", openvino_int8_optional)):
        if not isinstance(flag, bool):
            raise UserError(f"{name} must be True or False, got {flag!r}")
    if openvino_int8:
        from fastembed_tune.export.openvino_int8 import nncf_available

        if not nncf_available():
            raise UserError("openvino_int8 (--openvino-int8) needs the openvino and nncf packages: "
                            "pip install 'fastembed-tune[openvino]'")
    if calibration is not None and quantize != "int8" and not openvino_int8:
        raise UserError("calibration texts only calibrate the int8 graph: add quantize='int8' (--quantize int8)")
    src, out = Path(model_dir).resolve(), Path(out_dir).resolve()
    _check_output(src, out)
    opts = _Options(quantize, opset, optimize, parity_texts, allow_fp32_int8,
                    warn or (lambda line: print(line, file=sys.stderr)), calibration, openvino_int8,
                    openvino_int8_optional)
    with output_lock(out):
        return _export_locked(src, out, opts)


def _check_output(src: Path, out: Path) -> None:
    """``out`` must be new, empty, or an earlier export, and must not hold the model itself."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--output {out}: exists and is not a directory")
        if any(p for p in out.iterdir() if not p.name.startswith(".")) and not (out / METADATA_FILE).is_file():
            raise UserError(f"--output {out}: exists and is not an earlier ONNX export; choose an empty or new "
                            f"directory")
    if out == src or src.is_relative_to(out):
        raise UserError(f"--output {out}: the output directory would replace the model being exported")


def _export_locked(src: Path, out: Path, opts: _Options) -> Dict:
    """:func:`export_onnx` once the output is locked: every file is built in one temp folder beside
    ``out``, renamed into place only when every check passed, and removed on any failure."""
    model = EmbeddingModel.load(src)  # UserError for a directory that is not a model, or NaN weights
    texts, cases = parity_texts(model.tokenizer, opts.parity_texts)
    ref = model.encode(texts, batch_size=64)
    tmp = temp_dir(out)
    try:
        with naming(out):  # a full disk while a file is written: "error: OUT: No space left on device"
            result = _build(model, src, out, tmp, opts, texts, _checker(texts, cases, ref))
            honour_umask(tmp)
            replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _checker(texts: List[str], cases: list, ref: np.ndarray) -> Check:
    """Parity of an .onnx file with the PyTorch reference, through OnnxEmbedder (Rust tokenizer + ORT)."""
    def check(path: Path, **embedder) -> Dict:  # embedder: OnnxEmbedder keywords (engine, precision)
        emb = OnnxEmbedder(path, **embedder)
        return check_parity(lambda batch, bs: emb.embed(batch, batch_size=bs, check_finite=False), texts, cases, ref)
    return check


# ---- the stages, all writing into tmp -----------------------------------------------------------------
def _build(model: EmbeddingModel, src: Path, out: Path, tmp: Path, opts: _Options, texts: List[str],
           check: Check) -> Dict:
    """Tokenizer files, metadata, the fp32 graph and, when asked, the int8 graph, all in ``tmp``."""
    input_names = graph_inputs(model)
    pad_id = _write_tokenizer_files(model, tmp)
    meta = _metadata(model, src, input_names, pad_id, opts.opset)
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    raw, portable = tmp / "_traced.onnx", tmp / PORTABLE_FILE
    portable.parent.mkdir()
    _trace(model, src, portable, opts.opset, input_names)
    sentence_graph(portable, raw)
    used, parity, attempts = _fp32_graph(raw, tmp / MODEL_FILE, model, opts, check)
    portable_parity = check(portable)
    if not passes(portable_parity, FP32_MIN_COSINE):
        raise ParityError(f"ONNX export refused: the portable graph's min cosine to the PyTorch model "
                          f"{portable_parity['min_cosine']} < {FP32_MIN_COSINE}")
    _write_sentence_transformers_files(model, tmp)
    result = {"out_dir": str(out), "model": str(out / MODEL_FILE), "model_int8": None,
              "model_portable": str(out / PORTABLE_FILE), "dim": model.dim, "inputs": input_names,
              "optimizer": used, "optimizer_attempts": attempts,
              "parity": {"fp32": parity, "portable": portable_parity}}
    meta["optimizer"] = used
    meta["files"]["portable"] = PORTABLE_FILE
    meta["parity"] = {"fp32": parity, "portable": portable_parity}
    if opts.quantize == "int8":
        base = tmp / "_int8_base.onnx"
        int8_base(raw, base, model, opts.optimize)
        _record_int8(_int8_graph(base, tmp / INT8_FILE, opts, texts, check), out, meta, result)
        base.unlink()
    if opts.openvino_int8:
        try:
            _openvino_int8(portable, tmp, opts, texts, check, out, meta, result)
        except OpenVinoInt8Refused as e:
            if not opts.openvino_int8_optional:
                raise

            shutil.rmtree((tmp / OV_INT8_FILE).parent, ignore_errors=True)
            meta["openvino_int8_refused"] = result["openvino_int8_refused"] = str(e).removeprefix(
                "ONNX export refused: ")
            opts.warn(f"warning: no OpenVINO int8 IR: {result['openvino_int8_refused']}")
    raw.unlink()
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return result


def _metadata(model: EmbeddingModel, src: Path, input_names: List[str], pad_id: int, opset: int) -> Dict:
    """The first ``fastembed_tune_onnx.json``: what a reader needs to feed the graph and use its output."""
    return {"format": FORMAT, "pooling": model.pooling, "normalize": model.normalize,
            "max_seq_length": model.max_seq_length, "dim": model.dim, "do_lower_case": model.do_lower_case,
            "inputs": input_names, "output": "sentence_embedding", "pad_id": pad_id, "opset": opset,
            "vocab_size": int(model.transformer.get_input_embeddings().weight.shape[0]),
            "files": {"fp32": MODEL_FILE}, "source_model": str(src)}


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


def _write_sentence_transformers_files(model: EmbeddingModel, out: Path) -> None:
    """modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/: with the tokenizer files and
    ``onnx/model.onnx`` the folder is what ``SentenceTransformer(out, backend="onnx")`` loads (no
    PyTorch weights: the ONNX backend does not read them)."""
    st = out / "_st"
    model.save(st)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                 "1_Pooling", "2_Normalize"):
        if (st / name).exists():
            os.replace(st / name, out / name)
    shutil.rmtree(st)


def _trace(model: EmbeddingModel, src: Path, raw: Path, opset: int, input_names: List[str]) -> None:
    """:func:`trace_to_onnx` (with ``last_hidden_state``), with an untraceable architecture as one UserError."""
    try:
        trace_to_onnx(model, raw, opset, input_names, hidden=True)
    except OSError:
        raise  # a full or read-only disk is the machine's fault, not the model's
    except Exception as e:  # an architecture the TorchScript exporter cannot trace
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"{src}: this model cannot be exported to ONNX ({first})") from e


def _fp32_graph(raw: Path, fp32: Path, model: EmbeddingModel, opts: _Options,
                check: Check) -> Tuple[str, Dict, Dict]:
    """The first optimiser whose graph (from the traced ``raw``) passes fp32 parity, into ``fp32``:
    (optimiser, parity, attempts)."""
    attempts, parity, used = {}, None, None
    for name, optimize in optimizers(opts.optimize):
        try:
            optimize(raw, fp32, model)
        except OSError:
            raise
        except Exception as e:  # an optimiser that cannot handle this graph: try the next one
            attempts[name] = f"failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
            continue
        parity = check(fp32)
        attempts[name] = parity["min_cosine"]
        if passes(parity, FP32_MIN_COSINE):
            used = name
            break
    if used is None:
        raise ParityError(f"ONNX export refused: fp32 min cosine to the PyTorch model "
                          f"{parity and parity['min_cosine']} < {FP32_MIN_COSINE} (tries: {attempts})")
    return used, parity, attempts


def _int8_graph(fp32: Path, dst: Path, opts: _Options, texts: List[str], check: Check) -> Int8Result:
    """The int8 graph from ``fp32`` (:func:`~fastembed_tune.export.graph.int8_base`), calibrated on the
    parity texts plus the user's calibration texts (or the bundled sample); refused below
    ``INT8_MIN_COSINE``, when a text batched and alone differ (below ``BATCH_INVARIANCE_MIN_COSINE``)
    or, unless allowed, when nothing is int8."""
    r = quantize_int8(fp32, dst, texts, check, INT8_MIN_COSINE, opts.calibration_texts)
    if not passes(r.parity, INT8_MIN_COSINE):
        raise ParityError(f"ONNX export refused: int8 min cosine to the PyTorch model "
                          f"{r.parity['min_cosine']} < {INT8_MIN_COSINE}")
    emb = OnnxEmbedder(dst)
    r.parity["batched_vs_alone"] = batch_invariance(
        lambda batch, bs: emb.embed(batch, batch_size=bs, check_finite=False), texts[:33])
    if not r.parity["batched_vs_alone"] >= BATCH_INVARIANCE_MIN_COSINE:  # NaN fails too
        raise ParityError(f"ONNX export refused: the int8 graph answers differently for a text batched and "
                          f"alone (min cosine {r.parity['batched_vs_alone']} < {BATCH_INVARIANCE_MIN_COSINE})")
    n, kept = r.weight_nodes, r.kept_fp32
    if n == 0 or len(kept) == n:
        msg = (f"int8: none of the {n} weight nodes could be quantised within the parity bound, so "
               f"{INT8_FILE} would be the fp32 graph")
        if not opts.allow_fp32_int8:
            raise ParityError(f"ONNX export refused: {msg}; export without --quantize, or pass "
                              f"--allow-fp32-int8 to write it anyway")
        opts.warn(f"warning: {msg} (written because --allow-fp32-int8 was given)")
    elif kept:
        opts.warn(f"warning: int8: {len(kept)} of {n} weight nodes kept in fp32 to reach min cosine "
                  f">= {INT8_MIN_COSINE} (listed in {METADATA_FILE})")
    return r


class OpenVinoInt8Refused(ParityError):
    """The OpenVINO int8 IR missed a gate (or NNCF failed on the graph); nothing was written. The
    other graphs were fine: with ``openvino_int8_optional`` (what ``run`` asks) the export goes on
    without the IR.

    >>> isinstance(OpenVinoInt8Refused("OpenVINO int8 min cosine 0.98 < 0.99"), ParityError)
    True
    """


def remove_openvino_int8(export_dir: Union[str, os.PathLike], why: str = "") -> bool:
    """Remove the OpenVINO int8 IR from an export (its files, and its entries in the metadata, which
    records ``why``), so that no precision probe can pick it; True when there was one.

    >>> import tempfile
    >>> remove_openvino_int8(tempfile.mkdtemp())
    False
    """

    d = Path(export_dir)
    xml = d / OV_INT8_FILE
    meta_file = d / METADATA_FILE
    found = xml.is_file()
    if meta_file.is_file():  # the metadata first: a file it no longer lists is never offered
        meta = json.loads(meta_file.read_text())
        if "openvino_int8" in meta.get("files", {}):
            found = True
            meta["files"].pop("openvino_int8")
            meta.get("parity", {}).pop("openvino_int8", None)
            meta["openvino_int8_removed"] = {"why": why, **meta.pop("openvino_int8", {})}
            atomic_write(meta_file, lambda f: f.write(json.dumps(meta, indent=2)))
    for f in (xml, xml.with_suffix(".bin")):
        f.unlink(missing_ok=True)
    if xml.parent.is_dir() and not any(xml.parent.iterdir()):
        xml.parent.rmdir()
    return found


def _openvino_int8(portable: Path, tmp: Path, opts: _Options, texts: List[str], check: Callable[..., Dict],
                   out: Path, meta: Dict, result: Dict) -> None:
    """The NNCF int8 OpenVINO IR of the portable graph, gated as the int8 graph is (parity run with
    the precision hint this CPU uses), recorded in metadata and summary."""
    from fastembed_tune.export.openvino_int8 import SCHEME as OV_SCHEME
    from fastembed_tune.export.openvino_int8 import quantize_openvino_int8

    hint = float_precision()
    dst = tmp / OV_INT8_FILE
    try:
        r = quantize_openvino_int8(portable, dst, lambda p: check(p, engine="openvino", precision=hint),
                                   INT8_MIN_COSINE, opts.calibration_texts)
    except UserError:
        raise
    except Exception as e:  # NNCF / OpenVINO failed inside: this IR is refused, not the export's fault
        raise OpenVinoInt8Refused(f"ONNX export refused: NNCF could not quantise the graph for OpenVINO "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    if not passes(r.parity, INT8_MIN_COSINE):
        raise OpenVinoInt8Refused(f"ONNX export refused: OpenVINO int8 min cosine to the PyTorch model "
                                  f"{r.parity['min_cosine']} < {INT8_MIN_COSINE}")
    e = OnnxEmbedder(dst, engine="openvino", precision=hint)
    r.parity["batched_vs_alone"] = batch_invariance(
        lambda batch, bs: e.embed(batch, batch_size=bs, check_finite=False), texts[:33])
    if not r.parity["batched_vs_alone"] >= BATCH_INVARIANCE_MIN_COSINE:  # NaN fails too
        raise OpenVinoInt8Refused(f"ONNX export refused: the OpenVINO int8 IR answers differently for a text batched "
                          f"and alone (min cosine {r.parity['batched_vs_alone']} < {BATCH_INVARIANCE_MIN_COSINE})")
    if r.kept_float:
        opts.warn(f"warning: OpenVINO int8: {len(r.kept_float)} of {r.weight_nodes} weight MatMuls kept in float "
                  f"to reach min cosine >= {INT8_MIN_COSINE} (listed in {METADATA_FILE})")
    meta["files"]["openvino_int8"] = OV_INT8_FILE
    meta["parity"]["openvino_int8"] = r.parity
    meta["openvino_int8"] = {"weight_nodes": r.weight_nodes, "kept_float": r.kept_float, "quantized": r.quantized,
                             "scheme": OV_SCHEME, "checked_with_precision_hint": hint,
                             "calibration_texts": r.calibration_texts}
    result.update(model_openvino_int8=str(out / OV_INT8_FILE), openvino_int8_kept_float=r.kept_float)
    result["parity"]["openvino_int8"] = r.parity


def _record_int8(r: Int8Result, out: Path, meta: Dict, result: Dict) -> None:
    """The int8 graph's file, figures, nodes kept in fp32 and calibration source, in metadata and summary."""
    meta["files"]["int8"] = INT8_FILE
    meta["parity"]["int8"] = r.parity
    meta["int8"] = {"weight_nodes": r.weight_nodes, "kept_fp32": r.kept_fp32, "quantized": r.quantized,
                    "scheme": SCHEME, "calibration": r.calibration}
    result.update(model_int8=str(out / INT8_FILE), int8_kept_fp32=r.kept_fp32, int8_weight_nodes=r.weight_nodes,
                  int8_calibration=r.calibration)
    result["parity"]["int8"] = r.parity
