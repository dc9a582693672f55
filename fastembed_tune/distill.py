"""Distillation: a smaller student learns to reproduce a teacher's sentence embeddings.

- :func:`prune_layers`: the student's starting point, a copy of the teacher that keeps the
  embeddings and a subset of the transformer layers (DistilBERT-style layer-pruned init).
- :func:`teacher_embeddings`: the teacher's embeddings of the distillation texts, computed once and
  cached on disk as a memory-mapped float32 ``.npy`` (written to a temp name, then renamed), keyed by
  a digest of the teacher's weights and settings, the texts and ``max_seq_length``.
- :func:`distill`: trains the student with :class:`~fastembed_tune.losses.MSELoss` against the cached
  teacher embeddings (a learned projection bridges different dimensions), optionally plus
  ``kl_weight`` x the KL divergence between the teacher's and the student's in-batch similarity
  distributions, and writes under ``output_dir``::

      model/                   the student, a sentence-transformers directory (SentenceTransformer(path) loads it)
      teacher_embeddings.npy   the teacher cache (+ teacher_embeddings.npy.meta.json, its key)
      distill_log.jsonl        one JSON line per logging step: step, epoch, loss, mse, kl, lr, texts_per_s, elapsed
      distill_summary.json     what :func:`distill` returns
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import check_output, clean_stale_inside, output_lock, temp_path, write_json
from .errors import UserError
from .loop import WindowLog, make_optimizer, make_scheduler, optimizer_step, set_seed, shuffled_batches, use_bf16
from .losses import MSELoss
from .model import EmbeddingModel

__all__ = ["parse_layers", "default_layers", "prune_layers", "teacher_embeddings", "in_batch_kl", "distill"]

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
    fastembed_tune.errors.UserError: --layers is empty; give the teacher layers to keep, such as 0,2,5, or leave the flag out for the default
    >>> parse_layers("0,x")
    Traceback (most recent call last):
    ...
    fastembed_tune.errors.UserError: --layers must be comma-separated integers such as 0,2,4; got '0,x'
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
    to the last. The last layer is kept on purpose: pooling reads its output, and a pruned copy
    without it starts far from the teacher (measured on the built-in sample, fine-tuned MiniLM
    nDCG@10 0.383 before any distillation: layers [0, 2, 5] 0.235, [0, 2, 4] 0.048).

    >>> default_layers(6), default_layers(12), default_layers(4), default_layers(1)
    ([0, 2, 5], [0, 2, 4, 7, 9, 11], [0, 3], [0])
    """
    k = (num_layers + 1) // 2
    if k <= 1:
        return [max(num_layers - 1, 0)]
    return sorted({int(np.ceil(i * (num_layers - 1) / (k - 1) - 0.5)) for i in range(k)})  # halves round down


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
    >>> from fastembed_tune.model import default_model_path
    >>> tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    >>> bert = transformers.BertModel(transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...     num_hidden_layers=4, num_attention_heads=1, intermediate_size=8))
    >>> student = prune_layers(EmbeddingModel(bert, tok), [0, 3])
    >>> student.transformer.config.num_hidden_layers, len(student.transformer.encoder.layer)
    (2, 2)
    >>> prune_layers(EmbeddingModel(bert, tok), [0, 4])
    Traceback (most recent call last):
    ...
    fastembed_tune.errors.UserError: --layers: layer 4 does not exist: this model has 4 layers, so layer indices must be between 0 and 3
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
    >>> from fastembed_tune.model import default_model_path
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


def distillation_texts(pairs: Sequence, corpus: Sequence[str]) -> list[str]:
    """The texts a student learns from: the training queries, the corpus, the training positives
    (distinct, in that order); never a test query when ``corpus`` holds no test document.

    >>> from fastembed_tune.data import Pair
    >>> distillation_texts([Pair("cat", "a feline")], ["a dog", "a feline"])
    ['cat', 'a dog', 'a feline']
    """
    return list(dict.fromkeys([p.query for p in pairs] + list(corpus) + [p.positive for p in pairs]))


def _check(name: str, ok: bool, v: Any, what: str) -> None:
    if not ok:
        raise UserError(f"{name} must be {what}; got {v!r}")


