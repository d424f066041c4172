"""Cost of the samplers' score checks: ``fast_sample`` and ``pc_sample`` with the non-finite bookkeeping
of ``scoresde.score.CountingScore`` on (the default) and off (its private switch; the shape check,
a Python comparison, stays on in both).

    python -m bench.score_checks                   # CPU, one thread, ~30 s
    python -m bench.score_checks --device cuda     # adds a small DDPM++ network, ~1 min on one GPU

The scores are exact and as cheap as scores get, so the ratio is an upper bound on the relative cost
next to a network: ``mixture`` is an 8-mode isotropic mixture in 2-D (closed-form score, ~10 small
kernels), ``gaussian`` a single Gaussian over (B, 3, 32, 32) images (three elementwise kernels);
``ddpmpp`` (on CUDA, or with ``--network``) a small DDPM++ network for scale. The bookkeeping adds four
kernels per score evaluation (a per-sample sum, ``isfinite`` of it, one ``where``, one ``&``) and no
host sync; ``check()`` syncs once per sampler call.

Measured (fastest of 5; "per evaluation" = (on - off) / NFE; wall-clock differences of a few percent are
noise on the shared CPU):

    2-core CPU, 1 thread       bookkeeping alone 9 us (64 x 2), 27 us (4096 x 2), 16 us (64 x 3 x 32 x 32)
                               fast_sample 20 steps: x1.13 / x1.04 / noise; pc_sample N=200: x1.07 / x1.05
    H200, torch 2.11, eager    bookkeeping alone 49 / 52 / 67 us (launch-bound: four kernel launches)
                               fast_sample: x1.19 / x1.18 / x1.30; pc_sample: x1.06 / x1.07 / x1.15
                               small DDPM++ (8.5 ms per evaluation): x1.03 fast_sample, x1.00 pc_sample
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the samplers package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scoresde import sde_lib
from scoresde.samplers import fast_sample, pc_sample
from scoresde.score import CountingScore


def mixture_score(sde: sde_lib.SDE, k: int = 8, radius: float = 2.0, var: float = 0.01):
    """Exact score of ``(1/k) sum_j N(mu_j, var I)``, ``mu_j`` on a circle, under ``sde`` (2-D points)."""
    angles = torch.arange(k) * (2 * math.pi / k)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    cache = {}  # the means on each device / dtype, copied once (no transfer inside the loop)

    def score(x, t):
        mu = cache.setdefault((x.device, x.dtype), means.to(x))
        alpha, sigma = sde.marginal_coeffs(t)
        alpha, var_t = alpha[:, None], (alpha ** 2 * var + sigma ** 2)[:, None]
        m = alpha[:, None] * mu                                           # (B, k, 2)
        logits = -((x[:, None] - m) ** 2).sum(-1) / (2 * var_t)           # (B, k)
        resp = torch.softmax(logits, dim=1)
        return -(x - (resp[..., None] * m).sum(1)) / var_t
    return score


def gaussian_score(sde: sde_lib.SDE, var: float = 0.25):
    """Exact score of ``N(0, var I)`` under ``sde``, any shape."""
    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return -x / (alpha ** 2 * var + sigma ** 2).reshape((-1,) + (1,) * (x.ndim - 1))
    return score


def network_score(sde: sde_lib.SDE, device: str):
    """A small DDPM++ (nf 64, ch_mult (1, 2, 2), 2 blocks, attention at 16x16) behind ``get_score_fn``."""
    from scoresde.models import get_model, get_score_fn  # only this case needs the networks
    from scoresde.cli.factory import network_defaults
    net = get_model("ddpmpp", **{**network_defaults("ddpmpp"), "in_channels": 3, "image_size": 32, "nf": 64,
                                 "ch_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16,)}).to(device)
    return get_score_fn(sde, net)


def timed(run, device: str) -> tuple[float, int]:
    """Wall time of one ``run()`` (which returns ``(x, nfe)``) and its NFE."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    _, nfe = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, nfe


def measure(name: str, run, device: str, repeats: int) -> None:
    """Checks on and off alternately, ``repeats`` times each after a warm-up; the fastest of each."""
    times = {True: [], False: []}
    for i in range(repeats + 1):
        for record in (True, False):
            CountingScore._record_non_finite = record
            try:
                elapsed, nfe = timed(run, device)
            finally:
                CountingScore._record_non_finite = True
            if i > 0:
                times[record].append(elapsed)
    on, off = min(times[True]), min(times[False])
    print(f"{name:46s} on {on * 1e3:8.2f} ms  off {off * 1e3:8.2f} ms  ratio {on / off:5.3f}  "
          f"{(on - off) / nfe * 1e6:+6.1f} us per evaluation (nfe {nfe})", flush=True)


def per_call(name: str, shape, device: str, calls: int = 2000) -> None:
    """The bookkeeping alone: ``CountingScore`` around a precomputed score, on minus off, per call."""
    x = torch.randn(shape, device=device)
    score, t = -x, torch.full((shape[0],), 0.5, device=device)
    counting = CountingScore(lambda x, t: score, "bench")
    best = {}
    for record in (True, False) * 3:
        CountingScore._record_non_finite = record
        try:
            elapsed, _ = timed(lambda: [counting(x, t) for _ in range(calls)] and (None, 0), device)
        finally:
            CountingScore._record_non_finite = True
        best[record] = min(best.get(record, float("inf")), elapsed)
    print(f"{name:46s} {(best[True] - best[False]) / calls * 1e6:6.1f} us per evaluation", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--network", action="store_true", help="also a small DDPM++ (default on CUDA)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = args.device
    sde = sde_lib.VPSDE(N=200)
    gen = lambda: torch.Generator(device=dev).manual_seed(0)  # noqa: E731
    print(f"device {dev}, torch {torch.__version__}, {args.threads} CPU thread(s), fastest of {args.repeats}")
    cases = [("mixture", mixture_score(sde), (64, 2)), ("mixture", mixture_score(sde), (4096, 2)),
             ("gaussian", gaussian_score(sde), (64, 3, 32, 32))]
    if args.network or dev.startswith("cuda"):
        cases.append(("ddpmpp", network_score(sde, dev), (64, 3, 32, 32)))
    for label, _, shape in cases[:3]:
        per_call(f"bookkeeping only, {label} {shape}", shape, dev)
    for label, score, shape in cases:
        with torch.no_grad():
            measure(f"fast_sample steps=20 {label} {shape}",
                    lambda: fast_sample(sde, score, shape, steps=20, device=dev, generator=gen()), dev, args.repeats)
            measure(f"pc_sample   N=200    {label} {shape}",
                    lambda: pc_sample(sde, score, shape, device=dev, generator=gen()), dev, args.repeats)


if __name__ == "__main__":
    main()
