"""The ``inpaint`` and ``colorize`` modes: complete held-out items (or a user's ``.npz``) with the newest
checkpoint's EMA weights, by ``samplers.inpaint`` / ``samplers.colorize`` (score_sde's replacement
method, or RePaint's resampling), and write the original, the input and the completion side by side:
``<workdir>/inpaint/`` (or ``colorize/``) holds ``inpaint.npz`` (arrays ``original``, ``mask`` (1 = known),
``completed``, and ``labels`` for held-out data), a PNG sheet and ``info.json`` with the error on the
missing entries (and, for digits, how often the digits classifier still reads the true class).

Masks (``sampling.mask``), for images of height H and width W: ``lower_half`` (rows ``H/2..H``
missing), ``right_half`` (columns ``W/2..W``), ``centre`` (the central ``H/2 x W/2`` square), ``random:f``
(each pixel missing with probability ``f``, the same pixels in every channel) or a ``.npy`` file of
ones (known) and zeros shaped like one item or like all of them. Vector data takes ``random:f`` or a file.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from scoresde import samplers
from scoresde.samplers.inpaint import check_mask_values
from scoresde.data.datasets import data_scaler
from scoresde.run.distributed import DistContext
from scoresde.run.generation import count_nonfinite, label_accuracy, npz_bytes, sample_picture
from scoresde.run.guidance import guided_score_for, unconditional_score
from scoresde.run.inference import Inference, load_for_inference
from scoresde.run.options import RunOptions, SamplerOptions
from scoresde.data.pipeline import DataSpec, check_data_space, load_data, to_data_space, to_model_space
from scoresde.run.plots import image_grid
from scoresde.run.runtime import logs_above_bars
from scoresde.evaluate.metrics import digits_classifier
from scoresde.data.streams import Stream, generator
from scoresde.run.workdir import NonFiniteResultsError, write_results

logger = logging.getLogger(__name__)

IMAGE_MASKS = ("lower_half", "right_half", "centre")
SHEET_ITEMS = 12            # items shown on the PNG sheet


# ---------------------------------------------------------------------------------------- masks
def _image_mask(kind: str, shape: tuple) -> torch.Tensor:
    c, h, w = shape
    known = torch.ones(shape, dtype=torch.bool)
    if kind == "lower_half":
        known[:, h // 2:, :] = False
    elif kind == "right_half":
        known[:, :, w // 2:] = False
    else:                                   # centre
        known[:, h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = False
    return known


def _random_mask(text: str, n: int, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    try:
        fraction = float(text.split(":", 1)[1])
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"config.sampling.mask={text!r}: the fraction after 'random:' must lie in (0, 1)")
    spatial = (n, 1) + tuple(shape[1:]) if len(shape) == 3 else (n,) + tuple(shape)
    known = torch.rand(spatial, generator=gen) >= fraction
    return known.expand((n,) + tuple(shape)).clone()


def _file_mask(path: str, n: int, shape: tuple) -> torch.Tensor:
    if not Path(path).is_file():
        raise ValueError(f"config.sampling.mask={path!r} is neither a mask kind ({', '.join(IMAGE_MASKS)}, "
                         f"random:<fraction>) nor an existing .npy file")
    array = np.load(path)
    if tuple(array.shape) not in (tuple(shape), (n,) + tuple(shape)):
        raise ValueError(f"config.sampling.mask file {path} must hold ones (known) and zeros shaped like one item "
                         f"{tuple(shape)} or all {n} items, got shape {array.shape}")
    check_mask_values(f"config.sampling.mask file {path}", torch.from_numpy(np.asarray(array, dtype=np.float64)))
    return torch.from_numpy(array.astype(bool)).expand((n,) + tuple(shape)).clone()


def build_mask(kind: str, n: int, shape: tuple, gen: torch.Generator) -> torch.Tensor:
    """``(n, *shape)`` booleans, True = known, from ``sampling.mask``."""
    if kind in IMAGE_MASKS:
        if len(shape) != 3:
            raise ValueError(f"config.sampling.mask={kind!r} needs images; this data's items have shape {shape}: "
                             f"use random:<fraction> or a mask file")
        return _image_mask(kind, shape).expand((n,) + tuple(shape)).clone()
    if kind.startswith("random:"):
        return _random_mask(kind, n, shape, gen)
    return _file_mask(kind, n, shape)


# ---------------------------------------------------------------------------------------- data
def items_to_complete(options: RunOptions, inf: Inference, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, DataSpec]:
    """``num_samples`` items in model space (held-out data, uniformly dequantised, or the user's
    ``.npz`` of data-space items, refused unless they lie in the data space), the same items in data
    space, their labels when known, and the data description."""
    n = options.sampler.num_samples
    if options.sampler.inpaint_data is None:
        spec = load_data(options.data, options.seed, with_train=False)
        if len(spec.test) < n:
            raise ValueError(f"config.sampling.num_samples={n} exceeds the {len(spec.test)} held-out items "
                             f"(config.eval.num_samples)")
        x = to_model_space(spec.test[:n], spec, gen, train=False)
        return x, to_data_space(x, spec), None if spec.test_labels is None else spec.test_labels[:n], spec
    path = Path(options.sampler.inpaint_data)
    if not path.is_file():
        raise ValueError(f"config.sampling.inpaint_data={str(path)!r} does not exist")
    with np.load(path) as npz:
        array = npz["samples"] if "samples" in npz.files else npz[npz.files[0]]
    if tuple(array.shape[1:]) != tuple(inf.data.shape):
        raise ValueError(f"config.sampling.inpaint_data {path}: items must have shape {tuple(inf.data.shape)}, "
                         f"got {tuple(array.shape[1:])}")
    check_data_space(array[:n], inf.data, f"config.sampling.inpaint_data {path}")
    items = torch.from_numpy(np.asarray(array[:n], dtype=np.float32))
    x = data_scaler(inf.data.centered)(items) if inf.data.is_image else items
    return x, items, None, inf.data


def score_for_items(options: RunOptions, inf: Inference, n: int, device) -> samplers.ScoreFn:
    """The score completions are drawn with: of ``sampling.label`` (and its guidance) when set, else of
    ``p(x)``."""
    label = options.sampler.label
    if label is None:
        return unconditional_score(options, inf)
    if label == "all":
        raise ValueError("config.sampling.label='all' draws a grid of classes; inpaint / colorize take one "
                         "class index or '' (unconditional)")
    return guided_score_for(options, inf, None)(torch.full((n,), label, dtype=torch.long, device=device))


# ---------------------------------------------------------------------------------------- outputs
def masked_view(original: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The input as the sampler sees it: missing entries drawn mid-grey (0.5)."""
    return np.where(known, original, 0.5)


