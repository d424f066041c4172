"""Process-group plumbing for ``torchrun``: one ``DistContext`` tells every other module which rank
it is, how many there are and which device to use. A plain ``python main.py`` is a world of one and
needs no process group."""
from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from scoresde.utils import check_choice

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), if any.

    NCCL on GPUs, gloo on CPU. Without those variables this returns a single-process context.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world_size == 1:
        return DistContext(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group. DDP wrappers live in reference cycles (their gradient hooks); one
    collected after the group is gone aborts the process ("terminate called without an active
    exception", about one run in ten): collect them first."""
    if ctx.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when there are several ranks, else ``model``."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``value`` over ranks (a copy; ``value`` is untouched)."""
    out = value.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= ctx.world_size
    return out


def all_gather_cat(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's ``value`` along dim 0, in rank order (sizes may differ between ranks)."""
    if not ctx.distributed:
        return value
    sizes = [None] * ctx.world_size
    dist.all_gather_object(sizes, int(value.shape[0]))
    padded = torch.zeros((max(sizes),) + tuple(value.shape[1:]), dtype=value.dtype, device=value.device)
    padded[: value.shape[0]] = value
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)


def shard_range(n: int, ctx: DistContext) -> range:
    """The indices ``[0, n)`` that this rank handles: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (1 if ctx.rank < extra else 0))
