"""Numbers on held-out data that both the trainer (at each eval) and ``--mode eval`` compute: the
training loss and the log-likelihood, each split over ranks and gathered."""
from __future__ import annotations

from typing import Callable

import torch

import samplers
from sde_lib import SDE
from training.distributed import DistContext, all_gather_cat, shard_range
from training.options import EvalOptions, LossOptions
from training.pipeline import DataSpec, to_model_space
from training.runtime import progress_bar


def my_items(items: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous share of ``items``."""
    r = shard_range(len(items), ctx)
    return items[r.start:r.stop]


def heldout_loss(sde: SDE, score_fn: Callable, loss: LossOptions, items: torch.Tensor, spec: DataSpec, *,
                 batch_size: int, generator: torch.Generator, ctx: DistContext) -> float:
    """Mean per-sample loss over ``items`` (split over ranks), without gradients."""
    losses = []
    with torch.no_grad():
        for batch in my_items(items, ctx).split(batch_size):
            x = to_model_space(batch.to(ctx.device), spec, generator, train=False)
            losses.append(loss.fn(sde, score_fn, x, generator=generator, **loss.kwargs).float())
    local = torch.cat(losses) if losses else torch.empty(0, device=ctx.device)
    return float(all_gather_cat(local, ctx).mean())


def log_likelihoods(sde: SDE, score_fn: Callable, items: torch.Tensor, spec: DataSpec, options: EvalOptions, *,
                    generator: torch.Generator, ctx: DistContext,
                    show_progress: bool = False) -> tuple[torch.Tensor, float]:
    """``log p_eps(x)`` (nats) of every item in model space, and the mean score evaluations per batch;
    ``show_progress`` draws a bar over items and one over each batch's ODE."""
    values, nfes = [], []
    mine = my_items(items, ctx)
    desc = f"log-likelihood ({options.trace} trace, {options.method})"
    with progress_bar(len(mine), enabled=show_progress, unit="item", desc=desc) as bar:
        for batch in mine.split(options.batch_size):
            x = to_model_space(batch.to(ctx.device), spec, generator, train=False)
            logp, _, nfe = samplers.log_likelihood(sde, score_fn, x, generator=generator, progress=show_progress,
                                                   **options.likelihood_kwargs)
            values.append(logp.float())
            nfes.append(nfe)
            bar.update(len(batch))
            bar.set_postfix(nfe=nfe)
    local = torch.cat(values) if values else torch.empty(0, device=ctx.device)
    return all_gather_cat(local, ctx), (sum(nfes) / len(nfes) if nfes else 0.0)