def distill(teacher_dir: Optional[PathLike], texts: Sequence[str], output_dir: PathLike,
            student_dir: Optional[PathLike] = None, layers: Union[str, Sequence[int], None] = None,
            epochs: int = 1, batch_size: int = 64, lr: float = 1e-4, kl_weight: float = 0.0,
            kl_temperature: float = 0.05, seed: int = 42, max_seq_length: Optional[int] = None,
            show_progress_bar: bool = True, warmup_ratio: float = 0.1, weight_decay: float = 0.01,
            max_grad_norm: Optional[float] = 1.0, logging_steps: int = 10, length_window: int = 50,
            device: Optional[str] = None, precomputed: Optional[dict] = None,
            bf16: Optional[bool] = None) -> dict:
    """Distil the teacher at ``teacher_dir`` (``None``: the built-in MiniLM) into a smaller student and
    save it to ``output_dir/model``.

    The student is ``student_dir`` loaded, or a copy of the teacher keeping ``layers`` (default:
    half of them spread from first to last, ``[0, 2, 5]`` of 6; see :func:`default_layers`). It learns the teacher's embeddings of ``texts``
    (duplicates and empty texts are dropped; the teacher runs once, cached by
    :func:`teacher_embeddings`) by MSE - through a learned linear projection when the dimensions
    differ - plus ``kl_weight`` x :func:`in_batch_kl` at ``kl_temperature``. AdamW (no decay on
    biases and LayerNorm) with linear warmup (``warmup_ratio``) and decay, gradient clipping,
    seeded shuffled batches of similar-length texts; ``max_seq_length`` (default: the teacher's) is
    used by both models while distilling, and the student is saved with the teacher's own.
    Logs to ``output_dir/distill_log.jsonl``. ``precomputed`` (``{text: row}``,
    made by this teacher at this ``max_seq_length``) spares the teacher those texts. ``bf16``: autocast
    the student's steps (None: where the hardware does bf16 natively, see :func:`~fastembed_tune.loop.use_bf16`).

    Returns a summary: steps, seconds, final_loss, student_layers (teacher layer indices kept, or
    ``None`` for ``student_dir``), student_num_layers, dims, projection, texts, cache_reused, output.

    >>> import tempfile, transformers
    >>> from fastembed_tune.model import default_model_path
    >>> tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    >>> bert = transformers.BertModel(transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...     num_hidden_layers=2, num_attention_heads=1, intermediate_size=8))
    >>> d = tempfile.mkdtemp(); EmbeddingModel(bert, tok, max_seq_length=32).save(d + "/teacher")
    >>> out = distill(d + "/teacher", [f"text {i}" for i in range(8)], d + "/out", batch_size=4,
    ...               show_progress_bar=False)
    >>> out["steps"], out["student_layers"], os.path.isfile(os.path.join(out["output"], "modules.json"))
    (2, [1], True)
    """
    t_start = time.perf_counter()
    _check("epochs", isinstance(epochs, int) and epochs >= 1, epochs, "an integer >= 1")
    _check("batch_size", isinstance(batch_size, int) and batch_size >= 1, batch_size, "an integer >= 1")
    _check("logging_steps", isinstance(logging_steps, int) and logging_steps >= 1, logging_steps, "an integer >= 1")
    _check("lr", isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0, lr, "a finite number >= 0")
    _check("kl_weight", isinstance(kl_weight, (int, float)) and math.isfinite(kl_weight) and kl_weight >= 0,
           kl_weight, "a finite number >= 0")
    _check("kl_temperature", isinstance(kl_temperature, (int, float)) and math.isfinite(kl_temperature)
           and kl_temperature > 0, kl_temperature, "a finite number > 0")
    _check("warmup_ratio", 0 <= warmup_ratio <= 1, warmup_ratio, "between 0 and 1")
    _check("weight_decay", weight_decay >= 0, weight_decay, ">= 0")
    _check("max_seq_length", max_seq_length is None or (isinstance(max_seq_length, int) and max_seq_length >= 1),
           max_seq_length, "a positive integer or None")
    layers = parse_layers(layers)
    if student_dir is not None and layers is not None:
        raise UserError("give either a student model (student_dir) or the teacher layers to keep (layers), not both")
    texts = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))
    if not texts:
        raise UserError("distillation needs at least one non-empty text")

    settings = _Settings(teacher_dir, student_dir, layers, epochs, batch_size, lr, kl_weight, kl_temperature, seed,
                         max_seq_length, show_progress_bar, warmup_ratio, weight_decay, max_grad_norm, logging_steps,
                         length_window, device, precomputed, bf16)
    out_dir = check_output(output_dir, "dir")
    with output_lock(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_inside(out_dir)  # a killed run's half-written cache or model
        return _distill_locked(settings, texts, out_dir, t_start)


@dataclass
class _Settings:
    """:func:`distill`'s arguments, checked, passed on to its steps below."""
    teacher_dir: Optional[PathLike]
    student_dir: Optional[PathLike]
    layers: Optional[list[int]]
    epochs: int
    batch_size: int
    lr: float
    kl_weight: float
    kl_temperature: float
    seed: int
    max_seq_length: Optional[int]
    show_progress_bar: bool
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: Optional[float]
    logging_steps: int
    length_window: int
    device: Optional[str]
    precomputed: Optional[dict]
    bf16: Optional[bool]


def _models(s: _Settings, dev: torch.device) -> tuple[EmbeddingModel, EmbeddingModel, Optional[list[int]], int, int]:
    """(teacher at the distillation length, student, teacher layers kept, teacher's layer count,
    the teacher's own max_seq_length, which the student is saved with, as train does)."""
    teacher = EmbeddingModel.load(s.teacher_dir, device=str(dev))
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


def _distill_loop(s: _Settings, loss_fn: MSELoss, targets: np.ndarray, texts: list[str], dev: torch.device,
                  bf16: bool, log_file: Path) -> tuple[int, float, int, float]:
    """The epochs of MSE (+ in-batch KL) steps; returns (steps, last loss, texts seen, seconds)."""
    student = loss_fn.model
    total_steps = s.epochs * math.ceil(len(texts) / s.batch_size)
    optimizer = make_optimizer(loss_fn, s.lr, s.weight_decay)  # the student and the projection
    scheduler = make_scheduler(optimizer, s.warmup_ratio, total_steps)
    captured: dict[str, torch.Tensor] = {}
    hook = student.register_forward_hook(lambda m, i, o: captured.__setitem__("emb", o["sentence_embedding"]))
    set_seed(s.seed)
    loss_fn.train()
    step, last_loss, texts_done, t_loop = 0, float("nan"), 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="distill", unit="step", disable=not s.show_progress_bar)
    try:
        with open(log_file, "w", encoding="utf-8") as f:
            log = WindowLog(f, s.logging_steps, "texts_per_s")
            for epoch in range(s.epochs):
                batches = shuffled_batches([len(t) for t in texts], s.batch_size, s.seed, epoch, s.length_window)
                for bidx, idx in enumerate(batches):
                    idx = np.sort(idx)  # sequential reads from the memory map
                    labels = torch.from_numpy(np.asarray(targets[idx], dtype=np.float32)).to(dev)
                    feats = {k: v.to(dev) for k, v in student.tokenize([texts[i] for i in idx]).items()}
                    lr_now = scheduler.get_last_lr()[0]
                    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
                        mse = loss_fn([feats], labels)
                        kl = in_batch_kl(labels, captured.pop("emb"), s.kl_temperature) if s.kl_weight > 0 else None
                    loss = mse + s.kl_weight * kl if kl is not None else mse
                    loss.backward()
                    optimizer_step(loss_fn.parameters(), optimizer, scheduler, s.max_grad_norm)
                    step, last_loss, texts_done = step + 1, float(loss.detach()), texts_done + len(idx)
                    if not math.isfinite(last_loss):
                        raise UserError(f"the distillation loss became {last_loss} at step {step}; lower lr "
                                        f"(now {s.lr}) or kl_weight (now {s.kl_weight})")
                    rec = log.add(step, epoch + (bidx + 1) / len(batches), lr_now, len(idx), total_steps,
                                  loss=last_loss, mse=float(mse.detach()),
                                  kl=float(kl.detach()) if kl is not None else None)
                    if rec:
                        bar.set_postfix(loss=f"{rec['loss']:.5f}")
                    bar.update(1)
    finally:
        bar.close()
        hook.remove()
    return step, last_loss, texts_done, time.perf_counter() - t_loop


