"""Respaced chains: the discrete chain of an SDE on a subsequence of ``K`` of its ``N`` levels
(Nichol & Dhariwal 2021, "Improved DDPM", Sec. 4).

Keeping levels ``i_0 < i_1 < ... < i_{K-1}`` of a chain with ``alpha_bar`` gives the chain with
``alpha_bar'_k = alpha_bar_{i_k}`` and ``beta'_k = 1 - alpha_bar_{i_k} / alpha_bar_{i_{k-1}}`` (their
``respace.py``); the same holds for any chain here through its marginal ``(alpha_i, sigma_i)`` table (VE:
``sigma'_k = sigma_{i_k}``). Level ``k`` keeps the time of original level ``i_k``, so the continuous process,
its marginals and the network labels are the original's: a network trained on ``N`` levels sees its own
timestep labels ``i_k``, and a ``score_fn`` of the original SDE serves the respaced one unchanged.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from scoresde.sde_lib.base import INDEX_TOL, SDE
from scoresde.utils import check_int


def space_levels(N: int, K: int) -> torch.Tensor:
    """``K`` evenly spaced levels of ``0..N-1``, both ends kept: ``round(k (N - 1) / (K - 1))``
    (Nichol & Dhariwal's ``space_timesteps(N, [K])``); ``K = N`` keeps them all."""
    N = check_int("N", N, minimum=1)
    K = check_int("steps", K, minimum=1)
    if K > N:
        raise ValueError(f"steps must be between 1 and the chain's N={N} levels, got {K}")
    if K == 1:
        return torch.tensor([N - 1])
    return torch.tensor([round(k * (N - 1) / (K - 1)) for k in range(K)], dtype=torch.long)


class RespacedSDE(SDE):
    """``base`` with its discrete chain restricted to the levels ``levels`` (increasing indices).

    Everything continuous (drift, diffusion, marginals, log-SNR, prior, network labels) is ``base``'s;
    the chain (``N = K``, ``discrete_marginal``, ``ancestral_step``, ``discretize``, ``chain_variances``)
    runs on the kept levels, level ``k`` at ``base.level_time(levels[k])``.
    """

    def __init__(self, base: SDE, levels: Sequence[int] | torch.Tensor):
        levels = torch.as_tensor(levels, dtype=torch.long).reshape(-1).cpu()
        if levels.numel() < 1 or bool((levels < 0).any()) or bool((levels >= base.N).any()) \
                or bool((levels[1:] <= levels[:-1]).any()):
            raise ValueError(f"levels must be increasing indices in [0, {base.N}), got {levels.tolist()}")
        super().__init__(N=levels.numel(), T=base.T)
        self.base = base
        self.levels = levels
        self.default_parameterization = base.default_parameterization
        self._times = base.level_time(levels)

    # ----- the continuous process is the base's ---------------------------------------------------
    def drift_coeff(self, t):
        return self.base.drift_coeff(t)

    def diffusion_coeff(self, t):
        return self.base.diffusion_coeff(t)

    def marginal_coeffs(self, t):
        return self.base.marginal_coeffs(t)

    def marginal_derivatives(self, t):
        return self.base.marginal_derivatives(t)

    def inverse_log_snr(self, log_snr):
        return self.base.inverse_log_snr(log_snr)

    @property
    def prior_std(self) -> float:
        return self.base.prior_std

    def noise_label(self, t, continuous=True):
        """The base's label: level ``k`` is fed the original timestep ``levels[k]`` (at its original time)."""
        return self.base.noise_label(t, continuous)

    # ----- the chain on the kept levels -----------------------------------------------------------
    def _discrete_marginal_table(self) -> Tuple[torch.Tensor, torch.Tensor]:
        alphas, sigmas = self.base._discrete_marginal_table()
        return alphas[self.levels], sigmas[self.levels]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``alpha_bar'_k = alpha_bar_{levels[k]}`` (float64; VP chains)."""
        return self.discrete_alphas_marginal ** 2

    @property
    def discrete_betas(self) -> torch.Tensor:
        """``beta'_k = 1 - alpha_bar_{levels[k]} / alpha_bar_{levels[k-1]}`` (float64; ``alpha_bar`` before
        the first kept level is 1), Nichol & Dhariwal's respaced betas."""
        abar = self.alphas_cumprod
        return 1.0 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])

    def level_time(self, index: torch.Tensor) -> torch.Tensor:
        return self._times.to(index.device)[index.clamp(0, self.N - 1)]

    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """The last kept level at or before ``t`` (with the base's round-off tolerance)."""
        step = self.base.T / max(self.base.N - 1, 1)
        times = self._times.to(t.device)
        idx = torch.searchsorted(times, t.double() + INDEX_TOL * step, right=True) - 1
        return idx.clamp(0, self.N - 1)


def respace(sde: SDE, steps: int | None = None, levels: Sequence[int] | None = None) -> RespacedSDE:
    """``sde``'s chain on ``steps`` evenly spaced levels (``space_levels``), or on explicit ``levels``."""
    if (steps is None) == (levels is None):
        raise ValueError("give exactly one of steps (a number of levels) and levels (their indices)")
    return RespacedSDE(sde, space_levels(sde.N, steps) if levels is None else levels)
