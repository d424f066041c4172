"""The ``eval`` mode: held-out loss and likelihood of the newest checkpoint's EMA weights, written to
``<workdir>/eval/metrics.json``:

- ``step``, ``loss``: the training loss on the held-out points (fixed noise, so runs compare);
- ``bpd`` for images (uniformly dequantised, Song et al. 2021 App. D), ``nll`` in nats per sample for
  continuous data, each with its Monte Carlo standard error, from ``samplers.log_likelihood``;
- ``true_nll`` for data with a known density (toy sets): the data's own entropy, the best any model
  can do (``log 8`` exactly for the checkerboard, a Monte Carlo estimate for the mixture);
- the likelihood bounds ``eval.bounds`` asks for (``scoresde/likelihood/``), on the first ``eval.bound_items``
  held-out items, in the units of ``bpd`` / ``nll`` (upper bounds on them): ``elbo_bpd`` (continuous ELBO,
  Song, Durkan, Murray & Ermon 2021), ``vlb_bpd`` (DDPM's variational bound, Ho et al. 2020) and
  ``iw{K}_bpd`` (importance-weighted, Burda et al. 2016), ``_nll`` for continuous data; each with
  ``_stderr`` (over items, Monte-Carlo noise included), ``_mc_stderr`` (the Monte-Carlo part),
  ``{name}_nfe`` (score evaluations per item) and ``{name}_time_s``;
- for a latent diffusion model (``data.first_stage``) instead of ``bpd``: the latent bound
  ``E_q[log p(x|z) + log p_theta(z) - log q(z|x)]`` (``scoresde/likelihood/latent.py``) in bits/dim of the
  pixels, ``latent_bpd`` (an upper bound on the model's bits/dim) with ``_stderr`` and ``_mc_stderr`` as the
  bounds have them, on the first ``eval.bound_items`` held-out images with ``eval.latent_draws`` draws of
  ``z ~ q(z|x)`` each; ``log p_theta(z)`` by the ODE or the ELBO (``eval.latent_prior``); the means of its
  three terms (``latent_recon_nats``, ``latent_prior_nats``, ``latent_entropy_nats``, nats per image),
  ``latent_nfe`` (score evaluations per draw) and ``latent_time_s``. The held-out loss is on the latents.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch

from scoresde import samplers
from scoresde.data.datasets import scaler_log_det
from scoresde.run.distributed import DistContext
from scoresde.evaluate.quality import quality_line, sample_quality_metrics
from scoresde.evaluate.heldout import (bound_summary, heldout_loss, latent_bound_draws, likelihood_bounds,
                                       log_likelihoods)
from scoresde.run.inference import Inference, load_for_inference
from scoresde.run.options import RunOptions
from scoresde.run.runtime import bars_enabled, logs_above_bars
from scoresde.data.pipeline import DataSpec, load_data
from scoresde.data.streams import Stream, generator
from scoresde.run.workdir import EVAL_DIR, METRICS_FILE, NonFiniteResultsError, write_loss_curve, write_results

logger = logging.getLogger(__name__)


def likelihood_summary(logp: torch.Tensor, spec: DataSpec) -> dict:
    """``bpd`` (images) or ``nll`` (continuous data), each with its standard error, and how many items
    had a non-finite likelihood (then the mean and its error are ``None``: never a silent NaN)."""
    logp = logp.double().cpu()
    bad = int((~torch.isfinite(logp)).sum())
    if bad:
        key = "bpd" if spec.is_image else "nll"
        return {key: None, f"{key}_stderr": None, "nonfinite_items": bad}
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
    value, stderr = spec.toy.true_nll(n=n, generator=generator(seed, Stream.ENTROPY))
    return {"true_nll": value, "true_nll_stderr": stderr}


def _likelihood_metrics(options: RunOptions, inf: Inference, spec: DataSpec, ctx: DistContext) -> dict:
    start = time.perf_counter()
    logp, nfe = log_likelihoods(inf.sde, inf.score_fn, spec.test, spec, options.eval,
                                generator=generator(options.seed, Stream.LIKELIHOOD, ctx.rank, ctx.device), ctx=ctx,
                                show_progress=bars_enabled(options.train.progress_bar) and ctx.is_main)
    return {**likelihood_summary(logp, spec), **paired_gap(logp, spec), "likelihood_nfe": nfe,
            "likelihood_time_s": round(time.perf_counter() - start, 3)}


def _bound_metrics(options: RunOptions, inf: Inference, spec: DataSpec, ctx: DistContext) -> dict:
    """Every bound ``eval.bounds`` asks for, flat: ``{name}_{bpd|nll}``, ``_stderr``, ``_mc_stderr``,
    ``{name}_nfe``, ``{name}_time_s`` (``iw{K}`` share one set of paths: their NFE and time are its)."""
    bounds = options.eval.bounds
    streams = {"data": Stream.BOUND_DATA, "elbo": Stream.ELBO, "vlb": Stream.VLB, "iw": Stream.IW}
    draws = likelihood_bounds(inf.sde, inf.score_fn, spec.test, spec, bounds, batch_size=options.eval.batch_size,
                              generators={k: generator(options.seed, s, ctx.rank, ctx.device) for k, s in streams.items()},
                              ctx=ctx, show_progress=bars_enabled(options.train.progress_bar) and ctx.is_main)
    unit = "bpd" if spec.is_image else "nll"
    metrics = {"bound_items": int(len(next(iter(draws.values())).logp)) if draws else 0}
    if "iw" in bounds.names:
        metrics["iw_paths"] = max(bounds.iw_k) * bounds.iw_repeats
    for name, d in draws.items():
        summary = bound_summary(d, spec)
        metrics.update({f"{name}_{unit}": summary[unit], f"{name}_{unit}_stderr": summary["stderr"],
                        f"{name}_{unit}_mc_stderr": summary["mc_stderr"], f"{name}_nfe": d.nfe,
                        f"{name}_time_s": round(d.time_s, 3)})
        if summary.get("nonfinite_items"):
            metrics[f"{name}_nonfinite_items"] = summary["nonfinite_items"]
    return metrics


def _latent_metrics(options: RunOptions, inf: Inference, spec: DataSpec, pixels: DataSpec, ctx: DistContext) -> dict:
    """The latent bound of a latent diffusion model in bits/dim of the pixels (``latent_bound_draws``)."""
    streams = {"data": Stream.BOUND_DATA, "latent": Stream.LATENT_BOUND, "likelihood": Stream.LIKELIHOOD,
               "elbo": Stream.ELBO}
    first_stage = spec.first_stage.to(ctx.device)
    draws, terms = latent_bound_draws(first_stage, inf.sde, inf.score_fn, pixels.test, pixels, options.eval,
                                      generators={k: generator(options.seed, s, ctx.rank, ctx.device)
                                                  for k, s in streams.items()}, ctx=ctx,
                                      show_progress=bars_enabled(options.train.progress_bar) and ctx.is_main)
    summary = bound_summary(draws, pixels)
    metrics = {"latent_bpd": summary["bpd"], "latent_bpd_stderr": summary["stderr"],
               "latent_bpd_mc_stderr": summary["mc_stderr"], "latent_items": int(len(draws.logp)),
               "latent_draws": options.eval.latent_draws, "latent_prior": options.eval.latent_prior,
               "latent_nfe": draws.nfe, "latent_time_s": round(draws.time_s, 3),
               "latent_scale_factor": float(first_stage.scale_factor),
               **{f"latent_{name}_nats": value for name, value in terms.items()}}
    if summary.get("nonfinite_items"):
        metrics["latent_nonfinite_items"] = summary["nonfinite_items"]
    return metrics


def latent_line(metrics: dict, options: RunOptions) -> str:
    """The latent bound beside what it is made of and what it cost."""
    e = options.eval
    prior = (f"probability-flow ODE, {e.trace} trace, {e.method}" if metrics["latent_prior"] == "ode"
             else f"continuous ELBO, {options.eval.bounds.elbo_samples} draws of (t, +-z)")
    label = (f"latent bound E_q[log p(x|z) + log p_theta(z) - log q(z|x)] ({metrics['latent_draws']} draws of z ~ "
             f"q(z|x) per image; log p_theta(z) by the {prior})")
    cost = (f"{metrics['latent_nfe']} score evaluations per draw, {metrics['latent_items']} items, "
            f"{metrics['latent_time_s']:.1f} s")
    if metrics["latent_bpd"] is None:
        return f"{label}: {metrics.get('latent_nonfinite_items')} items non-finite ({cost})"
    mc = metrics["latent_bpd_mc_stderr"]
    return (f"{label}: bits/dim <= {metrics['latent_bpd']:.4f} +- {metrics['latent_bpd_stderr']:.4f}"
            f"{f', Monte Carlo {mc:.4f}' if mc is not None else ''} (an upper bound; lower is tighter; a uniform "
            f"model over the levels scores {metrics['uniform_bpd']:.3f}); per image: log p(x|z) "
            f"{metrics['latent_recon_nats']:.2f}, log p_theta(z) {metrics['latent_prior_nats']:.2f}, entropy of "
            f"q(z|x) {metrics['latent_entropy_nats']:.2f} nats ({cost})")


def bound_lines(metrics: dict, options: RunOptions) -> list[str]:
    """One line per bound: its value beside what it bounds and what it cost."""
    b, lines = options.eval.bounds, []
    names = [n for n in ("elbo", "vlb") if n in b.names] + [f"iw{k}" for k in b.iw_k if "iw" in b.names]
    unit, what = ("bpd", "bits/dim") if any(f"{n}_bpd" in metrics for n in names) else ("nll", "nll (nats)")
    levels = f"K = {b.chain_steps} of N = {options.sde.kwargs['N']}" if b.chain_steps else f"N = {options.sde.kwargs['N']}"
    chain = f"{b.variance} variance (or the model's learned one), {b.decoder} decoder, {levels} levels"
    described = {"elbo": f"ELBO (continuous, Song, Durkan et al. 2021; {b.elbo_samples} draws of (t, +-z))",
                 "vlb": f"DDPM VLB (Ho et al. 2020; {b.vlb_levels or 'all'} levels per item; {chain})"}
    for name in names:
        value = metrics.get(f"{name}_{unit}")
        label = described.get(name, f"IW_{name[2:]} (importance-weighted, {metrics.get('iw_paths')} paths per item; "
                                      f"{chain})")
        cost = (f"{metrics[f'{name}_nfe']} score evaluations per item, {metrics['bound_items']} items, "
                f"{metrics[f'{name}_time_s']:.1f} s")
        if value is None:
            lines.append(f"{label}: {metrics.get(f'{name}_nonfinite_items')} items non-finite ({cost})")
            continue
        mc = metrics[f"{name}_{unit}_mc_stderr"]
        mc_text = f", Monte Carlo {mc:.4f}" if mc is not None else ""
        lines.append(f"{label}: {what} <= {value:.4f} +- {metrics[f'{name}_{unit}_stderr']:.4f}{mc_text} "
                     f"(an upper bound; lower is tighter) ({cost})")
    return lines


def paired_gap(logp: torch.Tensor, spec: DataSpec) -> dict:
    """For data with a known density: ``mean_i [log p_data(x_i) - log p_model(x_i)]`` over the same
    held-out points (a Monte Carlo estimate of KL(p_data || p_model)), whose standard error is far
    smaller than that of the difference of two independent means, the points' spread cancelling."""
    if spec.toy is None or not bool(torch.isfinite(logp).all()):
        return {}
    diff = spec.toy.log_prob(spec.test.double().cpu()) - logp.double().cpu()
    stderr = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return {"nll_gap": float(diff.mean()), "nll_gap_stderr": stderr}


