"""Drawing samples over ranks and writing them (``.npz`` and a picture): what training snapshots
and ``--mode sample`` share."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scoresde.sde_lib import SDE
from scoresde.run import threads
from scoresde.run.checkpoint import atomic_write_bytes
from scoresde.run.distributed import DistContext, all_gather_cat, shard_range
from scoresde.run.options import SamplerOptions
from scoresde.data.pipeline import DataSpec
from scoresde.evaluate.metrics import digits_classifier
from scoresde.run.plots import MAX_COLUMNS, image_grid, scatter_plot
from scoresde.run.runtime import progress_bar


def generate(sde: SDE, score_fn, num: int, item_shape: tuple, sampler: SamplerOptions, *,
             generator: torch.Generator, ctx: DistContext, show_progress: bool = False,
             labels: torch.Tensor | None = None, score_for: Callable | None = None) -> tuple[torch.Tensor, int]:
    """``num`` samples in model space from ``sampler``, split over ranks and batches of
    ``sampler.batch_size``; all ranks get them all. ``show_progress`` draws a bar over samples and the
    sampler's own bar over its steps. With ``labels`` (``num`` class labels), sample ``i`` is drawn
    with the score ``score_for(labels of its batch)`` (conditional or guided) instead of ``score_fn``.

    Returns the samples (on this rank's device) and the score evaluations per batch (max over batches).
    """
    mine = shard_range(num, ctx)
    chunks, nfe = [], 0
    with torch.no_grad(), progress_bar(len(mine), enabled=show_progress, unit="sample",
                                       desc=f"sampling ({sampler.method})") as bar:
        for start in range(0, len(mine), sampler.batch_size):
            shape = (min(sampler.batch_size, len(mine) - start),) + tuple(item_shape)
            fn = score_fn
            if labels is not None:
                fn = score_for(labels[mine.start + start: mine.start + start + shape[0]].to(ctx.device))
            x, n = sampler.draw(sde, fn, shape, device=ctx.device, generator=generator, progress=show_progress)
            chunks.append(x)
            nfe = max(nfe, int(n))
            bar.update(shape[0])
            threads.tick()
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


def sample_stats(samples: torch.Tensor, spec: DataSpec) -> dict:
    """Cheap quality numbers for toy data (how many samples land where the data lives)."""
    if spec.toy is None:
        return {}
    return {"in_support_frac": in_support_fraction(samples.cpu(), spec)}


def label_accuracy(samples: torch.Tensor, labels: torch.Tensor, spec: DataSpec) -> dict:
    """How often a sample is of the class it was drawn for: the exact class (nearest mixture component,
    dark cell) of toy data, or the digits classifier's prediction (``scoresde/evaluate/metrics.py``)."""
    finite = torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)
    if spec.toy is not None:
        predicted = torch.full_like(labels, -1)
        predicted[finite] = spec.toy.labels(samples[finite].double())
        return {"class_accuracy": float((predicted == labels).double().mean()), "class_judge": "exact"}
    if spec.name == "digits":
        judge = digits_classifier()
        predicted = torch.full_like(labels, -1)
        predicted[finite] = judge.predict(samples[finite])
        return {"class_accuracy": float((predicted == labels).double().mean()),
                "class_judge": f"digits classifier (test accuracy {judge.test_accuracy:.4f})"}
    return {}




def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An ``.npz`` file's bytes holding ``arrays`` by name."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def sample_picture(samples: np.ndarray, spec: DataSpec, caption: str,
                   row_labels: list[str] | None = None) -> bytes:
    """PNG of data-space samples: an image grid with ``caption`` underneath (with ``row_labels``, one
    row per label: a class-conditional grid), or for 2-D points a scatter plot titled ``caption`` over
    the true density's contours (toy data)."""
    if spec.is_image:
        cols = len(samples) // len(row_labels) if row_labels else None
        if cols is not None and cols > MAX_COLUMNS:      # a readable grid: the first items of each row
            samples = samples.reshape(len(row_labels), cols, *samples.shape[1:])[:, :MAX_COLUMNS]
            samples, cols = samples.reshape(-1, *samples.shape[2:]), MAX_COLUMNS
            caption += f" (the first {MAX_COLUMNS} of each row shown)"
        return image_grid(samples, caption=caption, cols=cols, row_labels=row_labels)
    if spec.toy is None:
        return scatter_plot(samples, title=caption)

    def log_density(points: np.ndarray) -> np.ndarray:
        return spec.toy.log_prob(torch.from_numpy(points).double()).numpy()

    # the view frames the data (plus a margin), not a bad model's outliers (those are counted)
    draws = spec.toy.sample(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    half = max(2.5, 1.3 * float(draws.abs().max()))
    return scatter_plot(samples, title=caption, log_density=log_density, half_width=half)


def sample_files(samples: torch.Tensor, spec: DataSpec, stem: str, caption: str = "",
                 labels: torch.Tensor | None = None, row_labels: list[str] | None = None) -> dict:
    """Data-space samples as ``{"<stem>.npz": ..., "<stem>.png": ...}`` (bytes; array ``samples``, and
    ``labels`` with the class each sample was drawn for)."""
    array = samples.detach().float().cpu().numpy()
    arrays = {"samples": array} if labels is None else {"samples": array, "labels": labels.cpu().numpy()}
    return {f"{stem}.npz": npz_bytes(**arrays), f"{stem}.png": sample_picture(array, spec, caption, row_labels)}


def write_samples(samples: torch.Tensor, spec: DataSpec, directory: Path, stem: str,
                  caption: str = "") -> tuple[Path, Path]:
    """``sample_files`` written atomically into ``directory``; returns the ``.npz`` and ``.png`` paths."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in sample_files(samples, spec, stem, caption).items():
        atomic_write_bytes(directory / name, content)
    return directory / f"{stem}.npz", directory / f"{stem}.png"


def count_nonfinite(samples: torch.Tensor) -> int:
    """How many items hold a NaN or inf."""
    return int((~torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)).sum())
