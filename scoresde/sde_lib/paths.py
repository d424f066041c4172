"""Processes given by their path ``x_t = alpha_t x_0 + sigma_t z``: rectified flow and EDM.

Both are linear SDEs like VP and VE, so every sampler, likelihood and loss works on them unchanged. Their
drift and diffusion are the ones whose marginals are the path (Särkkä & Solin 2019, eq. 5.51; Kingma et al.
2021, VDM, App. A): ``f = alpha'/alpha`` and ``g^2 = (sigma^2)' - 2 f sigma^2 = -sigma^2 lambda'``, with
``lambda = log(alpha^2 / sigma^2)``.

What the two share: the discrete chain (for the ancestral and reverse-diffusion predictors and the
discrete losses) is the path itself at the times ``discrete_times`` of its levels, and times for the
likelihood weighting are drawn exactly, because ``g^2 / sigma^2 = -lambda'``: ``t ~ p(t) ∝ g^2/sigma^2`` on
``[eps, T]`` is ``t = lambda^{-1}(lambda(eps) - u (lambda(eps) - lambda(T)))``, ``u ~ U(0, 1)``, with
normaliser ``Z = lambda(eps) - lambda(T)`` (no table needed).
"""
from __future__ import annotations

import abc
from typing import Tuple

import torch

from scoresde.sde_lib.base import SDE
from scoresde.utils import check_float, check_positive


class PathSDE(SDE):
    """A linear SDE defined by closed forms of ``alpha_t, sigma_t`` and their derivatives."""

    @property
    @abc.abstractmethod
    def discrete_times(self) -> torch.Tensor:
        """The times of the chain's levels ``i = 0..N-1`` (float64); each lies in its index cell
        ``[i T/(N-1), (i+1) T/(N-1))`` of ``timestep_index``."""

    def _discrete_marginal_table(self):
        if "discrete" not in self._table_cache:
            self._table_cache["discrete"] = self.marginal_coeffs(self.discrete_times)
        return self._table_cache["discrete"]

    def sample_importance_time(self, n: int, eps: float, generator=None, device=None,
                               dtype=torch.float32) -> Tuple[torch.Tensor, float]:
        """``t ~ p(t) ∝ g(t)^2 / sigma_t^2 = -lambda'(t)`` on ``[eps, T]`` by inverting the log-SNR, and ``Z``
        (Song, Durkan, Murray & Ermon 2021, Sec. 5); the base class tabulates the same CDF."""
        if not isinstance(eps, (int, float)) or not 0 < eps < self.T:
            raise ValueError(f"eps must lie in (0, T) = (0, {self.T}), got {eps!r}")
        lam_eps, lam_T = self.log_snr(torch.tensor([eps, self.T], dtype=torch.float64)).tolist()
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else "cpu")
        t = self.inverse_log_snr(lam_eps - u.cpu() * (lam_eps - lam_T)).clamp(eps, self.T)
        return t.to(device=device, dtype=dtype), lam_eps - lam_T

    def drift_coeff(self, t):
        d_alpha, _ = self.marginal_derivatives(t)
        return d_alpha / self.marginal_coeffs(t)[0]


