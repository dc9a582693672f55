"""PyTorch's own distributed engine, the few pieces we need: process-group set-up from the
``torchrun`` environment, contiguous shards, and all-gathers (one that keeps the local slice's
gradient, as in sentence-transformers' ``gather_across_devices`` and CLIP).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` outside torchrun.

    >>> world()
    (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launch_rank() -> int:
    """This process's rank as torchrun set it (``RANK``), readable before the process group exists.

    >>> launch_rank()  # not under torchrun
    0
    """
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def init_from_env(device: Optional[torch.device] = None) -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); gloo on CPU, nccl on CUDA.

    >>> init_from_env()  # not under torchrun: nothing to do
    (0, 1)
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return world()
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def shard(n: int, rank: int, size: int) -> slice:
    """The contiguous slice of ``n`` items that ``rank`` of ``size`` takes (sizes differ by <= 1).

    >>> [shard(5, r, 2) for r in range(2)]
    [slice(0, 3, None), slice(3, 5, None)]
    """
    per, extra = divmod(n, size)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (1 if rank < extra else 0))


def _sizes(n: int, device) -> list[int]:
    t = torch.tensor([n], device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x) for x in out]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0 (sizes may differ), without gradient.

    >>> gather(torch.ones(2, 3)).shape  # a single process: itself
    torch.Size([2, 3])
    """
    rank, size = world()
    if size == 1:
        return x
    sizes = _sizes(x.shape[0], x.device)
    pad = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x.detach()
    out = [torch.zeros_like(pad) for _ in range(size)]
    dist.all_gather(out, pad)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like ``gather``, but this rank's own slice is ``x`` itself, so gradients reach it.

    Every rank then computes the loss of the whole global batch; with DDP averaging gradients
    over ranks, back-propagate ``loss * world_size`` to get the single-process gradient.

    >>> gather_with_grad(torch.ones(2, 3, requires_grad=True)).requires_grad
    True
    """
    rank, size = world()
    if size == 1:
        return x
    sizes = _sizes(x.shape[0], x.device)
    full = gather(x)
    start = sum(sizes[:rank])
    return torch.cat([full[:start], x, full[start + x.shape[0]:]])


def barrier() -> None:
    """Wait for every rank (no-op outside torchrun).

    >>> barrier()
    """
    if world()[1] > 1:
        dist.barrier()
