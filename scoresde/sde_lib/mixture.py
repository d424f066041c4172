"""Gaussian mixtures and their exact evolution under a linear SDE.

If ``x_0 ~ sum_k w_k N(mu_k, S_k)`` and ``x_t = alpha_t x_0 + sigma_t z``, then
``x_t ~ sum_k w_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I)``: exact scores, marginals and
log-densities at every time, which is what the tests and benchmarks check samplers, losses and
likelihoods against. Also an exact score plugs straight into any sampler (``mixture.score_fn(sde)``).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from scoresde.sde_lib.base import SDE
from scoresde.utils import append_dims


class GaussianMixture:
    """``sum_k weights[k] N(means[k], covs[k])`` in ``D`` dimensions.

    ``covs`` may be ``(K, D, D)`` full covariances, ``(K,)`` isotropic variances, or a float.
    """

    def __init__(self, weights, means, covs):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        K, D = means.shape
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or bool((weights <= 0).any()):
            raise ValueError(f"weights must be {K} positive numbers, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = self._full_covs(covs, K, D)
        self.dim = D

    @staticmethod
    def _full_covs(covs, K: int, D: int) -> torch.Tensor:
        covs = torch.as_tensor(covs, dtype=torch.float64)
        eye = torch.eye(D, dtype=torch.float64)
        if covs.ndim == 0:
            covs = covs.expand(K)
        if covs.ndim == 1:
            if covs.shape != (K,) or bool((covs <= 0).any()):
                raise ValueError(f"isotropic covs must be {K} positive variances, got {covs.tolist()}")
            return covs[:, None, None] * eye
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape (K, D, D) = ({K}, {D}, {D}), got {tuple(covs.shape)}")
        torch.linalg.cholesky(covs)  # raises when a covariance is not positive definite
        return covs

    # ----- the data distribution -----------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, device=None,
               dtype=torch.float32, return_components: bool = False):
        """``n`` draws (and optionally the index of the component each came from)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + (chol[comp] @ z[..., None])[..., 0]
        x = x.to(device=device, dtype=dtype)
        return (x, comp) if return_components else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p_0(x)`` in nats; shape ``(B,)``."""
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self._log_prob(x, ones, torch.zeros_like(ones))

    # ----- the mixture at time t ------------------------------------------------------------------
    def marginal_params(self, sde: SDE, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample component means ``(B, K, D)`` and covariances ``(B, K, D, D)`` of ``p_t``."""
        alpha, sigma = sde.marginal_coeffs(t.to(torch.float64))
        return self._params(alpha.to(t.device), sigma.to(t.device))

    def _params(self, alpha, sigma):
        means = alpha[:, None, None] * self.means.to(alpha.device)
        eye = torch.eye(self.dim, dtype=torch.float64, device=alpha.device)
        covs = alpha[:, None, None, None] ** 2 * self.covs.to(alpha.device) + sigma[:, None, None, None] ** 2 * eye
        return means, covs

    def _component_terms(self, x, alpha, sigma):
        """Per-component log-densities ``(B, K)`` and ``Sigma_k^{-1} (x - m_k)`` ``(B, K, D)``."""
        means, covs = self._params(alpha, sigma)
        chol = torch.linalg.cholesky(covs)
        diff = x.to(torch.float64).reshape(x.shape[0], 1, self.dim) - means
        sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]
        maha = (diff * sol).sum(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logn = -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return logn + torch.log(self.weights.to(x.device)), sol

    def _log_prob(self, x, alpha, sigma):
        return torch.logsumexp(self._component_terms(x, alpha, sigma)[0], dim=1)

    def _check_x(self, x):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")

    @staticmethod
    def _times(t, x: torch.Tensor) -> torch.Tensor:
        """``t`` as float64 of shape ``(B,)``: a scalar (float or 0-d tensor) or one time per point."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def log_prob_t(self, sde: SDE, x: torch.Tensor, t) -> torch.Tensor:
        """Exact ``log p_t(x)`` of the mixture pushed through ``sde`` (nats, float64, ``(B,)``); ``t`` is
        a scalar or one time per point."""
        self._check_x(x)
        alpha, sigma = sde.marginal_coeffs(self._times(t, x))
        return self._log_prob(x, alpha, sigma)

    def score_t(self, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact ``grad_x log p_t(x) = -sum_k r_k(x) Sigma_k^{-1} (x - m_k)``, in ``x``'s dtype."""
        self._check_x(x)
        alpha, sigma = sde.marginal_coeffs(self._times(t, x))
        logw, sol = self._component_terms(x, alpha, sigma)
        resp = torch.softmax(logw, dim=1)
        return -(resp[..., None] * sol).sum(1).to(x.dtype)

    def score_fn(self, sde: SDE):
        """A ``score_fn(x, t)`` for samplers: the exact score of ``p_t``."""
        return lambda x, t: self.score_t(sde, x, t)

    def eps_fn(self, sde: SDE):
        """The exact noise predictor ``eps(x, t) = -sigma_t score(x, t)`` (Ho et al. 2020's target)."""
        def eps(x, t):
            _, sigma = sde.marginal_coeffs(t)
            return -append_dims(sigma.to(x.dtype), x.ndim) * self.score_t(sde, x, t)
        return eps

    # ----- posterior means: the flow-matching velocity ------------------------------------------
    def velocity_t(self, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact ``E[alpha' x_0 + sigma' z | x_t = x]`` (the conditional flow-matching target's regression,
        Lipman et al. 2023, eq. 15), component by component and not through the score:
        ``sum_k r_k(x) [alpha' mu_k + (alpha' alpha S_k + sigma' sigma I) Sigma_k^{-1} (x - alpha mu_k)]``,
        from ``E[x_0 | x, k] = mu_k + alpha S_k Sigma_k^{-1} (x - m_k)`` and ``E[z | x, k] = sigma Sigma_k^{-1} (x - m_k)``."""
        self._check_x(x)
        t64 = t.to(torch.float64)
        alpha, sigma = sde.marginal_coeffs(t64)
        d_alpha, d_sigma = sde.marginal_derivatives(t64)
        logw, sol = self._component_terms(x, alpha, sigma)
        resp = torch.softmax(logw, dim=1)                                                   # (B, K)
        covs = self.covs.to(x.device)
        x0_part = alpha[:, None, None] * torch.einsum("kij,bkj->bki", covs, sol)           # alpha S_k Sigma^-1 (x - m)
        vel = (d_alpha[:, None, None] * (self.means.to(x.device) + x0_part)
               + (d_sigma * sigma)[:, None, None] * sol)
        return (resp[..., None] * vel).sum(1).to(x.dtype)

    def velocity_fn(self, sde: SDE):
        """A ``velocity_fn(x, t)``: the exact probability-flow velocity of ``p_t``."""
        return lambda x, t: self.velocity_t(sde, x, t)

    def prior_logp_fn(self, sde: SDE):
        """Exact ``log p_T``, to replace ``sde.prior_logp`` when isolating ODE error from prior mismatch."""
        def logp(z):
            t = torch.full((z.shape[0],), sde.T, dtype=torch.float64, device=z.device)
            return self.log_prob_t(sde, z, t)
        return logp

    def posterior_responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``p(k | x)`` under ``p_0``: which mode each sample belongs to; shape ``(B, K)``."""
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return torch.softmax(self._component_terms(x, ones, torch.zeros_like(ones))[0], dim=1)
