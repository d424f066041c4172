"""Sample quality against NFE on 8x8 digits: Fréchet distance and KID in the feature space of the
digits classifier (``training.sample_quality.digits_classifier``) between samples of a trained model
and the 300 held-out test digits, for PC, probability-flow ODE, DDIM and DPM-Solver++ 2M / 3M.

    python -m bench.sample_quality --workdir runs/digits_vp        # a trained configs/digits/ddpmpp_vp.py run
    python -m bench.sample_quality --workdir runs/digits_vp --nfe 10,50 --samplers ddim,dpm2

Samplers (``eps = 1e-3``, each ending with Tweedie's denoising step, which the NFE counts):

- ``pc``: score_sde's default, reverse-diffusion predictor + one Langevin corrector step (snr 0.16) on
  ``N = (NFE - 1) / 2`` levels (the SDE rebuilt with that ``N``; the network is continuous-time). The
  VP SDE's discrete betas ``beta_max / N`` must stay below 1, so with ``beta_max = 20`` PC needs
  ``N > 20``: it is run from NFE 43 on (NFE 50, 100, 200 of the default grid);
- ``ode``: the probability-flow ODE with fixed-step RK4, ``(NFE - 1) / 4`` steps;
- ``ddim``: ``ddim_sample`` (eta = 0), ``NFE - 1`` steps; ``dpm2`` / ``dpm3``: ``fast_sample`` with
  ``order`` 2 / 3 (multistep DPM-Solver++), ``NFE - 1`` steps.

Each sampler draws ``--n`` samples (default 300, the size of the held-out set) from its own seeded
generator; samples are mapped to ``[0, 1]``, quantised to the 17 grey levels (what ``--mode sample``
writes) and read at the cell centres, as the real digits are. ``FD`` is the Fréchet distance of the
64-d penultimate features; ``KID`` the unbiased cubic-kernel MMD^2 (x 1e3), the mean over 100 random
subsets of 200 of each set, with its standard deviation over subsets (the subsets overlap, so this is
the spread of one subset's estimate, not the standard error of the mean); ``P`` / ``R`` improved
precision / recall (k = 3); ``score`` the classifier score ``exp E KL(p(y|x) || p(y))`` (10 at most).
The ``data`` rows are the floor: disjoint sets of ``--n`` training digits against the same held-out
set (4 of them for 300; the plot shows their mean and spread). Wall times depend on the machine's load.

Writes ``docs/digits_sample_quality.png`` (FD and KID against NFE, one line per sampler) and prints
the table; ``--json`` also saves the numbers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the samplers package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scoresde import samplers
from scoresde.sde_lib import get_sde
from scoresde.data.datasets import dequantize, get_image_dataset, quantize
from scoresde.run.distributed import DistContext
from scoresde.cli.factory import options_from_config
from scoresde.run.inference import load_for_inference
from scoresde.data.pipeline import to_data_space
from scoresde.evaluate.metrics import (classifier_score, digits_classifier, fid_from_features, kid,
                                     precision_recall)

ROOT = Path(__file__).resolve().parents[1]
NFES = (5, 10, 20, 50, 100, 200)
EPS = 1e-3
KID_SUBSETS, KID_SUBSET_SIZE = 100, 200


@dataclass
class Row:
    sampler: str
    nfe: int
    fd: float
    kid: float            # x 1e3
    kid_std: float        # x 1e3
    precision: float
    recall: float
    score: float
    seconds: float


def _pc_levels(nfe: int) -> int:
    return (nfe - 1) // 2


def _pc(inference, options, nfe, shape, generator):
    sde = get_sde(options.sde.name, **{**options.sde.kwargs, "N": _pc_levels(nfe)})
    return samplers.pc_sample(sde, inference.score_fn, shape, predictor="reverse_diffusion", corrector="langevin",
                              snr=0.16, eps=EPS, generator=generator)


def _ode(inference, options, nfe, shape, generator):
    return samplers.ode_sample(inference.sde, inference.score_fn, shape, method="rk4",
                               steps=max(1, (nfe - 1) // 4), eps=EPS, generator=generator)


def _ddim(inference, options, nfe, shape, generator):
    return samplers.ddim_sample(inference.sde, inference.score_fn, shape, steps=max(1, nfe - 1), eps=EPS,
                                generator=generator)


def _dpm(order):
    def draw(inference, options, nfe, shape, generator):
        return samplers.fast_sample(inference.sde, inference.score_fn, shape, steps=max(order, nfe - 1),
                                    order=order, eps=EPS, generator=generator)
    return draw


def _pc_valid(options, nfe: int) -> bool:
    try:
        get_sde(options.sde.name, **{**options.sde.kwargs, "N": max(1, _pc_levels(nfe))})
    except ValueError:
        return False
    return _pc_levels(nfe) >= 1


SAMPLERS: Dict[str, Callable] = {"pc": _pc, "ode": _ode, "ddim": _ddim, "dpm2": _dpm(2), "dpm3": _dpm(3)}
LABELS = {"pc": "PC (reverse diffusion + Langevin)", "ode": "ODE (RK4)", "ddim": "DDIM",
          "dpm2": "DPM-Solver++ 2M", "dpm3": "DPM-Solver++ 3M"}


def load_config(path: Path):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def cell_centres(levels: torch.Tensor) -> torch.Tensor:
    return dequantize(levels.long(), 17, uniform=False)


def metrics(classifier, real_features, images, label, nfe, seconds, seed) -> Row:
    feats = classifier.features(images)
    k, k_std = kid(feats, real_features, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                   generator=torch.Generator().manual_seed(seed))
    p, r = precision_recall(real_features, feats)
    return Row(label, nfe, fid_from_features(feats, real_features), 1e3 * k, 1e3 * k_std, p, r,
               classifier_score(classifier.probs(images)), seconds)


def run(args) -> List[Row]:
    torch.set_num_threads(args.threads)
    options = options_from_config(load_config(args.config))
    inference = load_for_inference(options, args.workdir, DistContext())
    classifier = digits_classifier()
    test = get_image_dataset("digits", split="test").images
    train = get_image_dataset("digits", split="train").images
    real = classifier.features(cell_centres(test))
    rows = [metrics(classifier, real, cell_centres(train[i * args.n:(i + 1) * args.n]), "data", 0, 0.0, args.seed)
            for i in range(max(1, len(train) // args.n))]
    print(f"model step {inference.step} ({inference.checkpoint}); classifier test accuracy "
          f"{classifier.test_accuracy:.4f}", flush=True)
    shape = (args.n,) + tuple(inference.data.shape)
    for s, name in enumerate(args.samplers):
        for j, target in enumerate(args.nfe):
            if name == "pc" and not _pc_valid(options, target):
                print(f"pc: skipping NFE {target} (needs N = (NFE - 1) / 2 > beta_max = "
                      f"{options.sde.kwargs.get('beta_max')} levels)", flush=True)
                continue
            generator = torch.Generator().manual_seed(args.seed + 1000 * s + j)
            start = time.perf_counter()
            with torch.no_grad():
                x, nfe = SAMPLERS[name](inference, options, target, shape, generator)
            seconds = time.perf_counter() - start
            levels = quantize(to_data_space(x, inference.data), 17)
            rows.append(metrics(classifier, real, cell_centres(levels), name, nfe, seconds, args.seed))
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: Row) -> str:
    return (f"{row.sampler:6s} {row.nfe:5d} {row.fd:9.3f} {row.kid:8.2f} ± {row.kid_std:5.2f} "
            f"{row.precision:6.3f} {row.recall:6.3f} {row.score:6.2f} {row.seconds:8.1f}")


def table(rows: List[Row]) -> str:
    head = f"{'sampler':6s} {'NFE':>5s} {'FD':>9s} {'KIDx1e3':>8s}   {'std':>5s} {'P':>6s} {'R':>6s} {'score':>6s} {'time s':>8s}"
    return "\n".join([head] + [format_row(r) for r in rows])


def plot(rows: List[Row], path: Path, caption: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = [r for r in rows if r.sampler == "data"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, title in ((axes[0], "fd", "Fréchet distance (digits features), log scale"),
                           (axes[1], "kid", "KID x 1e3 (cubic kernel)")):
        for name in dict.fromkeys(r.sampler for r in rows if r.sampler != "data"):
            pts = [r for r in rows if r.sampler == name]
            ax.plot([r.nfe for r in pts], [getattr(r, key) for r in pts], marker="o", label=LABELS.get(name, name))
        values = torch.tensor([getattr(r, key) for r in floor])
        low, high = float(values.min()), float(values.max())
        ax.axhspan(low, high, color="grey", alpha=0.25, label=f"data floor: {len(floor)} training subsets vs held-out")
        ax.axhline(float(values.mean()), color="grey", linestyle="--")
        ax.set_xscale("log")
        if key == "fd":
            ax.set_yscale("log")
        ax.set_xlabel("NFE (score evaluations per sample)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.text(0.5, 0.01, caption, ha="center", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="work directory of a trained digits run")
    parser.add_argument("--config", type=Path, default=ROOT / "configs/digits/ddpmpp_vp.py")
    parser.add_argument("--n", type=int, default=300, help="samples per sampler and NFE")
    parser.add_argument("--nfe", type=lambda s: [int(v) for v in s.split(",")], default=list(NFES))
    parser.add_argument("--samplers", type=lambda s: s.split(","), default=list(SAMPLERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/digits_sample_quality.png")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    unknown = [s for s in args.samplers if s not in SAMPLERS]
    if unknown:
        parser.error(f"unknown samplers {unknown}; available: {list(SAMPLERS)}")
    start = time.perf_counter()
    rows = run(args)
    print(table(rows))
    caption = (f"{args.config.name} at {args.workdir}: {args.n} samples per point vs the 300 held-out digits, "
               f"features of the digits classifier (64-d); eps = {EPS}, final denoising step counted in NFE. "
               f"Total {time.perf_counter() - start:.0f} s on {args.threads} CPU threads.")
    plot(rows, args.out, caption)
    print(f"wrote {args.out}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
