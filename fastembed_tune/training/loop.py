"""What every training loop here shares (``train`` fine-tunes, ``distill`` distils): seeding, the
bf16 choice, AdamW with a linear warmup/decay schedule, one optimizer step, seeded length-grouped
batch orders, and the windowed JSONL log.

Nothing here knows about pairs, losses or checkpoints; :mod:`fastembed_tune.training.train` and
:mod:`fastembed_tune.training.distill` build on it.
"""
from __future__ import annotations

import json
import math
import random
import time
from typing import IO, Optional, Sequence, Union

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA).

    >>> set_seed(1); a = torch.rand(1); set_seed(1); bool(torch.rand(1) == a)
    True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_bf16(device: Union[str, torch.device], requested: Optional[bool] = None) -> bool:
    """Whether to autocast to bfloat16: ``requested`` when given, else True on CUDA and on CPUs
    whose oneDNN has native bf16 (AVX512-BF16 or AMX; emulated bf16 would be slower than float32).

    >>> use_bf16("cpu", False)
    False
    """
    if requested is not None:
        return bool(requested)
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with no weight decay on biases and LayerNorm (ndim < 2).

    >>> opt = make_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.01)
    >>> [g["weight_decay"] for g in opt.param_groups]
    [0.01, 0.0]
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def linear_schedule(warmup_steps: int, total_steps: int):
    """The LR multiplier: linear warmup from 0 over ``warmup_steps``, then linear decay to 0.

    >>> f = linear_schedule(2, 10); [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_ratio: float,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`linear_schedule` over ``total_steps`` with ``ceil(warmup_ratio * total_steps)`` warmup steps.

    >>> opt = make_optimizer(torch.nn.Linear(2, 2), 1.0, 0.0)
    >>> make_scheduler(opt, 0.5, 4).get_last_lr()
    [0.0, 0.0]
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(math.ceil(warmup_ratio * total_steps), total_steps))


def optimizer_step(params, optimizer: torch.optim.Optimizer, scheduler, max_grad_norm: Optional[float]) -> None:
    """Clip the gradients (when ``max_grad_norm``), step the optimizer and the schedule, clear the gradients.

    >>> lin = torch.nn.Linear(1, 1); opt = make_optimizer(lin, 0.1, 0.0); sch = make_scheduler(opt, 0.0, 2)
    >>> lin(torch.ones(1, 1)).sum().backward(); optimizer_step(lin.parameters(), opt, sch, 1.0)
    >>> lin.weight.grad is None
    True
    """
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def length_grouped(order: Sequence[int], lengths: Sequence[int], batch_size: int, window: int) -> list[int]:
    """``order`` cut into windows of ``window * batch_size`` items, each sorted (stably) by length,
    so that a batch holds texts of similar length and dynamic padding wastes little.

    >>> length_grouped([0, 1, 2, 3], [5, 1, 4, 2], batch_size=1, window=2)
    [1, 0, 3, 2]
    """
    order = [int(i) for i in order]
    if window <= 0:
        return order
    w = window * batch_size
    return [i for s in range(0, len(order), w) for i in sorted(order[s:s + w], key=lengths.__getitem__)]


def shuffled_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                     window: int) -> list[np.ndarray]:
    """The epoch's batches of item indices: a seeded shuffle (``default_rng([seed, epoch])``),
    :func:`length_grouped`, cut into ``batch_size`` chunks, the batch order shuffled with the same
    generator. A pure function of its arguments.

    >>> bs = shuffled_batches([3, 1, 2, 5, 4], 2, seed=0, epoch=0, window=50)
    >>> sorted(int(i) for b in bs for i in b), [len(b) for b in bs] == [len(b) for b in bs]
    ([0, 1, 2, 3, 4], True)
    """
    rng = np.random.default_rng([seed, epoch])
    order = length_grouped(rng.permutation(len(lengths)).tolist(), list(lengths), batch_size, window)
    batches = [np.asarray(order[s:s + batch_size], dtype=np.int64) for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class WindowLog:
    """The training log: every ``every`` steps (and at the last), one JSON line with the step, the
    epoch, the mean of each value added since the previous line, the lr, the items per second
    (``rate`` names the key, e.g. ``pairs_per_s``) and the elapsed seconds.

    Its open window is part of a checkpoint (:meth:`state` / ``state=``), so a resumed run logs the
    same lines as one never interrupted.

    >>> import io; f = io.StringIO(); log = WindowLog(f, every=2, rate="texts_per_s")
    >>> recs = [log.add(step, epoch=0.5, lr=0.1, items=4, total=2, loss=float(step)) for step in (1, 2)]
    >>> json.loads(f.getvalue())["loss"]
    1.5
    """

    def __init__(self, file: IO[str], every: int, rate: str, elapsed0: float = 0.0,
                 state: Optional[dict] = None):
        self.file, self.every, self.rate, self.elapsed0 = file, every, rate, elapsed0
        self.t0 = self.t_win = time.perf_counter()
        self.sums: dict[str, float] = dict((state or {}).get("sums", {}))
        self.steps = int((state or {}).get("steps", 0))
        self.items = int((state or {}).get("items", 0))
        self.last: Optional[dict] = None

    def state(self) -> dict:
        """The open window, to be saved in a checkpoint."""
        return {"sums": dict(self.sums), "steps": self.steps, "items": self.items}

    def add(self, step: int, epoch: float, lr: float, items: int, total: int,
            **values: Optional[float]) -> Optional[dict]:
        """Add one step's ``values``; write and return the line when one is due (else None)."""
        for k, v in values.items():
            if v is not None:
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.items += items
        if step % self.every and step != total:
            return None
        now = time.perf_counter()
        rec = {"step": step, "epoch": round(epoch, 4)}
        rec.update({k: (self.sums[k] / self.steps if k in self.sums else None) for k in values})
        rec.update({"lr": lr, self.rate: round(self.items / max(now - self.t_win, 1e-9), 2),
                    "elapsed": round(self.elapsed0 + now - self.t0, 3)})
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.sums, self.steps, self.items, self.t_win = {}, 0, 0, now
        self.last = rec
        return rec
