"""Sample error against NFE for every sampler, on exact Gaussian-mixture scores (no network error).

    python -m bench.samplers            # VP and VE (sigma_max = 50), ~2-3 min on 2 CPU cores
    python -m bench.samplers --sdes vp --n 1000
    python -m bench.samplers --sdes vp,ve,rf,edm --n 1000   # + rectified flow and EDM's process
    python -m bench.samplers --sdes vp,subvp,ve             # the three score-SDE processes
    python -m bench.samplers --sdes vp,subvp,ve --only "dpm++,unipc,opt-grid"   # few-step solvers only

Data: a 2-D mixture of four Gaussians with unequal weights (0.4 / 0.3 / 0.2 / 0.1; one correlated, one
elongated and one narrow mode, std 0.14). With the exact score the only errors are the sampler's, so:

- ``decode``: for deterministic samplers, the mean (and median) distance between each sample and the
  decode of the same latent by dopri5 at ``rtol = atol = 1e-7`` (the exact probability-flow map). The
  mean is dominated by the few latents near a boundary between modes, where the map is steep.
- ``MMD^2``: for every sampler, the unbiased squared MMD (Gaussian kernels of widths 0.1, 0.3, 1) to a
  fresh data set of the same size. Its floor is the same statistic between fresh data sets and that
  one (mean and 95th percentile over 20 draws); a sampler "reaches the floor" at the smallest NFE from
  which on it stays below that 95th percentile.

``unipc K bhN`` rows are UniPC (``fast_sample(solver="unipc", order=K, unipc_variant="bhN")``).
The fast samplers are swept from 3 steps (4 NFE) so that the floor at <= 6 NFE would show; measured
(MMD^2 over the floor's 95th percentile at 6 NFE, vp / subvp / ve): dpm++ 2M 19 / 69 / 11, dpm++ 3M
76 / 74 / 57, unipc 2 bh2 24 / 68 / 14, unipc 3 bh1 113 / 195 / 100, unipc 3 bh2 74 / 71 / 56: no
setting reaches the floor at 6 NFE; UniPC 3 reaches it at 9-11 NFE on VP and VE (as dpm++ 3M).

``opt-grid`` rows: ``fast_sample(denoise=False)`` (nfe = steps) on a grid fitted by
``samplers.optimize_time_grid`` (default ``init="inverse_karras"``, 4 sweeps x 8 evaluations) to 1000
latents of another seed, so the bench's latents are held out; ``nodenoise`` rows are the same solver on
the default grid. Measured (``--sdes vp,subvp,ve --only "dpm++,unipc,opt-grid"``), MMD^2 / floor q95 at
4 / 5 / 6 NFE: opt-grid unipc 2: vp 6.98 / 2.78 / 1.37, subvp 18.97 / 19.33 / 20.20, ve 6.03 / 4.82 /
1.31; opt-grid unipc 3 at 6 NFE: vp 1.03, subvp 25.81, ve 2.12. NFE to the floor: opt-grid unipc 2 7 /
20 / 8 (vp / subvp / ve), against 11 / 21 / 9 for the best default-grid setting: <= 6 NFE is not met.
Fitting cost (NFE, batched over 1000 latents): 353 / 546 / 803 / 1124 at 3 / 4 / 5 / 6 steps. On subVP a
fit started from ``init="logSNR"`` with 8 sweeps x 10 evaluations reached 1.46 at 6 NFE (one run).

``opt-grid+`` rows: the same fit with ``init="auto"`` (a descent from each of the five spacings, the
lowest loss kept), ``loss="distance"`` (mean distance: the squared loss picks grids with worse MMD^2) and 8
sweeps x 10 evaluations. Measured (``--only "opt-grid+"``), MMD^2 / floor q95 at 4 / 5 / 6 NFE:
unipc 2: vp 3.45 / 1.45 / 1.63, subvp 3.73 / 2.04 / 0.98, ve 3.39 / 1.65 / 0.69; unipc 3: vp 3.45 / 1.69 /
0.56, subvp 3.73 / 2.15 / 0.70, ve 3.39 / 1.54 / 0.62. NFE to the floor: unipc 3 6 / 6 / 6 (vp / subvp /
ve; unipc 2 7 / 6 / 6): <= 6 NFE is met on all three (one fitting seed; refits of one setting moved the
6-NFE ratio by up to ~1.5x). Fitting cost (NFE, batched over 1000 latents): 4990 / 8195 / 12200 at 4 / 5
/ 6 steps; ~14 min for the three processes on one core.

With several processes a last table gives, per (sampler, process), the NFE to reach the floor. Measured
with ``--sdes vp,ve,rf,edm`` (2000 samples, one seed: a stochastic sampler's entry moves by one setting
between seeds; 10 min on 2 busy cores)::

    sampler                 vp      ve      rf     edm
    pc rd+langevin          51     101     201    2001
    pc euler_maruyama       51      51     101    1001
    pc ancestral           101      51     101    >max
    ode dopri5              39      57      51      87
    ddim eta=0              31     101      51     101
    ddim eta=1              31     101      31     201
    dpm++ 2M                16      16      31      21
    dpm++ 3M                11      11      16      16
    sde-dpm++ 2M            21      21     101      31
    edm heun                35      25      49      35
    edm churn=10            69      69      69      69

``edm heun`` runs over each process's whole scaled-noise range (sigma_T/alpha_T: 152 VP, 50 VE, 999 RF,
80 EDM); EDM's process puts the PC samplers' uniform grid uniformly in sigma, hence their cost there.

The summary gives each sampler's NFE to reach the floor and the speed-up against the PC baseline
(reverse diffusion + Langevin, score_sde's default) measured in the same run; for deterministic
samplers also the NFE to a mean decode error below 1e-2 and 1e-3.

Time-step spacing of ``fast_sample`` (mean decode error; geometric mean, over VP / subVP / VE(50) /
cosine-VP and three mixtures (this one, the 8-mode ring of std 0.1, a 2-mode mixture of std 0.3-0.55),
of the ratio to the best spacing per case; 500 latents; steps 10 / 15 / 20):

    order 1: time_uniform 1.08  time_quadratic 1.10-1.19  logSNR 1.5-1.6  karras(7) 1.5-1.6  inverse_karras(7) 1.8
    order 2: time_quadratic 1.07-1.24  inverse_karras(7) 1.40-1.48  logSNR 1.6-2.0  karras(7) 2.5-3.4
    order 3: inverse_karras(7) 1.24-1.32  logSNR 1.1-2.2  time_quadratic 1.7-2.5  karras(7) 3.7-9.4

EDM's grid (uniform in (sigma/alpha)^(1/7)) lengthens the low-noise steps relative to a uniform
log-SNR grid; on these data the opposite warp, uniform in (alpha/sigma)^(1/7) ("inverse_karras"), is
the most accurate over orders 2-3 and all four SDEs taken together, so it is ``fast_sample``'s default
(rho = 3, 5, 10, 15 measured worse or equal). ``time_quadratic`` wins at order 2 on VP-type SDEs and is
the best grid for subVP, whose eps = 1e-3 ends at sigma/alpha ~ 1e-4 and whose long tail of useless
low-noise steps the default grid over-resolves. For DDIM, ``ddim_sample`` defaults to
``time_quadratic``: within 10% of the best grid (``time_uniform``) at eta = 0, and at eta = 1 the
least biased on VP and subVP (per-mode covariance z-scores against 20000 data points, 100 steps:
time_quadratic 5.0 / 4.7, time_uniform 11.0 / 8.4, logSNR 5.2 / 5.1, inverse_karras 3.6 / 5.4).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the samplers package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scoresde import sde_lib
from scoresde.samplers import ddim_sample, edm_sample, fast_sample, ode_sample, pc_sample
from scoresde.samplers.schedules import SKIP_TYPES
from scoresde.samplers.time_grid import optimize_time_grid

MIXTURE = sde_lib.GaussianMixture(
    weights=[0.4, 0.3, 0.2, 0.1],
    means=[[-2.0, 0.0], [2.0, 0.5], [0.0, 2.0], [0.5, -1.5]],
    covs=[[[0.10, 0.05], [0.05, 0.20]], [[0.05, 0.0], [0.0, 0.05]],
          [[0.30, 0.0], [0.0, 0.02]], [[0.02, 0.0], [0.0, 0.02]]],
)
SDE_FACTORIES: Dict[str, Callable[[int], sde_lib.SDE]] = {
    "vp": lambda n: sde_lib.VPSDE(N=n),
    "subvp": lambda n: sde_lib.subVPSDE(N=n),
    "ve": lambda n: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=n),
    "rf": lambda n: sde_lib.RectifiedFlow(N=n),                       # T = 0.999
    "edm": lambda n: sde_lib.EDMSDE(sigma_min=0.002, sigma_max=80.0, N=n),
}
STEPS = (3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
PC_STEPS = (25, 50, 100, 200, 500, 1000)  # VP's discrete betas need N > beta_max = 20
EDM_STEPS = (3, 5, 8, 10, 13, 18, 25, 35, 50, 100, 250)  # edm_sample: 2 N - 1 NFE
ODE_TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)
SPACING_STEPS = (10, 15, 20)
BASELINE = "pc rd+langevin"
MMD_BANDWIDTHS = (0.1, 0.3, 1.0)


@dataclass
class Point:
    """One sampler run: its NFE, mean and median decode error (deterministic samplers) and MMD^2."""
    nfe: int
    decode: Optional[float]
    median: Optional[float]
    mmd2: float


@dataclass
class Family:
    """A sampler with a knob (steps, N or tolerance) swept to trace error against NFE."""
    name: str
    settings: Tuple
    run: Callable  # (setting, z, generator) -> (x, nfe)
    deterministic: bool


# ----- statistics --------------------------------------------------------------------------------
def _kernel_mean(a: torch.Tensor, b: torch.Tensor, same: bool) -> torch.Tensor:
    d2 = torch.cdist(a, b).pow(2)
    k = sum(torch.exp(-d2 / (2 * w ** 2)) for w in MMD_BANDWIDTHS) / len(MMD_BANDWIDTHS)
    if same:  # unbiased: leave out the diagonal
        n = a.shape[0]
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
    return k.mean()


def mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with a sum of Gaussian kernels of widths
    ``MMD_BANDWIDTHS``: the mode scale and the layout scale. ~0 for equal distributions."""
    x, y = x.double(), y.double()
    return float(_kernel_mean(x, x, True) + _kernel_mean(y, y, True) - 2 * _kernel_mean(x, y, False))


