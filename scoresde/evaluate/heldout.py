"""Numbers on held-out data that both the trainer (at each eval) and ``--mode eval`` compute: the
training loss and the log-likelihood, each split over ranks and gathered; and the likelihood bounds
of ``--mode eval`` (``likelihood_bounds``: the continuous ELBO, DDPM's VLB, importance-weighted bounds),
per item, in nats."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from scoresde import samplers
from scoresde.sde_lib import SDE, respace
from scoresde.likelihood.latent import latent_bound
from scoresde.data.datasets import data_scaler, dequantize, scaler_log_det
from scoresde.run import threads
from scoresde.run.distributed import DistContext, all_gather_cat, shard_range
from scoresde.run.options import BoundOptions, EvalOptions, LossOptions
from scoresde.data.pipeline import DataSpec, to_model_space
from scoresde.run.runtime import progress_bar


def my_items(items: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous share of ``items``."""
    r = shard_range(len(items), ctx)
    return items[r.start:r.stop]


def heldout_loss(sde: SDE, score_fn: Callable, loss: LossOptions, items: torch.Tensor, spec: DataSpec, *,
                 batch_size: int, generator: torch.Generator, ctx: DistContext, labels: torch.Tensor | None = None,
                 fn_for: Callable | None = None, targets: Callable | None = None) -> float:
    """Mean per-sample loss over ``items`` (split over ranks), without gradients. With ``labels`` (class
    labels of the items), ``fn_for(labels)`` gives the function the loss takes for a batch (a
    conditional score, a classifier's logits) and ``targets(labels)`` the loss's extra arguments."""
    losses = []
    label_batches = my_items(labels, ctx).split(batch_size) if labels is not None else None
    with torch.no_grad():
        for i, batch in enumerate(my_items(items, ctx).split(batch_size)):
            x = to_model_space(batch.to(ctx.device), spec, generator, train=False)
            extra, fn = {}, score_fn
            if label_batches is not None:
                y = label_batches[i].to(ctx.device)
                fn, extra = fn_for(y), targets(y) if targets is not None else {}
            losses.append(loss.fn(sde, fn, x, generator=generator, **loss.kwargs, **extra).float())
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
            threads.tick()
    local = torch.cat(values) if values else torch.empty(0, device=ctx.device)
    return all_gather_cat(local, ctx), (sum(nfes) / len(nfes) if nfes else 0.0)


# ---------------------------------------------------------------------------------------- bounds
BOUND_NAMES = ("elbo", "vlb", "iw")           # in the order eval computes them
CHAIN_DECODERS = ("density", "discretized")   # the decoder p(x | x_0) of the chain's bounds


def bounds_that_apply(continuous: bool) -> tuple:
    """The bounds of a model. The ELBO integrates the score over every time in ``[eps, T]``, so it needs a
    continuous-time model; DDPM's VLB and the IW bounds use only the ``N``-level chain, so they apply to
    every model (discrete-time ones at the grid times, continuous-time ones at each level's log-SNR time)."""
    return BOUND_NAMES if continuous else ("vlb", "iw")


@dataclass
class BoundDraws:
    """One bound over the held-out items: per-item estimates of a lower bound on the log-likelihood
    (nats, float64, ``(n,)``), their Monte-Carlo standard errors (NaN where one estimate gives none), the
    score evaluations per item and the wall time. ``discrete``: a bound on ``log P(v)`` of the grey levels
    (the discretised decoder), else on the density at the dequantised point (as ``log_likelihood``)."""

    logp: torch.Tensor
    mc_stderr: torch.Tensor
    nfe: int
    time_s: float
    discrete: bool = False


def bound_inputs(items: torch.Tensor, spec: DataSpec, options: BoundOptions, *, generator: torch.Generator,
                 ctx: DistContext) -> dict:
    """This rank's share of the first ``options.items`` held-out items in model space, as each bound needs
    them: ``"dequantized"`` (images: uniformly dequantised once, so every bound sees the same points) and,
    for the discretised decoder, ``"centres"`` (the cell centres). Continuous data are used as they are."""
    n = len(items) if options.items == 0 else min(options.items, len(items))
    mine = my_items(items[:n], ctx).to(ctx.device)
    if not spec.is_image:
        return {"dequantized": mine.float(), "centres": mine.float()}
    scale = data_scaler(spec.centered)
    return {"dequantized": to_model_space(mine, spec, generator, train=False),
            "centres": scale(dequantize(mine.long(), spec.num_levels, uniform=False))}


