"""Sampling an image-conditioned (super-resolution) model: the low-resolution conditions it is given, either
a base model's samples (a cascade: Ho et al. 2022, "Cascaded Diffusion Models for High Fidelity Image
Generation") or the held-out items' low-resolution views (to measure how well it super-resolves), and the
numbers that say how well it did. ``--mode sample`` calls ``super_resolution_results``."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from scoresde.data.datasets import data_scaler
from scoresde.data.pipeline import DataSpec, load_data, to_data_space
from scoresde.data.streams import Stream, generator
from scoresde.models.image_cond import downsample, upsample
from scoresde.run.distributed import DistContext
from scoresde.run.generation import generate, label_accuracy
from scoresde.run.guidance import guided_score_for
from scoresde.run.inference import Inference, load_for_inference, read_trained
from scoresde.run.options import RunOptions
from scoresde.train.conditioning import fixed_conditions, heldout_conditions

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One stage's samples in data space, its caption and its score evaluations per batch."""

    samples: torch.Tensor
    caption: str
    nfe: int


def super_resolve(options: RunOptions, inf: Inference, conds: torch.Tensor, ctx: DistContext,
                  show_progress: bool = False) -> tuple[torch.Tensor, int]:
    """Model-space samples of the image-conditioned ``inf``, one per packed condition in ``conds``, drawn with
    ``sampling.guidance`` (none, or classifier-free guidance against the null condition)."""
    return generate(inf.sde, None, len(conds), inf.data.model_shape, options.sampler,
                    generator=generator(options.seed, Stream.SAMPLING, ctx.rank, ctx.device), ctx=ctx,
                    show_progress=show_progress, labels=conds, score_for=guided_score_for(options, inf, None))


def base_options(options: RunOptions, stored: RunOptions) -> RunOptions:
    """The base model's own options with this run's sampler (unguided, unconditioned), device and threads."""
    sampler = dataclasses.replace(options.sampler, guidance="none", label=None, cond_noise=0.0, cascade=None,
                                  low_res_from=None)
    train = dataclasses.replace(stored.train, threads=options.train.threads, progress_bar=options.train.progress_bar)
    return dataclasses.replace(stored, sampler=sampler, device=options.device, train=train,
                               config_json=options.config_json)


def check_pairing(base: Inference, sr: Inference, base_dir: str) -> None:
    """``ValueError`` naming ``config.sampling.cascade`` unless the base makes what the SR model is conditioned on."""
    shape = base.data.model_shape
    low_res, channels = sr.trained.data.low_res, sr.trained.network.cond_channels
    where = f"config.sampling.cascade: the base model in {base_dir}"
    if base.trained.network.cond_channels:
        raise ValueError(f"{where} is itself image-conditioned (model.cond_channels={base.trained.network.cond_channels});"
                         f" a cascade starts from an unconditional model")
    if len(shape) != 3:
        raise ValueError(f"{where} makes items of shape {tuple(shape)}, not images")
    if shape[0] != channels:
        raise ValueError(f"{where} makes {shape[0]}-channel images, but the super-resolution model takes "
                         f"model.cond_channels={channels}")
    if shape[-1] != low_res:
        raise ValueError(f"{where} makes {shape[-1]}x{shape[-1]} images, but the super-resolution model's "
                         f"data.low_res is {low_res}: they must be equal")
    if base.data.name != sr.data.name:
        raise ValueError(f"{where} was trained on data.dataset={base.data.name!r}, the super-resolution model on "
                         f"{sr.data.name!r}")