def data_floor(reference: torch.Tensor, reps: int = 20) -> Tuple[float, float]:
    """Mean and 95th percentile of MMD^2 between fresh data sets and the reference: the exact-score floor."""
    g = torch.Generator().manual_seed(1234)
    vals = torch.tensor([mmd2(MIXTURE.sample(len(reference), generator=g), reference) for _ in range(reps)])
    return float(vals.mean()), float(vals.quantile(0.95))


# ----- the samplers --------------------------------------------------------------------------------
def fast_family(make_sde, order: int) -> Family:
    sde = make_sde(1000)

    def run(steps, z, g):  # the default grid
        return fast_sample(sde, MIXTURE.score_fn(sde), z.shape, steps=steps, order=order, z=z)
    return Family(f"dpm++ {order}M", STEPS, run, True)


def unipc_family(make_sde, order: int, variant: str) -> Family:
    """UniPC (Zhao et al. 2023): UniP-``order`` + UniC, ``B(h)`` variant ``variant``, the default grid."""
    sde = make_sde(1000)

    def run(steps, z, g):
        return fast_sample(sde, MIXTURE.score_fn(sde), z.shape, steps=steps, order=order, z=z,
                           solver="unipc", unipc_variant=variant)
    return Family(f"unipc {order} {variant}", STEPS, run, True)


