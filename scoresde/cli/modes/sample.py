"""The ``sample`` mode: draw samples with the sampler the config names (``pc`` / ``ode`` / ``fast``)
from the newest checkpoint's EMA weights, and write ``samples/samples.npz`` (array ``samples``, in data
space: images in [0, 1], 2-D points raw) with a PNG grid or scatter plot and ``samples/info.json``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from scoresde.run.distributed import DistContext
from scoresde.run.cascade import sr_line, super_resolution_results
from scoresde.run.generation import (count_nonfinite, generate, label_accuracy, npz_bytes, sample_files,
                                     sample_picture, sample_stats)
from scoresde.run.guidance import guided_score_for, unconditional_score
from scoresde.run.inference import load_classifier, load_for_inference
from scoresde.run.options import RunOptions, SamplerOptions
from scoresde.data.pipeline import to_data_space
from scoresde.run.runtime import bars_enabled, logs_above_bars
from scoresde.data.streams import Stream, generator
from scoresde.run.workdir import SAMPLES_DIR, NonFiniteResultsError, write_results

logger = logging.getLogger(__name__)


def guidance_note(sampler: SamplerOptions) -> str:
    """``", class 3, cfg guidance w = 2"``, or nothing for unconditional sampling."""
    if sampler.label is None:
        return ""
    what = "one row per class" if sampler.label == "all" else f"class {sampler.label}"
    if sampler.guidance != "none":
        what += f", {sampler.guidance} guidance w = {sampler.guidance_scale:g}"
    return f", {what}"


def summary_line(info: dict) -> str:
    """What was drawn and, for toy data, how much of it lands where the data lives."""
    line = (f"{info['num_samples']} samples by the {info['method']} sampler ({info['nfe_per_batch']} score "
            f"evaluations per batch, {info['time_s']:.1f} s)")
    if "in_support_frac" in info:
        line += (f"; {100 * info['in_support_frac']:.1f}% on the data's support (where the true density is at "
                 f"least its 1% quantile: about 99% for perfect samples)")
    if "class_accuracy" in info:
        line += f"; {100 * info['class_accuracy']:.1f}% of the requested class ({info['class_judge']})"
    if info["nonfinite_samples"]:
        line += f"; {info['nonfinite_samples']} samples hold NaN or inf"
    return line


# ---------------------------------------------------------------------------------------- classes and guidance
def sample_labels(sampler: SamplerOptions, num_classes: int) -> tuple[torch.Tensor | None, int]:
    """The class of every sample and how many samples there are: ``label`` k for all, or with ``"all"``
    ``ceil(num_samples / K)`` of each class in turn (a grid with one row per class)."""
    if sampler.label is None:
        return None, sampler.num_samples
    if sampler.label == "all":
        per_class = -(-sampler.num_samples // num_classes)
        return torch.arange(num_classes).repeat_interleave(per_class), per_class * num_classes
    return torch.full((sampler.num_samples,), sampler.label, dtype=torch.long), sampler.num_samples


def sample(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``sample`` mode: ``samples.npz``, a picture, ``info.json`` and the resolved ``config.json`` in
    ``outdir`` (default ``<workdir>/samples``), written once the samples exist; returns the info.
    Samples holding NaN or inf are counted in ``info.json`` and raise ``NonFiniteResultsError``. An
    image-conditioned model is sampled on the conditions ``sampling.cascade`` / ``low_res_from`` name."""
    if options.network.cond_channels:
        return sample_super_resolution(options, workdir, ctx, outdir)
    inf = load_for_inference(options, workdir, ctx)
    sampler = options.sampler
    num_classes = options.network.num_classes or inf.data.num_classes
    labels, num = sample_labels(sampler, num_classes)
    classifier = None
    if sampler.guidance == "classifier":
        classifier = load_classifier(sampler.classifier_workdir, options, ctx)
    score_fn = unconditional_score(options, inf) if labels is None else inf.score_fn
    logger.info("drawing %d samples from the %s with the %s sampler%s", num, inf.weights, sampler.method,
                guidance_note(sampler))
    start = time.perf_counter()
    with logs_above_bars():
        x, nfe = generate(inf.sde, score_fn, num, inf.data.model_shape, sampler,
                          generator=generator(options.seed, Stream.SAMPLING, ctx.rank, ctx.device), ctx=ctx,
                          show_progress=bars_enabled(options.train.progress_bar) and ctx.is_main,
                          labels=labels, score_for=guided_score_for(options, inf, classifier))
    elapsed = time.perf_counter() - start
    data = to_data_space(x.cpu(), inf.data)
    bad = count_nonfinite(data)
    info = {"step": inf.step, "method": sampler.method, "num_samples": int(len(data)), "nfe_per_batch": nfe,
            "time_s": round(elapsed, 3), "nonfinite_samples": bad, **sample_stats(data, inf.data)}
    if labels is not None:
        info.update({"label": sampler.label, "guidance": sampler.guidance, "guidance_scale": sampler.guidance_scale,
                     **label_accuracy(data, labels, inf.data)})
    directory = Path(outdir) if outdir is not None else Path(workdir) / SAMPLES_DIR
    if ctx.is_main:
        caption = (f"{inf.weights}, {sampler.method} sampler{guidance_note(sampler)}, {nfe} NFE "
                   f"per batch, {len(data)} samples")
        rows = [f"class {k}" for k in range(num_classes)] if sampler.label == "all" else None
        files = {**sample_files(data, inf.data, "samples", caption, labels=labels, row_labels=rows),
                 "info.json": json.dumps(info, indent=2) + "\n"}
        run_dir = write_results(directory, f"step{inf.step:08d}_{sampler.method}", files, options.config_json)
        logger.info("sample: %s", summary_line(info))
        logger.info("samples in %s (kept) and %s (the latest)", run_dir, directory / "samples.npz")
    check_finite_samples(bad, len(data), directory)
    return info