def _distill_locked(s: _Settings, texts: list[str], out_dir: Path, t_start: float) -> dict:
    """:func:`distill` once ``out_dir`` is locked: models, the teacher's cached targets, the loop, the save."""
    dev = torch.device(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, student, kept, teacher_layers, saved_max_len = _models(s, dev)
    cache = out_dir / CACHE_FILE
    key = _cache_key(teacher, texts)
    cache_reused = _open_cached(cache, key) is not None
    targets = teacher_embeddings(teacher, texts, cache, batch_size=s.batch_size,
                                 show_progress_bar=s.show_progress_bar, precomputed=s.precomputed, key=key)
    teacher_dim = teacher.dim
    del teacher  # only its cached embeddings are needed from here on
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    loss_fn = MSELoss(student, teacher_dim=teacher_dim).to(dev)
    bf16 = use_bf16(dev, s.bf16)
    log_file = out_dir / "distill_log.jsonl"
    step, last_loss, texts_done, loop_s = _distill_loop(s, loss_fn, targets, texts, dev, bf16, log_file)
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
               "kl_temperature": s.kl_temperature, "max_seq_length": distill_len,
               "cache": str(cache), "cache_reused": cache_reused, "output": str(final),
               "log_file": str(log_file), "device": str(dev), "bf16": bf16}
    write_json(out_dir / "distill_summary.json", summary)
    return summary


def _cap_length(model: EmbeddingModel) -> None:
    """Keep ``max_seq_length`` within the model's position embeddings (absolute positions)."""
    limit = getattr(model.transformer.config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and model.max_seq_length > limit:
        model.max_seq_length = limit
