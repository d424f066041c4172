"""A two-stage cascade on 8x8 digits (a 4x4 base model, then 4 -> 8 super-resolution) against the 8x8
pixel-space model, and the super-resolution model with and without noise-conditioning augmentation.

    python -m bench.cascade_digits --root /tmp/cascade_bench            # trains 4 models (skipped when done), then measures
    python -m bench.cascade_digits --root /tmp/cascade_bench --iters 300 --samples 100   # a quick look

Models (configs in scoresde/configs/digits/), each trained ``--iters`` updates at batch 64:
``pixel`` (ddpmpp_vp.py, 8x8), ``base`` (cascade_base.py, 4x4) and three SR models (cascade_sr.py): ``sr_aug``
(noise-conditioning augmentation, levels s ~ U[0, 0.5]), ``sr_aug_small`` (s ~ U[0, 0.15]) and ``sr_noaug``
(training.cond_noise_max = 0). The SR models see the same data, steps, seed and condition dropout; only
the augmentation differs. Each SR model is sampled at the levels s of ``SR_ROWS``.

Numbers (every sampler: DPM-Solver++ 2M, 20 steps; ``--samples`` samples; the digits classifier's features
and predictions, ``scoresde/evaluate/metrics.py``):

- unconditional rows: the Frechet distance (FD) of the 8x8 samples to the 300 held-out digits and the
  classifier score (exp E KL(p(y|x) || p(y)), 10 at most) and mean top-class probability ("confidence");
- super-resolution rows (``sampling.low_res_from=heldout``): the held-out digits' 4x4 views super-resolved,
  MSE to the originals and how often the classifier reads the true label (originals: the ceiling;
  nearest-upsampled 4x4 views: the floor), plus the FD of those super-resolved digits.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scoresde.data.datasets import quantize
from scoresde.data.pipeline import DataSpec, load_data
from scoresde.evaluate.features import feature_space, items_at_centres
from scoresde.evaluate.metrics import classifier_score, digits_classifier, fid_from_features

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--config.sampling.method=fast", "--config.sampling.steps=20"]   # the cascade configs' own sampler
MODELS = {"pixel": ("ddpmpp_vp", FAST), "base": ("cascade_base", []),
          "sr_aug": ("cascade_sr", ["--config.training.cond_noise_max=0.5"]),
          "sr_aug_small": ("cascade_sr", ["--config.training.cond_noise_max=0.15"]),
          "sr_noaug": ("cascade_sr", ["--config.training.cond_noise_max=0.0", "--config.sampling.cond_noise=0.0"])}
# the SR models and the augmentation levels s each is sampled at
SR_ROWS = {"sr_noaug": (0.0,), "sr_aug": (0.0, 0.1, 0.25), "sr_aug_small": (0.0, 0.05, 0.1)}
SR_NAMES = {"sr_noaug": "SR without aug", "sr_aug": "SR aug s<=0.5", "sr_aug_small": "SR aug s<=0.15"}
QUIET = ["--config.training.progress_bar=False", "--config.training.tensorboard=False",
         "--config.training.snapshot_sampling=False"]


def command(name: str, root: Path, mode: str, *extra: str) -> list[str]:
    config, flags = MODELS[name]
    return [sys.executable, str(ROOT / "main.py"), f"--config={ROOT}/scoresde/configs/digits/{config}.py",
            f"--workdir={root / name}", f"--mode={mode}", *flags, *QUIET, *extra]


def train_all(root: Path, iters: int, jobs: int) -> dict:
    """Train each model that has no final checkpoint yet, ``jobs`` at a time (one thread each); their times."""
    pending = [n for n in MODELS if not (root / n / "checkpoints" / f"checkpoint_{iters:08d}.pt").exists()]
    times, running = {}, []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            (root / name).mkdir(parents=True, exist_ok=True)
            log = open(root / f"{name}_train.log", "w")
            cmd = command(name, root, "train", f"--config.training.n_iters={iters}",
                          f"--config.training.checkpoint_freq={iters}", "--config.training.threads=1")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=log, env=env), time.time()))
        time.sleep(2)
        for item in list(running):
            name, proc, start = item
            if proc.poll() is not None:
                if proc.returncode:
                    raise RuntimeError(f"training {name} failed; see {root / f'{name}_train.log'}")
                times[name] = time.time() - start
                running.remove(item)
    return times


def sample(name: str, root: Path, out: str, samples: int, *extra: str) -> dict:
    """``--mode sample`` of one model into ``root/<out>``; the samples (and other arrays) and info.json."""
    outdir = root / out
    cmd = command(name, root, "sample", f"--outdir={outdir}", f"--config.sampling.num_samples={samples}",
                  f"--config.sampling.batch_size={samples}", *extra)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(root / f"{out}.log", "w"))
    arrays = dict(np.load(outdir / "samples.npz"))
    return {"arrays": arrays, "info": json.loads((outdir / "info.json").read_text())}


def unconditional_metrics(images: np.ndarray, spec: DataSpec, reference: torch.Tensor, space) -> dict:
    """FD to the held-out digits, classifier score and confidence of data-space 8x8 samples."""
    items = items_at_centres(quantize(torch.from_numpy(images).float(), spec.num_levels), spec)
    probs = digits_classifier().probs(items)
    return {"fd": fid_from_features(reference, space(items)), "classifier_score": classifier_score(probs),
            "confidence": float(probs.max(1).values.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="work directories of the four models")
    parser.add_argument("--iters", type=int, default=1200, help="training updates per model")
    parser.add_argument("--samples", type=int, default=300, help="samples per row")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (config.seed at sampling; training uses 42)")
    args = parser.parse_args()
    root = args.root.resolve()
    torch.set_num_threads(2)
    start = time.time()
    times = train_all(root, args.iters, args.jobs)
    print(f"trained {sorted(times)} in {time.time() - start:.0f} s ({ {k: round(v) for k, v in times.items()} })")

    from scoresde.run.options import DataOptions
    spec = load_data(DataOptions(dataset="digits", root=None, num_train=1, num_test=300, centered=True,
                                 uniform_dequantization=False, random_flip=False), seed=0, with_train=False)
    space = feature_space(spec)
    reference = space(items_at_centres(spec.test, spec))
    real = unconditional_metrics(items_at_centres(spec.test, spec).numpy(), spec, reference, space)
    rows = [("held-out digits (reference)", "-", real, {})]

    seed, tag = [f"--config.seed={args.seed}"], f"_seed{args.seed}"
    pixel = sample("pixel", root, f"pixel_samples{tag}", args.samples, *seed)
    rows.append(("8x8 pixel model", "-", unconditional_metrics(pixel["arrays"]["samples"], spec, reference, space),
                 {}))
    for sr, levels in SR_ROWS.items():
        for s in levels:
            got = sample(sr, root, f"cascade_{sr}_{s:g}{tag}", args.samples, *seed,
                         f"--config.sampling.cascade={root / 'base'},{root / sr}", f"--config.sampling.cond_noise={s}")
            rows.append((f"cascade 4x4 -> 8x8, {SR_NAMES[sr]}", f"{s:g}",
                         unconditional_metrics(got["arrays"]["samples"], spec, reference, space), {}))
    for sr, levels in SR_ROWS.items():
        for s in levels:
            got = sample(sr, root, f"heldout_{sr}_{s:g}{tag}", args.samples, *seed,
                         "--config.sampling.low_res_from=heldout", f"--config.sampling.cond_noise={s}")
            rows.append((f"SR of held-out 4x4, {SR_NAMES[sr]}", f"{s:g}",
                         unconditional_metrics(got["arrays"]["samples"], spec, reference, space), got["info"]))

    print(f"\n{'rows':44s} {'s':>5s} {'FD':>7s} {'cls score':>9s} {'conf':>6s} {'SR MSE':>8s} {'SR acc':>7s} "
          f"{'up acc':>7s} {'orig acc':>8s}")
    for name, s, m, info in rows:
        sr = (f"{info['sr_mse']:8.5f} {info['sr_class_accuracy']:7.3f} {info['upsampled_class_accuracy']:7.3f} "
              f"{info['original_class_accuracy']:8.3f}" if info else "")
        print(f"{name:44s} {s:>5s} {m['fd']:7.3f} {m['classifier_score']:9.3f} {m['confidence']:6.3f} {sr}")
    print(f"\n{args.samples} samples per row (seed {args.seed}), DPM-Solver++ 2M 20 steps, {args.iters} training "
          f"updates per model; "
          f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
