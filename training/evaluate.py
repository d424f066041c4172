"""The ``eval`` mode: held-out loss and likelihood of the newest checkpoint's EMA weights, written to
``<workdir>/eval/metrics.json``:

- ``step``, ``loss``: the training loss on the held-out points (fixed noise, so runs compare);
- ``bpd`` for images (uniformly dequantised, Song et al. 2021 App. D), ``nll`` in nats per sample for
  continuous data, each with its Monte Carlo standard error, from ``samplers.log_likelihood``;
- ``true_nll`` for data with a known density (toy sets): the data's own entropy, the best any model
  can do (``log 8`` exactly for the checkerboard, a Monte Carlo estimate for the mixture).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import ml_collections
import torch

import samplers
from sde_lib import SDE
from training.checkpoint import atomic_write_text
from training.datasets import scaler_log_det
from training.distributed import DistContext, all_gather_cat, shard_range
from training.factory import data_from_config, loss_setup
from training.inference import load_for_inference
from training.pipeline import DataSpec, stream_seed, to_model_space

logger = logging.getLogger(__name__)

EVAL_DIR = "eval"
LOSS_STREAM, LIKELIHOOD_STREAM, ENTROPY_STREAM = 31, 32, 33


def eval_generator(seed: int, stream: int, ctx: DistContext) -> torch.Generator:
    """A fixed generator per purpose and rank, so repeated evaluations see the same noise."""
    return torch.Generator(device=ctx.device).manual_seed(stream_seed(seed, stream, ctx.rank))


def _my_items(items: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    r = shard_range(len(items), ctx)
    return items[r.start:r.stop]


def heldout_loss(sde: SDE, score_fn: Callable, loss_fn: Callable, loss_kwargs: dict, items: torch.Tensor,
                 spec: DataSpec, *, batch_size: int, generator: torch.Generator, ctx: DistContext) -> float:
    """Mean per-sample loss over ``items`` (split over ranks), without gradients."""
    losses = []
    with torch.no_grad():
        for batch in _my_items(items, ctx).split(batch_size):
            x = to_model_space(batch.to(ctx.device), spec, generator, train=False)
            losses.append(loss_fn(sde, score_fn, x, generator=generator, **loss_kwargs).float())
    local = torch.cat(losses) if losses else torch.empty(0, device=ctx.device)
    return float(all_gather_cat(local, ctx).mean())


def log_likelihoods(sde: SDE, score_fn: Callable, items: torch.Tensor, spec: DataSpec, *, batch_size: int,
                    trace: str, rtol: float, atol: float, eps: float, generator: torch.Generator,
                    ctx: DistContext) -> tuple[torch.Tensor, float]:
    """``log p_eps(x)`` (nats) of every item in model space, and the mean score evaluations per batch."""
    values, nfes = [], []
    for batch in _my_items(items, ctx).split(batch_size):
        x = to_model_space(batch.to(ctx.device), spec, generator, train=False)
        logp, _, nfe = samplers.log_likelihood(sde, score_fn, x, trace=trace, rtol=rtol, atol=atol, eps=eps,
                                               generator=generator)
        values.append(logp.float())
        nfes.append(nfe)
    local = torch.cat(values) if values else torch.empty(0, device=ctx.device)
    return all_gather_cat(local, ctx), (sum(nfes) / len(nfes) if nfes else 0.0)


def likelihood_summary(logp: torch.Tensor, spec: DataSpec) -> dict:
    """``bpd`` (images) or ``nll`` (continuous data), each with its standard error."""
    logp = logp.double().cpu()
    if spec.is_image:
        per_item = samplers.bits_per_dim(logp, spec.dim, num_levels=spec.num_levels,
                                         log_det=scaler_log_det(spec.centered, spec.dim))
        key = "bpd"
    else:
        per_item, key = -logp, "nll"
    stderr = float(per_item.std() / math.sqrt(len(per_item))) if len(per_item) > 1 else 0.0
    return {key: float(per_item.mean()), f"{key}_stderr": stderr}


def true_nll(spec: DataSpec, n: int, seed: int) -> dict:
    """The data's own entropy for toy data with a known density, else nothing."""
    if spec.toy is None:
        return {}
    value, stderr = spec.toy.true_nll(n=n, generator=torch.Generator().manual_seed(stream_seed(seed, ENTROPY_STREAM)))
    return {"true_nll": value, "true_nll_stderr": stderr}


def _likelihood_metrics(config, inf, spec: DataSpec, ctx: DistContext) -> dict:
    e = config.eval
    start = time.perf_counter()
    logp, nfe = log_likelihoods(inf.sde, inf.score_fn, spec.test, spec, batch_size=e.batch_size, trace=e.trace,
                                rtol=e.rtol, atol=e.atol, eps=e.likelihood_eps,
                                generator=eval_generator(config.seed, LIKELIHOOD_STREAM, ctx), ctx=ctx)
    return {**likelihood_summary(logp, spec), "likelihood_nfe": nfe,
            "likelihood_time_s": round(time.perf_counter() - start, 3)}


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path, ctx: DistContext) -> dict:
    """The ``eval`` mode; returns the metrics it wrote."""
    inf = load_for_inference(config, workdir, ctx)
    spec = data_from_config(config, with_train=False)
    loss_fn, loss_kwargs = loss_setup(config)
    metrics = {"step": inf.step, "checkpoint": inf.checkpoint.name, "num_samples": int(len(spec.test))}
    metrics["loss"] = heldout_loss(inf.sde, inf.score_fn, loss_fn, loss_kwargs, spec.test, spec,
                                   batch_size=config.eval.batch_size,
                                   generator=eval_generator(config.seed, LOSS_STREAM, ctx), ctx=ctx)
    if config.eval.likelihood:
        metrics.update(_likelihood_metrics(config, inf, spec, ctx))
    metrics.update(true_nll(spec, config.eval.true_nll_samples, config.seed))
    if ctx.is_main:
        path = Path(workdir) / EVAL_DIR / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
        logger.info("eval metrics written to %s: %s", path, metrics)
    return metrics