def _gathered(values: list, ctx: DistContext, columns: tuple) -> torch.Tensor:
    local = torch.cat(values) if values else torch.empty((0, *columns), dtype=torch.float64, device=ctx.device)
    return all_gather_cat(local, ctx).cpu()


def _run_bound(name: str, x: torch.Tensor, batch_size: int, estimate: Callable, ctx: DistContext,
               show_progress: bool, columns: tuple = ()) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """``estimate(batch) -> (logp, stderr, nfe)`` (each ``(B, *columns)``) over ``x`` in batches, gathered
    over ranks, with the score evaluations per item and the wall time."""
    start, values, errors, nfe = time.perf_counter(), [], [], 0
    with progress_bar(len(x), enabled=show_progress, unit="item", desc=name) as bar:
        for batch in x.split(batch_size):
            logp, stderr, nfe = estimate(batch)
            values.append(logp.double())
            errors.append(stderr.double())
            bar.update(len(batch))
    return _gathered(values, ctx, columns), _gathered(errors, ctx, columns), nfe, time.perf_counter() - start


def likelihood_bounds(sde: SDE, score_fn: Callable, items: torch.Tensor, spec: DataSpec, options: BoundOptions, *,
                      batch_size: int, generators: dict, ctx: DistContext,
                      show_progress: bool = False) -> dict[str, BoundDraws]:
    """The bounds ``options.names`` asks for, on the first ``options.items`` held-out items:
    ``{"elbo": ..., "vlb": ..., "iw1": ..., "iw10": ...}``. ``generators`` holds one generator per stream:
    ``"data"`` (dequantisation), ``"elbo"``, ``"vlb"``, ``"iw"``.

    The ELBO (Song, Durkan, Murray & Ermon 2021) bounds ``log p_eps`` at the dequantised points. The chain's
    bounds (Ho et al. 2020, eq. 5; IW_K, Burda et al. 2016) use ``options.decoder``: ``"density"`` bounds the
    density at the same dequantised points (converted to bits/dim exactly as ``bpd``), ``"discretized"``
    bounds ``log P(v)`` at the cell centres (Ho et al., eq. 13). One set of ``max(iw_k) iw_repeats`` forward
    paths per item serves every ``K``.
    """
    inputs = bound_inputs(items, spec, options, generator=generators["data"], ctx=ctx)
    discrete = spec.is_image and options.decoder == "discretized"
    chain_x = inputs["centres" if discrete else "dequantized"]
    chain = dict(num_levels=spec.num_levels if discrete else None, centered=spec.centered,
                 variance=options.variance, score_times=options.score_times)
    out = {}
    # vlb / iw on the chain respaced to options.chain_steps levels (the network keeps its own labels)
    chain_sde = respace(sde, options.chain_steps) if options.chain_steps not in (0, sde.N) else sde
    if "elbo" in options.names:
        def elbo(batch):
            draws = max(1, options.rows // (2 * len(batch)))
            return samplers.elbo(sde, score_fn, batch, n_samples=options.elbo_samples, eps=options.eps,
                                 generator=generators["elbo"], draws_per_call=draws)
        out["elbo"] = BoundDraws(*_run_bound("ELBO", inputs["dequantized"], batch_size, elbo, ctx, show_progress))
    if "vlb" in options.names:
        def vlb(batch):
            return samplers.ddpm_vlb(chain_sde, score_fn, batch, n_terms=options.vlb_levels or None,
                                     generator=generators["vlb"], **chain)
        out["vlb"] = BoundDraws(*_run_bound("VLB", chain_x, batch_size, vlb, ctx, show_progress), discrete=discrete)
    if "iw" in options.names:
        out.update(_iw_bounds(chain_sde, score_fn, chain_x, options, chain, batch_size, generators["iw"], ctx,
                              show_progress, discrete))
    return out


def _iw_bounds(sde: SDE, score_fn: Callable, x: torch.Tensor, options: BoundOptions, chain: dict, batch_size: int,
               generator: torch.Generator, ctx: DistContext, show_progress: bool, discrete: bool) -> dict:
    """``IW_K`` for every ``K`` of ``options.iw_k`` from one set of forward paths per item."""
    paths = max(options.iw_k) * options.iw_repeats

    def log_weights(batch):
        log_w, nfe = samplers.iw_log_weights(sde, score_fn, batch, paths, generator=generator,
                                             paths_per_call=max(1, options.rows // len(batch)), **chain)
        return log_w, torch.zeros_like(log_w), nfe
    log_w, _, nfe, seconds = _run_bound(f"IW ({paths} paths)", x, batch_size, log_weights, ctx, show_progress,
                                        columns=(paths,))
    return {f"iw{k}": BoundDraws(*samplers.iw_from_log_weights(log_w, k), nfe, seconds, discrete=discrete)
            for k in options.iw_k}


def latent_bound_draws(first_stage, sde: SDE, score_fn: Callable, items: torch.Tensor, spec: DataSpec,
                       options: EvalOptions, *, generators: dict, ctx: DistContext,
                       show_progress: bool = False) -> tuple[BoundDraws, dict]:
    """The latent bound ``E_q[log p(x|z) + log p_theta(z) - log q(z|x)]`` (``likelihood/latent.py``) of a
    latent diffusion model on the first ``options.bounds.items`` held-out images (``spec`` in pixel space),
    uniformly dequantised once, with ``options.latent_draws`` draws per item and ``options.latent_prior``
    for ``log p_theta(z)``; and the means of its three terms over the items (nats per item).
    ``generators``: ``"data"``, ``"latent"`` (the draws), ``"likelihood"`` (Hutchinson probes), ``"elbo"``."""
    bounds, k = options.bounds, options.latent_draws
    x = bound_inputs(items, spec, bounds, generator=generators["data"], ctx=ctx)["dequantized"]
    if options.latent_prior == "ode":
        prior_kwargs = {"ode_kwargs": {**options.likelihood_kwargs, "generator": generators["likelihood"]}}
    else:
        prior_kwargs = {"elbo_kwargs": {"n_samples": bounds.elbo_samples, "eps": options.eps,
                                        "generator": generators["elbo"]}}
    terms = {"recon": [], "prior": [], "entropy": []}

    def estimate(batch):
        out = latent_bound(first_stage, sde, score_fn, batch, k, prior=options.latent_prior,
                           generator=generators["latent"], **prior_kwargs)
        for name, values in terms.items():
            values.append(getattr(out, name).double())
        return out.bound, out.stderr, out.nfe

    name = f"latent bound ({k} draws, {options.latent_prior} prior)"
    draws = BoundDraws(*_run_bound(name, x, max(1, bounds.rows // k), estimate, ctx, show_progress))
    return draws, {name: float(_gathered(values, ctx, ()).mean()) for name, values in terms.items()}


def bound_summary(draws: BoundDraws, spec: DataSpec) -> dict:
    """Mean over items of the bound in the units of ``bpd`` / ``nll`` (an upper bound on them, lower is
    better), its standard error over items (Monte-Carlo noise included) and the Monte-Carlo part alone;
    a non-finite item makes the mean ``None`` and is counted, never averaged in silently."""
    unit = "bpd" if spec.is_image else "nll"
    bad = int((~torch.isfinite(draws.logp)).sum())
    if bad:
        return {unit: None, "stderr": None, "mc_stderr": None, "nonfinite_items": bad}
    if spec.is_image:
        # the discretised decoder bounds log P(v) itself; the density one the dequantised density (as bpd)
        levels = None if draws.discrete else spec.num_levels
        log_det = None if draws.discrete else scaler_log_det(spec.centered, spec.dim)
        per_item, mc = samplers.bits_per_dim_bound(draws.logp, draws.mc_stderr, spec.dim, num_levels=levels,
                                                   log_det=log_det)
    else:
        per_item, mc = -draws.logp, draws.mc_stderr
    n = len(per_item)
    stderr = float(per_item.std() / math.sqrt(n)) if n > 1 else 0.0
    mc_stderr = float(mc.pow(2).sum().sqrt() / n) if bool(torch.isfinite(mc).all()) else None
    return {unit: float(per_item.mean()), "stderr": stderr, "mc_stderr": mc_stderr}
