"""The continuous ELBO of a score model: a lower bound on ``log p_eps(x)``, the density at time ``eps``
of the reverse SDE started from the prior at ``T`` (Song, Durkan, Murray & Ermon 2021, "Maximum
likelihood training of score-based diffusion models", Thm. 2, from ``eps`` instead of 0; cf. Kingma et
al. 2021, VDM, whose continuous-time diffusion loss is this score term written in log-SNR)::

    log p_eps(x) >= E[log pi(x_T)] + D log a_T - ½ ∫_eps^T g(t)^2 E[ ||s(x_t, t)||^2 + 2 s(x_t, t)·z / c_t ] dt

for the forward kernel from ``x`` at ``eps``, ``x_t = a_t x + c_t z`` with ``a_t = alpha_t / alpha_eps``
and ``c_t^2 = sigma_t^2 - a_t^2 sigma_eps^2``. ``D log a_T = ∫ div f dt`` is the drift's entropy term.
The estimate draws ``t`` from ``p(t) ∝ g(t)^2 / sigma_t^2`` (Song et al. 2021, Sec. 5) with an antithetic
pair ``±z`` and subtracts a Gaussian control variate; ``docs/likelihoods.md`` derives each step.
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from scoresde.likelihood.monte_carlo import chunks, mean_and_stderr, repeat_rows
from scoresde.score import CountingScore, ScoreFn, check_eps, check_input, gaussian_like, progress_iter
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, batch_sum, check_int, check_positive

F64 = torch.float64
PriorLogp = Callable[[torch.Tensor], torch.Tensor]


def elbo(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, n_samples: int = 64, eps: float = 1e-5,
         prior_logp: PriorLogp | None = None, generator: torch.Generator | None = None, *,
         importance_sampling: bool = True, reference_var: float | None = 1.0, draws_per_call: int = 1,
         progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """A lower bound on ``log p_eps(x)`` (nats, ``(B,)``), its standard error and the NFE.

    Song, Durkan, Murray & Ermon 2021, Thm. 2 from time ``eps`` (module docstring): the
    likelihood-weighted denoising score-matching bound plus the prior and entropy terms, averaged over
    ``n_samples`` draws of ``(t, ±z)`` per sample; the standard error is their ``std / sqrt(n_samples)``.
    ``importance_sampling`` draws ``t ~ g^2 / sigma_t^2`` (else uniform on ``[eps, T]``).
    ``prior_logp`` replaces the Gaussian prior (e.g. a known exact ``log p_T``).

    ``reference_var`` ``v``: a control variate, the same draw under the exact score of ``N(0, v I)``
    data, whose integral is known in closed form (it is that Gaussian's ``log p_eps - E log p_T - D log
    a_T``); subtracting it and adding its integral back leaves the estimate unbiased for any ``v`` and
    removes the part of the integrand any roughly Gaussian data share (``docs/likelihoods.md``).
    ``None`` switches it off.

    ``draws_per_call`` evaluates that many draws in one score call (``2 B draws_per_call`` rows).
    ``nfe`` is ``2 n_samples``, the score evaluations per sample. For image data pass uniformly
    dequantised ``x`` and convert with ``bits_per_dim_bound(..., num_levels=K)``.
    """
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
    eps = check_eps(sde, eps)
    n_samples = check_int("n_samples", n_samples, minimum=2)
    chunk = check_int("draws_per_call", draws_per_call, minimum=1)
    check_input(x)
    if prior_logp is not None and not callable(prior_logp):
        raise ValueError(f"prior_logp must be callable or None, got {type(prior_logp).__name__}")
    if reference_var is not None:
        reference_var = check_positive("reference_var", reference_var)
    kernel = _EpsKernel(sde, eps, x.detach().to(F64))
    const = kernel.entropy_term()
    if prior_logp is None:
        const = const + kernel.expected_gaussian_prior()
    if reference_var is not None:
        const = const + kernel.reference_integral(reference_var)
    draws = []
    for m in progress_iter(chunks(n_samples, chunk), progress, desc="ELBO"):
        counting = CountingScore(score_fn, "elbo")  # one per chunk: its batch size is fixed
        with torch.no_grad(), counting.guard():
            draws.append(_elbo_draws(kernel, counting, m, prior_logp, importance_sampling, reference_var,
                                     generator, x.dtype))
    bound, stderr = mean_and_stderr(torch.cat(draws, dim=1) + const[:, None], dim=1)
    return bound, stderr, 2 * n_samples


class _EpsKernel:
    """The forward kernel from ``x`` at time ``eps``: ``x_t = a_t x + c_t z``, ``a_t = alpha_t / alpha_eps``,
    ``c_t^2 = sigma_t^2 - a_t^2 sigma_eps^2``, and the bound's closed-form parts."""

    def __init__(self, sde: SDE, eps: float, x64: torch.Tensor):
        self.sde, self.eps, self.x, self.dim = sde, eps, x64, x64[0].numel()
        self.alpha_eps, self.sigma_eps = sde.marginal_coeffs(torch.full((1,), eps, dtype=F64, device=x64.device))
        self.a_T, self.c_T, self.sigma_T = self.coeffs(self.times(sde.T, x64.shape[0]))

    def times(self, value: float, n: int) -> torch.Tensor:
        return torch.full((n,), value, dtype=F64, device=self.x.device)

    def coeffs(self, t: torch.Tensor):
        """``(a_t, c_t, sigma_t)``, each ``(n,)``."""
        alpha_t, sigma_t = self.sde.marginal_coeffs(t.to(F64))
        a = alpha_t / self.alpha_eps
        c = (sigma_t ** 2 - a ** 2 * self.sigma_eps ** 2).clamp(min=0.0).sqrt()
        return a, c, sigma_t

    def entropy_term(self) -> torch.Tensor:
        """``∫_eps^T div f dt = D log a_T`` (the drift's share)."""
        return self.dim * torch.log(self.a_T)

    def _expected_gaussian_logp(self, var: torch.Tensor) -> torch.Tensor:
        """``E[log N(x_T; 0, var I)]`` with ``x_T = a_T x + c_T z``."""
        return (-0.5 * self.dim * torch.log(2 * math.pi * var)
                - (self.a_T ** 2 * batch_sum(self.x ** 2) + self.dim * self.c_T ** 2) / (2 * var))

    def expected_gaussian_prior(self) -> torch.Tensor:
        """``E[log N(x_T; 0, prior_std^2 I)]``, per sample."""
        return self._expected_gaussian_logp(torch.full_like(self.a_T, self.sde.prior_std ** 2))

    def reference_integral(self, v: float) -> torch.Tensor:
        """The score term of the bound for the exact score of ``N(0, v I)`` data, where the bound (with
        that Gaussian's own ``p_T`` as prior) is tight in expectation: ``log p_eps - E log p_T - D log a_T``."""
        var_eps = self.alpha_eps ** 2 * v + self.sigma_eps ** 2
        var_T = (self.a_T * self.alpha_eps) ** 2 * v + self.sigma_T ** 2
        log_p_eps = -0.5 * self.dim * torch.log(2 * math.pi * var_eps) - batch_sum(self.x ** 2) / (2 * var_eps)
        return log_p_eps - self._expected_gaussian_logp(var_T) - self.entropy_term()


