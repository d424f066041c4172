"""Likelihood bounds of score models: the continuous ELBO, DDPM's variational bound and importance-
weighted bounds. Each is an estimate of a lower bound on a log-likelihood, in nats per sample, with
its Monte-Carlo standard error; ``bits_per_dim_bound`` turns one into bits/dim.

**Continuous ELBO** (``elbo``), for every SDE: a lower bound on ``log p_eps(x)``, the density at time
``eps`` of the reverse SDE started from the prior at ``T`` (the quantity ``log_likelihood`` computes
exactly through the probability-flow ODE). The forward process started at ``x`` at time ``eps`` has the
Gaussian kernel ``x_t = a_t x + c_t z`` with ``a_t = alpha_t / alpha_eps`` and
``c_t^2 = sigma_t^2 - a_t^2 sigma_eps^2``. Song, Durkan, Murray & Ermon 2021 ("Maximum likelihood
training of score-based diffusion models"), Thm. 2, from ``eps`` instead of 0 (cf. Kingma et al. 2021,
VDM, whose continuous-time diffusion loss is this score term written in log-SNR)::

    log p_eps(x) >= E[log pi(x_T)] + D log a_T - ½ ∫_eps^T g(t)^2 E[ ||s(x_t, t)||^2 + 2 s(x_t, t)·z / c_t ] dt

``D log a_T = ∫ div f dt`` is the drift's entropy term. The integrand is the likelihood-weighted
denoising score-matching loss ``g^2 ||s + z / c_t||^2`` minus the kernel's own ``g^2 ||z||^2 / c_t^2``;
Thm. 2 subtracts the latter's mean ``D g^2 / c_t^2`` (the entropy of the kernel), and as both diverge
at ``eps`` subtracting it per draw instead leaves the same finite expectation. Each draw takes ``t`` from
``p(t) ∝ g(t)^2 / sigma_t^2`` (``sde.sample_importance_time``; Song et al. 2021, Sec. 5), where the
weighted integrand is ``-½ Z (||eps_hat||^2 - 2 (sigma_t / c_t) eps_hat·z)`` with
``eps_hat = -sigma_t s``, and an antithetic pair ``±z`` (two score evaluations), which makes the
``eps_hat·z / c_t`` term ``(eps_hat(+z) - eps_hat(-z))·z / (2 c_t)``: bounded as ``t -> eps`` (a single
``z`` has infinite variance there). With the exact score and the exact ``log p_T`` as prior the bound
is tight in expectation (the reverse SDE then reproduces the forward path measure). A control
variate, the same draw under the exact score of ``N(0, v I)`` data (``reference_var``), whose score term
has a closed-form expectation, is subtracted and its expectation added back. The default prior
term is the closed form of ``E[log N(x_T; 0, prior_std^2 I)]``; a ``prior_logp`` is averaged over an
antithetic pair of draws of ``x_T`` per draw.

**DDPM's variational bound** (``vlb_terms``, ``ddpm_vlb``) of the discrete chain of ``N`` levels
(Ho et al. 2020, eq. 5; levels ``i = 0..N-1`` are Ho's ``t = 1..N``, ``x`` the data)::

    -log p(x) <= L_T + sum_{i=1}^{N-1} L_{i-1} + L_0
    L_T     = KL(q(x_{N-1} | x) || N(0, prior_std^2 I))                      (closed form)
    L_{i-1} = E_q KL(q(x_{i-1} | x_i, x) || p(x_{i-1} | x_i))                   (Gaussian KL at one draw of x_i)
    L_0     = E_q [-log p(x | x_0)]                                             (the decoder)

The model's reverse step is ``sde.ancestral_step`` of level ``i``, with the score taken at the grid
time ``t_i = i T / (N - 1)`` (where discrete models are trained, ``training.losses.ddpm_loss``;
``score_times="grid"``) or, for continuous-time models, at the time with level ``i``'s log-SNR
(``score_times="log_snr"``: there the continuous marginal is level ``i``'s), with variance ``"posterior"``
(``beta_tilde_i``) or ``"forward"`` (``beta_i``), Ho et al.'s two choices. The decoder
``p(x | x_0) = N(x0_hat(x_0), decoder_std^2)`` has ``x0_hat`` the model's denoised level 0 and, by
default, ``decoder_std^2 = beta_tilde_1`` (the variance Ho et al.'s code uses at ``t = 0`` for both
choices). For ``K``-level data (``num_levels``) it is discretised over the dequantisation cells of
``training.datasets`` (Ho et al. 2020, eq. 13): level ``v`` owns ``y in [v/K, (v+1)/K)``, i.e.
``x in [2v/K - 1, 2(v+1)/K - 1)`` when ``centered``, the outer cells extended to ±infinity, so the
bound is on the probability ``log P(v)`` of the discrete data and needs no dequantisation; pass ``x`` at
the cell centres (``dequantize(v, K, uniform=False)`` then ``data_scaler``; any point of the cell gives a
valid bound). Without ``num_levels`` the decoder is the Gaussian density (continuous data).

Which decoder: the discretised one suits models of the discrete data themselves (Ho et al. trained on
the bin values). A model trained on uniformly dequantised data (this repository's image configs) has a
density flat within each cell; started from one point, the chain bound on ``P(v)`` then pays at the
high-SNR levels for what the model cannot know (measured: 4.2 bits/dim on 100 test digits for
``digits/ddpmpp_vp``). Evaluate such a model like the ELBO: the Gaussian decoder (``num_levels=None``)
at uniformly dequantised ``x``, converted by ``bits_per_dim_bound(..., num_levels=K)`` (same model, 30
test digits: 2.17 bits/dim with ``"forward"``, 2.69 with ``"posterior"``, ELBO 2.14, ODE ~1.95). The
formulas use only the SDE's discrete chain (``discrete_marginal``, ``ancestral_step``), so the bound
applies to any SDE's chain (VP: DDPM; VE: SMLD) and to continuous-time models evaluated on the grid.

**Importance-weighted bound** (``iw_bound``): ``K`` forward paths ``x_{0:N-1} ~ q(. | x)`` as
proposals for the model's reverse chain (Burda et al. 2016, IWAE; Neal 2001, AIS; Sohl-Dickstein et
al. 2015)::

    IW_K = log (1/K) sum_k p(x, x^k_{0:N-1}) / q(x^k_{0:N-1} | x),     E[IW_1] = VLB <= E[IW_K] <= E[IW_{K+1}] <= log p(x)

Conventions: bounds and standard errors are float64 tensors of shape ``(B,)``; ``nfe`` counts score
evaluations per sample (each batched call counts once, as for the samplers); chain arithmetic runs in
float64 while the score sees ``x``'s dtype; every function takes ``generator=`` and checks the score
(``samplers.common.CountingScore``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from scoresde.samplers.common import CountingScore, ScoreFn, check_eps, progress_iter
from scoresde.samplers.likelihood import bits_per_dim
from scoresde.samplers.ode import check_input
from scoresde.samplers.predictors import gaussian_like
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, batch_sum, check_choice, check_int, check_positive

F64 = torch.float64
VARIANCES = ("posterior", "forward")
PriorLogp = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- helpers
def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each sample ``k`` times in a row: ``(B, ...) -> (B k, ...)``, row ``b k + j`` is copy ``j`` of ``b``."""
    return x.repeat_interleave(k, dim=0)