GRID_STEPS = (3, 4, 5, 6, 7, 8, 10, 15, 20)  # fitted grids: the search costs ~ steps^2 solver NFE
GRID_FIT_SAMPLES = 1000
GRID_FIT_SEED = 10  # fitting latents; the bench's latents (seed 0) are held out
GRID_COSTS: Dict[str, Dict[int, int]] = {}  # family name -> {steps: NFE spent fitting the grid}


# "opt-grid+": multi-start from every spacing, mean-distance loss, 8 sweeps x 10 evaluations.
GRID_FIT_PLUS = dict(init="auto", loss="distance", iterations=8, line_search_evals=10)
GRID_PLUS_STEPS = (3, 4, 5, 6, 7, 8, 10)


def grid_family(make_sde, order: int, solver: str, fitted: bool, label: str, fit_kwargs: Optional[dict] = None,
                settings: Tuple[int, ...] = GRID_STEPS) -> Family:
    """``fast_sample`` without the final denoising step (``nfe = steps``) on a grid fitted by
    ``samplers.optimize_time_grid`` (its defaults, or ``fit_kwargs``) to ``GRID_FIT_SAMPLES`` other
    latents, or on the default grid."""
    sde = make_sde(1000)
    score_fn = MIXTURE.score_fn(sde)
    kwargs = dict(order=order, solver=solver, denoise=False)

    def run(steps, z, g):
        if not fitted:
            return fast_sample(sde, score_fn, z.shape, steps=steps, z=z, **kwargs)
        fit = optimize_time_grid(sde, score_fn, (GRID_FIT_SAMPLES,) + tuple(z.shape[1:]), steps,
                                 generator=torch.Generator().manual_seed(GRID_FIT_SEED), return_info=True,
                                 **kwargs, **(fit_kwargs or {}))
        GRID_COSTS.setdefault(label, {})[steps] = fit.nfe
        return fast_sample(sde, score_fn, z.shape, z=z, times=fit.times, **kwargs)
    return Family(label, settings, run, True)


