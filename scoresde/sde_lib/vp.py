"""Variance-preserving SDEs: VP (DDPM), sub-VP, and the cosine-schedule VP."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

from scoresde.sde_lib.base import SDE
from scoresde.utils import append_dims, check_positive


@dataclass(frozen=True)
class DDPMTables:
    """DDPM's per-level tables, all from its betas (Ho et al. 2020)."""

    betas: torch.Tensor
    alphas: torch.Tensor                   # 1 - beta_i
    alphas_cumprod: torch.Tensor           # alpha_bar_i
    alphas_cumprod_prev: torch.Tensor      # alpha_bar_{i-1}, with alpha_bar_{-1} = 1
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_1m_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor       # beta_tilde_i (eq. 7)
    posterior_mean_coef1: torch.Tensor     # mu_tilde = coef1 x_0 + coef2 x_i (eq. 7)
    posterior_mean_coef2: torch.Tensor

    @classmethod
    def from_betas(cls, b: torch.Tensor) -> "DDPMTables":
        alphas_cumprod = torch.cumprod(1.0 - b, dim=0)
        prev = torch.cat([torch.ones(1, dtype=b.dtype), alphas_cumprod[:-1]])
        # Ho et al. 2020, eq. (7): q(x_{i-1} | x_i, x_0) = N(mu_tilde, beta_tilde I)
        return cls(betas=b, alphas=1.0 - b, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=prev,
                   sqrt_alphas_cumprod=alphas_cumprod.sqrt(), sqrt_1m_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
                   posterior_variance=(1.0 - prev) / (1.0 - alphas_cumprod) * b,
                   posterior_mean_coef1=b * prev.sqrt() / (1.0 - alphas_cumprod),
                   posterior_mean_coef2=(1.0 - prev) * (1.0 - b).sqrt() / (1.0 - alphas_cumprod))


class VPSDE(SDE):
    """``dx = -½ beta(t) x dt + sqrt(beta(t)) dw`` with ``beta(t) = beta_min + t (beta_max - beta_min)``.

    Song et al. 2021, eq. (11); its discretisation with ``N`` steps is DDPM (Ho et al. 2020) with
    ``beta_i = beta(i / (N-1)) / N``, i.e. ``linspace(beta_min / N, beta_max / N, N)``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N=N, T=1.0)
        self.beta_0 = check_positive("beta_min", beta_min)
        self.beta_1 = check_positive("beta_max", beta_max)
        if self.beta_1 <= self.beta_0:
            raise ValueError(f"beta_max must be > beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        # float32 exactly as DDPM builds them: linspace(1e-4, 0.02, 1000) for the defaults
        betas32 = torch.linspace(self.beta_0 / N, self.beta_1 / N, N, dtype=torch.float32)
        self._set_discrete_betas(betas32, torch.linspace(self.beta_0 / N, self.beta_1 / N, N, dtype=torch.float64))

    def _set_discrete_betas(self, betas32: torch.Tensor, betas64: torch.Tensor) -> None:
        """DDPM's tables from its betas: ``ddpm`` in float32 (as DDPM and score_sde compute them),
        ``ddpm_64`` in float64 for the samplers' arithmetic."""
        if float(betas64.max()) >= 1.0:
            raise ValueError(f"beta_max too large for N={self.N}: discrete betas beta_max / N must be < 1")
        self.ddpm, self.ddpm_64 = DDPMTables.from_betas(betas32), DDPMTables.from_betas(betas64)

    @property
    def discrete_betas(self) -> torch.Tensor:
        """DDPM's ``beta_i`` (float32): ``linspace(1e-4, 0.02, 1000)`` for the defaults."""
        return self.ddpm.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """DDPM's ``alpha_bar_i`` (float32)."""
        return self.ddpm.alphas_cumprod

    @property
    def posterior_variance(self) -> torch.Tensor:
        """DDPM's ``beta_tilde_i`` (float32)."""
        return self.ddpm.posterior_variance

    # beta(t) and log sqrt(alpha_bar(t)) = -¼ t² (beta_1 - beta_0) - ½ t beta_0
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion_coeff(self, t):
        return self.beta(t).sqrt()

    def marginal_coeffs(self, t) -> Tuple[torch.Tensor, torch.Tensor]:
        lmc = self.log_mean_coeff(t)
        # clamp: round-off makes log alpha slightly positive at t = 0 on the cosine schedule (sigma NaN)
        return lmc.exp(), (-torch.expm1(2.0 * lmc)).clamp(min=0.0).sqrt()

    def _time_from_integral(self, integral: torch.Tensor) -> torch.Tensor:
        """Solve ``int_0^t beta = beta_0 t + ½ (beta_1 - beta_0) t² = integral`` for ``t`` (stable root)."""
        delta = self.beta_1 - self.beta_0
        return 2.0 * integral / (self.beta_0 + (self.beta_0 ** 2 + 2.0 * delta * integral).sqrt())

    def inverse_log_snr(self, log_snr):
        # alpha_bar = sigmoid(lambda), so int_0^t beta = -log alpha_bar = softplus(-lambda)
        return self._time_from_integral(torch.nn.functional.softplus(-log_snr))

    @property
    def prior_std(self) -> float:
        return 1.0

    def _discrete_marginal_table(self):
        return self.ddpm_64.sqrt_alphas_cumprod, self.ddpm_64.sqrt_1m_alphas_cumprod

    def noise_label(self, t, continuous=True):
        """``999 t`` for continuous models (score_sde convention), the DDPM timestep for discrete ones."""
        if continuous:
            return t * 999.0
        return self.timestep_index(t).to(t.dtype)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, index: torch.Tensor):
        """Mean ``mu_tilde`` and variance ``beta_tilde`` (shape ``(B,)``) of ``q(x_{i-1} | x_i, x_0)``."""
        c1 = self._table("posterior_mean_coef1", self.ddpm_64.posterior_mean_coef1, x0)[index]
        c2 = self._table("posterior_mean_coef2", self.ddpm_64.posterior_mean_coef2, x0)[index]
        mean = append_dims(c1, x0.ndim) * x0 + append_dims(c2, x0.ndim) * xt
        return mean, self._table("posterior_variance", self.ddpm_64.posterior_variance, x0)[index]


