"""One ONNX graph from an ``EmbeddingModel``: trace it, then let onnxruntime optimise it.

The graph goes from token ids (``input_ids``, ``attention_mask`` and, when the tokenizer produces them,
``token_type_ids``; dynamic batch and sequence axes) to ``sentence_embedding`` [batch, dim]: the
transformer, the pooling and, when the model normalises, the L2 normalisation, all inside.

It is traced with the legacy (TorchScript) exporter from the ``attn_implementation="eager"`` model and
a padded 2-row example of unequal lengths: the attention mask is then always an explicit computation
on the ``attention_mask`` input, and no data-dependent short-cut (transformers 5 skips the sdpa mask
when the example's mask is all ones) can be baked into the graph. See :mod:`fastembed_tune.export.onnx`
for the whole story.
"""
from __future__ import annotations

import inspect
import logging
import shutil
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from fastembed_tune.embed.model import EmbeddingModel, pool

Optimizer = Callable[[Path, Path, EmbeddingModel], None]  # (traced graph, destination, model)


class _SentenceGraph(torch.nn.Module):
    """token ids -> pooled (and normalised) sentence embedding; the module that is traced."""

    def __init__(self, model: EmbeddingModel, use_token_type_ids: bool, hidden: bool = False):
        super().__init__()
        self.hidden = hidden
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
        return (hidden, emb) if self.hidden else emb


def graph_inputs(model: EmbeddingModel) -> List[str]:
    """The graph's inputs: ids and mask, plus ``token_type_ids`` when tokenizer and model both use them.

    >>> graph_inputs(EmbeddingModel.load())
    ['input_ids', 'attention_mask', 'token_type_ids']
    """
    names = list(getattr(model.tokenizer, "model_input_names", []) or [])
    params = inspect.signature(model.transformer.forward).parameters
    use_types = "token_type_ids" in names and "token_type_ids" in params
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if use_types else [])


def _set_attention(tf, implementation: str) -> None:
    if hasattr(tf, "set_attn_implementation"):
        tf.set_attn_implementation(implementation)
    else:  # older transformers read the config attribute at forward time
        tf.config._attn_implementation = implementation


def trace_to_onnx(model: EmbeddingModel, path: Path, opset: int, input_names: List[str],
                  hidden: bool = False) -> None:
    """Legacy (TorchScript) export of the eager-attention model from a padded 2-row example to ``path``;
    the output's embedding width is stated (the tracer leaves it symbolic). The model's attention
    implementation is restored afterwards. ``hidden``: the token vectors are a first output,
    ``last_hidden_state`` [batch, sequence, width] (what sentence-transformers' ONNX backend, optimum
    and fastembed's own pooling read), before ``sentence_embedding``.

    >>> import onnx, tempfile
    >>> m, f = EmbeddingModel.load(), Path(tempfile.mkdtemp()) / "model.onnx"
    >>> trace_to_onnx(m, f, 17, graph_inputs(m))
    >>> onnx.load(str(f)).graph.output[0].type.tensor_type.shape.dim[1].dim_value
    384
    """
    import onnx

    tf = model.transformer
    previous = getattr(tf.config, "_attn_implementation", None)
    _set_attention(tf, "eager")
    try:
        # two rows of unequal length: the mask has zeros, so no "all ones" short-cut can be traced in
        example = model.tokenize(["hello world",
                                  "a noticeably longer second example, so that the first row is padded"])
        args = tuple(example[k] for k in input_names)
        axes = {k: {0: "batch", 1: "sequence"} for k in input_names}
        axes["sentence_embedding"] = {0: "batch"}
        outputs = ["sentence_embedding"]
        if hidden:
            axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
            outputs.insert(0, "last_hidden_state")
        graph = _SentenceGraph(model, "token_type_ids" in input_names, hidden).eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(path), input_names=input_names,
                              output_names=outputs, dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        m = onnx.load(str(path))
        dims = m.graph.output[-1].type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        dims[1].Clear()
        dims[1].dim_value = model.dim
        onnx.save(m, str(path))
    finally:
        if previous is not None:
            _set_attention(tf, previous)


def sentence_graph(src: Path, dst: Path) -> None:
    """A copy of the graph ``src`` with ``sentence_embedding`` as its only output.

    >>> import onnx, tempfile
    >>> m, d = EmbeddingModel.load(), Path(tempfile.mkdtemp())
    >>> trace_to_onnx(m, d / "both.onnx", 17, graph_inputs(m), hidden=True)
    >>> sentence_graph(d / "both.onnx", d / "one.onnx")
    >>> [o.name for o in onnx.load(str(d / "one.onnx")).graph.output]
    ['sentence_embedding']
    """
    import onnx

    m = onnx.load(str(src))
    keep = [o for o in m.graph.output if o.name == "sentence_embedding"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    onnx.save(m, str(dst))


def _optimize_transformers(src: Path, dst: Path, model: EmbeddingModel, embed_layer_norm: bool = True) -> None:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    cfg = model.transformer.config
    options = FusionOptions("bert")
    options.enable_embed_layer_norm = embed_layer_norm
    om = optimizer.optimize_model(str(src), model_type="bert", num_heads=int(cfg.num_attention_heads),
                                  hidden_size=int(cfg.hidden_size), opt_level=0, use_gpu=False,
                                  optimization_options=options)
    om.save_model_to_file(str(dst))


def int8_base(src: Path, dst: Path, model: EmbeddingModel, optimize: bool = True) -> str:
    """The graph int8 quantises, from the traced ``src``: the BERT fusions (fused Attention, which
    becomes ``QAttention``) with the embedding lookup left unfused, so that the word-embedding table
    can be read as int8 rows; the traced graph itself when fusing fails or ``optimize`` is False.
    Returns which: ``"onnxruntime.transformers"`` or ``"none"``.

    >>> import tempfile
    >>> m, d = EmbeddingModel.load(), Path(tempfile.mkdtemp())
    >>> trace_to_onnx(m, d / "t.onnx", 17, graph_inputs(m))
    >>> int8_base(d / "t.onnx", d / "b.onnx", m, optimize=False)
    'none'
    """
    if optimize:
        try:
            _optimize_transformers(src, dst, model, embed_layer_norm=False)
            return "onnxruntime.transformers"
        except OSError:
            raise
        except Exception:  # an architecture the BERT fusions do not handle: the plain graph still quantises
            pass
    shutil.copyfile(src, dst)
    return "none"


def _optimize_ort(src: Path, dst: Path, model: EmbeddingModel) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _copy(src: Path, dst: Path, model: EmbeddingModel) -> None:
    shutil.copyfile(src, dst)


def optimizers(optimize: bool = True) -> List[Tuple[str, Optimizer]]:
    """The optimisers to try, in order, as (name, function(traced, destination, model)): the BERT
    fusions of ``onnxruntime.transformers`` (fused Attention/LayerNorm), onnxruntime's extended
    graph optimisations, and last the traced graph as it is (``"none"``, the only one without
    ``optimize``).

    >>> [name for name, _ in optimizers()], [name for name, _ in optimizers(optimize=False)]
    (['onnxruntime.transformers', 'onnxruntime-extended', 'none'], ['none'])
    """
    tries = [("onnxruntime.transformers", _optimize_transformers), ("onnxruntime-extended", _optimize_ort)]
    return (tries if optimize else []) + [("none", _copy)]
