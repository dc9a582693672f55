"""Distillation: a smaller student learns to reproduce a teacher's sentence embeddings.

- :func:`prune_layers`: the student's starting point, a copy of the teacher that keeps the
  embeddings and a subset of the transformer layers (DistilBERT-style layer-pruned init).
- :func:`teacher_embeddings`: the teacher's embeddings of the distillation texts, computed once and
  cached on disk as a memory-mapped float32 ``.npy`` (written to a temp name, then renamed), keyed by
  a digest of the teacher's weights and settings, the texts and ``max_seq_length``.
- :func:`distillation_texts` / :func:`pseudo_queries`: the in-domain texts to distil on: training
  queries, corpus, positives, and (opt-in) query-length spans cut from the corpus documents.
- :func:`distill`: trains the student with :class:`~fastembed_tune.training.losses.MSELoss` against the cached
  teacher embeddings (a learned projection bridges different dimensions), optionally plus
  ``kl_weight`` x the KL divergence between the teacher's and the student's in-batch similarity
  distributions and ``contrastive_weight`` x InfoNCE on training (query, positive) pairs
  (:func:`distill_loss`); optionally validated after every epoch (the best epoch ships), and writes
  under ``output_dir``::

      model/                   the student, a sentence-transformers directory (SentenceTransformer(path) loads it)
      teacher_embeddings.npy   the teacher cache (+ teacher_embeddings.npy.meta.json, its key)
      distill_log.jsonl        one JSON line per logging step: step, epoch, loss, mse, kl, contrastive, lr, texts_per_s, elapsed
      distill_summary.json     what :func:`distill` returns
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from fastembed_tune.core.atomic import check_output, clean_stale_inside, output_lock, temp_path, write_json
from fastembed_tune.core.errors import UserError
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.training.loop import (
    WindowLog,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    set_seed,
    shuffled_batches,
    use_bf16,
)
from fastembed_tune.training.losses import FusedMNRLoss, MSELoss, text_keys
from fastembed_tune.training.validation import BestTracker

__all__ = ["parse_layers", "default_layers", "spread_layers", "prune_layers", "teacher_embeddings", "in_batch_kl",
           "hidden_state_loss", "pseudo_queries", "query_word_range", "distillation_texts", "distill_loss",
           "DistillConfig", "distill"]

PathLike = Union[str, "os.PathLike[str]"]
CACHE_FILE = "teacher_embeddings.npy"
_META_SUFFIX = ".meta.json"
_CACHE_VERSION = 1

# where common encoders keep their stack of layers (BERT/RoBERTa/XLM-R/MPNet, DistilBERT, others)
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")


# ----------------------------------------------------------------------------------------------
# the student's starting point


def parse_layers(spec: Union[str, Sequence[int], None]) -> Optional[list[int]]:
    """Layer indices from ``"0,2,4"`` (CLI style) or a list; ``None`` stays ``None`` (the default
    student). An empty string is refused rather than silently read as the default.

    >>> parse_layers("0, 2,4"), parse_layers([1, 3]), parse_layers(None)
    ([0, 2, 4], [1, 3], None)
    >>> parse_layers("")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --layers is empty; give the teacher layers to keep, such as 0,2,5, or leave the flag out for the default
    >>> parse_layers("0,x")
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --layers must be comma-separated integers such as 0,2,4; got '0,x'
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        if not spec.strip():
            raise UserError("--layers is empty; give the teacher layers to keep, such as 0,2,5, or leave the flag "
                            "out for the default")
        try:
            return [int(s) for s in spec.split(",")]
        except ValueError:
            raise UserError(f"--layers must be comma-separated integers such as 0,2,4; got {spec!r}") from None
    out = []
    for v in spec:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise UserError(f"--layers must be integers such as [0, 2, 4]; got {list(spec)!r}")
        out.append(int(v))
    return out