def ddim_family(make_sde, eta: float) -> Family:
    sde = make_sde(1000)

    def run(steps, z, g):
        return ddim_sample(sde, MIXTURE.score_fn(sde), z.shape, steps=steps, eta=eta, z=z, generator=g)
    return Family(f"ddim eta={eta:g}", STEPS, run, eta == 0)


def sde_dpm_family(make_sde) -> Family:
    sde = make_sde(1000)

    def run(steps, z, g):
        return fast_sample(sde, MIXTURE.score_fn(sde), z.shape, steps=steps, order=2, z=z, generator=g,
                           solver="sde-dpmsolver++")
    return Family("sde-dpm++ 2M", STEPS, run, False)


def edm_family(make_sde, churn: float) -> Family:
    """EDM's Heun sampler (churn 0) or Alg. 2 with S_churn = ``churn``, over the process's whole scaled-noise
    range (sigma_T / alpha_T down to sigma at eps = 1e-3)."""
    sde = make_sde(1000)

    def run(steps, z, g):
        return edm_sample(sde, MIXTURE.score_fn(sde), z.shape, steps=steps, churn=churn, z=z, generator=g)
    return Family("edm heun" if churn == 0 else f"edm churn={churn:g}", EDM_STEPS, run, churn == 0)


def ode_family(make_sde) -> Family:
    sde = make_sde(1000)

    def run(tol, z, g):
        return ode_sample(sde, MIXTURE.score_fn(sde), z.shape, rtol=tol, atol=tol, z=z)
    return Family("ode dopri5", ODE_TOLS, run, True)


def pc_family(make_sde, label: str, predictor: str, corrector: str) -> Family:
    def run(n, z, g):
        sde = make_sde(n)
        return pc_sample(sde, MIXTURE.score_fn(sde), z.shape, predictor=predictor, corrector=corrector,
                         z=z, generator=g)
    return Family(label, PC_STEPS, run, False)


def families(make_sde) -> List[Family]:
    return [
        pc_family(make_sde, BASELINE, "reverse_diffusion", "langevin"),
        pc_family(make_sde, "pc euler_maruyama", "euler_maruyama", "none"),
        pc_family(make_sde, "pc ancestral", "ancestral_sampling", "none"),
        ode_family(make_sde),
        ddim_family(make_sde, 0.0),
        ddim_family(make_sde, 1.0),
        fast_family(make_sde, 2),
        fast_family(make_sde, 3),
        unipc_family(make_sde, 2, "bh1"),
        unipc_family(make_sde, 2, "bh2"),
        unipc_family(make_sde, 3, "bh1"),
        unipc_family(make_sde, 3, "bh2"),
        sde_dpm_family(make_sde),
        grid_family(make_sde, 2, "dpmsolver++", False, "dpm++ 2M nodenoise"),
        grid_family(make_sde, 2, "dpmsolver++", True, "opt-grid dpm++ 2M"),
        grid_family(make_sde, 2, "unipc", False, "unipc 2 nodenoise"),
        grid_family(make_sde, 2, "unipc", True, "opt-grid unipc 2"),
        grid_family(make_sde, 3, "unipc", True, "opt-grid unipc 3"),
        grid_family(make_sde, 2, "unipc", True, "opt-grid+ unipc 2", GRID_FIT_PLUS, GRID_PLUS_STEPS),
        grid_family(make_sde, 3, "unipc", True, "opt-grid+ unipc 3", GRID_FIT_PLUS, GRID_PLUS_STEPS),
        edm_family(make_sde, 0.0),
        edm_family(make_sde, 10.0),
    ]


