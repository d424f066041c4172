"""Few-step samplers of the probability-flow ODE: multistep DPM-Solver++ (orders 1-3) and DDIM.

Both work in the half log-SNR ``lambda_t = log(alpha_t / sigma_t) = ½ sde.log_snr(t)`` with the data
prediction ``x0(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t``, in which the probability-flow ODE of
any linear SDE (VP, sub-VP, VE, cosine-VP) has the exact solution (Lu et al. 2022b, "DPM-Solver++",
Sec. 4: the diffusion ODE for the data-prediction model)

    x_t = (sigma_t / sigma_s) x_s + sigma_t ∫_{lambda_s}^{lambda_t} e^lambda x0(x_lambda, lambda) dlambda.

The solvers replace ``x0`` by a polynomial in ``lambda`` through the last ``order`` predictions, so
only ``marginal_coeffs``, ``log_snr`` and ``inverse_log_snr`` of the SDE are needed. Order 1 is DDIM
(Song, Meng & Ermon 2021); ``ddim_sample`` adds DDIM's stochastic ``eta``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple

import numpy as np
import torch

from scoresde.samplers.common import ScoreFn, CountingScore, batch_time, check_eps, initial_noise, progress_iter, tweedie_denoise
from scoresde.samplers.guidance import dynamic_thresholding
from scoresde.sde_lib import SDE
from scoresde.utils import check_choice, check_float, check_int

ORDERS = (1, 2, 3)
# EDM's rho (Karras et al. 2022, eq. 5), applied to sigma_t / alpha_t = exp(-lambda_t) or its inverse.
KARRAS_RHO = 7.0
# Lu et al. 2022b (DPM-Solver++) and their `lower_order_final`: lower orders at the final steps
# stabilise runs of fewer than 15 steps.
LOWER_ORDER_FINAL_BELOW = 15
# Measured on exact mixture scores (bench/samplers.py; numbers in its docstring): at 10-20 steps of
# order 2-3 "inverse_karras" is the most accurate grid. For DDIM "time_quadratic" is within 10% of the
# best (time_uniform) at eta = 0 and has the smallest bias at eta = 1 on VP and subVP.
DEFAULT_SKIP_TYPE = "inverse_karras"
DDIM_SKIP_TYPE = "time_quadratic"


class TimeGrid(NamedTuple):
    """The solver's grid ``t_0 = T > ... > t_steps = eps`` with its coefficients, as Python floats
    (computed once in float64, so the loop needs no device tensors or host syncs)."""
    t: List[float]
    alpha: List[float]
    sigma: List[float]
    lam: List[float]  # lambda_t = log(alpha_t / sigma_t)


# ----- time-step spacing -------------------------------------------------------------------------
def _half_log_snr(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * sde.log_snr(t)


def _logsnr_spacing(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``lambda`` (Lu et al. 2022a, DPM-Solver, Sec. 3.3)."""
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    lam_T, lam_0 = _half_log_snr(sde, ends).tolist()
    return sde.inverse_log_snr(2.0 * torch.linspace(lam_T, lam_0, steps + 1, dtype=torch.float64))