def default_layers(num_layers: int) -> list[int]:
    """The default student: half the teacher's layers (rounded up), spread evenly from the first
    to the last (:func:`spread_layers`). The last layer is kept on purpose: pooling reads its output, and a pruned copy
    without it starts far from the teacher (docs/benchmarks.md, distillation).

    >>> default_layers(6), default_layers(12), default_layers(4), default_layers(1)
    ([0, 2, 5], [0, 2, 4, 7, 9, 11], [0, 3], [0])
    """
    return spread_layers(num_layers, (num_layers + 1) // 2)


def spread_layers(num_layers: int, keep: int) -> list[int]:
    """``keep`` of a teacher's ``num_layers`` layers spread evenly from the first to the last (one
    layer: the last, which pooling reads; halves round down).

    >>> spread_layers(6, 2), spread_layers(6, 3), spread_layers(6, 4), spread_layers(6, 1)
    ([0, 5], [0, 2, 5], [0, 2, 3, 5], [5])
    >>> spread_layers(6, 7)
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: cannot keep 7 of 6 layers; keep between 1 and 6
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= max(num_layers, 1):
        raise UserError(f"cannot keep {keep!r} of {num_layers} layers; keep between 1 and {num_layers}")
    if keep == 1:
        return [max(num_layers - 1, 0)]
    return sorted({int(np.ceil(i * (num_layers - 1) / (keep - 1) - 0.5)) for i in range(keep)})


def _layer_list(transformer: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    for path in _LAYER_PATHS:
        obj: Any = transformer
        owner, name = None, ""
        for part in path.split("."):
            owner, name = obj, part
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return owner, name, obj
    raise UserError(f"cannot prune layers of a {type(transformer).__name__}: no layer list found at "
                    f"{', '.join(_LAYER_PATHS)}; give a student model (student_dir) instead")


def prune_layers(model: EmbeddingModel, layers: Sequence[int]) -> EmbeddingModel:
    """A deep copy of ``model`` keeping the embeddings and only the transformer layers ``layers``
    (strictly increasing: a student stacks the teacher's layers in the teacher's order); ``config.num_hidden_layers`` is updated, so the copy saves and loads as a
    sentence-transformers directory. The teacher is left untouched.

    >>> import transformers
    >>> from fastembed_tune.embed.model import default_model_path
    >>> tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    >>> bert = transformers.BertModel(transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...     num_hidden_layers=4, num_attention_heads=1, intermediate_size=8))
    >>> student = prune_layers(EmbeddingModel(bert, tok), [0, 3])
    >>> student.transformer.config.num_hidden_layers, len(student.transformer.encoder.layer)
    (2, 2)
    >>> prune_layers(EmbeddingModel(bert, tok), [0, 4])
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: --layers: layer 4 does not exist: this model has 4 layers, so layer indices must be between 0 and 3
    """
    n = len(_layer_list(model.transformer)[2])
    layers = parse_layers(layers)
    valid = f"this model has {n} layers, so layer indices must be between 0 and {n - 1}"
    if not layers:
        raise UserError(f"--layers: the student needs at least one layer; {valid}")
    for i in layers:
        if not 0 <= i < n:
            raise UserError(f"--layers: layer {i} does not exist: {valid}")
    dupes = sorted({i for i in layers if layers.count(i) > 1})
    if dupes:
        raise UserError(f"--layers: layer {dupes[0]} is listed twice in {layers}; list each layer once ({valid})")
    if layers != sorted(layers):
        raise UserError(f"--layers must be in increasing order (the student keeps the teacher's order); got "
                        f"{','.join(map(str, layers))}, did you mean {','.join(map(str, sorted(layers)))}?")
    student = copy.deepcopy(model)
    owner, name, old = _layer_list(student.transformer)
    kept = torch.nn.ModuleList([old[i] for i in layers])
    for new_idx, layer in enumerate(kept):
        for mod in layer.modules():  # attention modules number themselves for KV caches
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    setattr(owner, name, kept)
    cfg = student.transformer.config
    cfg.num_hidden_layers = len(layers)
    if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == n:
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    return student


# ----------------------------------------------------------------------------------------------
# the teacher's embeddings, cached on disk


def _teacher_digest(teacher: torch.nn.Module) -> str:
    """A digest of the teacher's identity: its weights (names, shapes, dtypes, bytes) and the
    settings that change its embeddings (pooling, normalisation, lower-casing, tokenizer)."""
    h = hashlib.blake2b(digest_size=20)
    tok = getattr(teacher, "tokenizer", None)
    h.update(json.dumps({"class": type(teacher).__name__, "pooling": getattr(teacher, "pooling", None),
                         "normalize": getattr(teacher, "normalize", None),
                         "do_lower_case": getattr(teacher, "do_lower_case", None),
                         "tokenizer": [type(tok).__name__, len(tok) if tok is not None else None]}).encode())
    for name, t in teacher.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=20)
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _cache_key(teacher: torch.nn.Module, texts: Sequence[str]) -> dict:
    return {"version": _CACHE_VERSION, "teacher": _teacher_digest(teacher), "texts": _texts_digest(texts),
            "n": len(texts), "max_seq_length": getattr(teacher, "max_seq_length", None)}


def _meta_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + _META_SUFFIX)


def _open_cached(cache_path: Path, key: dict) -> Optional[np.memmap]:
    """The cached array when its key matches ``key`` and the file is whole; else ``None``."""
    meta = _meta_path(cache_path)
    try:
        if json.loads(meta.read_text())["key"] != key:
            return None
        arr = np.lib.format.open_memmap(str(cache_path), mode="r")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != key["n"]:
        return None
    return arr


def teacher_embeddings(teacher: EmbeddingModel, texts: Sequence[str], cache_path: PathLike,
                       batch_size: int = 64, show_progress_bar: bool = False,
                       precomputed: Optional[dict] = None, key: Optional[dict] = None) -> np.memmap:
    """The teacher's float32 embeddings of ``texts`` (``[len(texts), dim]``, rows in ``texts`` order)
    as a read-only memory-mapped ``.npy`` at ``cache_path``.

    Computed once: a JSON key beside the file (``cache_path + ".meta.json"``) holds a digest of the
    teacher's weights and settings, of the texts and of ``max_seq_length``; a later call with the same
    inputs maps the file without running the teacher, any change recomputes it. The array is written
    to a temporary name and renamed into place (the key last), so a killed run leaves no half file.
    ``precomputed`` (``{text: row}``) supplies rows this very teacher already produced at the same
    ``max_seq_length`` (e.g. while evaluating it); only the other texts are run through the teacher.

    >>> import tempfile, transformers
    >>> from fastembed_tune.embed.model import default_model_path
    >>> tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    >>> bert = transformers.BertModel(transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...     num_hidden_layers=1, num_attention_heads=1, intermediate_size=8))
    >>> path = os.path.join(tempfile.mkdtemp(), "t.npy")
    >>> e = teacher_embeddings(EmbeddingModel(bert, tok), ["a cat", "a dog"], path)
    >>> e.shape, e.dtype, os.path.isfile(path + ".meta.json")
    ((2, 8), dtype('float32'), True)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    texts = list(texts)
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    key = key or _cache_key(teacher, texts)  # hashing every weight is not free: callers may pass it
    cached = _open_cached(cache_path, key)
    if cached is not None:
        return cached
    meta = _meta_path(cache_path)
    meta.unlink(missing_ok=True)  # first: a key must never describe another file
    with temp_path(cache_path) as tmp:
        out = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=np.float32,
                                        shape=(len(texts), int(teacher.dim)))
        known = precomputed or {}
        todo = [i for i, t in enumerate(texts) if t not in known]
        for i, t in enumerate(texts):
            if t in known:
                out[i] = np.asarray(known[t], dtype=np.float32)
        order = np.asarray(todo, dtype=np.int64)[np.argsort([-len(texts[i]) for i in todo], kind="stable")]
        chunk = batch_size * 16
        with tqdm(total=len(todo), desc="teacher embeddings", unit="text", disable=not show_progress_bar) as bar:
            for s in range(0, len(order), chunk):
                idx = np.sort(order[s:s + chunk])
                out[idx] = teacher.encode([texts[i] for i in idx], batch_size=batch_size)
                bar.update(len(idx))
        out.flush()
        del out
    write_json(meta, {"key": key, "shape": [len(texts), int(teacher.dim)], "dtype": "float32"})
    return np.lib.format.open_memmap(str(cache_path), mode="r")