def sheet(original: np.ndarray, shown_input: np.ndarray, completed: np.ndarray, spec: DataSpec, caption: str,
          input_name: str) -> bytes:
    """PNG: for images three rows (original, input, completion) of the first items; for points the
    completions over the true density."""
    if not spec.is_image:
        return sample_picture(completed, spec, caption)
    k = min(len(original), SHEET_ITEMS)
    if shown_input.shape[1] != original.shape[1]:           # a grey input beside colour images
        shown_input = np.repeat(shown_input, original.shape[1], axis=1)
    rows = np.concatenate([original[:k], shown_input[:k], completed[:k]])
    return image_grid(rows, caption=caption, cols=k, row_labels=["original", input_name, "completed"])


def error_metrics(original: torch.Tensor, completed: torch.Tensor, known: torch.Tensor,
                  labels: torch.Tensor | None, spec: DataSpec) -> dict:
    """Mean squared error (data space) on the missing entries, and for labelled held-out data how often
    the completions (and, for reference, the originals) are of the true class."""
    missing = ~known
    mse = float(((completed - original)[missing].double() ** 2).mean()) if bool(missing.any()) else 0.0
    info = {"missing_fraction": float(missing.double().mean()), "mse_missing": mse}
    if labels is not None and (spec.toy is not None or spec.name == "digits"):
        info["completed_class_accuracy"] = label_accuracy(completed, labels, spec).get("class_accuracy")
        info["original_class_accuracy"] = label_accuracy(original, labels, spec).get("class_accuracy")
        if spec.name == "digits":
            info["class_judge"] = f"digits classifier (test accuracy {digits_classifier().test_accuracy:.4f})"
    return info


