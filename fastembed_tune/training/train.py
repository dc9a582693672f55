"""The thin trainer: batches, loop, optimizer, schedule, checkpoints, resume, replay.

``train(pairs, TrainConfig(...))`` fine-tunes an :class:`~fastembed_tune.embed.model.EmbeddingModel`
with one of our loss modules and writes, under ``output_dir``::

    model/                 the final model, a sentence-transformers directory (SentenceTransformer(path) loads it)
    checkpoint-{step}/     the last ``keep_checkpoints`` checkpoints (training_state.pt + trainer_state.json)
    train_log.jsonl        one JSON line per logging step: step, epoch, loss, lr, pairs_per_s, elapsed
    train_summary.json     what :func:`train` returns

Batches (:func:`epoch_batches`) are a deterministic function of (data, seed, epoch):

1. the epoch's pairs are shuffled with ``numpy.random.default_rng([seed, epoch])``;
2. length grouping: the shuffled order is cut into windows of ``length_window * batch_size``
   pairs and each window is sorted (stably) by ``len(query) + len(positive)``, so that a batch
   holds texts of similar length and dynamic padding (``model.tokenize`` pads to the longest
   text of the batch's column) wastes little;
3. no duplicates: batches are filled as sentence-transformers' ``NoDuplicatesBatchSampler`` does
   - a pair sharing any text (query, positive or a usable negative) with a pair already in the
   batch is deferred to a later batch, and deferred pairs are offered first to the next batch;
4. an incomplete batch is dropped only when it has fewer than 2 pairs (in-batch negatives need 2);
5. the order of the batches is shuffled with the same generator.

Hard negatives: a batch gets ``min(num_negatives, fewest negatives of any pair in the batch)``
negative columns; a pair's negatives are never lent to another pair. Replay (incremental
fine-tuning): each epoch adds ``round(replay_ratio * len(pairs))`` pairs sampled from the replay
file with ``default_rng([seed, epoch, 1])`` (without replacement when there are enough).

Resume: a checkpoint holds the model weights, the optimizer, the scheduler, the python / numpy /
torch (and CUDA) RNG states and the data position (epoch, next batch, a digest of the epoch's
batch order and of the data) and the record of the settings that change the run's result
(:func:`run_settings`). ``resume=True`` continues from the newest checkpoint that loads, so a run
killed with SIGKILL and resumed ends with the same weights as one never interrupted; a resume with
another model, loss, lr, batch size, sequence length, precision, ... is refused, naming each changed
setting with its old and new value (how the run is watched or saved may change).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from fastembed_tune.core.atomic import (
    atomic_write,
    check_output,
    clean_stale_inside,
    output_lock,
    remove_dir,
    replace_dir,
    temp_dir,
    write_json,
)
from fastembed_tune.core.distributed import barrier, gather_with_grad, init_from_env, launch_rank, shard
from fastembed_tune.core.errors import UserError
from fastembed_tune.data.readers import Pair, pair_digest_line, read_pairs
from fastembed_tune.data.stream import PairStream, StreamEpoch
from fastembed_tune.embed.model import EmbeddingModel
from fastembed_tune.training.loop import (
    WindowLog,
    length_grouped,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    set_seed,
    use_bf16,
)
from fastembed_tune.training.losses import CachedFusedMNRLoss, FusedMNRLoss, TripletLoss, text_keys
from fastembed_tune.training.validation import BestTracker, Validation, split_validation

LOSSES = ("mnrl", "cached_mnrl", "triplet")
CHECKPOINT_PREFIX = "checkpoint-"
_STATE_FILE = "training_state.pt"
_JSON_FILE = "trainer_state.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the pairs.

    ``max_steps`` (when set) overrides ``epochs``: training runs exactly that many optimizer steps,
    going through as many epochs as it takes. ``log_file`` defaults to
    ``output_dir/train_log.jsonl``; ``device`` defaults to CUDA when available, else CPU.
    ``bf16`` (autocast; weights and optimizer stay float32): ``None`` = where the hardware does it
    natively (CUDA, or a CPU with AVX512-BF16/AMX, where steps run faster), ``False`` = never.
    ``validation_share`` > 0 holds out that share of the training queries (at most
    ``validation_max_queries``, never one of ``validation_avoid``; or give ``validation_pairs``
    split already; distractors from ``validation_corpus``), scores nDCG@10 on them every
    ``eval_every`` steps (default: 4 times a run) and at the end, keeps the best model (``model/``
    is the best one, ``best/`` while training) and stops after ``patience`` evaluations without gain.

    >>> c = TrainConfig(output_dir="out", loss="triplet")
    >>> (c.batch_size, c.lr, c.loss, c.resolved_log_file())
    (32, 2e-05, 'triplet', 'out/train_log.jsonl')
    """

    output_dir: str
    model: Optional[str] = None
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: Optional[float] = 1.0
    seed: int = 42
    loss: str = "mnrl"
    scale: float = 20.0
    symmetric: bool = False
    mini_batch_size: int = 32
    triplet_margin: float = 0.25
    num_negatives: Optional[int] = None
    checkpoint_every: Optional[int] = None
    keep_checkpoints: Optional[int] = 2
    resume: bool = False
    replay: Optional[str] = None
    replay_ratio: float = 0.0
    log_file: Optional[str] = None
    logging_steps: int = 10
    show_progress_bar: bool = True
    max_seq_length: Optional[int] = None
    length_window: int = 50
    device: Optional[str] = None
    bf16: Optional[bool] = None
    validation_share: float = 0.0
    validation_max_queries: int = 500
    validation_corpus: Optional[Sequence[str]] = None
    validation_avoid: Sequence[str] = ()
    validation_pairs: Optional[Sequence[Pair]] = None
    eval_every: Optional[int] = None
    patience: Optional[int] = 2

    def resolved_log_file(self) -> str:
        """The JSONL log path: ``log_file`` or ``output_dir/train_log.jsonl``.

        >>> TrainConfig(output_dir="o", log_file="l.jsonl").resolved_log_file()
        'l.jsonl'
        """
        return self.log_file or os.path.join(self.output_dir, "train_log.jsonl")

    def validate(self) -> None:
        """Raise :class:`UserError` with one sentence for the first bad setting.

        >>> TrainConfig(output_dir="o", loss="cosine").validate()
        Traceback (most recent call last):
        ...
        fastembed_tune.core.errors.UserError: loss must be one of mnrl, cached_mnrl, triplet; got 'cosine'
        """
        if self.loss not in LOSSES:
            raise UserError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs, "mini_batch_size": self.mini_batch_size,
                    "logging_steps": self.logging_steps}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be an integer >= 1; got {v!r}")
        for name in ("max_steps", "checkpoint_every", "keep_checkpoints", "max_seq_length"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < (0 if name == "max_steps" else 1)):
                raise UserError(f"{name} must be a positive integer or None; got {v!r}")
        if self.num_negatives is not None and (not isinstance(self.num_negatives, int) or self.num_negatives < 0):
            raise UserError(f"num_negatives must be an integer >= 0 or None; got {self.num_negatives!r}")
        if self.loss == "triplet" and self.num_negatives is not None and self.num_negatives < 1:
            raise UserError("the triplet loss needs num_negatives >= 1")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a finite number >= 0; got {self.lr!r}")
        if not 0 <= self.warmup_ratio <= 1:
            raise UserError(f"warmup_ratio must be between 0 and 1; got {self.warmup_ratio!r}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0; got {self.weight_decay!r}")
        if not (self.replay_ratio >= 0 and math.isfinite(self.replay_ratio)):
            raise UserError(f"replay_ratio must be a finite number >= 0; got {self.replay_ratio!r}")
        if self.replay_ratio > 0 and not self.replay:
            raise UserError("replay_ratio > 0 needs a replay file (the old training data)")
        if not 0 <= self.validation_share < 1:
            raise UserError(f"validation_share must be in [0, 1); got {self.validation_share!r}")
        for name in ("eval_every", "patience"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"{name} must be a positive integer or None; got {v!r}")
        if self.length_window < 0:
            raise UserError(f"length_window must be >= 0; got {self.length_window!r}")