class subVPSDE(VPSDE):
    """``dx = -½ beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta)) dw`` (Song et al. 2021, eq. 12).

    Same mean as VP, std ``1 - alpha_bar(t)`` (below VP's ``sqrt(1 - alpha_bar)``). Its discrete chain
    uses DDPM's ``alpha_bar_i`` with std ``1 - alpha_bar_i``: an exact Gaussian chain, where the
    reference falls back to Euler-Maruyama.
    """

    def diffusion_coeff(self, t):
        return (self.beta(t) * -torch.expm1(4.0 * self.log_mean_coeff(t))).sqrt()

    def marginal_coeffs(self, t):
        lmc = self.log_mean_coeff(t)
        return lmc.exp(), -torch.expm1(2.0 * lmc)

    def inverse_log_snr(self, log_snr):
        # e^lambda = a / (1 - a)^2 with a = alpha_bar; the root in (0, 1), written without cancellation
        e = log_snr.exp()
        a = 2.0 * e / (2.0 * e + 1.0 + (4.0 * e + 1.0).sqrt())
        return self._time_from_integral(-torch.log(a))

    def _discrete_marginal_table(self):
        return self.ddpm_64.sqrt_alphas_cumprod, 1.0 - self.ddpm_64.alphas_cumprod


class CosineVPSDE(VPSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal 2021 (Improved DDPM), continuous in time.

    ``alpha_bar(t) = cos²(π/2 (t + s)/(1 + s)) / cos²(π/2 s/(1 + s))``, ``beta(t) = -d log alpha_bar / dt
    = π/(1 + s) tan(π/2 (t + s)/(1 + s))``. ``beta`` blows up at ``t = 1``, so ``T`` defaults to 0.9946
    (Lu et al. 2022, DPM-Solver, App. D). The discrete chain uses Improved DDPM's betas
    ``beta_i = min(1 - alpha_bar(t_{i+1}) / alpha_bar(t_i), 0.999)`` on ``t_i = i T / N``.
    """

    def __init__(self, s: float = 0.008, N: int = 1000, T: float = 0.9946):
        SDE.__init__(self, N=N, T=T)
        self.s = check_positive("s", s)
        if not self.T < 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (beta(1) is infinite), got {T}")
        grid = torch.linspace(0.0, self.T, N + 1, dtype=torch.float64)
        abar = (2.0 * self.log_mean_coeff(grid)).exp()
        betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=0.999)
        self._set_discrete_betas(betas.float(), betas)

    def _angle(self, t):
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def beta(self, t):
        return math.pi / (1.0 + self.s) * torch.tan(self._angle(t))

    def log_mean_coeff(self, t):
        log_f0 = math.log(math.cos(0.5 * math.pi * self.s / (1.0 + self.s)))
        return torch.log(torch.cos(self._angle(t))) - log_f0

    def inverse_log_snr(self, log_snr):
        # cos(angle) = sqrt(alpha_bar) cos(angle_0) with alpha_bar = sigmoid(lambda)
        cos0 = math.cos(0.5 * math.pi * self.s / (1.0 + self.s))
        angle = torch.arccos(torch.sigmoid(log_snr).sqrt() * cos0)
        return angle * 2.0 * (1.0 + self.s) / math.pi - self.s

    def noise_label(self, t, continuous=True):
        if continuous:
            return t * (999.0 / self.T)
        return self.timestep_index(t).to(t.dtype)