# ---------------------------------------------------------------------------------------- drivers
def _complete(options: RunOptions, inf: Inference, x: torch.Tensor, known: torch.Tensor, colour: bool,
              ctx: DistContext, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Completions of ``x`` (model space) in batches of ``sampling.batch_size``; score evaluations per batch."""
    sampler: SamplerOptions = options.sampler
    chunks, nfe = [], 0
    with logs_above_bars():
        for start in range(0, len(x), sampler.batch_size):
            xb = x[start:start + sampler.batch_size].to(ctx.device)
            score_fn = score_for_items(options, inf, len(xb), ctx.device)
            if colour:
                out, n = samplers.colorize(inf.sde, score_fn, xb.mean(dim=1, keepdim=True), generator=gen,
                                           **sampler.imputation_kwargs)
            else:
                out, n = samplers.inpaint(inf.sde, score_fn, xb, known[start:start + len(xb)].to(ctx.device),
                                          generator=gen, **sampler.imputation_kwargs)
            chunks.append(out.cpu())
            nfe = max(nfe, int(n))
    return torch.cat(chunks), nfe


def impute(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None,
           colour: bool = False) -> dict:
    """Inpaint (or, with ``colour``, colorize) ``sampling.num_samples`` items and write the results."""
    mode = "colorize" if colour else "inpaint"
    inf = load_for_inference(options, workdir, ctx)
    if colour and (not inf.data.is_image or inf.data.shape[0] != 3):
        raise ValueError(f"--mode colorize needs colour (3-channel) images; data.dataset={options.data.dataset!r} "
                         f"has items of shape {tuple(inf.data.shape)}")
    if not colour and options.sampler.mask in IMAGE_MASKS and not inf.data.is_image:
        build_mask(options.sampler.mask, 1, tuple(inf.data.shape), None)      # the one-line error, before any work
    gen = generator(options.seed, Stream.IMPUTATION, ctx.rank)
    x, original, labels, spec = items_to_complete(options, inf, gen)
    if colour:
        known = torch.zeros_like(x, dtype=torch.bool)        # every colour entry is sampled; the grey is kept
    else:
        known = build_mask(options.sampler.mask, len(x), tuple(x.shape[1:]), gen)
    sampler_gen = generator(options.seed, Stream.IMPUTATION, ctx.rank, ctx.device)
    start = time.perf_counter()
    completed, nfe = _complete(options, inf, x, known, colour, ctx, sampler_gen)
    elapsed = time.perf_counter() - start
    result = torch.where(known, original, to_data_space(completed, spec))     # the known entries as given
    method = options.sampler.inpaint_method + (f" U={options.sampler.resample}" if options.sampler.resample > 1 else "")
    info = {"step": inf.step, "mode": mode, "method": method, "mask": None if colour else options.sampler.mask,
            "num_items": len(x), "nfe_per_batch": nfe, "time_s": round(elapsed, 3),
            "nonfinite_items": count_nonfinite(result),
            **error_metrics(original, result, known if not colour else torch.zeros_like(known), labels, spec)}
    shown = original.mean(dim=1, keepdim=True) if colour else torch.from_numpy(
        masked_view(original.numpy(), known.numpy()))
    arrays = {"original": original.numpy(), "mask": known.numpy(), "completed": result.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    caption = (f"{inf.weights}, {mode} ({method}, {'' if colour else options.sampler.mask + ', '}"
               f"{nfe} NFE per batch)")
    directory = Path(outdir) if outdir is not None else Path(workdir) / mode
    if ctx.is_main:
        files = {f"{mode}.npz": npz_bytes(**arrays),
                 f"{mode}.png": sheet(original.numpy(), shown.numpy(), result.numpy(), spec, caption,
                                      "grey" if colour else "masked"),
                 "info.json": json.dumps(info, indent=2) + "\n"}
        run_dir = write_results(directory, f"step{inf.step:08d}_{options.sampler.inpaint_method}", files,
                                options.config_json)
        logger.info("%s: %s", mode, summary_line(info))
        logger.info("results in %s (kept) and %s (the latest)", run_dir, directory / f"{mode}.png")
    if info["nonfinite_items"]:
        raise NonFiniteResultsError(f"{info['nonfinite_items']} of {len(x)} completions hold NaN or inf values")
    return info


def summary_line(info: dict) -> str:
    line = (f"{info['num_items']} items by {info['method']} ({info['nfe_per_batch']} score evaluations per batch, "
            f"{info['time_s']:.1f} s); mean squared error on the missing entries {info['mse_missing']:.4g}")
    if info.get("completed_class_accuracy") is not None:
        line += (f"; {100 * info['completed_class_accuracy']:.1f}% of completions of the true class "
                 f"(originals: {100 * info['original_class_accuracy']:.1f}%)")
    return line


def inpaint(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``inpaint`` mode."""
    return impute(options, workdir, ctx, outdir, colour=False)


def colorize(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``colorize`` mode."""
    return impute(options, workdir, ctx, outdir, colour=True)