# ----------------------------------------------------------------------------------------------
# data: replay mixing, batches, columns


def mix_replay(pairs: Sequence[Pair], replay: Sequence[Pair], ratio: float, seed: int, epoch: int,
               key: Sequence[int] = ()) -> list[Pair]:
    """The epoch's training set: ``pairs`` plus ``round(ratio * len(pairs))`` pairs sampled from
    ``replay`` with ``default_rng([seed, epoch, 1, *key])`` (without replacement when replay is big
    enough; ``key``: a streamed window's number).

    >>> new = [Pair(f"q{i}", f"d{i}") for i in range(10)]; old = [Pair(f"o{i}", f"e{i}") for i in range(100)]
    >>> mixed = mix_replay(new, old, 0.3, seed=0, epoch=0)
    >>> len(mixed), sum(p.query.startswith("o") for p in mixed)
    (13, 3)
    """
    k = int(round(ratio * len(pairs))) if replay else 0
    if k <= 0:
        return list(pairs)
    rng = np.random.default_rng([seed, epoch, 1, *key])
    idx = rng.choice(len(replay), size=k, replace=k > len(replay))
    return list(pairs) + [replay[int(i)] for i in idx]


def _pair_texts(p: Pair, num_negatives: int) -> frozenset:
    return frozenset([p.query, p.positive, *p.negatives[:num_negatives]])