def cascade_stages(options: RunOptions, sr: Inference, ctx: DistContext, show_progress: bool) -> tuple[list, dict]:
    """Sample the base of ``sampling.cascade`` and super-resolve its samples: both stages and the arrays to keep."""
    base_dir = options.sampler.cascade[0]
    stored = read_trained(base_dir, "config.sampling.cascade: no checkpoint of the base model in {directory}").options
    base = load_for_inference(base_options(options, stored), base_dir, ctx)
    check_pairing(base, sr, base_dir)
    num = options.sampler.num_samples
    x_base, nfe_base = generate(base.sde, base.score_fn, num, base.data.model_shape, options.sampler,
                                generator=generator(options.seed, Stream.SAMPLING, ctx.rank, ctx.device), ctx=ctx,
                                show_progress=show_progress)
    low = to_data_space(x_base.cpu(), base.data)
    # the base's samples in the super-resolution model's space (its own centring), then its conditions
    conds = fixed_conditions(options, sr.sde, data_scaler(sr.data.centered)(low))
    x, nfe = super_resolve(options, sr, conds, ctx, show_progress)
    stages = [Stage(low, f"stage 1: base model {base_dir} ({base.weights}), {nfe_base} NFE", nfe_base),
              Stage(to_data_space(x.cpu(), sr.data), f"stage 2: super-resolved {low.shape[-1]} -> "
                    f"{x.shape[-1]} ({sr.weights}), {nfe} NFE", nfe)]
    return stages, {"low_res": low.numpy()}


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1] with mean squared error ``mse``."""
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


def heldout_stages(options: RunOptions, sr: Inference, ctx: DistContext, show_progress: bool) -> tuple[list, dict, dict]:
    """Super-resolve the held-out items' low-resolution views: the stages, the arrays and how close the
    results are to the originals (per-pixel MSE and PSNR in [0, 1], consistency with the condition, and
    for digits how often the digits classifier reads the true label, against the same for the
    nearest-upsampled condition and the originals)."""
    spec: DataSpec = load_data(options.data, options.seed, with_train=False)
    num = min(options.sampler.num_samples, len(spec.test))
    truth_model, conds = heldout_conditions(options, sr.sde, spec, num)
    x, nfe = super_resolve(options, sr, conds, ctx, show_progress)
    out, truth = to_data_space(x.cpu(), sr.data), to_data_space(truth_model, spec)
    low = downsample(truth, options.data.low_res)
    mse = float(((out - truth) ** 2).mean())
    metrics = {"sr_items": num, "sr_mse": mse, "sr_psnr": psnr(mse),
               "sr_consistency_mae": float((downsample(out, options.data.low_res) - low).abs().mean()),
               "upsampled_mse": float(((upsample(low, truth.shape[-1]) - truth) ** 2).mean())}
    if spec.test_labels is not None and spec.name == "digits" and tuple(out.shape[1:]) == tuple(spec.shape):
        labels = spec.test_labels[:num]
        metrics["sr_class_accuracy"] = label_accuracy(out, labels, spec)["class_accuracy"]
        metrics["upsampled_class_accuracy"] = label_accuracy(upsample(low, truth.shape[-1]), labels, spec)["class_accuracy"]
        metrics["original_class_accuracy"] = label_accuracy(truth, labels, spec)["class_accuracy"]
    stages = [Stage(low, f"held-out items at {low.shape[-1]}x{low.shape[-1]} (the conditions)", 0),
              Stage(out, f"super-resolved to {out.shape[-1]}x{out.shape[-1]} ({sr.weights}), {nfe} NFE", nfe),
              Stage(truth, "the held-out originals", 0)]
    return stages, {"low_res": low.numpy(), "original": truth.numpy()}, metrics


def sr_line(metrics: dict) -> str:
    """One log line of ``heldout_stages``' numbers."""
    line = (f"super-resolution of {metrics['sr_items']} held-out items: MSE {metrics['sr_mse']:.5f} (PSNR "
            f"{metrics['sr_psnr']:.2f} dB; nearest upsampling {metrics['upsampled_mse']:.5f}), consistency "
            f"|down(x) - y| {metrics['sr_consistency_mae']:.4f}")
    if "sr_class_accuracy" in metrics:
        line += (f"; digits classifier agrees with the true label on {100 * metrics['sr_class_accuracy']:.1f}% "
                 f"(nearest-upsampled low-res {100 * metrics['upsampled_class_accuracy']:.1f}%, originals "
                 f"{100 * metrics['original_class_accuracy']:.1f}%)")
    return line


def super_resolution_results(options: RunOptions, workdir: str | Path, ctx: DistContext,
                             show_progress: bool = False) -> tuple[Inference, list, dict, dict]:
    """The super-resolution model of ``workdir`` (or the cascade's second) sampled on the conditions
    ``sampling.cascade`` or ``sampling.low_res_from`` name: its ``Inference``, the stages, arrays, metrics."""
    sampler = options.sampler
    if sampler.cascade is None and sampler.low_res_from is None:
        raise ValueError("this model is image-conditioned (model.cond_channels > 0): set config.sampling.cascade="
                         "'BASE_WORKDIR,SR_WORKDIR' or config.sampling.low_res_from='heldout' to give it conditions")
    sr_dir = sampler.cascade[1] if sampler.cascade is not None else workdir
    sr = load_for_inference(options, sr_dir, ctx)
    if sampler.cascade is not None:
        stages, arrays = cascade_stages(options, sr, ctx, show_progress)
        return sr, stages, arrays, {}
    return (sr, *heldout_stages(options, sr, ctx, show_progress))
