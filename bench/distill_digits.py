"""Few-step students of the shipped digits model (``scoresde/pretrained/digits_cond.pt``, its null label: the
unconditional model) on 8x8 digits: consistency distillation (CD), consistency training initialised from
the teacher (CT) and progressive distillation (PD), each trained through ``--mode distill``, against the
teacher's best training-free sampler at the same NFE and at 20 NFE.

    python -m bench.distill_digits --root /tmp/distill_digits        # trains the three students, then the table
    python -m bench.distill_digits --root /tmp/distill_digits --skip-train   # the table of students trained before
    python -m bench.distill_digits --root /tmp/distill_digits --methods progressive --pd-parameterizations v

Quality as in ``bench/sample_quality.py``: ``--n`` samples (default 300, the held-out set's size) quantised to
the 17 grey levels, the Fréchet distance ``FD`` of the digits classifier's 64-d features against the 300
held-out digits, KID (x 1e3), precision / recall and the classifier score (10 at most). The ``data`` row is
the floor: 300 training digits against the same held-out set. Every sampler here ends at ``eps = 1e-3``
without a denoising step unless its name says ``+denoise`` (then the NFE counts it). Training times are
wall-clock on whatever machine runs it (and its load).

Teacher samplers: ``ddim`` (``ddim_sample``, steps = NFE), ``dpm2`` / ``dpm3`` (multistep DPM-Solver++, order
min(2 or 3, steps)), each with and without the final denoising step. Students: CD / CT with
``consistency_sample`` at 1, 2, 4 steps from their EMA weights; PD 16 -> 8 -> 4 -> 2 -> 1 DDIM steps, the
checkpoints at the ends of rounds 2, 3, 4 sampled with ``ddim`` on their own grid, once for each student
parameterisation of ``--pd-parameterizations`` (``auto``: the teacher's eps; ``v``: Salimans & Ho's choice).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from bench.sample_quality import Row, cell_centres, format_row, metrics
from scoresde import samplers
from scoresde.cli.main import run as run_mode
from scoresde.configs.digits.ddpmpp_vp_cond import get_config
from scoresde.data.datasets import get_image_dataset, quantize
from scoresde.data.pipeline import spec_from_meta, to_data_space
from scoresde.distill import ConsistencyFunction, consistency_sample
from scoresde.evaluate.metrics import digits_classifier
from scoresde.models import get_score_fn, null_label
from scoresde.run import checkpoint as ckpt
from scoresde.run.inference import Trained, ema_network
from scoresde.run.options import RunOptions
from scoresde.run.pretrained import shipped_network

EPS = 1e-3
METHODS = ("cd", "ct", "progressive")


def workdirs(args) -> dict:
    """``{name: (method, parameterization)}`` of the students: cd, ct and one progressive run per parameterisation."""
    runs = {m: (m, "auto") for m in ("cd", "ct")}
    runs.update({f"progressive_{p}": ("progressive", p) for p in args.pd_parameterizations.split(",")})
    return runs


def student_config(method: str, args, parameterization: str = "auto"):
    """``configs/digits/ddpmpp_vp_cond.py`` (the shipped model's) with the distill block and the bench's sizes."""
    config = get_config()
    t = config.training
    iters = args.pd_iters * 4 if method == "progressive" else args.iters
    t.n_iters, t.log_freq, t.eval_freq = iters, 50, 10 ** 6
    t.checkpoint_freq = args.pd_iters if method == "progressive" else iters
    t.keep_last, t.snapshot_freq, t.snapshot_num_samples = 10, iters, 36
    t.progress_bar, t.tensorboard, t.threads = False, False, args.threads
    config.optim.lr, config.optim.warmup = args.lr, 100
    s = config.sampling
    s.label, s.guidance, s.eps = "", "none", EPS
    d = config.distill
    d.method, d.teacher_workdir, d.solver, d.grid_size = method, "digits", "heun", args.grid_size
    d.pd_start_steps, d.pd_rounds = 16, 4
    config.model.parameterization = parameterization
    return config


def train_students(args) -> dict:
    path = args.root / "train_times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    for name, (method, parameterization) in workdirs(args).items():
        if method not in args.methods.split(","):
            continue
        start = time.perf_counter()
        result = run_mode(student_config(method, args, parameterization), args.root / name, "distill")
        times[name] = time.perf_counter() - start
        print(f"trained {name}: {result}, {times[name]:.0f} s", flush=True)
        path.write_text(json.dumps(times, indent=2))
    return times


def quality(images_of, label, nfe, classifier, real, args) -> Row:
    """Draw ``--n`` samples with ``images_of(generator) -> model-space x`` and score them."""
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        x = images_of(generator)
    seconds = time.perf_counter() - start
    levels = quantize(to_data_space(x, SPEC), 17)
    row = metrics(classifier, real, cell_centres(levels), label, nfe, seconds, args.seed)
    print(format_row(row), flush=True)
    return row


def teacher_rows(args, classifier, real) -> list:
    network, info = shipped_network("digits", torch.device("cpu"))
    options = RunOptions.from_json(json.dumps(info["options"]))
    sde = options.sde.build()
    null = torch.full((args.n,), null_label(options.network.num_classes), dtype=torch.long)
    score = get_score_fn(sde, network, train=False, cond=null, **options.network.score_kwargs)
    shape = (args.n,) + tuple(SPEC.shape)
    rows = []
    for nfe in (1, 2, 4, 20):
        for denoise in (False, True):
            steps = nfe - 1 if denoise else nfe
            if steps < 1:
                continue
            tag = "+denoise" if denoise else ""
            rows.append(quality(lambda g: samplers.ddim_sample(sde, score, shape, steps=steps, eps=EPS, denoise=denoise,
                                                               generator=g)[0], f"teacher ddim{tag}", nfe, classifier,
                                real, args))
            for order in (2, 3):
                if steps >= order:
                    rows.append(quality(lambda g: samplers.fast_sample(sde, score, shape, steps=steps, order=order,
                                                                       eps=EPS, denoise=denoise, generator=g)[0],
                                        f"teacher dpm{order}{tag}", nfe, classifier, real, args))
    return rows


def ema_at(workdir: Path, step: int | None = None):
    """The EMA network and options of ``workdir``'s checkpoint at ``step`` (the newest: ``None``)."""
    if step is None:
        state, path = ckpt.load_latest(workdir / "checkpoints")
    else:
        path = ckpt.checkpoint_path(workdir / "checkpoints", step)
        state = ckpt.read_checkpoint(path)
    trained = Trained(options=RunOptions.from_json(state["options"]), state=state, path=path)
    return ema_network(trained, torch.device("cpu")), trained.options


def student_rows(args, classifier, real) -> list:
    rows, shape = [], (args.n,) + tuple(SPEC.shape)
    for method in ("cd", "ct"):
        network, options = ema_at(args.root / method)
        d, sde = options.distill, options.sde.build()
        f = ConsistencyFunction(network, sde, eps=d.eps, sigma_data=d.sigma_data,
                                cond=null_label(options.network.num_classes))
        for steps in (1, 2, 4):
            rows.append(quality(lambda g: consistency_sample(sde, f, shape, steps=steps, generator=g)[0],
                                f"{method.upper()} student", steps, classifier, real, args))
    for name, (method, parameterization) in workdirs(args).items():
        if method != "progressive":
            continue
        for round_, steps in ((2, 4), (3, 2), (4, 1)):
            network, options = ema_at(args.root / name, round_ * args.pd_iters)
            sde = options.sde.build()
            null = torch.full((args.n,), null_label(options.network.num_classes), dtype=torch.long)
            score = get_score_fn(sde, network, train=False, cond=null, **options.network.score_kwargs)
            rows.append(quality(lambda g: samplers.ddim_sample(sde, score, shape, steps=steps, eps=EPS,
                                                               denoise=False, generator=g)[0],
                                f"PD student ({parameterization})", steps, classifier, real, args))
    return rows


SPEC = None


def main(argv=None) -> None:
    global SPEC
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/distill_digits"))
    parser.add_argument("--iters", type=int, default=1200, help="CD / CT updates")
    parser.add_argument("--pd-iters", type=int, default=300, help="PD updates per halving (4 halvings)")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--grid-size", type=int, default=18, help="CD: Karras levels")
    parser.add_argument("--threads", type=int, default=0, help="training threads (0: auto)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="cd,ct,progressive", help="the students to train")
    parser.add_argument("--pd-parameterizations", default="auto,v", help="progressive students' model.parameterization")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    times = json.loads((args.root / "train_times.json").read_text()) if args.skip_train else train_students(args)
    _, info = shipped_network("digits", torch.device("cpu"))
    SPEC = spec_from_meta(info["data_meta"])
    classifier = digits_classifier()
    real = classifier.features(cell_centres(get_image_dataset("digits", split="test").images))
    train = get_image_dataset("digits", split="train").images
    rows = [metrics(classifier, real, cell_centres(train[:args.n]), "data", 0, 0.0, args.seed)]
    print(format_row(rows[0]), flush=True)
    rows += teacher_rows(args, classifier, real) + student_rows(args, classifier, real)
    best = {}
    for row in rows:
        if row.sampler.startswith("teacher") and (row.nfe not in best or row.fd < best[row.nfe].fd):
            best[row.nfe] = row
    print(f"\ntraining times (s): {', '.join(f'{k} {v:.0f}' for k, v in times.items())}")
    print("| generator | NFE | FD | KID x 1e3 | precision | recall | classifier score |\n|---|---|---|---|---|---|---|")
    for row in [rows[0], *(best[n] for n in sorted(best)), *(r for r in rows if not r.sampler.startswith(("teacher", "data")))]:
        name = row.sampler + (" (best training-free)" if row.sampler.startswith("teacher") else "")
        print(f"| {name} | {row.nfe} | {row.fd:.3f} | {row.kid:.2f} +- {row.kid_std:.2f} | {row.precision:.3f} | "
              f"{row.recall:.3f} | {row.score:.2f} |")
    (args.root / "rows.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