# ----- measuring -------------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    make_sde: Callable[[int], sde_lib.SDE]
    z: torch.Tensor
    exact: torch.Tensor
    reference: torch.Tensor


def build_problem(name: str, n: int) -> Problem:
    make_sde = SDE_FACTORIES[name]
    sde = make_sde(1000)
    z = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(0))
    exact, _ = ode_sample(sde, MIXTURE.score_fn(sde), z.shape, rtol=1e-7, atol=1e-7, z=z.double())
    reference = MIXTURE.sample(n, generator=torch.Generator().manual_seed(2))
    return Problem(name, make_sde, z, exact.float(), reference)


def measure(problem: Problem, family: Family) -> List[Point]:
    points = []
    for setting in family.settings:
        x, nfe = family.run(setting, problem.z, torch.Generator().manual_seed(3))
        dist = (x - problem.exact).norm(dim=1) if family.deterministic else None
        mean, median = (dist.mean().item(), dist.median().item()) if dist is not None else (None, None)
        points.append(Point(nfe, mean, median, mmd2(x, problem.reference)))
    return points


def nfe_to_reach(points: List[Point], value: Callable[[Point], Optional[float]], level: float) -> Optional[int]:
    """The smallest NFE from which on ``value`` stays at or below ``level`` (None if never)."""
    reached = None
    for p in sorted(points, key=lambda p: p.nfe):
        v = value(p)
        if v is not None and v <= level:
            reached = reached or p.nfe
        else:
            reached = None
    return reached


# ----- printing ----------------------------------------------------------------------------------------
def print_curves(results: Dict[str, List[Point]]) -> None:
    print(f"  {'sampler':<18} {'NFE':>5} {'decode':>9} {'median':>9} {'MMD^2':>10}")
    for name, points in results.items():
        for p in points:
            decode = " ".join(f"{v:9.2e}" if v is not None else f"{'-':>9}" for v in (p.decode, p.median))
            print(f"  {name:<18} {p.nfe:>5} {decode} {p.mmd2:10.2e}")


def _fmt(nfe: Optional[int]) -> str:
    return f"{nfe:>6}" if nfe is not None else f"{'>max':>6}"


def print_summary(results: Dict[str, List[Point]], floor_q95: float) -> None:
    base = nfe_to_reach(results[BASELINE], lambda p: p.mmd2, floor_q95) if BASELINE in results else None
    print(f"  {'sampler':<18} {'NFE@floor':>9} {'vs PC':>7} {'NFE@1e-2':>9} {'NFE@1e-3':>9}")
    for name, points in results.items():
        at_floor = nfe_to_reach(points, lambda p: p.mmd2, floor_q95)
        ratio = f"{base / at_floor:6.1f}x" if base and at_floor else f"{'-':>7}"
        d2 = nfe_to_reach(points, lambda p: p.decode, 1e-2)
        d3 = nfe_to_reach(points, lambda p: p.decode, 1e-3)
        deterministic = points[0].decode is not None
        print(f"  {name:<18} {_fmt(at_floor):>9} {ratio} "
              f"{_fmt(d2) if deterministic else '-':>9} {_fmt(d3) if deterministic else '-':>9}")


def print_spacings(problem: Problem) -> None:
    """Mean decode error of ``fast_sample`` per order and spacing at 10 / 15 / 20 steps."""
    sde = problem.make_sde(1000)
    print(f"  {'order':<6} {'skip_type':<15} " + " ".join(f"{s:>9}" for s in SPACING_STEPS))
    for order in (1, 2, 3):
        for skip in SKIP_TYPES:
            errs = []
            for steps in SPACING_STEPS:
                x, _ = fast_sample(sde, MIXTURE.score_fn(sde), problem.z.shape, steps=steps, order=order,
                                   z=problem.z, skip_type=skip)
                errs.append((x - problem.exact).norm(dim=1).mean().item())
            print(f"  {order:<6} {skip:<15} " + " ".join(f"{e:9.2e}" for e in errs))


