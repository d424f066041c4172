"""Log-likelihood error against NFE for the probability-flow ODE, on exact Gaussian-mixture scores.

    python -m bench.likelihood                 # VP, sub-VP and VE (sigma_max = 50), ~20 s on 2 CPU cores
    python -m bench.likelihood --sdes vp --n 1000
    python -m bench.likelihood --dim 3         # a 3-D five-mode mixture (isotropic stds 0.1-0.3)

Data: 500 points from a 2-D mixture of four Gaussians with unequal weights and full covariances
(``tests/gmm_utils.make_test_mixture``). With the exact score and the exact ``log p_T`` as prior the
only errors are the solver's and the trace estimator's, so each row reports, against the exact
``log p_eps(x)`` (``eps = 1e-5``): the mean and max absolute error and the mean signed error (bias) in
nats per sample, the NFE (score evaluations of one batched solve) and the wall time.

The reference row is score_sde's setting: SciPy RK45, ``rtol = atol = 1e-5``, Rademacher Hutchinson
trace, float32 score evaluations. ``NFE/ref`` and ``|err|/ref`` compare each row with it, measured in
the same run; the ratio lines give ``method="adams"`` at 1e-5 against it and against
``log_likelihood``'s default call (dopri5, 1e-5, in the data's dtype), and dopri5 against RK45 with
everything else equal. ``adams`` rows are the adaptive Adams predictor-corrector
(``scoresde.integrate._adams_pec``, one score evaluation per step, state scaled by
``s_t = sqrt(alpha_t^2 + sigma_t^2)``), the configs' ``eval.method``;
the last table per process gives, for the old solver (dopri5) and the new one (adams), the fewest NFE
of the tolerance sweep whose mean |err| is below 1e-3 nats (NFE counts do not depend on the machine).
Hutchinson rows: the per-sample error is the probe noise (in 2-D as large as the signal); averaged
over a data set it cancels (the ``bias`` column, the mean over 500 points, is within two standard
errors ``std / sqrt(500)`` of zero).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the samplers package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scoresde import sde_lib
from scoresde.samplers import log_likelihood

MIXTURE = sde_lib.GaussianMixture(  # the same as tests/gmm_utils.make_test_mixture()
    weights=[0.4, 0.3, 0.2, 0.1],
    means=[[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0], [0.5, -1.8]],
    covs=[[[0.20, 0.08], [0.08, 0.15]], [[0.10, -0.05], [-0.05, 0.25]],
          [[0.15, 0.00], [0.00, 0.10]], [[0.08, 0.02], [0.02, 0.12]]])
SDE_FACTORIES: Dict[str, Callable[[], sde_lib.SDE]] = {
    "vp": lambda: sde_lib.VPSDE(),
    "subvp": lambda: sde_lib.subVPSDE(),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
}
MIXTURE_3D = sde_lib.GaussianMixture(  # five isotropic modes in 3-D, stds 0.1-0.32
    weights=[0.3, 0.25, 0.2, 0.15, 0.1],
    means=[[-1.5, 0.0, 0.5], [1.5, 0.5, -0.5], [0.0, 2.0, 0.0], [0.5, -1.8, 1.0], [0.0, 0.0, -2.0]],
    covs=[0.05, 0.02, 0.1, 0.03, 0.01])
EPS = 1e-5
F32, F64 = torch.float32, torch.float64


@dataclass
class Setting:
    label: str
    method: str = "dopri5"
    tol: float = 1e-5
    steps: int | None = None
    trace: str = "exact"
    dtype: torch.dtype = F64
    n_probes: int = 1


REFERENCE = Setting("rk45 rademacher f32 (score_sde)", "rk45", 1e-5, trace="rademacher", dtype=F32)
OLD_DEFAULT = Setting("dopri5 exact f32 (API default)", "dopri5", 1e-5, dtype=F32)
DEFAULT = Setting("adams exact f32", "adams", 1e-5, dtype=F32)
TOL_SWEEP = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
SOLVER_SWEEPS = {m: [Setting(f"{m} exact f64", m, tol) for tol in TOL_SWEEP] for m in ("dopri5", "adams")}
RK45_EXACT = Setting("rk45 exact f64", "rk45", 1e-5)
DOPRI5_EXACT = Setting("dopri5 exact f64", "dopri5", 1e-5)
SETTINGS: List[Setting] = (
    [REFERENCE, RK45_EXACT]
    + [Setting("rk45 exact f64", "rk45", tol) for tol in (1e-3, 1e-7)]
    + [OLD_DEFAULT, DEFAULT]
    + SOLVER_SWEEPS["dopri5"][:-1] + [DOPRI5_EXACT]
    + [Setting("dopri5 exact f64", "dopri5", tol) for tol in (1e-6, 1e-7)]
    + SOLVER_SWEEPS["adams"]
    + [Setting("rk4 exact f64", "rk4", steps=s) for s in (10, 25, 50, 100, 200)]
    + [Setting("dopri5 gaussian f64", trace="gaussian"), Setting("dopri5 rademacher f64", trace="rademacher"),
       Setting("dopri5 gaussian x4 f64", trace="gaussian", n_probes=4)]
)


@dataclass
class Row:
    setting: Setting
    nfe: int
    mean_abs: float
    max_abs: float
    bias: float
    seconds: float


def run(sde: sde_lib.SDE, mixture: sde_lib.GaussianMixture, x: torch.Tensor, exact: torch.Tensor,
        s: Setting) -> Row:
    start = time.time()
    tols = {} if s.steps is not None else {"rtol": s.tol, "atol": s.tol}
    logp, _, nfe = log_likelihood(sde, mixture.score_fn(sde), x.to(s.dtype), trace=s.trace, method=s.method,
                                  steps=s.steps, eps=EPS, n_probes=s.n_probes, dtype=s.dtype,
                                  prior_logp=mixture.prior_logp_fn(sde), generator=torch.Generator().manual_seed(1),
                                  **tols)
    err = logp.double() - exact
    return Row(s, nfe, float(err.abs().mean()), float(err.abs().max()), float(err.mean()), time.time() - start)


def describe(s: Setting) -> str:
    return f"steps={s.steps}" if s.steps is not None else f"tol={s.tol:.0e}"


def print_rows(rows: List[Row], ref: Row) -> None:
    print(f"| {'setting':<32} | {'knob':<10} | {'NFE':>5} | {'mean |err|':>10} | {'max |err|':>9} | "
          f"{'bias':>9} | {'time s':>6} | {'NFE/ref':>7} | {'|err|/ref':>9} |")
    print("|" + "|".join("-" * w for w in (34, 12, 7, 12, 11, 11, 8, 9, 11)) + "|")
    for r in rows:
        print(f"| {r.setting.label:<32} | {describe(r.setting):<10} | {r.nfe:>5} | {r.mean_abs:10.2e} | "
              f"{r.max_abs:9.2e} | {r.bias:9.2e} | {r.seconds:6.2f} | {r.nfe / ref.nfe:7.2f} | "
              f"{r.mean_abs / ref.mean_abs:9.2e} |")


def print_old_vs_new(name: str, rows: List[Row]) -> Dict[str, Row]:
    """Per solver, the tolerance sweep's NFE / error and the fewest NFE within 1e-3 nats (mean |err|)."""
    best = {}
    print(f"\n--- {name}: NFE against mean |err| (nats), old solver (dopri5) and new (adams), exact trace, f64")
    print(f"| {'solver':<7} | " + " | ".join(f"{'tol ' + format(t, '.0e'):>13}" for t in TOL_SWEEP) + " | NFE within 1e-3 |")
    print("|" + "|".join("-" * w for w in [9] + [15] * len(TOL_SWEEP) + [17]) + "|")
    for method, sweep in SOLVER_SWEEPS.items():
        swept = [r for r in rows if r.setting in sweep]
        within = [r for r in swept if r.mean_abs < 1e-3]
        best[method] = min(within, key=lambda r: r.nfe) if within else None
        cells = " | ".join(f"{r.nfe:>4} {r.mean_abs:8.1e}" for r in swept)
        print(f"| {method:<7} | {cells} | {best[method].nfe if best[method] else '>max':>15} |")
    return best


