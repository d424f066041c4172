"""Few-step students on the 2-D test mixture (``tests/gmm_utils.make_test_mixture``), VP process.

Consistency distillation (CD) and progressive distillation (PD) with the mixture's EXACT score as the
teacher, and improved consistency training (CT, no teacher), each a small residual MLP trained with Adam
(batch 256) on a 2-core CPU. Reported per NFE: the excess MMD^2 (unbiased MMD^2 of 2000 samples against
2000 fresh data points, Gaussian kernel of median bandwidth, minus its permutation-null mean) with its
error bar (the permutation standard deviation), and the largest per-mode z-scores of weights / means /
covariances against 100000 data points (``gmm_utils.compare_mode_stats``; z <= 4 is "matches the data").
For comparison the teacher's own DDIM at the same NFE, and fresh data (the floor).

    python bench/distill.py --methods cd,pd,ct --seeds 0,1

Measured numbers are in docs/distillation.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))

import torch

from gmm_utils import compare_mode_stats, gen, make_test_mixture, mmd_permutation_test, reference_sample
from scoresde import sde_lib
from scoresde.distill import (ConsistencyFunction, cd_loss, consistency_grid, consistency_sample, ct_loss, ct_steps,
                              make_target, progressive_loss, student_times)
from scoresde.models.mlp import MLP
from scoresde.models.utils import get_score_fn
from scoresde.samplers import ddim_sample, get_time_steps

NFES = (1, 2, 4)


def mlp(hidden: int, blocks: int) -> MLP:
    return MLP(dim=2, hidden=hidden, n_blocks=blocks, embedding_type="positional", fourier_scale=16.0)


def quality(x: torch.Tensor, mix) -> str:
    r = mmd_permutation_test(x, reference_sample()[:2000], generator=gen(3))
    head = f"MMD2 {r.stat - r.null_mean:+.5f} +- {r.null_std:.5f}"
    try:
        z = compare_mode_stats(mix, x, reference_sample())
    except AssertionError:  # a mode with fewer than 2 samples
        return head + "  z(w/m/c) -: a mode is empty"
    return head + f"  z(w/m/c) {z['weights']:.1f}/{z['means']:.1f}/{z['covs']:.1f}"


def train_consistency(method: str, sde, mix, iters: int, seed: int, solver: str, hidden: int, blocks: int):
    torch.manual_seed(seed)
    f = ConsistencyFunction(mlp(hidden, blocks), sde, eps=1e-3, sigma_data=1.0)
    target = make_target(f, 0.95 if method == "cd" else 0.0)
    opt = torch.optim.Adam(f.parameters(), lr=2e-3 if method == "cd" else 1e-3)
    ema = make_target(f, 0.999)   # the evaluation average (iCT samples with an EMA of the weights)
    g, grid = gen(100 + seed), consistency_grid(sde, 40)
    for k in range(iters):
        x0 = mix.sample(256, generator=g)
        if method == "cd":
            loss = cd_loss(f, target.module, mix.score_fn(sde), x0, grid, generator=g, solver=solver)
        else:
            loss = ct_loss(f, x0, consistency_grid(sde, ct_steps(k, iters)), generator=g)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        target.update(f)
        ema.update(f)
    return f if method == "cd" else ema.module


def train_progressive(sde, mix, iters: int, seed: int, start: int, hidden: int, blocks: int):
    torch.manual_seed(seed)
    times, teacher = get_time_steps(sde, start, 1e-3, "logSNR"), mix.score_fn(sde)
    net, g = mlp(hidden, blocks), gen(100 + seed)
    while len(times) - 1 > 4:
        student = get_score_fn(sde, net, train=True, parameterization="v")
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(iters):
            loss = progressive_loss(sde, student, teacher, mix.sample(256, generator=g), times, generator=g)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        times = student_times(times)
        teacher = get_score_fn(sde, copy.deepcopy(net).eval().requires_grad_(False), parameterization="v")
    return teacher, times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="cd,pd,ct")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cd-iters", type=int, default=1200)
    parser.add_argument("--ct-iters", type=int, default=6000)
    parser.add_argument("--pd-iters", type=int, default=300, help="Adam steps per halving")
    parser.add_argument("--pd-start", type=int, default=16, help="teacher DDIM steps (a power of 2 >= 8)")
    parser.add_argument("--solver", default="ddim", help="CD's teacher step: ddim | heun")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sde, mix = sde_lib.VPSDE(), make_test_mixture()
    print("fresh data:", quality(mix.sample(2000, generator=gen(9)), mix))
    for n in NFES + (8, 16):
        x, _ = ddim_sample(sde, mix.score_fn(sde), (2000, 2), steps=n, denoise=False, skip_type="logSNR",
                           generator=gen(7))
        print(f"teacher DDIM {n} NFE (logSNR grid):", quality(x, mix))
    for seed in (int(s) for s in args.seeds.split(",")):
        for method in args.methods.split(","):
            start = time.time()
            if method == "pd":
                student, times = train_progressive(sde, mix, args.pd_iters, seed, args.pd_start, args.hidden,
                                                   args.blocks)
                took = time.time() - start
                x, nfe = ddim_sample(sde, student, (2000, 2), steps=4, times=times, denoise=False, generator=gen(7))
                print(f"pd seed {seed} ({took:.0f} s, {args.pd_start} -> 4 steps): {nfe} NFE", quality(x, mix))
                continue
            iters = args.cd_iters if method == "cd" else args.ct_iters
            f = train_consistency(method, sde, mix, iters, seed, args.solver, args.hidden, args.blocks)
            took = time.time() - start
            for n in NFES:
                x, nfe = consistency_sample(sde, f, (2000, 2), steps=n, generator=gen(7))
                print(f"{method} seed {seed} ({took:.0f} s, {iters} iters): {nfe} NFE", quality(x, mix))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