def _time_uniform_spacing(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``t`` (DDIM's "uniform" skip)."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def _time_quadratic_spacing(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``sqrt(t)`` (DDIM's "quadratic" sub-sequence; Song, Meng & Ermon 2021, App. D)."""
    return torch.linspace(math.sqrt(sde.T), math.sqrt(eps), steps + 1, dtype=torch.float64) ** 2


def _power_spacing(sde: SDE, steps: int, eps: float, power: float) -> torch.Tensor:
    """Uniform in ``exp(power * lambda_t) = (alpha_t / sigma_t)^power``."""
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    u_T, u_0 = (power * _half_log_snr(sde, ends)).exp().tolist()
    ramp = torch.linspace(u_T, u_0, steps + 1, dtype=torch.float64)
    return sde.inverse_log_snr(2.0 / power * ramp.log())


def _karras_spacing(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``(sigma_t / alpha_t)^(1/rho)`` (Karras et al. 2022, EDM, eq. 5): relative to
    ``logSNR``, shorter steps at high noise and longer ones near ``eps``."""
    return _power_spacing(sde, steps, eps, -1.0 / KARRAS_RHO)


def _inverse_karras_spacing(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """EDM's warp mirrored, uniform in ``(alpha_t / sigma_t)^(1/rho)``: relative to ``logSNR``, longer
    steps at high noise and shorter ones near ``eps``, where mixture-like data change fastest."""
    return _power_spacing(sde, steps, eps, 1.0 / KARRAS_RHO)


SPACINGS: Dict[str, Callable[[SDE, int, float], torch.Tensor]] = {
    "logSNR": _logsnr_spacing,
    "time_uniform": _time_uniform_spacing,
    "time_quadratic": _time_quadratic_spacing,
    "karras": _karras_spacing,
    "inverse_karras": _inverse_karras_spacing,
}
SKIP_TYPES = tuple(SPACINGS)


def get_time_steps(sde: SDE, steps: int, eps: float = 1e-3, skip_type: str = DEFAULT_SKIP_TYPE) -> torch.Tensor:
    """The ``steps + 1`` solver times from ``T`` down to ``eps`` (float64, CPU, strictly decreasing)."""
    check_int("steps", steps, minimum=1)
    eps = check_eps(sde, eps)
    check_choice("skip_type", skip_type, SKIP_TYPES)
    t = SPACINGS[skip_type](sde, steps, eps)
    t[0], t[-1] = sde.T, eps  # pin the ends against round-off of inverse_log_snr
    return t


def _explicit_times(sde: SDE, times) -> torch.Tensor:
    """``times`` as a float64 CPU tensor: at least 2 strictly decreasing times in ``[0, T]``."""
    try:
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"times must be a 1-D sequence of floats, got {type(times).__name__}")
    if t.numel() < 2 or not bool((t[1:] < t[:-1]).all()) or not (0.0 <= float(t[-1]) and float(t[0]) <= sde.T):
        raise ValueError(f"times must be at least 2 strictly decreasing times in [0, T] = [0, {sde.T}], got {t.tolist()}")
    return t


def _time_grid(sde: SDE, steps: int, eps: float, skip_type: str, times=None) -> TimeGrid:
    t = get_time_steps(sde, steps, eps, skip_type) if times is None else _explicit_times(sde, times)
    alpha, sigma = sde.marginal_coeffs(t)
    lam = _half_log_snr(sde, t)
    if not bool((lam[1:] > lam[:-1]).all() and torch.isfinite(lam).all()):
        if times is not None:
            raise ValueError(f"times must have strictly increasing finite log-SNR, got times {t.tolist()}")
        raise ValueError(f"steps={steps} is too many for eps={eps}: the {skip_type!r} grid repeats a log-SNR")
    return TimeGrid(t.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist())


# ----- one step ----------------------------------------------------------------------------------
def _data_prediction(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, i: int) -> torch.Tensor:
    """``x0 = (x + sigma^2 score) / alpha`` at grid point ``i`` (Tweedie's formula; DPM-Solver++'s data prediction)."""
    s = score(x, batch_time(grid.t[i], x))
    return (x + grid.sigma[i] ** 2 * s) / grid.alpha[i]


def _step_size(grid: TimeGrid, i: int) -> float:
    return grid.lam[i + 1] - grid.lam[i]


def _update_1(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int) -> torch.Tensor:
    """DPM-Solver++(1) = DDIM: ``x_t = (sigma_t/sigma_s) x_s - alpha_t expm1(-h) x0_s`` (Lu et al. 2022b, Sec. 4)."""
    phi_1 = math.expm1(-_step_size(grid, i))
    return (grid.sigma[i + 1] / grid.sigma[i]) * x - (grid.alpha[i + 1] * phi_1) * m[-1]


def _update_2(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int) -> torch.Tensor:
    """Multistep DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): ``D1 = (x0_i - x0_{i-1}) / r0``."""
    h = _step_size(grid, i)
    r0 = (grid.lam[i] - grid.lam[i - 1]) / h
    phi_1 = math.expm1(-h)
    d1 = (m[-1] - m[-2]) / r0
    a = grid.alpha[i + 1] * phi_1
    return (grid.sigma[i + 1] / grid.sigma[i]) * x - a * m[-1] - (0.5 * a) * d1


def _update_3(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int) -> torch.Tensor:
    """Multistep DPM-Solver++(3M): the Taylor terms ``h x0'`` and ``h^2 x0''`` from divided differences
    of the last three predictions in ``lambda``, integrated against ``e^lambda`` with
    ``phi_2 = phi_1/h + 1``, ``phi_3 = phi_2/h - ½`` (Lu et al. 2022b; exact when ``x0`` is quadratic
    in ``lambda``)."""
    h = _step_size(grid, i)
    r0 = (grid.lam[i] - grid.lam[i - 1]) / h
    r1 = (grid.lam[i - 1] - grid.lam[i - 2]) / h
    d1_0 = (m[-1] - m[-2]) / r0
    d1_1 = (m[-2] - m[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    # d2 ~ h^2 x0''. LuChengTHU/dpm-solver's multistep update omits this 2, which leaves the x0'' term at
    # half weight and the solver second order (slightly better below ~25 steps, worse above).
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
    phi_1 = math.expm1(-h)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    a = grid.alpha[i + 1]
    return ((grid.sigma[i + 1] / grid.sigma[i]) * x - (a * phi_1) * m[-1]
            + (a * phi_2) * d1 - (a * phi_3) * d2)


_UPDATES = {1: _update_1, 2: _update_2, 3: _update_3}


# ----- SDE-DPM-Solver++ (issue 14) -----------------------------------------------------------------
# fast_sample's solvers: the probability-flow ODE (DPM-Solver++) or the reverse SDE (SDE-DPM-Solver++)
SOLVERS = ("dpmsolver++", "sde-dpmsolver++", "unipc")
SDE_ORDERS = (1, 2)


def _sde_update(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """SDE-DPM-Solver++(1) / (2M) (Lu et al. 2022b, DPM-Solver++; as ``"sde-dpmsolver++"`` in
    LuChengTHU/dpm-solver and k-diffusion's ``sample_dpmpp_2m_sde``), the reverse SDE in data-prediction form:
    ``x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) (x0_s + D1/2) + sigma_t sqrt(1 - e^{-2h}) z``
    with ``D1 = (x0_s - x0_prev) / r0`` for 2M (``len(m) == 2``), 0 at order 1 (which is DDIM, ``eta = 1``)."""
    h = _step_size(grid, i)
    decay = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    a = grid.alpha[i + 1] * decay
    x = (grid.sigma[i + 1] / grid.sigma[i] * math.exp(-h)) * x + a * m[-1]
    if len(m) > 1:
        r0 = (grid.lam[i] - grid.lam[i - 1]) / h
        x = x + (0.5 * a / r0) * (m[-1] - m[-2])
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (grid.sigma[i + 1] * math.sqrt(decay)) * noise


def _sde_updates(generator: torch.Generator | None) -> Dict[int, Callable]:
    """``_UPDATES``'s counterpart for the reverse SDE, drawing its noise from ``generator``."""
    return {k: (lambda x, m, grid, i, k=k: _sde_update(x, m[-k:], grid, i, generator)) for k in SDE_ORDERS}


def _step_order(i: int, steps: int, order: int, lower_order_final: bool) -> int:
    """Order of step ``i``: warm up with the predictions available (``i + 1``); with few steps drop to
    order 1 at the last step and 2 at the one before (Lu et al. 2022b's ``lower_order_final``)."""
    k = min(order, i + 1)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        k = min(k, steps - i)
    return k


# ----- UniPC (issue 11) ----------------------------------------------------------------------------
UNIPC_VARIANTS = ("bh1", "bh2")
DEFAULT_UNIPC_VARIANT = "bh2"


def _unipc_terms(m: List[torch.Tensor], grid: TimeGrid, i: int, k: int, variant: str):
    """The shared pieces of UniP-k / UniC-k from ``t_i`` to ``t_{i+1}`` (Zhao et al. 2023, UniPC, Alg. 2-3
    in data-prediction form; wl-zhao/UniPC's ``multistep_uni_pc_bh_update``): the DDIM part ``x_ddim``'s
    coefficients, ``B(h)`` (``bh1``: ``B(h) = h``; ``bh2``: ``B(h) = e^h - 1``), the divided differences
    ``D_j = (x0_{i-j} - x0_i) / r_j`` with ``r_j = (lambda_{i-j} - lambda_i) / h`` and the order
    conditions ``R rho = b``, ``R_{nj} = r_j^(n-1)``, ``b_n = n! phi_{n+1}(-h) / B(h)``, ``r_k = 1``."""
    h = _step_size(grid, i)
    hh = -h
    rks = [(grid.lam[i - j] - grid.lam[i]) / h for j in range(1, k)] + [1.0]
    diffs = [(m[-1 - j] - m[-1]) / rks[j - 1] for j in range(1, k)]
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k, factorial, rows, b = h_phi_1 / hh - 1.0, 1.0, [], []
    for n in range(1, k + 1):
        rows.append([r ** (n - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= n + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    x_ddim = (grid.sigma[i + 1] / grid.sigma[i], -grid.alpha[i + 1] * h_phi_1)  # x_ddim = c0 x + c1 x0_i
    return x_ddim, grid.alpha[i + 1] * b_h, diffs, np.array(rows), np.array(b)


def _combine(terms, x: torch.Tensor, m0: torch.Tensor, rhos, extra: List[torch.Tensor]) -> torch.Tensor:
    (c0, c1), a_bh, diffs, _, _ = terms
    out = c0 * x + c1 * m0
    for rho, d in zip(rhos, diffs + extra):
        out = out - (a_bh * float(rho)) * d
    return out


def _unipc_predict(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int, k: int, variant: str):
    """UniP-k: ``x_{i+1} = x_ddim - alpha B(h) sum_j rho_j D_j`` with ``rho`` from the first ``k - 1``
    order conditions (``rho = ½`` at ``k = 2``)."""
    terms = _unipc_terms(m, grid, i, k, variant)
    _, _, _, rows, b = terms
    rhos = [] if k == 1 else [0.5] if k == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
    return _combine(terms, x, m[-1], rhos, [])


def _unipc_correct(x: torch.Tensor, m: List[torch.Tensor], m_new: torch.Tensor, grid: TimeGrid, i: int, k: int,
                   variant: str) -> torch.Tensor:
    """UniC-k: the step ``t_i -> t_{i+1}`` again from ``x`` (at ``t_i``), with the data prediction
    ``m_new`` made at the predicted ``x_{i+1}`` as one more node: order ``k + 1`` for no extra evaluation,
    since ``m_new`` is the history of the next step (Zhao et al. 2023, Sec. 3.1)."""
    terms = _unipc_terms(m, grid, i, k, variant)
    _, _, _, rows, b = terms
    rhos = [0.5] if k == 1 else np.linalg.solve(rows, b).tolist()
    return _combine(terms, x, m[-1], rhos, [m_new - m[-1]])


def _unipc_loop(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, order: int, lower_order_final: bool,
                variant: str, show: bool) -> torch.Tensor:
    """Multistep UniPC (Zhao et al. 2023, Alg. 3): UniP-k predicts ``x_{i+1}``; the score there gives
    ``x0_{i+1}``, with which UniC corrects ``x_{i+1}`` before the next step. The last step is not
    corrected (its corrector would need one more evaluation)."""
    steps = len(grid.t) - 1
    history: List[torch.Tensor] = []
    previous = None  # (x_i, k) of the step to correct
    for i in progress_iter(range(steps), show, "unipc", total=steps):
        m_i = _data_prediction(score, x, grid, i)
        if previous is not None:
            x = _unipc_correct(previous[0], history, m_i, grid, i - 1, previous[1], variant)
        history = (history + [m_i])[-order:]
        k = _step_order(i, steps, order, lower_order_final)
        previous = (x, k)
        x = _unipc_predict(x, history, grid, i, k, variant)
    return x


# ----- the drivers -------------------------------------------------------------------------------
def _multistep(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, order: int, lower_order_final: bool,
               show: bool, updates: Dict[int, Callable] = _UPDATES) -> torch.Tensor:
    """Multistep DPM-Solver++ (Lu et al. 2022b, Alg. 2): one score evaluation per step; ``updates`` maps an
    order to its step (the ODE's, or ``_sde_updates`` for SDE-DPM-Solver++)."""
    steps = len(grid.t) - 1
    history: List[torch.Tensor] = []
    for i in progress_iter(range(steps), show, "dpm-solver++", total=steps):
        history = (history + [_data_prediction(score, x, grid, i)])[-order:]
        x = updates[_step_order(i, steps, order, lower_order_final)](x, history, grid, i)
    return x


def _ddim_noisy_update(x: torch.Tensor, x0: torch.Tensor, grid: TimeGrid, i: int, eta: float,
                       generator: torch.Generator | None) -> torch.Tensor:
    """DDIM with ``sigma(eta)^2 = eta^2 sigma_t^2 (1 - e^{-2h})`` = ``eta^2`` times the DDPM posterior
    variance (Song, Meng & Ermon 2021, eqs. 12 and 16, in ``(alpha, sigma)`` form):
    ``x_t = alpha_t x0 + sqrt(sigma_t^2 - sigma(eta)^2) eps_hat + sigma(eta) z``."""
    sigma_s, sigma_t, alpha_s, alpha_t = grid.sigma[i], grid.sigma[i + 1], grid.alpha[i], grid.alpha[i + 1]
    noise_std = eta * sigma_t * math.sqrt(-math.expm1(-2.0 * _step_size(grid, i)))
    keep = math.sqrt(max(sigma_t ** 2 - noise_std ** 2, 0.0)) / sigma_s  # weight of eps_hat / sigma_s
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return keep * x + (alpha_t - alpha_s * keep) * x0 + noise_std * z


def _ddim_loop(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, eta: float,
               generator: torch.Generator | None, show: bool) -> torch.Tensor:
    steps = len(grid.t) - 1
    for i in progress_iter(range(steps), show, "ddim", total=steps):
        x0 = _data_prediction(score, x, grid, i)
        x = _update_1(x, [x0], grid, i) if eta == 0.0 else _ddim_noisy_update(x, x0, grid, i, eta, generator)
    return x


# ----- argument checks ---------------------------------------------------------------------------
def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, int):  # not True, not 2.0
        raise ValueError(f"order must be one of {list(ORDERS)}, got {order!r}")
    return check_choice("order", order, ORDERS)


def _check_dtype(dtype) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")


def _thresholded(sde: SDE, score_fn: ScoreFn, thresholding: float | None) -> ScoreFn:
    """``score_fn``, or with ``thresholding`` the score of the dynamically thresholded data prediction."""
    return score_fn if thresholding is None else dynamic_thresholding(sde, score_fn, thresholding)


def _start(sampler: str, sde: SDE, score_fn: ScoreFn, shape, steps: int, eps: float, skip_type: str, z,
           device, generator, dtype, times=None):
    """Shared set-up: checks, the counting score, the initial ``x_T`` and the grid (``times`` if given)."""
    score = CountingScore(score_fn, sampler)
    _check_dtype(dtype)
    grid = _time_grid(sde, steps, eps, skip_type, times)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype)
    return score, x, grid


def _finish(sde: SDE, score: CountingScore, x: torch.Tensor, eps: float, denoise: bool):
    """With ``denoise``, the output is the data prediction at ``eps`` (one more score evaluation);
    then the one check (one host sync) that no score was NaN or infinite."""
    if denoise:
        x = tweedie_denoise(sde, score, x, batch_time(eps, x))
    score.check()
    return x, score.nfe


@torch.no_grad()
def fast_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = 10, order: int = 2, eps: float = 1e-3,
                denoise: bool = True, z: torch.Tensor | None = None, device=None,
                generator: torch.Generator | None = None, skip_type: str = DEFAULT_SKIP_TYPE,
                dtype: torch.dtype | None = None, progress: bool = False,
                lower_order_final: bool = True, thresholding: float | None = None,
                solver: str = "dpmsolver++", times=None, unipc_variant: str = DEFAULT_UNIPC_VARIANT):
    """Solve the probability-flow ODE from ``T`` to ``eps`` with multistep DPM-Solver++ (Lu et al. 2022b, Alg. 2).

    ``steps`` score evaluations on a ``skip_type`` grid (one of ``SKIP_TYPES``: ``"inverse_karras"``, the
    default and the most accurate measured, ``"logSNR"``, ``"time_uniform"``, ``"time_quadratic"``,
    ``"karras"``). ``order`` 1 is DDIM, 2 and 3 the 2M/3M multistep solvers, warmed up with lower orders
    (so ``steps < order`` runs at order ``steps``) and, when ``lower_order_final`` and ``steps < 15``,
    lowered at the last two steps. ``z`` is the latent at ``T`` (else drawn from the prior with
    ``generator``). With ``denoise`` the result is the data prediction ``E[x_0 | x_eps]`` at ``eps``,
    which costs one more evaluation: ``nfe = steps + denoise``. ``thresholding`` (a fraction in
    ``(0, 1]``, Imagen's 0.995) applies dynamic thresholding to every data prediction, the final one
    included (Saharia et al. 2022; ``samplers.dynamic_thresholding``), for data in ``[-1, 1]``.
    Returns ``(x, nfe)``. ``solver="sde-dpmsolver++"`` solves the reverse SDE instead with
    SDE-DPM-Solver++(1) (= DDIM with ``eta = 1``) or (2M) (``order`` 1 or 2; Lu et al. 2022b), its noise
    drawn from ``generator``. ``times`` (strictly decreasing, in ``[0, T]``) replaces the grid: the solver
    steps from ``times[0]`` to ``times[-1]`` (``steps``, ``eps`` and ``skip_type`` are then unused), e.g. a
    diffusers scheduler's timesteps (``models.diffusers_times``). ``solver="unipc"`` is UniPC (Zhao et al.
    2023): the UniP-``order`` predictor and the UniC corrector, one order higher at no extra evaluation,
    with ``B(h)`` from ``unipc_variant`` (``"bh1"``: ``h``; ``"bh2"``: ``e^h - 1``).
    """
    order = _check_order(order)
    check_choice("solver", solver, SOLVERS)
    check_choice("unipc_variant", unipc_variant, UNIPC_VARIANTS)
    if solver == "sde-dpmsolver++" and order not in SDE_ORDERS:
        raise ValueError(f"order must be one of {list(SDE_ORDERS)} for solver 'sde-dpmsolver++', got {order!r}")
    score_fn = _thresholded(sde, score_fn, thresholding)
    score, x, grid = _start("fast_sample", sde, score_fn, shape, steps, eps, skip_type, z, device, generator, dtype,
                            times)
    if solver == "unipc":
        x = _unipc_loop(score, x, grid, order, bool(lower_order_final), unipc_variant, progress)
    else:
        updates = _UPDATES if solver == "dpmsolver++" else _sde_updates(generator)
        x = _multistep(score, x, grid, order, bool(lower_order_final), progress, updates)
    return _finish(sde, score, x, grid.t[-1], denoise)


@torch.no_grad()
def ddim_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = 50, eta: float = 0.0, eps: float = 1e-3,
                denoise: bool = True, z: torch.Tensor | None = None, device=None,
                generator: torch.Generator | None = None, skip_type: str = DDIM_SKIP_TYPE,
                dtype: torch.dtype | None = None, progress: bool = False, thresholding: float | None = None,
                times=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on any linear SDE, ``steps`` score evaluations.

    ``eta = 0`` is the deterministic sampler, identical to ``fast_sample(order=1)`` on the same grid
    (note the defaults differ: DDIM's is ``"time_quadratic"``, see ``DDIM_SKIP_TYPE``);
    ``eta = 1`` adds the DDPM posterior variance at every step (ancestral sampling on the coarse grid).
    The step noise comes from ``generator``; ``nfe = steps + denoise``. ``thresholding`` as in
    ``fast_sample``; ``times`` replaces the grid as there. Returns ``(x, nfe)``.
    """
    eta = check_float("eta", eta, 0.0, 1.0)  # 0: deterministic DDIM, 1: DDPM-like
    score_fn = _thresholded(sde, score_fn, thresholding)
    score, x, grid = _start("ddim_sample", sde, score_fn, shape, steps, eps, skip_type, z, device, generator, dtype,
                            times)
    x = _ddim_loop(score, x, grid, eta, generator, progress)
    return _finish(sde, score, x, grid.t[-1], denoise)