FEW_NFE = (4, 5, 6)


def print_few_nfe(results: Dict[str, List[Point]], floor_q95: float) -> None:
    """MMD^2 over the floor's 95th percentile at ``FEW_NFE`` (1 = at the floor), and the grid fits' cost."""
    print(f"  {'sampler':<18} " + " ".join(f"{'@' + str(n) + ' NFE':>9}" for n in FEW_NFE) + "   grid fit NFE (steps: cost)")
    for name, points in results.items():
        by_nfe = {p.nfe: p.mmd2 / floor_q95 for p in points}
        if not any(n in by_nfe for n in FEW_NFE):
            continue
        cells = [f"{by_nfe[n]:9.2f}" if n in by_nfe else f"{'-':>9}" for n in FEW_NFE]
        costs = " ".join(f"{k}:{v}" for k, v in GRID_COSTS.get(name, {}).items() if k <= 8)
        print(f"  {name:<18} " + " ".join(cells) + f"   {costs}")


def print_matrix(runs: Dict[str, Tuple[Dict[str, List[Point]], float]]) -> None:
    """One row per sampler, one column per process: NFE to reach that process's MMD^2 floor."""
    names = list(next(iter(runs.values()))[0])
    print("\n=== NFE to reach the MMD^2 floor (95th percentile of fresh data), per (sampler, process); "
          "'>max' = not within the swept settings")
    print(f"  {'sampler':<18} " + " ".join(f"{p:>7}" for p in runs))
    for sampler in names:
        cells = [_fmt(nfe_to_reach(res[sampler], lambda p: p.mmd2, q95)) for res, q95 in runs.values()]
        print(f"  {sampler:<18} " + " ".join(f"{c:>7}" for c in cells))


def bench_sde(name: str, n: int, only: Tuple[str, ...] = ()) -> Tuple[Dict[str, List[Point]], float]:
    start = time.time()
    problem = build_problem(name, n)
    floor_mean, floor_q95 = data_floor(problem.reference)
    print(f"\n=== {name}: {n} samples; MMD^2 floor (fresh data vs reference): mean {floor_mean:.2e}, "
          f"95th percentile {floor_q95:.2e}")
    results = {f.name: measure(problem, f) for f in families(problem.make_sde)
               if not only or any(word in f.name for word in only)}
    print_curves(results)
    print(f"\n--- {name}: NFE to reach the MMD^2 floor ({floor_q95:.2e}) and the decode-error levels; "
          f"'vs PC' = NFE of {BASELINE!r} / NFE of the sampler")
    print_summary(results, floor_q95)
    print(f"\n--- {name}: MMD^2 / floor 95th percentile at few NFE (<= 1: at the floor)")
    print_few_nfe(results, floor_q95)
    print(f"\n--- {name}: fast_sample mean decode error by spacing")
    print_spacings(problem)
    print(f"({name}: {time.time() - start:.0f} s)")
    return results, floor_q95


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdes", default="vp,ve", help=f"comma-separated, from {sorted(SDE_FACTORIES)}")
    parser.add_argument("--n", type=int, default=2000, help="samples per run")
    parser.add_argument("--only", default="", help="comma-separated: run only the samplers whose name "
                        "contains one of these words (e.g. 'unipc,opt-grid')")
    args = parser.parse_args(argv)
    names = args.sdes.split(",")
    unknown = [s for s in names if s not in SDE_FACTORIES]
    if unknown:
        raise ValueError(f"--sdes must name SDEs among {sorted(SDE_FACTORIES)}, got {unknown}")
    torch.set_num_threads(1)  # tensors of 2000 x 2: threads only add overhead
    only = tuple(w for w in args.only.split(",") if w)
    runs = {name: bench_sde(name, args.n, only) for name in names}
    if len(runs) > 1:
        print_matrix(runs)


if __name__ == "__main__":
    main()
