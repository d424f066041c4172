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

import torch

import samplers
from training.datasets import scaler_log_det
from training.distributed import DistContext
from training.heldout import heldout_loss, log_likelihoods
from training.inference import Inference, load_for_inference
from training.options import RunOptions
from training.pipeline import DataSpec, load_data
from training.streams import Stream, generator
from training.workdir import EVAL_DIR, NonFiniteResultsError, write_results

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
                                generator=generator(options.seed, Stream.LIKELIHOOD, ctx.rank, ctx.device), ctx=ctx)
    return {**likelihood_summary(logp, spec), "likelihood_nfe": nfe,
            "likelihood_time_s": round(time.perf_counter() - start, 3)}


def evaluate(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``eval`` mode; writes ``metrics.json`` and the resolved ``config.json`` into ``outdir``
    (default ``<workdir>/eval``) once everything is computed, and returns the metrics. Non-finite
    likelihoods are counted in the file and raise ``NonFiniteResultsError`` after it is written."""
    inf = load_for_inference(options, workdir, ctx)
    spec = load_data(options.data, options.seed, with_train=False)
    metrics = {"step": inf.step, "checkpoint": inf.checkpoint.name, "num_samples": int(len(spec.test))}
    metrics["loss"] = heldout_loss(inf.sde, inf.score_fn, options.loss, spec.test, spec,
                                   batch_size=options.eval.batch_size,
                                   generator=generator(options.seed, Stream.EVAL_LOSS, ctx.rank, ctx.device), ctx=ctx)
    if options.eval.likelihood:
        metrics.update(_likelihood_metrics(options, inf, spec, ctx))
    metrics.update(true_nll(spec, options.eval.true_nll_samples, options.seed))
    directory = Path(outdir) if outdir is not None else Path(workdir) / EVAL_DIR
    if ctx.is_main:
        write_results(directory, {"metrics.json": json.dumps(metrics, indent=2) + "\n"}, options.config_json)
        logger.info("eval metrics written to %s: %s", directory / "metrics.json", metrics)
    if metrics.get("nonfinite_items"):
        raise NonFiniteResultsError(f"{metrics['nonfinite_items']} of {metrics['num_samples']} held-out items got a "
                                    f"NaN or infinite likelihood (see {directory / 'metrics.json'}); the model or "
                                    f"the likelihood settings (eval.*) are broken")
    return metrics