# ----------------------------------------------------------------------------------------------
# the losses and the loop


def in_batch_kl(teacher_emb: torch.Tensor, student_emb: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """KL(teacher || student) between in-batch similarity distributions: row i of each is the
    softmax over j != i of cos(e_i, e_j) / temperature (the diagonal, always 1, is left out);
    averaged over rows. Dimensions may differ (cosines are compared, not vectors). 0 for B < 2.

    >>> t = torch.randn(4, 8); float(in_batch_kl(t, t)) == 0.0
    True
    >>> float(in_batch_kl(t, torch.randn(4, 3))) > 0
    True
    """
    b = teacher_emb.shape[0]
    if b < 2:
        return student_emb.sum() * 0.0
    off = ~torch.eye(b, dtype=torch.bool, device=student_emb.device)

    def log_probs(e: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.normalize(e.float(), dim=1)
        sims = (e @ e.T)[off].view(b, b - 1) / temperature
        return torch.log_softmax(sims, dim=1)

    lt = log_probs(teacher_emb.to(student_emb.device)).detach()
    ls = log_probs(student_emb)
    return (lt.exp() * (lt - ls)).sum(1).mean()


def hidden_state_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                      attention_mask: torch.Tensor, kept: Sequence[int]) -> torch.Tensor:
    """Layer-to-layer distillation of a layer-pruned student: student layer ``j`` (hidden state
    ``j + 1``) learns the token states of the teacher layer it was copied from, ``kept[j]``
    (teacher hidden state ``kept[j] + 1``). The mean over those layers and the non-padding tokens
    of ``1 - cos(student token, teacher token)``, times ``2 / d`` (d: the hidden size): the scale
    the sentence-embedding MSE has for unit vectors, ``(2 - 2 cos) / d``, so a weight of 1 pulls
    about as hard per unit of cosine as the MSE does.

    >>> h = [torch.randn(2, 3, 4) for _ in range(4)]; mask = torch.ones(2, 3, dtype=torch.long)
    >>> abs(float(hidden_state_loss([h[0], h[1], h[3]], h, mask, [0, 2]))) < 1e-6
    True
    >>> float(hidden_state_loss([h[0], h[2], h[1]], h, mask, [0, 2])) > 0
    True
    """
    if len(student_states) != len(kept) + 1:
        raise ValueError(f"{len(student_states)} student hidden states for {len(kept)} kept layers")
    m = attention_mask.to(student_states[-1].dtype).unsqueeze(-1)
    per_layer = []
    for j, t in enumerate(kept):
        s, te = student_states[j + 1].float(), teacher_states[t + 1].float().detach()
        cos = torch.nn.functional.cosine_similarity(s, te, dim=-1).unsqueeze(-1)
        per_layer.append(((1 - cos) * m).sum() / m.sum().clamp(min=1))
    return torch.stack(per_layer).mean() * (2.0 / student_states[-1].shape[-1])


_WORD = re.compile(r"\S+")
_EDGE = " \t\n.,;:!?()[]{}\"'"


def pseudo_queries(docs: Sequence[str], per_doc: int = 1, min_words: int = 1, max_words: int = 8,
                   seed: int = 0) -> list[str]:
    """Query-like texts cut from documents, for a student to learn the teacher's embeddings of short
    in-domain inputs: ``per_doc`` spans of each document, each a window of consecutive words whose
    length is drawn uniformly from ``[min_words, max_words]`` (at most the document's) at a uniform
    start, with punctuation trimmed from its ends. Every span is an exact substring of its document
    (original spacing kept); empty spans are skipped, duplicates kept (``distill`` drops them). A pure
    function of its arguments (one ``default_rng([seed, 11])`` stream, documents in order).

    >>> pseudo_queries(["the quick brown fox jumps over the lazy dog."], per_doc=2, min_words=2, max_words=3)
    ['jumps over', 'quick brown']
    """
    if isinstance(per_doc, bool) or not isinstance(per_doc, int) or per_doc < 0:
        raise UserError(f"per_doc must be an integer >= 0; got {per_doc!r}")
    if not (isinstance(min_words, int) and isinstance(max_words, int) and 1 <= min_words <= max_words):
        raise UserError(f"pseudo-query lengths must be integers with 1 <= min_words <= max_words; got "
                        f"min_words={min_words!r}, max_words={max_words!r}")
    rng = np.random.default_rng([seed, 11])
    out = []
    for doc in docs:
        spans = [(m.start(), m.end()) for m in _WORD.finditer(doc)]
        for _ in range(per_doc if spans else 0):
            n = min(int(rng.integers(min_words, max_words + 1)), len(spans))
            first = int(rng.integers(0, len(spans) - n + 1))
            span = doc[spans[first][0]:spans[first + n - 1][1]].strip(_EDGE)
            if span:
                out.append(span)
    return out


def query_word_range(queries: Sequence[str], low: float = 0.1, high: float = 0.9) -> tuple[int, int]:
    """The ``low`` and ``high`` quantiles of the queries' word counts (at least 1): the length range
    of :func:`pseudo_queries` that look like the users' own queries; ``(1, 8)`` without queries.

    >>> query_word_range(["a", "b c", "d e f", "what is a tuple"]), query_word_range([])
    ((1, 4), (1, 8))
    """
    counts = [len(q.split()) for q in queries if q.strip()]
    if not counts:
        return 1, 8
    lo = max(1, int(np.floor(np.quantile(counts, low))))
    return lo, max(lo, int(np.ceil(np.quantile(counts, high))))


def distillation_texts(pairs: Sequence, corpus: Sequence[str], pseudo_per_doc: int = 0, seed: int = 0) -> list[str]:
    """The texts a student learns from: the training queries, the corpus, the training positives
    (distinct, in that order), then ``pseudo_per_doc`` :func:`pseudo_queries` cut from each corpus
    document, as long as the training queries (:func:`query_word_range`); never a test query when
    ``corpus`` holds no test document.

    >>> from fastembed_tune.data.readers import Pair
    >>> distillation_texts([Pair("cat", "a feline")], ["a dog", "a feline"])
    ['cat', 'a dog', 'a feline']
    >>> distillation_texts([Pair("cat", "a feline")], ["a big dog"], pseudo_per_doc=1)
    ['cat', 'a big dog', 'a feline', 'a']
    """
    texts = [p.query for p in pairs] + list(corpus) + [p.positive for p in pairs]
    if pseudo_per_doc:
        lo, hi = query_word_range([p.query for p in pairs])
        texts += pseudo_queries(list(dict.fromkeys(corpus)), pseudo_per_doc, lo, hi, seed)
    return list(dict.fromkeys(texts))


def distill_loss(emb: torch.Tensor, targets: torch.Tensor, n_pairs: int = 0, contrastive_weight: float = 0.0,
                 scale: float = 20.0, doc_keys: Optional[torch.Tensor] = None,
                 projection: Optional[torch.nn.Module] = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                      Optional[torch.Tensor]]:
    """One step's loss: ``emb`` [rows, d] are the student's embeddings, ``targets`` [rows, teacher d]
    the teacher's, of the same texts, whose last ``2 * n_pairs`` rows are ``n_pairs`` training queries
    then their positives. MSE(``projection``(emb), targets) over every row plus ``contrastive_weight``
    x InfoNCE of the student's own query and positive embeddings (row i's positive is positive i,
    the other positives are in-batch negatives unless ``doc_keys`` says they are the same text; logits
    ``scale`` x dot product; the native fused kernel, :class:`~fastembed_tune.training.losses.FusedMNRLoss`).
    Returns ``(loss, mse, contrastive)``; ``contrastive`` is None when it is not computed.

    MSE is per element (for unit vectors ``(1 - cos) / (d / 2)``), so its gradients are far smaller
    than InfoNCE's: on a 3-layer MiniLM student of a fine-tuned teacher (d = 384, scale 20, 64 texts
    + 32 pairs) the two gradient norms are about equal at ``contrastive_weight`` = 1e-3.

    >>> e = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    >>> loss, mse, con = distill_loss(e, e.clone(), n_pairs=2, contrastive_weight=0.5)
    >>> float(mse), bool(loss == 0.5 * con), distill_loss(e, e, 2)[2] is None
    (0.0, True, True)
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 0 <= 2 * n_pairs <= emb.shape[0]:
        raise UserError(f"n_pairs must be an integer with 0 <= 2 * n_pairs <= {emb.shape[0]} rows; got {n_pairs!r}")
    pred = projection(emb) if projection is not None else emb
    mse = torch.nn.functional.mse_loss(pred, targets.to(pred.dtype))
    if n_pairs == 0 or contrastive_weight == 0:
        return mse, mse, None
    rows = emb.shape[0]
    q, p = emb[rows - 2 * n_pairs:rows - n_pairs], emb[rows - n_pairs:]
    con = FusedMNRLoss(None, scale=scale).loss_from_embeddings([q, p], doc_keys=doc_keys)
    return mse + contrastive_weight * con, mse, con


def _check(name: str, ok: bool, v: Any, what: str) -> None:
    if not ok:
        raise UserError(f"{name} must be {what}; got {v!r}")


def _number(v: Any, low: float, strict: bool = False) -> bool:
    """``v`` is a finite number >= ``low`` (> ``low`` when ``strict``)."""
    return isinstance(v, (int, float)) and math.isfinite(v) and (v > low if strict else v >= low)


@dataclass
class DistillConfig:
    """The settings of one :func:`distill` run (the flags of ``fastembed-tune distill``); the texts,
    the training pairs, a validation split and rows the teacher already made are :func:`distill`'s
    own arguments.

    The student: ``student_dir`` (a model to load), or the teacher ``layers`` a layer-pruned copy keeps
    (``"0,2,5"`` or a list; default: half of them spread from first to last, see :func:`default_layers`);
    not both.

    The schedule: ``epochs`` passes over the texts in batches of ``batch_size`` similar-length texts
    (shuffled within windows of ``length_window`` batches, ``seed``), AdamW at ``lr`` with
    ``weight_decay`` (none on biases and LayerNorm), linear warmup over ``warmup_ratio`` of the steps
    then linear decay, gradients clipped to ``max_grad_norm``. ``max_seq_length`` (default: the
    teacher's) is what both models read while distilling; the student is saved with the teacher's own.

    The loss: MSE to the teacher's embeddings, plus ``kl_weight`` x :func:`in_batch_kl` at
    ``kl_temperature``, plus ``hidden_weight`` x :func:`hidden_state_loss` (a layer-pruned student
    only), plus ``contrastive_weight`` x InfoNCE on the training pairs at ``contrastive_scale``, about
    ``pair_batch_size`` pairs a step (default ``batch_size // 2``).

    With a validation split: the best epoch ships (a later one within ``tolerance`` of the best wins),
    and training stops after ``patience`` epochs in a row below it (None: never).

    Where it runs and what it shows: ``device`` (default: CUDA when available, else CPU); ``bf16``
    autocast of the student's steps (None: where the hardware does bf16 natively, see
    :func:`~fastembed_tune.training.loop.use_bf16`); a log line every ``logging_steps`` steps; a
    progress bar unless ``show_progress_bar`` is False.

    >>> c = DistillConfig(layers="0,2", epochs=2)
    >>> c.batch_size, c.lr, c.kl_weight
    (64, 0.0001, 0.0)
    >>> DistillConfig(kl_temperature=0).validate()
    Traceback (most recent call last):
    ...
    fastembed_tune.core.errors.UserError: kl_temperature must be a finite number > 0; got 0
    """

    # the student
    student_dir: Optional[PathLike] = None
    layers: Union[str, Sequence[int], None] = None
    # the schedule
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: Optional[float] = 1.0
    seed: int = 42
    length_window: int = 50
    max_seq_length: Optional[int] = None
    # the loss
    kl_weight: float = 0.0
    kl_temperature: float = 0.05
    hidden_weight: float = 0.0
    contrastive_weight: float = 0.0
    contrastive_scale: float = 20.0
    pair_batch_size: Optional[int] = None
    # the validation split, when one is given
    patience: Optional[int] = None
    tolerance: float = 0.0
    # where it runs and what it shows
    device: Optional[str] = None
    bf16: Optional[bool] = None
    logging_steps: int = 10
    show_progress_bar: bool = True

    def validate(self) -> None:
        """Raise :class:`~fastembed_tune.core.errors.UserError` with one sentence for the first bad setting."""
        for name in ("epochs", "batch_size", "logging_steps"):
            v = getattr(self, name)
            _check(name, isinstance(v, int) and v >= 1, v, "an integer >= 1")
        for name in ("lr", "kl_weight"):
            _check(name, _number(getattr(self, name), 0), getattr(self, name), "a finite number >= 0")
        _check("kl_temperature", _number(self.kl_temperature, 0, strict=True), self.kl_temperature,
               "a finite number > 0")
        _check("warmup_ratio", 0 <= self.warmup_ratio <= 1, self.warmup_ratio, "between 0 and 1")
        _check("weight_decay", self.weight_decay >= 0, self.weight_decay, ">= 0")
        m = self.max_seq_length
        _check("max_seq_length", m is None or (isinstance(m, int) and m >= 1), m, "a positive integer or None")
        _check("contrastive_weight", _number(self.contrastive_weight, 0), self.contrastive_weight,
               "a finite number >= 0")
        _check("contrastive_scale", _number(self.contrastive_scale, 0, strict=True), self.contrastive_scale,
               "a finite number > 0 (20 is temperature 0.05)")
        b = self.pair_batch_size
        _check("pair_batch_size", b is None or (isinstance(b, int) and b >= 2), b,
               "an integer >= 2 (in-batch negatives need two pairs) or None")
        _check("patience", self.patience is None or (isinstance(self.patience, int) and self.patience >= 1),
               self.patience, "an integer >= 1 or None")
        _check("tolerance", _number(self.tolerance, 0), self.tolerance, "a finite number >= 0")
        _check("hidden_weight", _number(self.hidden_weight, 0), self.hidden_weight, "a finite number >= 0")

    def resolved(self) -> "DistillConfig":
        """A checked copy with ``layers`` parsed (:func:`parse_layers`) and ``pair_batch_size`` filled in
        (``batch_size // 2``, at least 2).

        >>> DistillConfig(layers="0,3", batch_size=16).resolved().pair_batch_size
        8
        """
        self.validate()
        layers = parse_layers(self.layers)
        if self.student_dir is not None and layers is not None:
            raise UserError("give either a student model (student_dir) or the teacher layers to keep (layers), not both")
        if self.student_dir is not None and self.hidden_weight > 0:
            raise UserError("hidden_weight maps each student layer to the teacher layer it was copied from: it needs a "
                            "layer-pruned student (layers=...), not student_dir")
        return replace(self, layers=layers, pair_batch_size=self.pair_batch_size or max(2, self.batch_size // 2))


def distill(teacher_dir: Optional[PathLike], texts: Sequence[str], output_dir: PathLike,
            config: Optional[DistillConfig] = None, *, pairs: Optional[Sequence] = None, validation: Any = None,
            precomputed: Optional[dict] = None) -> dict:
    """Distil the teacher at ``teacher_dir`` (``None``: the built-in MiniLM) into a smaller student and
    save it to ``output_dir/model``, as ``config`` (a :class:`DistillConfig`; None: its defaults) says.

    The student is ``config.student_dir`` loaded, or a copy of the teacher keeping ``config.layers``.
    It learns the teacher's embeddings of ``texts`` (duplicates and empty texts are dropped; the teacher
    runs once, cached by :func:`teacher_embeddings`) by MSE - through a learned linear projection when
    the dimensions differ - plus the opt-in terms of the config (the defaults leave the MSE-only
    student). Logs to ``output_dir/distill_log.jsonl``.

    - ``precomputed`` (``{text: row}``, made by this teacher at this ``max_seq_length``) spares the
      teacher those texts.
    - ``pairs`` (training :class:`~fastembed_tune.data.readers.Pair` or ``(query, positive)`` tuples) with
      ``contrastive_weight`` > 0: their texts join ``texts``, and an epoch is one pass over the pairs
      and the other texts (:func:`_epoch_steps`): every step embeds ``batch_size`` other texts and about
      ``pair_batch_size`` pairs (fewer when the other texts need more steps), and adds
      ``contrastive_weight`` x InfoNCE (in-batch negatives, ``contrastive_scale``) on the pairs to the
      MSE, which covers every row (:func:`distill_loss`).
    - ``validation`` (anything with ``score(model) -> float``, e.g. a
      :class:`~fastembed_tune.training.validation.Validation` on held-out training queries): scored after every
      epoch; the student saved is the best epoch's (see :class:`~fastembed_tune.training.validation.BestTracker`,
      ``tolerance`` and ``patience``). The schedule still spans ``epochs``.
    - ``hidden_weight`` > 0 (a layer-pruned student only): each kept layer's token states learn the
      teacher layer's they were copied from; the teacher then runs beside the student on every step
      (no cache: token states are too big to keep).

    Returns a summary: steps, seconds, final_loss, student_layers (teacher layer indices kept, or
    ``None`` for ``student_dir``), student_num_layers, dims, projection, texts, cache_reused, output;
    with ``validation`` also best_epoch, epochs_run and validation (the curve: epoch, ndcg@10, seconds).

    >>> import tempfile, transformers
    >>> from fastembed_tune.embed.model import default_model_path
    >>> tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    >>> bert = transformers.BertModel(transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...     num_hidden_layers=2, num_attention_heads=1, intermediate_size=8))
    >>> d = tempfile.mkdtemp(); EmbeddingModel(bert, tok, max_seq_length=32).save(d + "/teacher")
    >>> out = distill(d + "/teacher", [f"text {i}" for i in range(8)], d + "/out",
    ...               DistillConfig(batch_size=4, show_progress_bar=False))
    >>> out["steps"], out["student_layers"], os.path.isfile(os.path.join(out["output"], "modules.json"))
    (2, [1], True)
    """
    t_start = time.perf_counter()
    cfg = config or DistillConfig()
    cfg.validate()
    if validation is not None and not callable(getattr(validation, "score", None)):
        raise UserError(f"validation must have a score(model) method (e.g. a Validation); got {type(validation).__name__}")
    pair_list = _pair_list(pairs, cfg.contrastive_weight)
    cfg = cfg.resolved()
    texts = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))
    if not texts:
        raise UserError("distillation needs at least one non-empty text")
    texts = list(dict.fromkeys(texts + [t for pair in pair_list for t in pair]))
    out_dir = check_output(output_dir, "dir")
    with output_lock(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_inside(out_dir)  # a killed run's half-written cache or model
        return _distill_locked(teacher_dir, cfg, _Inputs(texts, pair_list, validation, precomputed), out_dir, t_start)


@dataclass
class _Inputs:
    """What :func:`distill` learns from besides its settings: the texts (the pairs' included), the
    pairs, the validation split and the teacher's rows already made."""
    texts: list[str]
    pairs: list[tuple[str, str]] = field(default_factory=list)
    validation: Any = None
    precomputed: Optional[dict] = None


def _pair_list(pairs: Optional[Sequence], contrastive_weight: float) -> list[tuple[str, str]]:
    """``pairs`` as (query, positive) tuples, checked against ``contrastive_weight``.

    >>> from fastembed_tune.data.readers import Pair
    >>> _pair_list([Pair("cat", "a feline"), ("dog", "a canine")], 0.1)
    [('cat', 'a feline'), ('dog', 'a canine')]
    """
    if contrastive_weight > 0 and not pairs:
        raise UserError("contrastive_weight > 0 needs training pairs (pairs=[(query, positive), ...])")
    if pairs and contrastive_weight == 0:
        raise UserError("pairs are used only by the contrastive term; give contrastive_weight > 0 (e.g. 0.05) "
                        "or leave pairs out")
    out = []
    for i, pair in enumerate(pairs or []):
        q, p = (pair.query, pair.positive) if hasattr(pair, "positive") else tuple(pair)
        if not (isinstance(q, str) and isinstance(p, str) and q.strip() and p.strip()):
            raise UserError(f"pairs[{i}] must be a (query, positive) of two non-empty texts; got {pair!r}")
        out.append((q, p))
    if out and len(out) < 2:
        raise UserError("the contrastive term needs at least 2 pairs (in-batch negatives)")
    return out


def _models(teacher_dir: Optional[PathLike], s: DistillConfig, dev: torch.device
            ) -> tuple[EmbeddingModel, EmbeddingModel, Optional[list[int]], int, int]:
    """(teacher at the distillation length, student, teacher layers kept, teacher's layer count,
    the teacher's own max_seq_length, which the student is saved with, as train does)."""
    teacher = EmbeddingModel.load(teacher_dir, device=str(dev))
    saved_max_len = teacher.max_seq_length
    if s.max_seq_length:
        teacher.max_seq_length = s.max_seq_length
    _cap_length(teacher)
    teacher_layers = len(_layer_list(teacher.transformer)[2])
    if s.student_dir is not None:
        student, kept = EmbeddingModel.load(s.student_dir, device=str(dev)), None
    else:
        kept = s.layers if s.layers is not None else default_layers(teacher_layers)
        student = prune_layers(teacher, kept)
    student.max_seq_length = teacher.max_seq_length
    _cap_length(student)
    return teacher, student, kept, teacher_layers, saved_max_len


def _epoch_steps(n_texts: int, n_pairs: int, batch_size: int, pair_batch_size: int, seed: int, epoch: int,
                 lengths: Sequence[int], window: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's steps as (text rows, pair rows): every text that is not in a pair once, in
    :func:`~fastembed_tune.training.loop.shuffled_batches` of ``batch_size``, and every pair once, in a seeded
    order cut into as many chunks as there are steps (at most ``pair_batch_size`` each); the epoch has
    ``max(ceil(texts / batch_size), ceil(pairs / pair_batch_size))`` steps. ``lengths``: the texts'.

    >>> steps = _epoch_steps(5, 4, 2, 2, seed=0, epoch=0, lengths=[1, 2, 3, 4, 5], window=50)
    >>> len(steps), sorted(int(i) for t, _ in steps for i in t), sorted(int(i) for _, p in steps for i in p)
    (3, [0, 1, 2, 3, 4], [0, 1, 2, 3])
    """
    texts = shuffled_batches(lengths, batch_size, seed, epoch, window) if n_texts else []
    n_steps = max(len(texts), math.ceil(n_pairs / pair_batch_size) if n_pairs else 0)
    pairs = np.array_split(np.random.default_rng([seed, 5, epoch]).permutation(n_pairs), n_steps) if n_pairs else []
    empty = np.empty(0, dtype=np.int64)
    return [(texts[i] if i < len(texts) else empty, pairs[i] if n_pairs else empty) for i in range(n_steps)]


@dataclass
class _Step:
    """One step's rows: the text batch, then (with pairs) the queries and their positives."""
    columns: list[np.ndarray]
    n_pairs: int


@dataclass
class _LayerTargets:
    """What the hidden-state term needs on every step: the teacher and the layers the student kept."""
    teacher: EmbeddingModel
    kept: list[int]


def _step_loss(s: DistillConfig, loss_fn: MSELoss, step: _Step, targets: np.ndarray, texts: list[str],
               dev: torch.device, bf16: bool, layers: Optional[_LayerTargets] = None
               ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor],
                          Optional[torch.Tensor]]:
    """(loss, mse, kl, contrastive, hidden) of one step; each column is tokenized and embedded on its
    own (queries are not padded to the documents' length)."""
    student = loss_fn.model
    feats = [{k: v.to(dev) for k, v in student.tokenize([texts[i] for i in col]).items()} for col in step.columns]
    labels = torch.from_numpy(np.asarray(targets[np.concatenate(step.columns)], dtype=np.float32)).to(dev)
    keys = text_keys(feats[-1:]).to(dev) if step.n_pairs else None
    hidden = None
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
        outs = [student(dict(f, output_hidden_states=layers is not None)) for f in feats]
        emb = torch.cat([o["sentence_embedding"] for o in outs])
        loss, mse, con = distill_loss(emb, labels, step.n_pairs, s.contrastive_weight, s.contrastive_scale,
                                      doc_keys=keys, projection=loss_fn.projection)
        kl = in_batch_kl(labels, emb, s.kl_temperature) if s.kl_weight > 0 else None
        if layers is not None:
            with torch.no_grad():
                teacher_states = [layers.teacher(dict(f, output_hidden_states=True))["all_layer_embeddings"]
                                  for f in feats]
            hidden = torch.stack([hidden_state_loss(o["all_layer_embeddings"], t, f["attention_mask"], layers.kept)
                                  for o, t, f in zip(outs, teacher_states, feats)]).mean()
    if kl is not None:
        loss = loss + s.kl_weight * kl
    if hidden is not None:
        loss = loss + s.hidden_weight * hidden
    return loss, mse, kl, con, hidden


def _step_rows(texts: list[str], pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the pairs' query rows, their positive rows, the rows of every text in no pair) of ``texts``.

    >>> [r.tolist() for r in _step_rows(["q", "d", "x"], [("q", "d")])]
    [[0], [1], [2]]
    """
    row = {t: i for i, t in enumerate(texts)}
    pq = np.asarray([row[q] for q, _ in pairs], dtype=np.int64)
    pp = np.asarray([row[p] for _, p in pairs], dtype=np.int64)
    in_pairs = set(pq.tolist()) | set(pp.tolist())
    return pq, pp, np.asarray([i for i in range(len(texts)) if i not in in_pairs], dtype=np.int64)


def _terms(mse: torch.Tensor, kl: Optional[torch.Tensor], con: Optional[torch.Tensor],
           hid: Optional[torch.Tensor]) -> dict:
    """One step's loss terms as the log line's floats (None where a term is off)."""
    return {"mse": float(mse.detach()), "kl": float(kl.detach()) if kl is not None else None,
            "contrastive": float(con.detach()) if con is not None else None,
            "hidden": float(hid.detach()) if hid is not None else None}


def _distill_loop(s: DistillConfig, loss_fn: MSELoss, targets: np.ndarray, data: _Inputs, dev: torch.device,
                  bf16: bool, log_file: Path, layers: Optional[_LayerTargets] = None
                  ) -> tuple[int, float, int, float, Optional[dict]]:
    """The epochs of MSE (+ in-batch KL, + contrastive on pairs) steps, validated after each epoch
    when ``data.validation``; returns (steps, last loss, texts seen, seconds, validation summary or None).
    With validation the student holds the best epoch's weights on return."""
    student, texts = loss_fn.model, data.texts
    pq, pp, others = _step_rows(texts, data.pairs)
    lengths = [len(texts[i]) for i in others]

    def epoch_steps(epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return _epoch_steps(len(others), len(data.pairs), s.batch_size, s.pair_batch_size, s.seed, epoch, lengths,
                            s.length_window)

    total_steps = s.epochs * len(epoch_steps(0))
    optimizer = make_optimizer(loss_fn, s.lr, s.weight_decay)  # the student and the projection
    scheduler = make_scheduler(optimizer, s.warmup_ratio, total_steps)
    tracker, best_state, curve = BestTracker(s.patience, s.tolerance), None, []
    set_seed(s.seed)
    loss_fn.train()
    step, last_loss, texts_done, t_loop = 0, float("nan"), 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="distill", unit="step", disable=not s.show_progress_bar)
    try:
        with open(log_file, "w", encoding="utf-8") as f:
            log = WindowLog(f, s.logging_steps, "texts_per_s")
            for epoch in range(s.epochs):
                batches = epoch_steps(epoch)
                for bidx, (idx, pb) in enumerate(batches):
                    columns = [c for c in (np.sort(others[idx]), pq[pb], pp[pb]) if len(c)]  # sorted: memory-map reads
                    lr_now = scheduler.get_last_lr()[0]
                    loss, *terms = _step_loss(s, loss_fn, _Step(columns, len(pb)), targets, texts, dev, bf16, layers)
                    loss.backward()
                    optimizer_step(loss_fn.parameters(), optimizer, scheduler, s.max_grad_norm)
                    n_rows = sum(len(c) for c in columns)
                    step, last_loss, texts_done = step + 1, float(loss.detach()), texts_done + n_rows
                    if not math.isfinite(last_loss):
                        raise UserError(f"the distillation loss became {last_loss} at step {step}; lower lr "
                                        f"(now {s.lr}), kl_weight (now {s.kl_weight}) or contrastive_weight "
                                        f"(now {s.contrastive_weight})")
                    rec = log.add(step, epoch + (bidx + 1) / len(batches), lr_now, n_rows, total_steps,
                                  loss=last_loss, **_terms(*terms))
                    if rec:
                        bar.set_postfix(loss=f"{rec['loss']:.5f}")
                    bar.update(1)
                if data.validation is not None:
                    score = float(data.validation.score(student))
                    curve.append({"epoch": epoch + 1, "ndcg@10": score,
                                  "seconds": round(time.perf_counter() - t_loop, 3)})
                    if tracker.update(score, epoch + 1):
                        best_state = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
                    if tracker.should_stop:
                        break
    finally:
        bar.close()
    seconds = time.perf_counter() - t_loop
    if data.validation is None:
        return step, last_loss, texts_done, seconds, None
    if best_state is not None:
        loss_fn.load_state_dict(best_state)
    return step, last_loss, texts_done, seconds, {"best_epoch": tracker.best_step, "epochs_run": len(curve),
                                                  "validation": curve}


def _distill_locked(teacher_dir: Optional[PathLike], s: DistillConfig, data: _Inputs, out_dir: Path,
                    t_start: float) -> dict:
    """:func:`distill` once ``out_dir`` is locked: models, the teacher's cached targets, the loop, the save."""
    texts = data.texts
    dev = torch.device(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, student, kept, teacher_layers, saved_max_len = _models(teacher_dir, s, dev)
    cache = out_dir / CACHE_FILE
    key = _cache_key(teacher, texts)
    cache_reused = _open_cached(cache, key) is not None
    targets = teacher_embeddings(teacher, texts, cache, batch_size=s.batch_size,
                                 show_progress_bar=s.show_progress_bar, precomputed=data.precomputed, key=key)
    teacher_dim = teacher.dim
    layers = None
    if s.hidden_weight > 0:  # the teacher's token states, step by step
        if teacher_dim != student.dim:
            raise UserError("hidden_weight needs the student's hidden size to be the teacher's")
        layers = _LayerTargets(teacher.eval().requires_grad_(False), list(kept))
    del teacher  # otherwise only its cached embeddings are needed from here on
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    loss_fn = MSELoss(student, teacher_dim=teacher_dim).to(dev)
    bf16 = use_bf16(dev, s.bf16)
    log_file = out_dir / "distill_log.jsonl"
    step, last_loss, texts_done, loop_s, val = _distill_loop(s, loss_fn, targets, data, dev, bf16, log_file, layers)
    student.eval()
    final = out_dir / "model"
    distill_len = student.max_seq_length
    student.max_seq_length = saved_max_len
    _cap_length(student)
    student.save(final)
    summary = {"steps": step, "epochs": s.epochs, "seconds": round(time.perf_counter() - t_start, 3),
               "train_seconds": round(loop_s, 3), "final_loss": last_loss,
               "texts": len(texts), "texts_per_s": round(texts_done / max(loop_s, 1e-9), 2),
               "student_layers": kept, "student_num_layers": len(_layer_list(student.transformer)[2]),
               "teacher_num_layers": teacher_layers, "student_dim": student.dim, "teacher_dim": teacher_dim,
               "projection": loss_fn.projection is not None, "kl_weight": s.kl_weight,
               "hidden_weight": s.hidden_weight,
               "kl_temperature": s.kl_temperature, "max_seq_length": distill_len,
               "cache": str(cache), "cache_reused": cache_reused, "output": str(final),
               "log_file": str(log_file), "device": str(dev), "bf16": bf16}
    if data.pairs:
        summary.update(pairs=len(data.pairs), contrastive_weight=s.contrastive_weight,
                       contrastive_scale=s.contrastive_scale, pair_batch_size=s.pair_batch_size)
    if val is not None:
        summary.update(val)
    write_json(out_dir / "distill_summary.json", summary)
    return summary


def _cap_length(model: EmbeddingModel) -> None:
    """Keep ``max_seq_length`` within the model's position embeddings (absolute positions)."""
    limit = getattr(model.transformer.config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and model.max_seq_length > limit:
        model.max_seq_length = limit