def comparisons(metrics: dict, spec: DataSpec) -> dict:
    """What each figure is compared with: the gap to the data's own entropy (toy data, with its
    standard error), or the bits/dim of a uniform model over the ``K`` levels (images)."""
    out = {}
    if metrics.get("nll") is not None and "true_nll" in metrics and "nll_gap" not in metrics:
        out["nll_gap"] = metrics["nll"] - metrics["true_nll"]
        out["nll_gap_stderr"] = math.hypot(metrics["nll_stderr"], metrics["true_nll_stderr"])
    if spec.is_image:
        out["uniform_bpd"] = math.log2(spec.num_levels)
    return out


def summary_lines(metrics: dict, options: RunOptions) -> list[str]:
    """The results as a person reads them, each figure beside what it is compared with."""
    lines = [f"held-out loss {metrics['loss']:.5g} ({options.loss.describe})"]
    how = (f"{metrics.get('likelihood_nfe', 0):.0f} score evaluations per batch, "
           f"{metrics.get('likelihood_time_s', 0):.1f} s; {options.eval.trace} trace, {options.eval.method}")
    if metrics.get("nll") is not None:
        line = f"nll {metrics['nll']:.4f} +- {metrics['nll_stderr']:.4f} nats per sample"
        if "nll_gap" in metrics:
            line += (f"; the data's own entropy is {metrics['true_nll']:.4f} +- {metrics['true_nll_stderr']:.4f}; "
                     f"the gap (log p_data - log p_model on the same points, an estimate of the KL) is "
                     f"{metrics['nll_gap']:.4f} +- {metrics['nll_gap_stderr']:.4f} (0 is perfect)")
        lines.append(f"{line} ({how})")
    if metrics.get("bpd") is not None:
        lines.append(f"bits/dim {metrics['bpd']:.4f} +- {metrics['bpd_stderr']:.4f} (a uniform model over the "
                     f"levels scores {metrics['uniform_bpd']:.3f}; lower is better) ({how})")
    if metrics.get("nonfinite_items"):
        lines.append(f"{metrics['nonfinite_items']} items had a non-finite likelihood")
    if "latent_bpd" in metrics:
        lines.append(latent_line(metrics, options))
    if "fd" in metrics:
        lines.append(quality_line(metrics))
    return lines + bound_lines(metrics, options)