def _chunks(n: int, size: int) -> list:
    """``n`` split into pieces of at most ``size``: ``_chunks(10, 4) == [4, 4, 2]``."""
    return [min(size, n - start) for start in range(0, n, size)]


def _mean_and_stderr(draws: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean over ``dim`` and its standard error ``std / sqrt(n)`` (NaN for a single draw)."""
    n = draws.shape[dim]
    std = draws.std(dim=dim) if n > 1 else torch.full_like(draws.select(dim, 0), math.nan)
    return draws.mean(dim=dim), std / math.sqrt(n)


def gaussian_kl(mean1: torch.Tensor, std1: torch.Tensor, mean2: torch.Tensor, std2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean1, std1^2 I) || N(mean2, std2^2 I))`` per sample (nats, ``(B,)``); stds ``(B,)``."""
    dim = mean1[0].numel()
    ratio = (std1 / std2) ** 2
    maha = batch_sum((mean1 - mean2) ** 2) / std2 ** 2
    return 0.5 * (dim * (ratio - 1.0 - torch.log(ratio)) + maha)


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(y; mean, std^2 I)`` per sample (nats, ``(B,)``); ``std`` has shape ``(B,)``."""
    dim = y[0].numel()
    return -0.5 * batch_sum((y - mean) ** 2) / std ** 2 - dim * (torch.log(std) + 0.5 * math.log(2 * math.pi))


def _log_normal_interval(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi`` (either may be infinite), accurate in both tails:
    above 0 it uses ``Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)``."""
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    # log(e^log_b - e^log_a) = log_b + log(1 - e^(log_a - log_b)), written without cancellation
    diff = (log_a - log_b).clamp(max=0.0)
    log1mexp = torch.where(diff > -math.log(2.0), torch.log(-torch.expm1(diff)), torch.log1p(-torch.exp(diff)))
    return log_b + log1mexp


def _cell_edges(x: torch.Tensor, num_levels: int, centered: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The dequantisation cell ``[lo, hi)`` in model space of the level ``x`` falls in, outer cells
    extended to ±infinity (``training.datasets``: ``y = (v + u) / K``, ``x = 2y - 1`` if ``centered``)."""
    y = (x + 1.0) / 2.0 if centered else x
    v = torch.floor(y * num_levels).clamp(0, num_levels - 1)
    lo, hi = v / num_levels, (v + 1.0) / num_levels
    if centered:
        lo, hi = 2.0 * lo - 1.0, 2.0 * hi - 1.0
    lo = torch.where(v == 0, torch.full_like(lo, -math.inf), lo)
    hi = torch.where(v == num_levels - 1, torch.full_like(hi, math.inf), hi)
    return lo, hi


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                                        num_levels: int, centered: bool = True) -> torch.Tensor:
    """Per-element ``log P(v)`` of the level ``v`` whose dequantisation cell holds ``x``, under
    ``N(mean, std^2)`` integrated over that cell (Ho et al. 2020, eq. 13; outer cells open-ended).

    ``x`` and ``mean`` are in model space (``[-1, 1]`` if ``centered``, else ``[0, 1]``); ``std`` is a
    number or broadcasts against ``x``. Returns a tensor shaped like ``x``: summed over the ``K`` levels
    ``exp`` of it is 1 for every element.
    """
    check_int("num_levels", num_levels, minimum=2)
    lo, hi = _cell_edges(x, num_levels, centered)
    return _log_normal_interval((lo - mean) / std, (hi - mean) / std)


# --------------------------------------------------------------------------------- continuous ELBO
def elbo(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, n_samples: int = 64, eps: float = 1e-5,
         prior_logp: PriorLogp | None = None, generator: torch.Generator | None = None, *,
         importance_sampling: bool = True, reference_var: float | None = 1.0, draws_per_call: int = 1,
         progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """A lower bound on ``log p_eps(x)`` (nats, ``(B,)``), its standard error and the NFE.

    Song, Durkan, Murray & Ermon 2021, Thm. 2 from time ``eps`` (see the module docstring): the
    likelihood-weighted denoising score-matching bound plus the prior and entropy terms, averaged over
    ``n_samples`` draws of ``(t, ±z)`` per sample; the standard error is their ``std / sqrt(n_samples)``.
    ``importance_sampling`` draws ``t ~ g^2 / sigma_t^2`` (else uniform on ``[eps, T]``).
    ``prior_logp`` replaces the Gaussian prior (e.g. a known exact ``log p_T``).

    ``reference_var`` ``v``: a control variate, the same draw under the exact score of ``N(0, v I)``
    data, whose integral is known in closed form (it is that Gaussian's ``log p_eps - E log p_T - D log
    a_T``); subtracting it and adding its integral back leaves the estimate unbiased for any ``v`` and
    removes the part of the integrand any roughly Gaussian data share (on a 2-D mixture the per-draw
    standard deviation drops ~3x). ``None`` switches it off.

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
    for m in progress_iter(_chunks(n_samples, chunk), progress, desc="ELBO"):
        counting = CountingScore(score_fn, "elbo")  # one per chunk: its batch size is fixed
        with torch.no_grad(), counting.guard():
            draws.append(_elbo_draws(kernel, counting, m, prior_logp, importance_sampling, reference_var,
                                     generator, x.dtype))
    bound, stderr = _mean_and_stderr(torch.cat(draws, dim=1) + const[:, None], dim=1)
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
    sde, xr = kernel.sde, _repeat(kernel.x, m)
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


# ----------------------------------------------------------------------------- the discrete chain
@dataclass(frozen=True)
class Decoder:
    """``p(x | x_0) = N(mean, std^2)`` per element: discretised over ``num_levels`` cells, or a density."""

    std: float
    num_levels: int | None = None
    centered: bool = True

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``log p(x | x_0)`` per sample, ``(B,)``: ``log P(v)`` for discrete data, else a log-density."""
        if self.num_levels is None:
            return gaussian_log_prob(x, mean, torch.full((x.shape[0],), self.std, dtype=x.dtype, device=x.device))
        return batch_sum(discretized_gaussian_log_likelihood(x, mean, self.std, self.num_levels, self.centered))


def _check_chain(sde: SDE) -> None:
    if sde.N < 2:
        raise ValueError(f"the discrete chain needs sde.N >= 2 levels, got N={sde.N}")


def grid_time(sde: SDE, index: torch.Tensor) -> torch.Tensor:
    """``t_i = i T / (N - 1)``: the time of level ``i`` (float64), where discrete models are trained
    (``training.losses.ddpm_loss``) and where ``sde.ancestral_step`` reads the level from."""
    return index.to(F64) * (sde.T / (sde.N - 1))


def log_snr_time(sde: SDE, index: torch.Tensor) -> torch.Tensor:
    """The continuous time whose log-SNR is that of chain level ``i`` (float64, clipped to ``[0, T]``):
    where a continuous-time model's score is the score of level ``i``'s marginal."""
    alpha, sigma = sde.discrete_marginal(index, torch.zeros(1, dtype=F64, device=index.device))
    return sde.inverse_log_snr(2.0 * (torch.log(alpha) - torch.log(sigma))).clamp(0.0, sde.T)


SCORE_TIMES = {"grid": grid_time, "log_snr": log_snr_time}


def default_decoder_std(sde: SDE) -> float:
    """``sqrt(beta_tilde_1)``, the posterior std of level 1 (Ho et al.'s decoder variance at t = 0)."""
    _check_chain(sde)
    like = torch.zeros(1, 1, dtype=F64)
    (alpha_0, sigma_0), (alpha_1, sigma_1) = (sde.discrete_marginal(torch.tensor([i]), like) for i in (0, 1))
    var_1 = sigma_1 ** 2 - (alpha_1 / alpha_0) ** 2 * sigma_0 ** 2
    return float((var_1 * sigma_0 ** 2 / sigma_1 ** 2).sqrt())


@dataclass(frozen=True)
class ChainModel:
    """The model's discrete chain: reverse ``variance``, the ``decoder`` and where the score is evaluated."""

    variance: str
    decoder: Decoder
    score_times: str

    @classmethod
    def build(cls, sde: SDE, x: torch.Tensor, variance: str = "posterior", num_levels: int | None = None,
              centered: bool = True, decoder_std: float | None = None, score_times: str = "grid") -> "ChainModel":
        """Checks every argument (``ValueError`` naming it) and builds the chain of ``vlb_terms``."""
        _check_chain(sde)
        check_input(x)
        check_choice("variance", variance, VARIANCES)
        check_choice("score_times", score_times, list(SCORE_TIMES))
        if num_levels is not None:
            check_int("num_levels", num_levels, minimum=2)
        std = default_decoder_std(sde) if decoder_std is None else check_positive("decoder_std", decoder_std)
        return cls(variance, Decoder(std=std, num_levels=num_levels, centered=bool(centered)), score_times)

    def step(self, sde: SDE, score: CountingScore, xi: torch.Tensor, index: torch.Tensor,
             score_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``(B,)`` of the model's ``p(x_{i-1} | x_i)`` (for ``i = 0`` the mean is the decoder's)."""
        s = score(xi.to(score_dtype), SCORE_TIMES[self.score_times](sde, index).to(score_dtype)).to(F64)
        return sde.ancestral_step(xi, grid_time(sde, index), s, variance=self.variance)


def prior_kl(sde: SDE, x: torch.Tensor) -> torch.Tensor:
    """``L_T = KL(q(x_{N-1} | x) || N(0, prior_std^2 I))`` per sample, in closed form (nats, ``(B,)``)."""
    _check_chain(sde)
    x64 = x.detach().to(F64)
    alpha, sigma = sde.discrete_marginal(torch.full((x.shape[0],), sde.N - 1, device=x.device), x64)
    prior = torch.full_like(sigma, sde.prior_std)
    return gaussian_kl(append_dims(alpha, x.ndim) * x64, sigma, torch.zeros_like(x64), prior)


def _level_terms(sde: SDE, chain: ChainModel, score: CountingScore, x64: torch.Tensor, index: torch.Tensor,
                 generator, score_dtype: torch.dtype) -> torch.Tensor:
    """One draw of ``L_{i-1}`` (``i >= 1``) or ``L_0`` (``i = 0``) at per-sample levels ``index``, ``(B,)``."""
    alpha, sigma = sde.discrete_marginal(index, x64)
    xi = append_dims(alpha, x64.ndim) * x64 + append_dims(sigma, x64.ndim) * gaussian_like(x64, generator)
    mean_p, std_p = chain.step(sde, score, xi, index, score_dtype)
    # q(x_{i-1} | x_i, x) is the ancestral step of the exact conditional score -(x_i - alpha_i x) / sigma_i^2
    exact = -(xi - append_dims(alpha, x64.ndim) * x64) / append_dims(sigma ** 2, x64.ndim)
    mean_q, std_q = sde.ancestral_step(xi, grid_time(sde, index), exact, variance="posterior")
    first = index == 0
    kl = gaussian_kl(mean_q, torch.where(first, torch.ones_like(std_q), std_q), mean_p,
                     torch.where(first, torch.ones_like(std_p), std_p))
    return torch.where(first, -chain.decoder.log_prob(x64, mean_p), kl)


@dataclass
class VLBTerms:
    """DDPM's bound term by term, nats per sample: ``prior`` ``(B,)`` is ``L_T``; ``terms`` ``(B, N)``
    holds ``L_0`` (the decoder's ``-log p(x | x_0)``) in column 0 and ``L_{i-1}`` in column ``i``, each from
    one draw of ``x_i ~ q(x_i | x)``; ``nfe`` is ``N``."""

    prior: torch.Tensor
    terms: torch.Tensor
    nfe: int

    @property
    def total(self) -> torch.Tensor:
        """``L_T + sum_i L_i``: an unbiased estimate of the negative VLB, ``-log p(x)`` bounded above."""
        return self.prior + self.terms.sum(dim=1)


def vlb_terms(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, *, num_levels: int | None = None,
              centered: bool = True, variance: str = "posterior", decoder_std: float | None = None,
              score_times: str = "grid", generator: torch.Generator | None = None,
              progress: bool = False) -> VLBTerms:
    """Every term of DDPM's variational bound for ``x`` (model space), ``N`` score evaluations.

    ``num_levels`` ``K`` discretises the decoder over the dequantisation cells (``centered``: data in
    ``[-1, 1]``, else ``[0, 1]``); ``None`` keeps it a Gaussian density. ``variance``: the model's
    reverse variance, ``"posterior"`` (``beta_tilde``) or ``"forward"`` (``beta``). ``decoder_std``:
    default ``sqrt(beta_tilde_1)``. ``score_times``: ``"grid"`` evaluates the score of level ``i`` at
    ``t_i = i T / (N - 1)`` (discrete-time models, ``continuous=False``); ``"log_snr"`` at the time with
    level ``i``'s log-SNR (continuous-time models, whose score at ``t = 0`` is undefined). See the
    module docstring.
    """
    counting = CountingScore(score_fn, "vlb_terms")
    chain = ChainModel.build(sde, x, variance, num_levels, centered, decoder_std, score_times)
    x64 = x.detach().to(F64)
    columns = []
    with torch.no_grad(), counting.guard():
        for i in progress_iter(range(sde.N), progress, desc="VLB", total=sde.N):
            index = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            columns.append(_level_terms(sde, chain, counting, x64, index, generator, x.dtype))
    return VLBTerms(prior=prior_kl(sde, x), terms=torch.stack(columns, dim=1), nfe=counting.nfe)


def ddpm_vlb(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, *, n_terms: int | None = None,
             num_levels: int | None = None, centered: bool = True, variance: str = "posterior",
             decoder_std: float | None = None, score_times: str = "grid",
             generator: torch.Generator | None = None, progress: bool = False
             ) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """DDPM's variational lower bound on ``log p(x)`` (``log P(v)`` with ``num_levels``): ``(bound,
    stderr, nfe)``, nats per sample.

    ``n_terms=None``: the exact sum over all ``N`` levels (``N`` score evaluations; one draw of ``x_i``
    per level, so no per-sample standard error can be formed from it: ``stderr`` is NaN; the
    standard error of a data-set mean is the spread of the per-item bounds). ``n_terms=k``: the
    unbiased estimate ``L_T + N mean_j L_{i_j}`` over ``k`` uniform levels ``i_j`` per sample, with
    standard error ``N std_j / sqrt(k)`` (NaN for ``k = 1``); ``k`` score evaluations. Other
    arguments as in ``vlb_terms``.
    """
    kwargs = dict(num_levels=num_levels, centered=centered, variance=variance, decoder_std=decoder_std,
                  score_times=score_times)
    if n_terms is None:
        terms = vlb_terms(sde, score_fn, x, generator=generator, progress=progress, **kwargs)
        return -terms.total, torch.full_like(terms.prior, math.nan), terms.nfe
    n_terms = check_int("n_terms", n_terms, minimum=1)
    counting = CountingScore(score_fn, "ddpm_vlb")
    chain = ChainModel.build(sde, x, **kwargs)
    x64 = x.detach().to(F64)
    draws = []
    with torch.no_grad(), counting.guard():
        for _ in progress_iter(range(n_terms), progress, desc="VLB"):
            index = torch.randint(0, sde.N, (x.shape[0],), generator=generator,
                                  device=generator.device if generator is not None else x.device).to(x.device)
            draws.append(_level_terms(sde, chain, counting, x64, index, generator, x.dtype))
    mean, stderr = _mean_and_stderr(sde.N * torch.stack(draws, dim=1), dim=1)
    return -(prior_kl(sde, x) + mean), stderr, counting.nfe


# ------------------------------------------------------------------------ importance-weighted bound
def iw_log_weights(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, n_paths: int, *,
                   num_levels: int | None = None, centered: bool = True, variance: str = "posterior",
                   decoder_std: float | None = None, score_times: str = "grid",
                   generator: torch.Generator | None = None, paths_per_call: int | None = None,
                   progress: bool = False) -> Tuple[torch.Tensor, int]:
    """``log p(x, path) - log q(path | x)`` for ``n_paths`` forward paths per sample: ``(B, n_paths)``
    float64, and the NFE per sample (``N n_paths``).

    ``path = x_{0:N-1}`` is drawn from the forward chain ``q`` started at ``x``; ``p`` is the model's
    reverse chain of ``vlb_terms`` (same arguments). ``paths_per_call`` paths (default all) share one
    score call of ``B paths_per_call`` rows.
    """
    chain = ChainModel.build(sde, x, variance, num_levels, centered, decoder_std, score_times)
    n_paths = check_int("n_paths", n_paths, minimum=1)
    chunk = n_paths if paths_per_call is None else check_int("paths_per_call", paths_per_call, minimum=1)
    x64 = x.detach().to(F64)
    out = []
    for k in _chunks(n_paths, chunk):
        counting = CountingScore(score_fn, "iw_bound")  # one per chunk: its batch size is fixed
        with torch.no_grad(), counting.guard():
            out.append(_path_log_weights(sde, chain, counting, _repeat(x64, k), generator, x.dtype,
                                         progress).reshape(-1, k))
    return torch.cat(out, dim=1), sde.N * n_paths


def _path_log_weights(sde: SDE, chain: ChainModel, score: CountingScore, xr: torch.Tensor, generator,
                      score_dtype: torch.dtype, progress: bool) -> torch.Tensor:
    """One forward path per row: ``log p(x, x_{0:N-1}) - log q(x_{0:N-1} | x)``, ``(rows,)``."""
    rows = xr.shape[0]
    log_w = torch.zeros(rows, dtype=F64, device=xr.device)
    prev = xr
    for i in progress_iter(range(sde.N), progress, desc="IW paths", total=sde.N):
        index = torch.full((rows,), i, dtype=torch.long, device=xr.device)
        (alpha, sigma), (alpha_prev, sigma_prev) = sde.discrete_marginal(index, xr), sde.discrete_marginal(index - 1, xr)
        ratio = append_dims(alpha / alpha_prev, xr.ndim)
        step_std = (sigma ** 2 - (alpha / alpha_prev) ** 2 * sigma_prev ** 2).clamp(min=0.0).sqrt()
        xi = ratio * prev + append_dims(step_std, xr.ndim) * gaussian_like(xr, generator)
        log_w = log_w - gaussian_log_prob(xi, ratio * prev, step_std)            # q(x_i | x_{i-1})
        mean_p, std_p = chain.step(sde, score, xi, index, score_dtype)
        log_w = log_w + (chain.decoder.log_prob(xr, mean_p) if i == 0 else gaussian_log_prob(prev, mean_p, std_p))
        prev = xi
    return log_w + sde.prior_logp(prev).to(F64)


def iw_from_log_weights(log_w: torch.Tensor, K: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``IW_K`` from log-weights ``(B, M)``: the ``M // K`` groups of ``K`` consecutive paths each give
    ``log mean exp``; returns their mean and its standard error (NaN for one group).

    One set of ``M`` paths serves every ``K`` dividing ``M`` (``K = 1`` is the VLB estimate)."""
    K = check_int("K", K, minimum=1)
    if log_w.ndim != 2 or log_w.shape[1] % K:
        raise ValueError(f"log_w must have shape (B, M) with M a multiple of K={K}, got {tuple(log_w.shape)}")
    groups = log_w.reshape(log_w.shape[0], -1, K)
    return _mean_and_stderr(torch.logsumexp(groups, dim=2) - math.log(K), dim=1)


def iw_bound(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, K: int = 1, *, repeats: int = 2,
             num_levels: int | None = None, centered: bool = True, variance: str = "posterior",
             decoder_std: float | None = None, score_times: str = "grid",
             generator: torch.Generator | None = None, paths_per_call: int | None = None,
             progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """The importance-weighted bound ``IW_K`` on ``log p(x)`` (``log P(v)`` with ``num_levels``):
    ``(bound, stderr, nfe)``, nats per sample.

    ``repeats`` independent ``IW_K`` estimates (``K repeats`` forward paths, ``N K repeats`` score
    evaluations per sample) give the mean and its standard error (NaN for ``repeats=1``). ``K = 1`` is
    an estimate of DDPM's VLB; ``E[IW_K]`` rises with ``K`` towards ``log p(x)`` of the discrete model.
    Other arguments as in ``vlb_terms`` and ``iw_log_weights``.
    """
    K = check_int("K", K, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    log_w, nfe = iw_log_weights(sde, score_fn, x, K * repeats, num_levels=num_levels, centered=centered,
                                variance=variance, decoder_std=decoder_std, score_times=score_times,
                                generator=generator, paths_per_call=paths_per_call, progress=progress)
    bound, stderr = iw_from_log_weights(log_w, K)
    return bound, stderr, nfe


# ----------------------------------------------------------------------------------------- bits/dim
def bits_per_dim_bound(logp: torch.Tensor, stderr: torch.Tensor, dim: int, *, num_levels: int | None = None,
                       centered: bool = False, log_det: float | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A log-likelihood bound (nats) and its standard error in bits/dim (an upper bound on bits/dim).

    ``num_levels=None``: ``logp`` is already a log-probability of the discrete data (``ddpm_vlb`` and
    ``iw_bound`` with a discretised decoder), ``bpd = -logp / (D ln 2)``. ``num_levels=K``: ``logp``
    bounds the density at uniformly dequantised model-space points (``elbo``, like
    ``log_likelihood``), converted exactly as ``samplers.bits_per_dim`` (scaler log-determinant,
    ``- D log K``). The standard error scales by ``1 / (D ln 2)`` either way.
    """
    check_int("dim", dim, minimum=1)
    scale = dim * math.log(2.0)
    if num_levels is None:
        bpd = -logp / scale
    else:
        bpd = bits_per_dim(logp, dim, num_levels=num_levels, centered=centered, log_det=log_det)
    return bpd, stderr / scale
