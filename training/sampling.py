"""The ``sample`` mode: draw samples with the sampler the config names (``pc`` / ``ode`` / ``fast``)
from the newest checkpoint's EMA weights, and write ``samples/samples.npz`` (array ``samples``, in data
space: images in [0, 1], 2-D points raw) with a PNG grid or scatter plot and ``samples/info.json``."""
from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path

import ml_collections
import numpy as np
import torch

import samplers
from sde_lib import SDE
from training.checkpoint import atomic_write_bytes, atomic_write_text
from training.distributed import DistContext, all_gather_cat, shard_range
from training.factory import sampler_kwargs
from training.inference import load_for_inference
from training.pipeline import DataSpec, stream_seed, to_data_space
from training.plots import image_grid, scatter_plot

logger = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
SAMPLING_STREAM = 21        # seed offset of the sampling generator (distinct from training streams)


def sampler_fn(method: str):
    """``samplers.pc_sample`` / ``ode_sample`` / ``fast_sample``."""
    return getattr(samplers, f"{method}_sample")


def sampling_generator(seed: int, stream: int, ctx: DistContext) -> torch.Generator:
    """A generator on this rank's device, distinct per rank and per purpose."""
    return torch.Generator(device=ctx.device).manual_seed(stream_seed(seed, stream, ctx.rank))


def generate(sde: SDE, score_fn, num: int, item_shape: tuple, *, method: str, kwargs: dict, batch_size: int,
             generator: torch.Generator, ctx: DistContext) -> tuple[torch.Tensor, int]:
    """``num`` samples in model space, split over ranks and batches; all ranks get them all.

    Returns the samples (on this rank's device) and the score evaluations per batch (max over batches).
    """
    mine = shard_range(num, ctx)
    chunks, nfe = [], 0
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            shape = (min(batch_size, len(mine) - start),) + tuple(item_shape)
            x, n = sampler_fn(method)(sde, score_fn, shape, device=ctx.device, generator=generator, **kwargs)
            chunks.append(x)
            nfe = max(nfe, int(n))
    local = torch.cat(chunks) if chunks else torch.empty((0,) + tuple(item_shape), device=ctx.device)
    return all_gather_cat(local, ctx), nfe


def in_support_fraction(points: torch.Tensor, spec: DataSpec, n_ref: int = 20_000, seed: int = 0) -> float:
    """Fraction of samples where the true density is at least its own 1% quantile over data draws:
    for the checkerboard the fraction inside the dark cells, for the mixture the fraction within
    about 3 standard deviations of a mode. Ideal: 0.99 (1.0 for the checkerboard)."""
    draws = spec.toy.sample(n_ref, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = spec.toy.log_prob(draws)
    threshold = torch.quantile(ref, 0.01)
    finite = torch.isfinite(points).all(dim=1)
    logp = torch.full((len(points),), -math.inf, dtype=torch.float64)
    logp[finite] = spec.toy.log_prob(points[finite].double())
    return float((logp >= threshold).double().mean())


def _npz_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, samples=samples)
    return buffer.getvalue()


def write_samples(samples: torch.Tensor, spec: DataSpec, directory: Path, stem: str) -> tuple[Path, Path]:
    """Data-space samples -> ``<stem>.npz`` (array ``samples``) and ``<stem>.png``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    array = samples.detach().float().cpu().numpy()
    npz, png = directory / f"{stem}.npz", directory / f"{stem}.png"
    atomic_write_bytes(npz, _npz_bytes(array))
    picture = image_grid(array) if spec.is_image else scatter_plot(array)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(png, buffer.getvalue())
    return npz, png


def sample_stats(samples: torch.Tensor, spec: DataSpec) -> dict:
    """Cheap quality numbers for toy data (how many samples land where the data lives)."""
    if spec.toy is None:
        return {}
    return {"in_support_frac": in_support_fraction(samples.cpu(), spec)}


def sample(config: ml_collections.ConfigDict, workdir: str | Path, ctx: DistContext) -> dict:
    """The ``sample`` mode; returns what it wrote into ``samples/info.json``."""
    inf = load_for_inference(config, workdir, ctx)
    s = config.sampling
    start = time.perf_counter()
    x, nfe = generate(inf.sde, inf.score_fn, s.num_samples, inf.data.shape, method=s.method,
                      kwargs=sampler_kwargs(s), batch_size=s.batch_size,
                      generator=sampling_generator(config.seed, SAMPLING_STREAM, ctx), ctx=ctx)
    elapsed = time.perf_counter() - start
    data = to_data_space(x.cpu(), inf.data)
    info = {"step": inf.step, "method": s.method, "num_samples": int(len(data)), "nfe_per_batch": nfe,
            "time_s": round(elapsed, 3), **sample_stats(data, inf.data)}
    if ctx.is_main:
        npz, png = write_samples(data, inf.data, Path(workdir) / SAMPLES_DIR, "samples")
        atomic_write_text(Path(workdir) / SAMPLES_DIR / "info.json", json.dumps(info, indent=2) + "\n")
        logger.info("wrote %d samples to %s and %s (%s)", len(data), npz, png, info)
    return info
