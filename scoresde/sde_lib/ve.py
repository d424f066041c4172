"""The variance-exploding SDE: SMLD / NCSN in continuous time."""
from __future__ import annotations

import math

import torch

from scoresde.sde_lib.base import SDE
from scoresde.utils import check_positive


class VESDE(SDE):
    """``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw`` with ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``.

    Song et al. 2021, eq. (9). As in NCSN and score_sde, ``sigma_min`` is the smallest noise level:
    ``p_0t(x_t | x_0) = N(x_0, sigma(t)^2 I)``, i.e. the process starts from data already carrying
    ``N(0, sigma_min^2)`` noise (the pure SDE from clean data has variance ``sigma(t)^2 - sigma_min^2``,
    Song et al. 2021, eq. 29). The discrete chain is SMLD's with geometric ``discrete_sigmas``.
    """

    default_parameterization = "score"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N=N, T=1.0)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)
        # float32 exactly as NCSN / score_sde build them; a float64 twin for the samplers' arithmetic
        log_sigmas = torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), N, dtype=torch.float64)
        self.discrete_sigmas = torch.exp(log_sigmas.float())
        self.discrete_sigmas_64 = torch.exp(log_sigmas)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion_coeff(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self.log_ratio)

    def marginal_coeffs(self, t):
        return torch.ones_like(t), self.sigma(t)

    def inverse_log_snr(self, log_snr):
        # lambda = -2 log sigma(t)
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self.log_ratio

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _discrete_marginal_table(self):
        return torch.ones_like(self.discrete_sigmas_64), self.discrete_sigmas_64

    def noise_label(self, t, continuous=True):
        """``sigma(t)`` for continuous models; NCSN's index into the descending sigmas for discrete ones."""
        if continuous:
            return self.sigma(t)
        return (self.N - 1 - self.timestep_index(t)).to(t.dtype)