def no_duplicate_batches(order: Sequence[int], texts: Sequence[frozenset], batch_size: int) -> list[list[int]]:
    """Cut ``order`` into batches of ``batch_size`` with no text twice in a batch: an index whose
    texts meet the batch's is deferred (and offered first to the next batch). Every index lands
    in exactly one batch; the last batches may be incomplete.

    >>> t = [frozenset({"a", "x"}), frozenset({"a", "y"}), frozenset({"b", "z"}), frozenset({"c", "w"})]
    >>> no_duplicate_batches([0, 1, 2, 3], t, 2)
    [[0, 2], [1, 3]]
    """
    remaining = dict.fromkeys(int(i) for i in order)
    batches: list[list[int]] = []
    while remaining:
        seen: set = set()
        batch: list[int] = []
        for i in remaining:
            if seen.isdisjoint(texts[i]):
                batch.append(i)
                seen.update(texts[i])
                if len(batch) == batch_size:
                    break
        for i in batch:
            del remaining[i]
        batches.append(batch)
    return batches


def epoch_batches(pairs: Sequence[Pair], batch_size: int, seed: int, epoch: int, num_negatives: int = 1,
                  length_window: int = 50, key: Sequence[int] = ()) -> list[list[int]]:
    """The epoch's batches (lists of indices into ``pairs``): shuffle by ``default_rng([seed,
    epoch, *key])`` (``key``: a streamed window's number), length grouping within windows of
    ``length_window`` batches, no duplicate text in a batch, batches of fewer than 2 pairs dropped,
    batch order shuffled. A pure function of its arguments.

    >>> ps = [Pair(f"q{i}", f"d{i}") for i in range(10)] + [Pair("q0", "other")]
    >>> bs = epoch_batches(ps, 4, seed=0, epoch=0)
    >>> sorted(len(b) for b in bs), sorted(i for b in bs for i in b) == list(range(11))
    ([3, 4, 4], True)
    >>> bs == epoch_batches(ps, 4, seed=0, epoch=0) != epoch_batches(ps, 4, seed=0, epoch=1)
    True
    """
    rng = np.random.default_rng([seed, epoch, *key])
    order = length_grouped(rng.permutation(len(pairs)), [len(p.query) + len(p.positive) for p in pairs],
                           batch_size, length_window)
    texts = [_pair_texts(p, num_negatives) for p in pairs]
    batches = [b for b in no_duplicate_batches(order, texts, batch_size) if len(b) >= min(2, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_columns(pairs: Sequence[Pair], num_negatives: int) -> list[list[str]]:
    """The batch's text columns: queries, positives, then ``min(num_negatives, fewest negatives
    in the batch)`` hard-negative columns (each pair keeps its own negatives).

    >>> batch_columns([Pair("q1", "d1", ["n1", "m1"]), Pair("q2", "d2", ["n2"])], 2)
    [['q1', 'q2'], ['d1', 'd2'], ['n1', 'n2']]
    """
    n_neg = min([num_negatives] + [len(p.negatives) for p in pairs])
    cols = [[p.query for p in pairs], [p.positive for p in pairs]]
    cols += [[p.negatives[j] for p in pairs] for j in range(n_neg)]
    return cols


def _negative_counts(pairs: Sequence[Pair]) -> dict[int, int]:
    """Pairs by how many hard negatives they hold: {number of negatives: pairs}."""
    counts: dict[int, int] = {}
    for p in pairs:
        counts[len(p.negatives)] = counts.get(len(p.negatives), 0) + 1
    return counts


def negatives_shortfall(pairs: Union[Sequence[Pair], dict[int, int]], num_negatives: int) -> Optional[str]:
    """A plain-words warning when pairs hold fewer hard negatives than ``num_negatives`` asks for
    (a batch uses as many negative columns as its poorest pair has), else None. ``pairs`` may be
    given as counts: {number of negatives: pairs}.

    >>> print(negatives_shortfall([Pair("q", "d"), Pair("r", "e", ["n"])], 1))
    warning: --num-negatives 1 asks for 1 hard negative per pair, but 1 of 2 pairs have no negatives; batches holding such a pair train on in-batch negatives only; mine them first (fastembed-tune mine)
    >>> negatives_shortfall({0: 1, 1: 1}, 1) == negatives_shortfall([Pair("q", "d"), Pair("r", "e", ["n"])], 1)
    True
    """
    if num_negatives < 1:
        return None
    counts = pairs if isinstance(pairs, dict) else _negative_counts(pairs)
    total = sum(counts.values())
    none = counts.get(0, 0)
    fewer = sum(v for n, v in counts.items() if n < num_negatives)
    if not fewer:
        return None
    what = (f"{none} of {total} pairs have no negatives" if none else
            f"{fewer} of {total} pairs have fewer than {num_negatives}")
    return (f"warning: --num-negatives {num_negatives} asks for {num_negatives} hard negative"
            f"{'s' if num_negatives > 1 else ''} per pair, but {what}; batches holding such a pair train on "
            f"{'in-batch negatives only' if none else 'fewer negative columns'}; mine them first (fastembed-tune mine)")


def build_loss(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """The loss module named by ``config.loss``.

    >>> from fastembed_tune.training.losses import TripletLoss
    >>> isinstance(build_loss(torch.nn.Linear(1, 1), TrainConfig("o", loss="triplet")), TripletLoss)
    True
    """
    if config.loss == "mnrl":
        return FusedMNRLoss(model, scale=config.scale, symmetric=config.symmetric)
    if config.loss == "cached_mnrl":
        return CachedFusedMNRLoss(model, scale=config.scale, symmetric=config.symmetric,
                                  mini_batch_size=config.mini_batch_size)
    if config.loss == "triplet":
        return TripletLoss(model, margin=config.triplet_margin)
    raise UserError(f"loss must be one of {', '.join(LOSSES)}; got {config.loss!r}")


# ----------------------------------------------------------------------------------------------
# checkpoints


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def _data_digest(pairs: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(pair_digest_line(p))
    return h.hexdigest()


def list_checkpoints(output_dir: Union[str, os.PathLike]) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (a checkpoint only gets its name once
    fully written, so every ``checkpoint-N`` listed is complete).

    >>> list_checkpoints("/nonexistent")
    []
    """
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _rng_states() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_states(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, position: dict,
                     keep: Optional[int]) -> Path:
    """Write checkpoint-{step} atomically (temp dir + rename), then keep only the newest ``keep``;
    an old checkpoint is renamed to a hidden name before it is deleted, so a kill while pruning
    never leaves a half-deleted ``checkpoint-N`` (the hidden leftover is cleaned by the next run)."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = temp_dir(final)
    try:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": _rng_states()}
        _fsync_write(tmp / _STATE_FILE, lambda f: torch.save(state, f))
        _fsync_write(tmp / _JSON_FILE, lambda f: f.write(json.dumps(position, indent=2).encode()))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            remove_dir(old)
    return final


# The settings that change a run's result: recorded with every checkpoint and compared at resume,
# so a resumed run never mixes two runs. The others only change how a run is watched, saved or
# placed and may differ: show_progress_bar, logging_steps, log_file, checkpoint_every,
# keep_checkpoints, device, mini_batch_size (GradCache's memory knob: the same loss and gradients).
RUN_SETTINGS = ("model", "loss", "scale", "symmetric", "triplet_margin", "batch_size", "num_negatives", "seed",
                "length_window", "lr", "warmup_ratio", "weight_decay", "max_grad_norm", "epochs", "max_steps",
                "replay_ratio", "max_seq_length", "bf16", "validation_share", "validation_max_queries",
                "eval_every", "patience")
_RESOLVED_SETTINGS = ("model", "max_seq_length", "bf16", "eval_every")  # recorded as the run resolved them


def run_settings(config: TrainConfig, max_seq_length: int, bf16: bool, eval_every: int = 0) -> dict:
    """The record of a run's :data:`RUN_SETTINGS`, as the run resolved them: the model folder's real
    path, the sequence length trained at, bf16 on or off, the validation cadence (``eval_every``
    0: no validation, so neither it nor ``patience`` matters); ``epochs`` is None under ``max_steps``.

    >>> s = run_settings(TrainConfig("o", max_steps=4), max_seq_length=64, bf16=False)
    >>> s["lr"], s["epochs"], s["max_seq_length"], s["bf16"], s["patience"]
    (2e-05, None, 64, False, None)
    """
    s = {k: getattr(config, k) for k in RUN_SETTINGS}
    model = config.model
    s.update(model=os.path.realpath(model) if model and os.path.isdir(model) else model,
             max_seq_length=max_seq_length, bf16=bool(bf16), eval_every=eval_every or None)
    if config.max_steps is not None:
        s["epochs"] = None
    if not eval_every:
        s["patience"] = None
    return s


def _show_setting(name: str, value: Any) -> str:
    """One setting as its flag and value: ``--lr 0.001``, ``--precision bf16``, ``--symmetric off``."""
    if name == "bf16":
        return f"--precision {'bf16' if value else 'fp32'}"
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return f"{flag} {'on' if value else 'off'}"
    return f"{flag} {'unset' if value is None else value}"


def settings_mismatch(saved: dict, now: dict) -> Optional[str]:
    """What differs between a checkpoint's settings record and this run's (only the names both
    records hold are compared), as "with X; this run asks for Y"; None when nothing does.

    >>> settings_mismatch({"lr": 0.001, "seed": 42}, {"lr": 0.01, "seed": 42})
    'with --lr 0.001; this run asks for --lr 0.01'
    >>> settings_mismatch({"bf16": True}, {"bf16": True}) is None
    True
    """
    names = [k for k in RUN_SETTINGS if k in saved and k in now and saved[k] != now[k]]
    if not names:
        return None
    return (f"with {', '.join(_show_setting(k, saved[k]) for k in names)}; "
            f"this run asks for {', '.join(_show_setting(k, now[k]) for k in names)}")


def _check_settings(ckpt: Path, position: dict, now: dict) -> None:
    """Refuse to resume ``ckpt`` with settings that change the run. A checkpoint written before
    the settings record existed is compared on its raw config (the resolved settings left out)."""
    saved = position.get("settings")
    if saved is None:
        raw = position.get("config") or {}
        saved = {k: raw[k] for k in RUN_SETTINGS if k in raw and k not in _RESOLVED_SETTINGS + ("patience",)}
        if raw.get("max_steps") is not None:
            saved["epochs"] = None
    mismatch = settings_mismatch(saved, now)
    if mismatch:
        raise UserError(f"{ckpt} was written {mismatch}: resuming would mix two runs; resume with the "
                        f"checkpoint's settings, or train without --resume into another output folder")


def _load_latest_checkpoint(output_dir: Path) -> Optional[tuple[Path, dict, dict]]:
    for ckpt in reversed(list_checkpoints(output_dir)):
        try:
            position = json.loads((ckpt / _JSON_FILE).read_text())
            state = torch.load(ckpt / _STATE_FILE, map_location="cpu", weights_only=False)
            return ckpt, position, state
        except Exception as e:  # a damaged checkpoint: fall back to the one before
            print(f"warning: {ckpt} cannot be loaded ({type(e).__name__}: {e}); trying an older one",
                  file=sys.stderr)
    return None


# ----------------------------------------------------------------------------------------------
# the loop


def _truncate_log(log_file: Path, step: int) -> None:
    """Keep the log lines of steps <= ``step`` (a killed run may have logged past its checkpoint)."""
    if not log_file.is_file():
        return
    keep = []
    for line in log_file.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write(log_file, lambda f: f.writelines(line + "\n" for line in keep))


def _distributed_step(ddp, model, loss_fn, batch: list[Pair], config: TrainConfig, device, bf16: bool,
                      rank: int, wsize: int) -> torch.Tensor:
    """One global batch under torchrun: this rank embeds its contiguous shard in one DDP forward;
    for the contrastive loss every rank all-gathers all ranks' embeddings (its own slice keeps its
    gradient) and computes the loss of the whole global batch, so every document of every rank is
    a negative and the loss equals the single-process one; ``loss * world_size`` is
    back-propagated because DDP averages the gradients over ranks."""
    n_neg = min([config.num_negatives] + [len(p.negatives) for p in batch])
    local = batch[shard(len(batch), rank, wsize)]
    cols = batch_columns(local, n_neg)
    feats = {k: v.to(device) for k, v in model.tokenize([t for c in cols for t in c]).items()}
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        emb = ddp(feats)["sentence_embedding"]
    parts = list(emb.float().split(len(local)))
    if isinstance(loss_fn, FusedMNRLoss):
        keys = None
        if loss_fn.mask_duplicates:
            keys = text_keys([model.tokenize(c) for c in batch_columns(batch, n_neg)[1:]]).to(device)
        loss = loss_fn.loss_from_embeddings([gather_with_grad(p) for p in parts], doc_keys=keys)
        (loss * wsize).backward()
        return loss
    loss = loss_fn.loss_from_embeddings(parts)
    loss.backward()
    shown = loss.detach().clone()
    torch.distributed.all_reduce(shown)
    return shown / wsize


def train(pairs: Union[Sequence[Pair], PairStream], config: TrainConfig,
          model: Optional[EmbeddingModel] = None) -> dict:
    """Fine-tune ``model`` (default: ``EmbeddingModel.load(config.model)``) on ``pairs`` and save
    it to ``config.output_dir/model``; returns a summary (steps, final_loss, pairs_per_s, seconds,
    output, ...). The model passed in is trained in place.

    ``pairs`` may be a :class:`~fastembed_tune.data.stream.PairStream` (a file read window by window,
    never whole): it holds out its own validation queries (``validation_pairs`` of the config, when
    given, replace them) and resumes as exactly as a list does.

    >>> import tempfile, transformers
    >>> from fastembed_tune.embed.model import default_model_path
    >>> tok = transformers.AutoTokenizer.from_pretrained(default_model_path())
    >>> bert = transformers.BertModel(transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=8,
    ...     num_hidden_layers=1, num_attention_heads=1, intermediate_size=8))
    >>> ps = [Pair(f"query {i}", f"document {i}") for i in range(8)]
    >>> out = train(ps, TrainConfig(tempfile.mkdtemp(), batch_size=4, show_progress_bar=False),
    ...             EmbeddingModel(bert, tok, "mean", True, 32))
    >>> out["steps"], os.path.isfile(os.path.join(out["output"], "modules.json"))
    (2, True)
    """
    t_start = time.perf_counter()
    config.validate()
    stream = pairs if isinstance(pairs, PairStream) else None
    if stream is None:
        pairs = list(pairs)
    counts = stream.negatives if stream else _negative_counts(pairs)
    if config.loss == "triplet" and counts.get(0):
        first = next((p.source or repr(p.query) for p in pairs if not p.negatives), "") if stream is None else ""
        raise UserError(f"the triplet loss needs a negative for every pair; {counts[0]} of {len(pairs)} have none"
                        + (f" (first: {first})" if first else "") + "; mine negatives first")
    replay = read_pairs(config.replay) if config.replay and config.replay_ratio > 0 else []
    if len(pairs) < 2:
        raise UserError(f"training needs at least 2 pairs; got {len(pairs)}")
    if config.validation_pairs is not None:  # the caller split already (run scores its artifacts on them too)
        val_pairs = list(config.validation_pairs)
    elif stream is not None:
        val_pairs = stream.validation_pairs
    else:
        pairs, val_pairs = split_validation(pairs, config.validation_share, config.validation_max_queries,
                                            config.seed, config.validation_avoid)
        counts = _negative_counts(pairs)
    if config.num_negatives is None:  # not asked for: up to 1 where the pairs have one, silently
        config = dataclasses.replace(config, num_negatives=1)
    elif config.loss != "triplet" and launch_rank() == 0:
        warning = negatives_shortfall(counts, config.num_negatives)
        if warning:
            print(warning, file=sys.stderr)
    out_dir = check_output(config.output_dir, "dir")
    rank = launch_rank()  # one lock for the whole torchrun job, held by rank 0
    with output_lock(out_dir) if rank == 0 else nullcontext():
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_inside(out_dir)  # what a killed run left: temp checkpoints, half-saved models
        return _train_locked(pairs, replay, config, model, out_dir, t_start, val_pairs)


@dataclass
class _Run:
    """One training run's parts, shared by the set-up, resume, loop and finish steps below."""
    config: TrainConfig
    model: EmbeddingModel
    loss_fn: torch.nn.Module
    device: torch.device
    rank: int
    wsize: int
    bf16: bool
    epochs: "_EpochData"
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data_digest: str
    out_dir: Path
    log_file: Path
    saved_max_len: int
    ddp: Any = None
    step: int = 0
    epoch: int = 0
    bidx: int = 0
    elapsed0: float = 0.0
    log_window: Optional[dict] = None
    validation: Optional[Validation] = None
    tracker: BestTracker = dataclasses.field(default_factory=BestTracker)
    eval_every: int = 0
    stopped_early: bool = False


class _ListEpoch:
    """One epoch of pairs held in memory: ``len`` batches, ``batch(i)``, a digest of the batches."""

    def __init__(self, pairs: list[Pair], batches: list[list[int]], extra_pairs: int):
        self.pairs, self.batches, self.extra_pairs = pairs, batches, extra_pairs
        self.digest = _digest(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def batch(self, i: int) -> list[Pair]:
        return [self.pairs[j] for j in self.batches[i]]


class _EpochData:
    """The epochs' batches, a pure function of (data, seed, epoch): a list of pairs, or a
    :class:`~fastembed_tune.data.stream.PairStream` read window by window. The last epoch is kept."""

    def __init__(self, pairs: Union[list[Pair], PairStream], replay: list[Pair], config: TrainConfig):
        self.pairs, self.replay, self.config = pairs, replay, config
        self.cache: dict[int, Union[_ListEpoch, StreamEpoch]] = {}

    def _batches(self, pairs: list[Pair], e: int, key: Sequence[int] = ()) -> tuple[list[Pair], list[list[int]]]:
        c = self.config
        ep = mix_replay(pairs, self.replay, c.replay_ratio, c.seed, e, key)
        return ep, epoch_batches(ep, c.batch_size, c.seed, e, c.num_negatives, c.length_window, key)

    def __call__(self, e: int) -> Union[_ListEpoch, StreamEpoch]:
        if e not in self.cache:
            self.cache.clear()
            if isinstance(self.pairs, PairStream):
                epoch = StreamEpoch(self.pairs, e, lambda pairs, key: self._batches(pairs, e, key),
                                    self.config.show_progress_bar)
            else:
                ep, bs = self._batches(self.pairs, e)
                epoch = _ListEpoch(ep, bs, len(ep) - len(self.pairs))
            if not len(epoch):
                raise UserError("no batch of 2 or more pairs without a repeated text can be formed from this data")
            self.cache[e] = epoch
        return self.cache[e]


def _prepare(pairs: Union[list[Pair], PairStream], replay: list[Pair], config: TrainConfig, model: Optional[EmbeddingModel],
             out_dir: Path) -> _Run:
    """Device and process group, the model (training may truncate harder than the saved model's own
    max_seq_length), the loss, the epochs' batches, the optimizer and the schedule."""
    if not config.resume and list_checkpoints(out_dir):
        raise UserError(f"{out_dir} holds checkpoints of an earlier run: resume it (resume=True / --resume), "
                        f"or remove them, or choose another output_dir")
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, wsize = init_from_env(device)
    if device.type == "cuda" and wsize > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if wsize > 1 and config.loss == "cached_mnrl":
        raise UserError("cached_mnrl is not supported under torchrun yet; use mnrl (all ranks' documents are "
                        "negatives already) or triplet")
    if model is None:
        model = EmbeddingModel.load(config.model)
    saved_max_len = model.max_seq_length
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    model.to(device)
    epochs = _EpochData(pairs, replay, config)
    total = config.max_steps if config.max_steps is not None else sum(len(epochs(e)) for e in range(config.epochs))
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    log_file = Path(config.resolved_log_file())
    log_file.parent.mkdir(parents=True, exist_ok=True)
    return _Run(config, model, build_loss(model, config).to(device), device, rank, wsize, use_bf16(device, config.bf16),
                epochs, total, optimizer, make_scheduler(optimizer, config.warmup_ratio, total),
                (pairs.digest if isinstance(pairs, PairStream) else _data_digest(pairs)) + ":" + _data_digest(replay),
                out_dir, log_file, saved_max_len)


def _settings(run: _Run) -> dict:
    """This run's settings record (:func:`run_settings`), trained length and bf16 as resolved."""
    return run_settings(run.config, run.model.max_seq_length, run.bf16,
                        run.eval_every if run.validation is not None else 0)


def _resume(run: _Run) -> bool:
    """Continue from the newest checkpoint that loads (``config.resume``): weights, optimizer,
    schedule, data position, the log's open window, the RNG states (set last, so nothing before
    the loop changes what it draws). A fresh run starts a new log. Returns whether it resumed."""
    loaded = _load_latest_checkpoint(run.out_dir) if run.config.resume else None
    if loaded is None:
        if run.log_file.exists() and run.rank == 0:
            run.log_file.unlink()
        set_seed(run.config.seed)
        return False
    ckpt, position, state = loaded
    _check_settings(ckpt, position, _settings(run))
    if position.get("data_digest") != run.data_digest:
        raise UserError(f"{ckpt} was written for other training data; resume with the same pairs "
                        f"(and replay file), or choose another output_dir")
    run.step, run.epoch, run.bidx = int(position["step"]), int(position["epoch"]), int(position["batch_index"])
    run.elapsed0 = float(position.get("elapsed", 0.0))
    run.log_window = position.get("log_window") if "sums" in position.get("log_window", {}) else None
    if run.epochs(run.epoch).digest != position["batch_order_digest"]:
        raise UserError(f"{ckpt} was written with other batch settings (seed, batch_size, num_negatives, "
                        f"length_window); resume with the same ones, or choose another output_dir")
    run.model.load_state_dict(state["model"])
    if "validation" in position:
        run.tracker.load(position["validation"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.rank == 0:
        _truncate_log(run.log_file, run.step)
    _set_rng_states(state["rng"])
    return True


def _step(run: _Run, batch: list[Pair]) -> float:
    """One optimizer step on ``batch`` (single process, or this rank's share under torchrun)."""
    if run.ddp is not None:
        loss = _distributed_step(run.ddp, run.model, run.loss_fn, batch, run.config, run.device, run.bf16,
                                 run.rank, run.wsize)
    else:
        cols = batch_columns(batch, run.config.num_negatives)
        feats = [{k: v.to(run.device) for k, v in run.model.tokenize(c).items()} for c in cols]
        with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
            loss = run.loss_fn(feats, None)
        loss.backward()
    optimizer_step(run.model.parameters(), run.optimizer, run.scheduler, run.config.max_grad_norm)
    return float(loss.detach())


def _checkpoint(run: _Run, epoch: Union[_ListEpoch, StreamEpoch], log: WindowLog) -> None:
    """Save checkpoint-{step} (rank 0 writes; the others wait so nobody runs ahead of it)."""
    c = run.config
    position = {"step": run.step, "epoch": run.epoch, "batch_index": run.bidx, "seed": c.seed,
                "batch_order_digest": epoch.digest, "num_batches": len(epoch),
                "data_digest": run.data_digest, "total_steps": run.total_steps,
                "elapsed": run.elapsed0 + time.perf_counter() - log.t0, "log_window": log.state(),
                "validation": run.tracker.state(), "settings": _settings(run),
                "config": {k: v for k, v in dataclasses.asdict(c).items()
                           if k not in ("validation_corpus", "validation_avoid", "validation_pairs")}}
    if run.rank == 0:
        _save_checkpoint(run.out_dir, run.step, run.model, run.optimizer, run.scheduler, position,
                         c.keep_checkpoints)
    barrier()


def _validate(run: _Run, log_file) -> None:
    """Score the held-out training queries; log it; keep the best model in ``best/`` (saved with
    the model's own max_seq_length). Every rank scores (same weights, same decision), rank 0 writes."""
    with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
        score = run.validation.score(run.model)  # scored as trained: bf16 where the steps are
    improved = run.tracker.update(score, run.step)
    log_file.write(json.dumps({"step": run.step, "val_ndcg@10": round(score, 6), "best": improved}) + "\n")
    log_file.flush()
    if improved and run.rank == 0:
        train_len = run.model.max_seq_length
        run.model.max_seq_length = run.saved_max_len
        run.model.save(run.out_dir / "best")
        run.model.max_seq_length = train_len


def _loop(run: _Run) -> tuple[int, float, float]:
    """Steps until ``total_steps``, logging and checkpointing; returns (pairs, last loss, seconds)."""
    c = run.config
    bar = tqdm(total=run.total_steps, initial=run.step, desc="train", unit="step",
               disable=not c.show_progress_bar or run.rank != 0)
    pairs_done, last_loss, t_loop = 0, float("nan"), time.perf_counter()
    barrier()
    with open(run.log_file if run.rank == 0 else os.devnull, "a", encoding="utf-8") as f:
        log = WindowLog(f, c.logging_steps, "pairs_per_s", run.elapsed0, run.log_window)
        while run.step < run.total_steps:
            epoch = run.epochs(run.epoch)
            if run.bidx >= len(epoch):
                run.epoch, run.bidx = run.epoch + 1, 0
                continue
            batch = epoch.batch(run.bidx)
            lr = run.scheduler.get_last_lr()[0]
            last_loss = _step(run, batch)
            run.step, run.bidx = run.step + 1, run.bidx + 1
            pairs_done += len(batch)
            rec = log.add(run.step, run.epoch + run.bidx / len(epoch), lr, len(batch), run.total_steps,
                          loss=last_loss)
            if rec:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", pairs_s=f"{rec['pairs_per_s']:.1f}")
            bar.update(1)
            if run.validation is not None and (run.step % run.eval_every == 0 or run.step == run.total_steps):
                _validate(run, f)
            if c.checkpoint_every and run.step % c.checkpoint_every == 0:
                _checkpoint(run, epoch, log)
            if run.tracker.should_stop:
                run.stopped_early = True
                break
    bar.close()
    return pairs_done, last_loss, time.perf_counter() - t_loop


def _train_locked(pairs: Union[list[Pair], PairStream], replay: list[Pair], config: TrainConfig, model: Optional[EmbeddingModel],
                  out_dir: Path, t_start: float, val_pairs: Sequence[Pair] = ()) -> dict:
    """The training run once ``out_dir`` is locked: set-up, resume, the loop, the final save
    (the best validated model when there is a validation split)."""
    run = _prepare(pairs, replay, config, model, out_dir)
    if val_pairs:
        run.validation = Validation(list(val_pairs), config.validation_corpus or (
            pairs.distractors if isinstance(pairs, PairStream) else [p.positive for p in pairs]), seed=config.seed)
        run.eval_every = config.eval_every or max(1, run.total_steps // 4)
        run.tracker = BestTracker(patience=config.patience)
    resumed = _resume(run)
    start_step = run.step
    run.model.train()
    if run.wsize > 1:
        run.ddp = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=True)
    pairs_done, last_loss, loop_s = _loop(run)
    run.model.eval()
    final = out_dir / "model"
    run.model.max_seq_length = run.saved_max_len
    if run.rank == 0:
        if run.validation is not None and (out_dir / "best").is_dir():
            replace_dir(out_dir / "best", final)  # the best validated model is the one that ships
        else:
            run.model.save(final)
    epoch = run.epochs(run.epoch)
    summary = {"steps": run.step, "steps_this_run": run.step - start_step,
               "epochs": round(run.epoch + run.bidx / len(epoch), 4),
               "final_loss": last_loss if run.step > start_step else None,
               "pairs_per_s": round(pairs_done / max(loop_s, 1e-9), 2),
               "seconds": round(time.perf_counter() - t_start, 3), "output": str(final),
               "log_file": str(run.log_file), "resumed_from": start_step if resumed else None,
               "replay_pairs_per_epoch": epoch.extra_pairs, "device": str(run.device), "bf16": run.bf16}
    if run.validation is not None:
        summary["validation"] = {"queries": len(run.validation.evalset.qrels), "docs": len(run.validation.evalset.corpus),
                                 "eval_every": run.eval_every, "best_step": run.tracker.best_step,
                                 "best_ndcg@10": run.tracker.best, "stopped_early": run.stopped_early,
                                 "curve": run.tracker.curve}
    if run.rank == 0:
        write_json(out_dir / "train_summary.json", summary)
    barrier()
    return summary