def check_finite_samples(bad: int, num: int, directory: Path) -> None:
    """``NonFiniteResultsError`` when ``bad`` of the ``num`` samples hold NaN or inf (after they are written)."""
    if bad:
        raise NonFiniteResultsError(f"{bad} of {num} samples hold NaN or inf values (see "
                                    f"{directory / 'info.json'}); the model or the sampler settings are broken")


STAGE_FILES = {"cascade": ("stage1_base.png", "samples.png"),
               "heldout": ("low_res.png", "samples.png", "original.png")}


def sample_super_resolution(options: RunOptions, workdir: str | Path, ctx: DistContext,
                            outdir: str | Path | None = None) -> dict:
    """``--mode sample`` of an image-conditioned model: a cascade (``stage1_base.png``, then the
    super-resolved ``samples.png``) or the held-out items super-resolved (``low_res.png``, ``samples.png``,
    ``original.png`` and the accuracy numbers); ``samples.npz`` holds ``samples`` and ``low_res`` (and
    ``original``)."""
    sampler = options.sampler
    show = bars_enabled(options.train.progress_bar) and ctx.is_main
    start = time.perf_counter()
    with logs_above_bars():
        sr, stages, arrays, metrics = super_resolution_results(options, workdir, ctx, show_progress=show)
    data = stages[1].samples
    bad = count_nonfinite(data)
    kind = "cascade" if sampler.cascade is not None else "heldout"
    info = {"step": sr.step, "method": sampler.method, "num_samples": int(len(data)), "nfe_per_batch": stages[1].nfe,
            "time_s": round(time.perf_counter() - start, 3), "nonfinite_samples": bad, "conditions": kind,
            "cond_noise": sampler.cond_noise, "guidance": sampler.guidance, "guidance_scale": sampler.guidance_scale,
            **metrics}
    directory = Path(outdir) if outdir is not None else Path(workdir) / SAMPLES_DIR
    if ctx.is_main:
        guided = f", {sampler.guidance} guidance w = {sampler.guidance_scale:g}" if sampler.guidance != "none" else ""
        files = {"samples.npz": npz_bytes(samples=data.numpy(), **arrays), "info.json": json.dumps(info, indent=2) + "\n"}
        for i, (stage, name) in enumerate(zip(stages, STAGE_FILES[kind])):
            how = f", {sampler.method} sampler" if stage.nfe else ""
            how += f", cond_noise {sampler.cond_noise:g}{guided}" if i == 1 else ""   # the super-resolved stage
            files[name] = sample_picture(stage.samples.numpy(), sr.data, stage.caption + how)
        run_dir = write_results(directory, f"step{sr.step:08d}_{sampler.method}_{kind}", files, options.config_json)
        logger.info("sample: %s", summary_line(info))
        if metrics:
            logger.info("sample: %s", sr_line(metrics))
        logger.info("samples in %s (kept) and %s (the latest)", run_dir, directory / "samples.npz")
    check_finite_samples(bad, len(data), directory)
    return info
