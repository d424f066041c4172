"""The ``fid`` mode, the papers' protocol: ``eval.fid_samples`` samples (50 000) from the config's sampler,
for each of ``eval.fid_seeds`` seeds, against the statistics of the TRAINING set, in the FID Inception's
features (the digits classifier's for digits). Writes ``fid/fid.json`` and prints one line.

- Reference: ``eval.fid_reference`` (a pytorch-fid ``.npz``, ``mu`` and ``sigma``, read strictly), or by
  default ``<workdir>/fid_reference_<dataset>_<features>.npz``, computed once from all training items
  (or the first ``eval.fid_reference_items``) and reused. KID and precision / recall compare the samples
  with the features of at most ``REFERENCE_FEATURES`` of those items (a fixed choice), cached in the work
  directory.
- Samples: drawn in chunks of ``sampling.batch_size`` per rank and turned into features at once (their
  mean and covariance accumulate in float64; the first ``REFERENCE_FEATURES`` are kept for KID and P/R),
  so 50 000 images are never held. Seed ``seed + k`` draws the k-th set; like EDM (Karras et al. 2022)
  each FID, their minimum and their mean are reported.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from scoresde.data.pipeline import DataSpec, load_data
from scoresde.data.streams import Stream, generator
from scoresde.evaluate.features import (FeatureSpace, RunningStatistics, check_image_data, feature_space,
                                        features_of, items_from_samples, load_reference, reference_subset)
from scoresde.evaluate.metrics import frechet_distance, kid, precision_recall, save_statistics
from scoresde.run.checkpoint import atomic_write_bytes
from scoresde.run.distributed import DistContext
from scoresde.run.generation import generate, npz_bytes
from scoresde.run.inference import Inference, load_for_inference
from scoresde.run.options import RunOptions
from scoresde.run.runtime import logs_above_bars, progress_bar
from scoresde.run.workdir import write_results

logger = logging.getLogger(__name__)

FID_DIR = "fid"
REFERENCE_FEATURES = 10_000     # reference items (and samples) whose features KID and precision / recall use
SUBSET_SEED = 0                 # which reference items KID and P/R use: fixed, so that the cache fits every run
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000      # torch-fidelity's defaults
FIXED_STEP_METHODS = ("fast", "ddim", "edm")


# ---------------------------------------------------------------------------------------- reference
def reference_paths(options: RunOptions, workdir: Path, space: FeatureSpace) -> tuple[Path, Path]:
    """The statistics file (``eval.fid_reference`` or the work directory's default) and the cache of the
    reference items' features for KID and precision / recall."""
    items = options.eval.fid_reference_items
    stem = f"fid_reference_{options.data.dataset}_{space.name}" + (f"_first{items}" if items else "")
    stats = Path(options.eval.fid_reference) if options.eval.fid_reference else workdir / f"{stem}.npz"
    return stats, workdir / f"{stem}_features.npz"


def reference_items(options: RunOptions, spec: DataSpec) -> torch.Tensor:
    n = options.eval.fid_reference_items
    return spec.train if n == 0 else spec.train[:n]


def load_reference_features(path: Path, space: FeatureSpace) -> torch.Tensor | None:
    """The cached reference features (array ``features``, ``(m, d)``), or ``None`` when absent or stale."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        features = data["features"] if "features" in data.files else None
    if features is None or features.ndim != 2 or features.shape[1] != space.dim:
        return None
    return torch.from_numpy(features.astype(np.float64))


def reference_pass(items: torch.Tensor, subset: torch.Tensor, spec: DataSpec, space: FeatureSpace,
                   batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mu, sigma)`` of the features of all ``items``, accumulated batch by batch, and the features of
    the items ``subset`` (sorted indices)."""
    stats, kept = RunningStatistics(), []
    for start in range(0, len(items), batch_size):
        features = features_of(items[start:start + batch_size], spec, space, batch_size)
        stats.add(features)
        mine = subset[(subset >= start) & (subset < start + len(features))]
        kept.append(features[mine - start])
    return (*stats.statistics(), torch.cat(kept))


def reference(options: RunOptions, workdir: Path, spec: DataSpec, space: FeatureSpace, ctx: DistContext) -> dict:
    """The reference: ``mu``, ``sigma`` loaded from ``path`` or computed from the training items and
    written there (rank 0), the ``features`` of at most ``REFERENCE_FEATURES`` of those items (cached
    too), and how many ``items`` the statistics hold (``None``: a file made elsewhere)."""
    stats_path, features_path = reference_paths(options, workdir, space)
    items = reference_items(options, spec)
    subset = reference_subset(len(items), REFERENCE_FEATURES, SUBSET_SEED)
    kept = load_reference_features(features_path, space)
    cached = kept is not None and len(kept) == len(subset)
    if stats_path.is_file():
        mu, sigma = load_reference(stats_path, space)
        counted = None if options.eval.fid_reference else len(items)
        logger.info("reference statistics from %s", stats_path)
    else:
        logger.info("computing the reference statistics of %d training items (%s features) into %s", len(items),
                    space.name, stats_path)
        mu, sigma, kept = reference_pass(items, subset, spec, space)
        counted = len(items)
        if ctx.is_main:
            save_statistics(stats_path, mu, sigma)
    if kept is None or len(kept) != len(subset):
        kept = features_of(items[subset], spec, space)
    kept = kept.float()          # as cached: a run reading the cache compares the same numbers
    if ctx.is_main and not cached:
        features_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(features_path, npz_bytes(features=kept.numpy()))
    return {"mu": mu, "sigma": sigma, "features": kept.double(), "path": stats_path, "items": counted}


# ---------------------------------------------------------------------------------------- samples
def sample_features(options: RunOptions, inf: Inference, space: FeatureSpace, seed: int,
                    ctx: DistContext) -> tuple[RunningStatistics, torch.Tensor, int]:
    """``eval.fid_samples`` samples drawn with ``seed``, in chunks, as feature statistics; with the first
    ``REFERENCE_FEATURES`` features and the score evaluations per sample."""
    n, sampler = options.eval.fid_samples, options.sampler
    chunk = sampler.batch_size * ctx.world_size
    gen = generator(seed, Stream.FID, ctx.rank, ctx.device)
    stats, kept, nfe = RunningStatistics(), [], 0
    with progress_bar(n, enabled=options.train.progress_bar and ctx.is_main, unit="sample",
                      desc=f"FID samples (seed {seed}, {sampler.method})") as bar:
        for start in range(0, n, chunk):
            x, used = generate(inf.sde, inf.score_fn, min(chunk, n - start), inf.data.model_shape, sampler,
                               generator=gen, ctx=ctx)
            features = space(items_from_samples(x, inf.data))
            stats.add(features)
            if start < REFERENCE_FEATURES:
                kept.append(features[:REFERENCE_FEATURES - start])
            nfe = max(nfe, used)
            bar.update(len(x))
    return stats, torch.cat(kept), nfe


def seed_metrics(options: RunOptions, inf: Inference, space: FeatureSpace, ref: tuple, seed: int,
                 ctx: DistContext) -> dict:
    """FID, KID (x 1e3) and precision / recall of one sample set against the reference."""
    mu, sigma, ref_features = ref["mu"], ref["sigma"], ref["features"]
    start = time.perf_counter()
    stats, features, nfe = sample_features(options, inf, space, seed, ctx)
    kid_mean, kid_std = kid(ref_features, features, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                            generator=torch.Generator().manual_seed(seed))
    precision, recall = precision_recall(ref_features, features)
    return {"seed": seed, "fid": frechet_distance(*stats.statistics(), mu, sigma), "kid": 1e3 * kid_mean,
            "kid_std": 1e3 * kid_std, "precision": precision, "recall": recall, "nfe": nfe,
            "time_s": round(time.perf_counter() - start, 3)}


# ---------------------------------------------------------------------------------------- report
def sampler_steps(options: RunOptions, inf: Inference) -> int | None:
    """The sampler's steps: ``sampling.steps`` for the fixed-step solvers, the process's N for PC,
    ``None`` for the adaptive ODE solver."""
    method = options.sampler.method
    if method in FIXED_STEP_METHODS:
        return options.sampler.steps
    return inf.sde.N if method == "pc" else None


def summary(options: RunOptions, inf: Inference, space: FeatureSpace, ref: dict, per_seed: list[dict]) -> dict:
    fids = [r["fid"] for r in per_seed]
    mean = lambda key: float(np.mean([r[key] for r in per_seed]))      # noqa: E731
    return {"step": inf.step, "checkpoint": str(inf.checkpoint), "fid_min": min(fids), "fid_mean": mean("fid"),
            "kid_mean": mean("kid"), "precision_mean": mean("precision"), "recall_mean": mean("recall"),
            "per_seed": per_seed, "num_samples": options.eval.fid_samples, "seeds": [r["seed"] for r in per_seed],
            "sampler": options.sampler.method, "sampler_steps": sampler_steps(options, inf),
            "nfe": max(r["nfe"] for r in per_seed), "features": space.name, "features_describe": space.describe,
            "reference": str(ref["path"]), "reference_items": ref["items"],
            "kid_units": "x 1e3", "pr_items": min(REFERENCE_FEATURES, options.eval.fid_samples)}


def fid_line(result: dict) -> str:
    each = ", ".join(f"{r['fid']:.4g}" for r in result["per_seed"])
    steps = f"{result['sampler_steps']} steps, " if result["sampler_steps"] is not None else ""
    return (f"FID {result['fid_min']:.4g} (min) / {result['fid_mean']:.4g} (mean) over {len(result['per_seed'])} "
            f"seed(s) [{each}]; KID x 1e3 {result['kid_mean']:.3g}, precision {result['precision_mean']:.3f}, "
            f"recall {result['recall_mean']:.3f}; {result['num_samples']} samples per seed, {result['sampler']} "
            f"sampler ({steps}{result['nfe']} NFE), {result['features']} features, reference {result['reference']} "
            f"({result['reference_items'] or 'given'} items)")


def fid(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``fid`` mode: ``fid.json`` and the resolved ``config.json`` in ``outdir`` (default
    ``<workdir>/fid``); returns the results."""
    workdir = Path(workdir)
    spec = load_data(options.data, options.seed)
    check_image_data(spec, "--mode fid")
    inf = load_for_inference(options, workdir, ctx)
    space = feature_space(spec, options.eval.inception_weights, ctx.device)
    with logs_above_bars():
        ref = reference(options, workdir, spec, space, ctx)
        logger.info("FID of %d samples per seed (%d seeds) from the %s", options.eval.fid_samples,
                    options.eval.fid_seeds, inf.weights)
        per_seed = [seed_metrics(options, inf, space, ref, options.seed + k, ctx) for k in range(options.eval.fid_seeds)]
    result = summary(options, inf, space, ref, per_seed)
    directory = Path(outdir) if outdir is not None else workdir / FID_DIR
    if ctx.is_main:
        write_results(directory, f"step{inf.step:08d}_{options.sampler.method}",
                      {"fid.json": json.dumps(result, indent=2) + "\n"}, options.config_json)
        print(fid_line(result), flush=True)
        logger.info("FID results in %s", directory / "fid.json")
    return result