def bench_sde(name: str, n: int, mixture: sde_lib.GaussianMixture) -> Dict[str, Row]:
    start = time.time()
    sde = SDE_FACTORIES[name]()
    x = mixture.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = mixture.log_prob_t(sde, x, torch.full((n,), EPS, dtype=F64))
    rows = [run(sde, mixture, x, exact, s) for s in SETTINGS]
    ref, default = rows[0], rows[SETTINGS.index(DEFAULT)]
    old_default = rows[SETTINGS.index(OLD_DEFAULT)]
    rk45, dopri5 = rows[SETTINGS.index(RK45_EXACT)], rows[SETTINGS.index(DOPRI5_EXACT)]
    print(f"\n=== {name}: {n} points in {mixture.dim}-D, mean exact log p_eps = {float(exact.mean()):.4f} nats")
    print_rows(rows, ref)
    print(f"ratio, adams at 1e-5 vs reference: NFE x{default.nfe / ref.nfe:.2f}, "
          f"mean |err| x{default.mean_abs / ref.mean_abs:.2e}")
    print(f"ratio, adams vs dopri5 (log_likelihood's default), both 1e-5 f32: NFE x{default.nfe / old_default.nfe:.2f}, "
          f"mean |err| x{default.mean_abs / old_default.mean_abs:.2e}")
    print(f"ratio, solver alone (dopri5 vs rk45, exact trace, f64, 1e-5): NFE x{dopri5.nfe / rk45.nfe:.2f}, "
          f"mean |err| x{dopri5.mean_abs / rk45.mean_abs:.2f}")
    best = print_old_vs_new(name, rows)
    print(f"({name}: {time.time() - start:.0f} s)")
    return best


def _sde_names(text: str) -> List[str]:
    names = text.split(",")
    unknown = [s for s in names if s not in SDE_FACTORIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"SDEs must be among {sorted(SDE_FACTORIES)}, got {unknown}")
    return names


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdes", type=_sde_names, default="vp,subvp,ve", help="comma-separated SDE names")
    parser.add_argument("--n", type=int, default=500, help="data points")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2, help="the 2-D or the 3-D mixture")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tensors of 500 x 2: threads only add overhead
    mixture = MIXTURE if args.dim == 2 else MIXTURE_3D
    best = {name: bench_sde(name, args.n, mixture) for name in args.sdes}
    print(f"\n=== NFE to a mean |err| below 1e-3 nats ({mixture.dim}-D mixture, {args.n} points, exact prior)")
    print(f"| {'process':<7} | {'old: dopri5':>16} | {'new: adams':>16} | {'new / old':>9} |")
    print("|---------|------------------|------------------|-----------|")
    for name, b in best.items():
        old, new = b["dopri5"], b["adams"]
        cell = lambda r: f"{r.nfe} ({describe(r.setting)})" if r else ">max"
        ratio = f"{new.nfe / old.nfe:9.2f}" if old and new else f"{'-':>9}"
        print(f"| {name:<7} | {cell(old):>16} | {cell(new):>16} | {ratio} |")


if __name__ == "__main__":
    main()
