"""A deterministic, resumable, rank-sharded batch stream for single- and multi-process training.

Epoch e shuffles the N items with ``torch.randperm`` from a generator seeded with
``(seed · 1000003 + e) mod 2⁶³``. Global batches are consecutive runs of ``global_batch_size`` = G
indices of that permutation; rank r of W takes the slice ``[r·b, (r+1)·b)``, b = G / W, of every
global batch, so the local batches of all ranks, concatenated in rank order, are the one-process
batch. The state ``{"epoch", "position"}`` counts items of the global stream, not local batches, so a
run saved with W ranks resumes with any other W (same G, seed and data) on exactly the next batch.
"""
from __future__ import annotations

import torch

from scoresde.utils import check_int
from scoresde.data.streams import epoch_seed


class ShardedBatchLoader:
    """This rank's share of shuffled global batches of indices into a data set of ``num_items`` items.

    ``next_global_indices()`` gives the next global batch (what all ranks together consume) and
    ``local_rows`` this rank's rows of it; the trainer gathers data (and anything indexed alike) itself.

    drop_last=True: an epoch yields floor(N / G) batches; the last N mod G items of its permutation
    are skipped and the next batch starts epoch e+1. drop_last=False: the stream runs straight on, a
    batch that passes the end of epoch e is completed from the start of epoch e+1's permutation, so
    every item is seen exactly once per epoch and every batch is full.
    """

    def __init__(self, num_items: int, global_batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True):
        check_int("num_items", num_items, 1)
        check_int("global_batch_size", global_batch_size, 1)
        check_int("world_size", world_size, 1)
        check_int("seed", seed, 0)
        if not (isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank must be an integer in [0, {world_size - 1}], got {rank!r}")
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"world_size={world_size}")
        if global_batch_size > num_items:
            raise ValueError(f"global_batch_size={global_batch_size} is larger than the data set "
                             f"({num_items} items)")
        self.num_items, self.global_batch_size, self.seed = num_items, global_batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.local_batch_size = global_batch_size // world_size
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, torch.Tensor] | None = None

    @property
    def batches_per_epoch(self) -> int:
        """Global batches per epoch: floor(N / G) with drop_last, else N / G on average."""
        return self.num_items // self.global_batch_size

    @property
    def local_rows(self) -> slice:
        """This rank's rows ``[r·b, (r+1)·b)`` of a global batch."""
        start = self.rank * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The shuffled order of all N items in ``epoch`` (CPU LongTensor), identical on every rank."""
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._cached = (epoch, torch.randperm(self.num_items, generator=gen))
        return self._cached[1]

    def next_global_indices(self) -> torch.Tensor:
        """Indices of the next global batch (G,) — what all ranks together consume — and advance."""
        if self.drop_last and self.position + self.global_batch_size > self.num_items:
            self.epoch, self.position = self.epoch + 1, 0
        chunks, need = [], self.global_batch_size
        while need:
            if self.position == self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
            take = min(need, self.num_items - self.position)
            chunks.append(self.permutation(self.epoch)[self.position:self.position + take])
            self.position, need = self.position + take, need - take
        return torch.cat(chunks)

    def state_dict(self) -> dict:
        """``{"epoch", "position"}`` (items of the global stream used so far in ``epoch``), plus the
        ``seed`` and ``num_items`` it is valid for. Independent of rank and world size."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_items": self.num_items}

    def load_state_dict(self, state: dict) -> None:
        """Resume so that the next batch is exactly the one that followed when ``state`` was saved."""
        for key in ("epoch", "position"):
            if key not in state:
                raise ValueError(f"loader state is missing {key!r}; got keys {sorted(state)}")
        for key in ("seed", "num_items"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"loader state was saved with {key}={state[key]!r}, "
                                 f"this loader has {key}={getattr(self, key)!r}")
        check_int("epoch", state["epoch"], 0)
        check_int("position", state["position"], 0)
        if state["position"] > self.num_items:
            raise ValueError(f"position={state['position']} exceeds the data set size {self.num_items}")
        self.epoch, self.position = state["epoch"], state["position"]
