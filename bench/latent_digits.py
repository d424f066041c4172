"""Latent diffusion on 8x8 digits against the pixel model: a KL autoencoder to 2x4x4 latents
(``configs/digits/autoencoder.py``), a latent DDPM++ VP on them (``configs/digits/ldm_vp.py``) and, when
given, the pixel DDPM++ VP (``configs/digits/ddpmpp_vp.py``), evaluated the same way by ``--mode eval``:

    python -m bench.latent_digits --ae runs/digits_ae --ldm runs/digits_ldm [--pixel runs/digits_vp]

Each work directory is trained first if it is not finished (``train_autoencoder``, then ``train``; a
finished one returns at once). Then ``--mode eval`` on each model, with ``--outdir`` under the bench's
folder (the work directories are not changed):

- the likelihood: the latent model's latent bound ``latent_bpd`` (``--draws`` draws of ``z ~ q(z|x)`` per
  image, ``log p_theta(z)`` by the probability-flow ODE, eval's default solver: Adams at 1e-3, one
  Rademacher probe) and the pixel model's ODE ``bpd``, both on the first ``--items`` test digits
  (uniformly dequantised), bits/dim of the pixels, with the standard error over items;
- sample quality: ``--samples`` samples of DPM-Solver++ 2M with ``--steps`` steps (``sampling.method=fast``),
  against the 300 held-out digits in the digits classifier's features: FD, KID (x 1e3), precision /
  recall, classifier score (``scoresde/evaluate/quality.py``).

Training time is the wall time of the training loop read from ``metrics.jsonl`` (the sum over its log
lines of ``log_freq / steps_per_s``); it depends on the machine's load. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the samplers package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from scoresde.cli import main
from scoresde.configs.digits import autoencoder as ae_config, ddpmpp_vp, ldm_vp


def configure(config, **fields):
    """``config`` unlocked with the dotted ``fields`` set."""
    for path, value in fields.items():
        *sections, name = path.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    return config


def train_seconds(workdir: Path) -> float:
    """The training loop's wall time, from ``metrics.jsonl``: ``sum(log_freq / steps_per_s)``."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [r for r in records if "steps_per_s" in r]
    seconds, last = 0.0, 0
    for r in logged:
        seconds += (r["step"] - last) / r["steps_per_s"]
        last = r["step"]
    return seconds


def evaluate(config, workdir: Path, outdir: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = main.run(config, workdir, "eval", outdir=outdir)
    return metrics, time.perf_counter() - start


def quality_cells(m: dict) -> str:
    return (f"{m['fd']:.3f} | {m['kid']:.1f} ± {m['kid_std']:.1f} | {m['precision']:.2f} / {m['recall']:.2f} | "
            f"{m['classifier_score']:.2f}")


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ae", default="runs/digits_ae")
    parser.add_argument("--ldm", default="runs/digits_ldm")
    parser.add_argument("--pixel", default="", help="a configs/digits/ddpmpp_vp.py work directory (optional)")
    parser.add_argument("--out", default="runs/bench_latent_digits")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=49)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    common = {"training.progress_bar": False, "training.threads": args.threads, "eval.bound_items": args.items,
              "eval.sample_quality": True, "eval.quality_samples": args.samples, "sampling.method": "fast",
              "sampling.steps": args.steps, "sampling.order": 2, "sampling.solver": "dpmsolver++"}

    main.run(configure(ae_config.get_config(), **{"training.progress_bar": False, "training.threads": args.threads}),
             args.ae, "train_autoencoder")
    ldm = configure(ldm_vp.get_config(), **common, **{"data.first_stage": args.ae, "eval.latent_draws": args.draws})
    main.run(ldm, args.ldm, "train")
    m, eval_s = evaluate(ldm, Path(args.ldm), out / "ldm")
    print(f"latent model: eval {eval_s:.0f} s; first stage scale factor {m['latent_scale_factor']:.4f}; latent "
          f"bound terms per image: log p(x|z) {m['latent_recon_nats']:.2f}, log p_theta(z) "
          f"{m['latent_prior_nats']:.2f}, entropy {m['latent_entropy_nats']:.2f} nats; {m['latent_nfe']} NFE per "
          f"draw; class histogram {m['class_histogram']}", flush=True)
    print()
    print("| model | train (s) | bits/dim (± s.e. over items) | FD | KID ×1e3 | precision / recall | classifier score |")
    print("|---|---|---|---|---|---|---|")
    train_s = train_seconds(Path(args.ae)) + train_seconds(Path(args.ldm))
    print(f"| latent DDPM++ VP on 2×4×4 (autoencoder {train_seconds(Path(args.ae)):.0f} s + diffusion "
          f"{train_seconds(Path(args.ldm)):.0f} s) | {train_s:.0f} | ≤ {m['latent_bpd']:.4f} ± "
          f"{m['latent_bpd_stderr']:.4f} (latent bound, {args.draws} draws, MC {m['latent_bpd_mc_stderr']:.4f}) | "
          f"{quality_cells(m)} |", flush=True)
    if args.pixel:
        pixel = configure(ddpmpp_vp.get_config(), **common, **{"eval.num_samples": args.items})
        main.run(pixel, args.pixel, "train")
        p, pixel_eval_s = evaluate(pixel, Path(args.pixel), out / "pixel")
        print(f"| pixel DDPM++ VP on 1×8×8 | {train_seconds(Path(args.pixel)):.0f} | {p['bpd']:.4f} ± "
              f"{p['bpd_stderr']:.4f} (ODE) | {quality_cells(p)} |", flush=True)
        print(f"(pixel model eval {pixel_eval_s:.0f} s)")


if __name__ == "__main__":
    main_()