def _elbo_times(sde: SDE, n: int, eps: float, importance_sampling: bool, generator, device):
    """Times for ``n`` draws and the weight ``w(t) = (g^2 / sigma_t^2) / p(t)``."""
    if importance_sampling:
        t, total = sde.sample_importance_time(n, eps, generator=generator, device=device, dtype=F64)
        return t, torch.full_like(t, total)
    u = torch.rand(n, generator=generator, dtype=F64, device=generator.device if generator is not None else device)
    t = (eps + (sde.T - eps) * u).to(device)
    return t, (sde.T - eps) * sde.importance_density(t)


def _score_term(eps_plus: torch.Tensor, eps_minus: torch.Tensor, z: torch.Tensor, sigma_t: torch.Tensor,
                c: torch.Tensor) -> torch.Tensor:
    """``||eps_hat||^2 - 2 (sigma_t / c_t) eps_hat·z`` (``= sigma_t^2 (||s||^2 + 2 s·z / c_t)``) averaged
    over the antithetic pair ``eps_hat(±z)``; the cross term's difference is 0 where ``t = eps`` exactly."""
    sq = 0.5 * (batch_sum(eps_plus ** 2) + batch_sum(eps_minus ** 2))
    cross = torch.where(c > 0, 0.5 * batch_sum((eps_plus - eps_minus) * z) * sigma_t / c.clamp(min=1e-300),
                        torch.zeros_like(c))
    return sq - 2.0 * cross


def _elbo_draws(kernel: _EpsKernel, score: CountingScore, m: int, prior_logp: PriorLogp | None,
                importance_sampling: bool, reference_var: float | None, generator,
                score_dtype: torch.dtype) -> torch.Tensor:
    """``m`` draws for each sample, ``(B, m)``: ``-½ w(t) (score term - reference's score term)``, plus
    ``log prior(x_T)`` (averaged over ``±z``) when ``prior_logp`` is given."""
    sde, xr = kernel.sde, repeat_rows(kernel.x, m)
    t, weight = _elbo_times(sde, xr.shape[0], kernel.eps, importance_sampling, generator, xr.device)
    a, c, sigma_t = kernel.coeffs(t)
    z = gaussian_like(xr, generator)
    mean, noise = append_dims(a, xr.ndim) * xr, append_dims(c, xr.ndim) * z
    points = torch.cat([mean + noise, mean - noise])
    scores = score(points.to(score_dtype), torch.cat([t, t]).to(score_dtype)).to(F64)
    sigma2 = append_dims(torch.cat([sigma_t, sigma_t]), xr.ndim)
    term = _score_term(*(-sigma2 * scores).chunk(2), z, sigma_t, c)           # eps_hat = -sigma_t s
    if reference_var is not None:
        var_t = append_dims(torch.cat([a, a]) * kernel.alpha_eps, xr.ndim) ** 2 * reference_var + sigma2 ** 2
        term = term - _score_term(*(sigma2 * points / var_t).chunk(2), z, sigma_t, c)
    value = -0.5 * weight * term
    if prior_logp is not None:
        z_T = append_dims(kernel.c_T, xr.ndim).repeat_interleave(m, 0) * gaussian_like(xr, generator)
        x_T = append_dims(kernel.a_T, xr.ndim).repeat_interleave(m, 0) * xr
        value = value + 0.5 * (prior_logp(x_T + z_T).to(F64) + prior_logp(x_T - z_T).to(F64))
    return value.reshape(-1, m)