def record_in_training_metrics(workdir: Path, metrics: dict, options: RunOptions) -> None:
    """Append the likelihood to ``metrics.jsonl`` (one line, ``"event": "eval"``) and redraw the loss
    curve with it; a trainer running beside appends its own lines, each write being one short line."""
    key = "bpd" if "bpd" in metrics else "nll" if "nll" in metrics else None
    if key is None or metrics[key] is None:
        return
    with open(workdir / METRICS_FILE, "a") as f:
        f.write(json.dumps({"step": metrics["step"], key: metrics[key], "event": "eval"}) + "\n")
    write_loss_curve(workdir, options)


def pixel_spec(options: RunOptions, spec: DataSpec) -> DataSpec:
    """``spec`` itself, or for a latent model the held-out images in pixel space (what its likelihood and
    sample quality are measured on)."""
    if spec.first_stage is None:
        return spec
    return load_data(dataclasses.replace(options.data, first_stage=""), options.seed, with_train=False)


def evaluate(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``eval`` mode; writes ``metrics.json`` and the resolved ``config.json`` into ``outdir``
    (default ``<workdir>/eval``) once everything is computed, and returns the metrics. Non-finite
    likelihoods are counted in the file and raise ``NonFiniteResultsError`` after it is written."""
    inf = load_for_inference(options, workdir, ctx)
    if inf.consistency:
        raise ValueError(f"{inf.checkpoint} holds a consistency student (--mode distill): it has no score, so the "
                         f"held-out loss and likelihoods of --mode eval do not apply; score its samples with --mode fid "
                         f"(sampling.method=consistency)")
    spec = load_data(options.data, options.seed, with_train=False)
    pixels = pixel_spec(options, spec)
    metrics = {"step": inf.step, "checkpoint": inf.checkpoint.name, "num_samples": int(len(spec.test))}
    logger.info("evaluating the %s on %d held-out items", inf.weights, len(spec.test))
    with logs_above_bars():
        metrics["loss"] = heldout_loss(inf.sde, inf.score_fn, options.loss, spec.test, spec,
                                       batch_size=options.eval.batch_size,
                                       generator=generator(options.seed, Stream.EVAL_LOSS, ctx.rank, ctx.device),
                                       ctx=ctx)
        if options.eval.likelihood and spec.first_stage is not None:
            metrics.update(_latent_metrics(options, inf, spec, pixels, ctx))
        elif options.eval.likelihood:
            metrics.update(_likelihood_metrics(options, inf, spec, ctx))
        if options.eval.bounds.names:
            metrics.update(_bound_metrics(options, inf, spec, ctx))
        if options.eval.sample_quality:
            metrics.update(sample_quality_metrics(options, inf, pixels, ctx))
    metrics.update(true_nll(spec, options.eval.true_nll_samples, options.seed))
    metrics.update(comparisons(metrics, pixels))
    metrics["loss_meaning"] = options.loss.describe
    directory = Path(outdir) if outdir is not None else Path(workdir) / EVAL_DIR
    if ctx.is_main:
        run_dir = write_results(directory, f"step{inf.step:08d}", {"metrics.json": json.dumps(metrics, indent=2) + "\n"},
                                options.config_json)
        if outdir is None:
            record_in_training_metrics(Path(workdir), metrics, options)
        for line in summary_lines(metrics, options):
            logger.info("eval: %s", line)
        logger.info("eval results in %s (kept) and %s (the latest)", run_dir, directory / "metrics.json")
    bad_bounds = {k: v for k, v in metrics.items() if k.endswith("_nonfinite_items") and v}
    if bad_bounds:
        raise NonFiniteResultsError(f"non-finite likelihood bounds ({bad_bounds}, see {directory / 'metrics.json'}); "
                                    f"the model or the bound settings (eval.*) are broken")
    if metrics.get("nonfinite_items"):
        raise NonFiniteResultsError(f"{metrics['nonfinite_items']} of {metrics['num_samples']} held-out items got a "
                                    f"NaN or infinite likelihood (see {directory / 'metrics.json'}); the model or "
                                    f"the likelihood settings (eval.*) are broken")
    return metrics