class RectifiedFlow(PathSDE):
    """The linear path ``x_t = (1 - t) x_0 + t z`` of rectified flow (Liu et al. 2023) and conditional flow
    matching with the optimal-transport path (Lipman et al. 2023, eq. 20 with ``sigma_min = 0``).

    SDE: ``f = -1/(1 - t)``, ``g^2 = 2t/(1 - t)`` (from ``alpha' = -1``, ``sigma' = 1``). Both blow up at ``t = 1``
    (``alpha_1 = 0``), so the process stops at ``T = 0.999`` by default (``T < 1`` required), as the cosine
    schedule does. There ``alpha_T = 1 - T``: ``log_snr(T) = 2 log((1-T)/T) = -13.8``, below VP's -10 and EDM's
    -8.8. The prior is ``N(0, T^2 I)`` (``sigma_T``; the ``alpha_T x_0`` part is ignored, as VE's and VP's
    priors ignore theirs): for data of scale ``|x_0|`` its log-density is off by about
    ``alpha_T |E x_0| |z| / T^2`` nats (~1e-3 for ``|x_0| ~ 1`` at the default ``T``); pass
    ``prior_logp=`` to ``log_likelihood`` to remove even that.

    Where the interface needs care near ``T``: ``f`` and ``g^2`` vary on the scale ``1 - t``, and a uniform PC
    step is ``|dt| / (1 - T) = 1000 / (N - 1)`` times that scale, so Euler-Maruyama's first steps overshoot;
    the reverse SDE forgets it (sampling N(0, 0.08) exactly: variance bias +1.1% at N = 500, as the
    reverse-diffusion predictor's +1.4%, which follows the exact Gaussian chain). The velocity itself,
    ``f x - ½ g^2 s = E[z - x_0 | x]``, is smooth up to ``t = 1``, but computed from a score its two terms
    cancel to ``O(1 - t)``, losing ``log10(1/(1 - T)) = 3`` digits at ``T`` (harmless in float32).

    Network labels: ``999 t / T`` (continuous, as VP's ``999 t``), the level index (discrete). The chain's
    levels are ``t_i = (i + 1) T / N`` (DDPM's "after i + 1 steps"; level 0 has ``sigma = T/N > 0``).
    """

    default_parameterization = "velocity"

    def __init__(self, N: int = 1000, T: float = 0.999):
        super().__init__(N=N, T=check_float("T", T, 0.0, 1.0, open_low=True, open_high=True))

    def marginal_coeffs(self, t):
        return 1.0 - t, t

    def marginal_derivatives(self, t):
        return -torch.ones_like(t), torch.ones_like(t)

    def diffusion_coeff(self, t):
        return (2.0 * t / (1.0 - t)).sqrt()

    def inverse_log_snr(self, log_snr):
        # lambda = 2 log((1 - t) / t)  =>  t = 1 / (1 + e^{lambda/2})
        return torch.sigmoid(-0.5 * log_snr)

    @property
    def prior_std(self) -> float:
        return self.T

    @property
    def discrete_times(self):
        return torch.arange(1, self.N + 1, dtype=torch.float64) * (self.T / self.N)

    def noise_label(self, t, continuous=True):
        if continuous:
            return t * (999.0 / self.T)
        return self.timestep_index(t).to(t.dtype)


class EDMSDE(PathSDE):
    """EDM's process (Karras et al. 2022, Table 1 and eq. 6): ``x_t = x_0 + t z``, ``sigma(t) = t``, ``s(t) = 1``.

    SDE: ``f = 0``, ``g = sqrt(2t)`` (``d sigma^2 / dt = 2t``); the probability-flow ODE is EDM's
    ``dx/dt = -t grad log p_t(x)`` (their eq. 4 / Alg. 1). Time is the noise level, so ``T = sigma_max``
    (80 by default) and the prior is ``N(0, sigma_max^2 I)``. ``sigma_min`` (0.002) is the chain's smallest
    level and EDM's last sampling noise level: pass ``eps=sigma_min`` (or ``sigma_min=``) to the samplers
    to stop where EDM stops; their common default ``eps = 1e-3`` stops just below it.

    Where the interface needs care: time is linear in ``sigma``, so the PC samplers' uniform grid of ``N``
    steps spends them evenly in ``sigma`` from 80 down, ``(sigma_max - eps)/(N-1)`` each (0.08 for
    ``N = 1000``): only a handful fall below the data's scale, and the chain's levels are far apart in
    ``log sigma`` there. Sampling N(0, 0.08) exactly with ``sigma_max = 10``, ``N = 300``: variance bias
    +0.8% (Euler-Maruyama), +10% (reverse diffusion), -19% (ancestral); at ``sigma_max = 80``, ``N = 500``
    every predictor misses a 2-D mixture's covariances by 5-9 standard errors. Use ``edm_sample`` (EDM's
    rho = 7 grid) or ``fast_sample`` here, or Euler-Maruyama with a smaller ``sigma_max`` / larger ``N``.

    Network labels: ``sigma(t) = t`` (continuous; like VE's, so a Fourier embedding sees ``log sigma``,
    EDM's ``c_noise = ¼ ln sigma`` up to the factor its random frequencies absorb), the level index
    (discrete). Levels ``sigma_i = sigma_min + i (sigma_max - sigma_min) / (N - 1)`` (SMLD-like, linear).
    """

    default_parameterization = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        super().__init__(N=N, T=self.sigma_max)

    def marginal_coeffs(self, t):
        return torch.ones_like(t), t

    def marginal_derivatives(self, t):
        return torch.zeros_like(t), torch.ones_like(t)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion_coeff(self, t):
        return (2.0 * t).sqrt()

    def inverse_log_snr(self, log_snr):
        # lambda = -2 log t
        return torch.exp(-0.5 * log_snr)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def discrete_times(self):
        return torch.linspace(self.sigma_min, self.sigma_max, self.N, dtype=torch.float64)

    def noise_label(self, t, continuous=True):
        if continuous:
            return t.clone()
        return self.timestep_index(t).to(t.dtype)

