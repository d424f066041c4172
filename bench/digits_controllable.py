"""Controllable generation on 8x8 digits, measured through the command line:

    python main.py --config configs/digits/ddpmpp_vp_cond.py --workdir runs/digits_cond --mode train
    python main.py --config configs/digits/classifier.py --workdir runs/digits_clf --mode train
    python main.py --config configs/digits/ddpmpp_vp.py --workdir runs/digits_vp --mode train
    python -m bench.digits_controllable --cond runs/digits_cond --classifier runs/digits_clf --uncond runs/digits_vp

Prints, with the judge's test accuracy (the digits classifier of ``scoresde/evaluate/metrics.py``, trained
on the clean training split):

- classifier-free guidance of the class-conditional model: for scales 0, 1, 2, 4, the fraction of samples
  (10 per class per seed; ``--num`` per class) read as the requested digit, and the NFE of the sampler;
- classifier guidance of the unconditional model by the noise-conditional classifier, the same table;
- inpainting the lower half of the 300 held-out digits with the unconditional model (replacement and
  RePaint): the judge's accuracy on the completions against the true labels and the mean squared error
  on the missing pixels.

``--out docs`` also copies the 10 x 10 class grid and the inpainting sheet there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from scoresde.cli import main
from scoresde.configs.digits.ddpmpp_vp import get_config as uncond_config
from scoresde.configs.digits.ddpmpp_vp_cond import get_config as cond_config
from scoresde.evaluate.metrics import digits_classifier


def _run(config, workdir: str, mode: str, out: Path, **fields) -> dict:
    for path, value in fields.items():
        section, name = path.split("__")
        setattr(config[section], name, value)
    config.training.progress_bar = False
    start = time.perf_counter()
    main.run(config, workdir, mode, outdir=out)
    info = json.loads((out / "info.json").read_text())
    info["wall_s"] = time.perf_counter() - start
    return info


def guidance_table(name: str, make_config, workdir: str, scales, num: int, tmp: Path, **fields) -> list:
    rows = []
    for w in scales:
        out = tmp / f"{name}_{w:g}"
        info = _run(make_config(), workdir, "sample", out, sampling__guidance_scale=float(w),
                    sampling__num_samples=10 * num, sampling__batch_size=10 * num, **fields)
        rows.append((w, info["class_accuracy"], info["nfe_per_batch"], info["wall_s"], out))
        print(f"| {name} | {w:g} | {100 * info['class_accuracy']:.1f} % | {info['nfe_per_batch']} | "
              f"{info['wall_s']:.1f} s |", flush=True)
    return rows


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cond", required=True, help="work directory of configs/digits/ddpmpp_vp_cond.py")
    parser.add_argument("--classifier", required=True, help="work directory of configs/digits/classifier.py")
    parser.add_argument("--uncond", required=True, help="work directory of configs/digits/ddpmpp_vp.py")
    parser.add_argument("--num", type=int, default=100, help="samples per class and scale")
    parser.add_argument("--steps", type=int, default=10, help="DPM-Solver++ 2M steps (NFE = steps + 1 with the denoising step)")
    parser.add_argument("--out", default=None, help="copy the class grid and the inpainting sheet here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="digits_controllable_"))
    judge = digits_classifier()
    print(f"judge: digits classifier, test accuracy {100 * judge.test_accuracy:.2f} %\n")
    print("| guidance | scale w | requested digit | NFE per batch | wall |\n|---|---|---|---|---|")
    fast = dict(sampling__method="fast", sampling__steps=args.steps, sampling__label="all")
    guidance_table("classifier-free", cond_config, args.cond, (0, 1, 2, 4), args.num, tmp,
                         sampling__guidance="cfg", **fast)
    guidance_table("classifier", uncond_config, args.uncond, (0, 1, 2, 4), args.num, tmp,
                   sampling__guidance="classifier", sampling__classifier_workdir=args.classifier, **fast)
    print("\n| inpainting (lower half, 300 held-out digits) | NFE per batch | judge on completions | "
          "on originals | MSE on missing pixels | wall |\n|---|---|---|---|---|---|")
    sheets = {}
    for method, resample in (("replacement", 1), ("repaint", 4)):
        out = tmp / f"inpaint_{method}"
        info = _run(uncond_config(), args.uncond, "inpaint", out, sampling__mask="lower_half",
                    sampling__num_samples=300, sampling__batch_size=300, sampling__inpaint_method=method,
                    sampling__resample=resample)
        sheets[method] = out / "inpaint.png"
        print(f"| {info['method']} | {info['nfe_per_batch']} | {100 * info['completed_class_accuracy']:.1f} % | "
              f"{100 * info['original_class_accuracy']:.1f} % | {info['mse_missing']:.4f} | {info['wall_s']:.0f} s |",
              flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        grid = _run(cond_config(), args.cond, "sample", tmp / "grid", **fast)
        shutil.copy(tmp / "grid" / "samples.png", out / "digits_cfg_grid.png")
        shutil.copy(sheets["repaint"], out / "digits_inpaint_repaint.png")
        shutil.copy(sheets["replacement"], out / "digits_inpaint_replacement.png")
        print(f"\nwrote {out}/digits_cfg_grid.png (w = {grid['guidance_scale']:g}, "
              f"{100 * grid['class_accuracy']:.0f} % of the requested digit) and the inpainting sheets")


if __name__ == "__main__":
    main_()
