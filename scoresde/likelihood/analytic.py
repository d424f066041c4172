"""The optimal reverse variance of each chain level (Bao, Li, Zhu & Zhang 2022, "Analytic-DPM", Thm. 1).

With the reverse mean ``E[mu_tilde(x_i, x_0) | x_i]`` (what ``sde.ancestral_step`` forms from the exact
score), the isotropic variance minimising the level's KL term of the bound is the posterior's average
variance::

    sigma*_i^2 = beta_tilde_i + c_i^2 E tr Cov(x_0 | x_i) / d
               = beta_tilde_i + c_i^2 (sigma_i^2 / alpha_i^2) (1 - sigma_i^2 E||grad log q_i(x_i)||^2 / d)

with ``c_i = alpha_{i-1} sigma^2_{i|i-1} / sigma_i^2`` the weight of ``x_0`` in ``mu_tilde`` (Tweedie:
``Cov(x_0 | x_i) = (sigma_i^2 / alpha_i^2)(I + sigma_i^2 grad^2 log q_i)`` and ``E tr grad^2 log q =
-E||grad log q||^2``). For VP ``c_i sigma_i / alpha_i = sqrt(bbar_i / alpha_i) - sqrt(bbar_{i-1} - beta_tilde_i)``
in the paper's notation. At level 0 ``beta_tilde = 0`` and ``c = 1``: the decoder's optimal variance.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

from scoresde.likelihood.monte_carlo import mean_and_stderr
from scoresde.score import gaussian_like
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, batch_sum, check_int

F64 = torch.float64


def _levels(sde: SDE) -> Tuple[torch.Tensor, ...]:
    """Per level (float64, ``(N,)``): ``alpha_i``, ``sigma_i``, ``beta_tilde_i`` (0 at level 0) and ``c_i``."""
    like = torch.zeros(1, dtype=F64)
    index = torch.arange(sde.N)
    (alpha, sigma), (alpha_p, sigma_p) = sde.discrete_marginal(index, like), sde.discrete_marginal(index - 1, like)
    var = (sigma ** 2 - (alpha / alpha_p) ** 2 * sigma_p ** 2).clamp(min=0.0)
    return alpha, sigma, var * sigma_p ** 2 / sigma ** 2, alpha_p * var / sigma ** 2


def analytic_variances(sde: SDE, mean_sq_score: torch.Tensor) -> torch.Tensor:
    """``sigma*_i^2`` (float64, ``(N,)``) of every level from ``mean_sq_score[i] = E||grad log q_i||^2 / d``,
    the score's mean square per dimension at level ``i`` (Bao et al. 2022, Thm. 1; module docstring)."""
    mean_sq_score = torch.as_tensor(mean_sq_score, dtype=F64)
    if mean_sq_score.shape != (sde.N,):
        raise ValueError(f"mean_sq_score must have shape (N,) = ({sde.N},), got {tuple(mean_sq_score.shape)}")
    alpha, sigma, beta_tilde, c = _levels(sde)
    posterior_cov = (sigma / alpha) ** 2 * (1.0 - sigma ** 2 * mean_sq_score)   # E tr Cov(x_0 | x_i) / d
    return beta_tilde + c ** 2 * posterior_cov.clamp(min=0.0)


def score_mean_square(sde: SDE, score_fn: Callable, data: torch.Tensor, *, score_times: Callable,
                      generator: torch.Generator | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo ``E||grad log q_i(x_i)||^2 / d`` per level and its standard error (each ``(N,)``), from
    one draw ``x_i = alpha_i x + sigma_i z`` per data point ``x`` of ``data``; the score of level ``i``
    is evaluated at ``score_times(sde, index)`` (``likelihood.chain.SCORE_TIMES``)."""
    check_int("data rows", data.shape[0], minimum=2)
    x64 = data.detach().to(F64)
    d = x64[0].numel()
    means, errors = [], []
    for i in range(sde.N):
        index = torch.full((x64.shape[0],), i, dtype=torch.long)
        alpha, sigma = sde.discrete_marginal(index, x64)
        xi = append_dims(alpha, x64.ndim) * x64 + append_dims(sigma, x64.ndim) * gaussian_like(x64, generator)
        s = score_fn(xi.to(data.dtype), score_times(sde, index).to(data.dtype)).to(F64)
        mean, err = mean_and_stderr((batch_sum(s ** 2) / d)[None], dim=1)
        means.append(mean[0])
        errors.append(err[0])
    return torch.stack(means), torch.stack(errors)


def level_variance_fn(variances: torch.Tensor) -> Callable:
    """A ``variance_fn(x, t, chain)`` (as ``models.get_variance_fn``) returning the fixed per-level
    ``variances[i]`` (``(B,)``) of ``chain``'s level at ``t``: e.g. ``analytic_variances``."""
    variances = torch.as_tensor(variances, dtype=F64)

    def variance_fn(x: torch.Tensor, t: torch.Tensor, chain: SDE) -> torch.Tensor:
        if chain.N != variances.numel():
            raise ValueError(f"variances has {variances.numel()} levels but the chain has N={chain.N}")
        return variances.to(x.device)[chain.timestep_index(t)]

    return variance_fn


def expected_level_kl(sde: SDE, optimal: torch.Tensor, variances: torch.Tensor, dim: int) -> torch.Tensor:
    """``E KL`` of levels ``i >= 1`` with the exact mean and isotropic ``variances`` (nats, ``(N,)``, 0 at
    level 0): ``d/2 (sigma*^2 / sigma^2 - 1 - log(beta_tilde / sigma^2))``, smallest at ``sigma^2 = sigma*^2``."""
    _, _, beta_tilde, _ = _levels(sde)
    v = torch.as_tensor(variances, dtype=F64)
    kl = 0.5 * dim * (optimal / v - 1.0 - torch.log(beta_tilde.clamp(min=1e-300) / v))
    return torch.where(torch.arange(sde.N) > 0, kl, torch.zeros_like(kl))


