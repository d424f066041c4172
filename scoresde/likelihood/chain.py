"""Bounds through the discrete chain of ``N`` levels: DDPM's variational bound and the importance-
weighted bound, in nats per sample.

DDPM's bound (``vlb_terms``, ``ddpm_vlb``; Ho et al. 2020, eq. 5; levels ``i = 0..N-1`` are Ho's
``t = 1..N``, ``x`` the data)::

    -log p(x) <= L_T + sum_{i=1}^{N-1} L_{i-1} + L_0
    L_T     = KL(q(x_{N-1} | x) || N(0, prior_std^2 I))                      (closed form)
    L_{i-1} = E_q KL(q(x_{i-1} | x_i, x) || p(x_{i-1} | x_i))                   (Gaussian KL at one draw of x_i)
    L_0     = E_q [-log p(x | x_0)]                                             (the decoder)

The model's reverse step is ``sde.ancestral_step`` of level ``i`` with the score at the grid time
``t_i = i T / (N - 1)`` (``score_times="grid"``) or at the time with level ``i``'s log-SNR
(``"log_snr"``), and variance ``"posterior"`` (``beta_tilde_i``) or ``"forward"`` (``beta_i``). The
decoder ``p(x | x_0) = N(x0_hat(x_0), decoder_std^2)`` is a density, or with ``num_levels`` discretised
over the dequantisation cells (Ho et al. 2020, eq. 13). Only the SDE's discrete chain
(``discrete_marginal``, ``ancestral_step``) is used, so the bounds apply to any SDE's chain.

The importance-weighted bound (``iw_bound``; Burda et al. 2016, IWAE; Neal 2001; Sohl-Dickstein et al.
2015) takes ``K`` forward paths ``x_{0:N-1} ~ q(. | x)`` as proposals for the model's reverse chain::

    IW_K = log (1/K) sum_k p(x, x^k_{0:N-1}) / q(x^k_{0:N-1} | x),     E[IW_1] = VLB <= E[IW_K] <= log p(x)

Bounds and standard errors are float64 ``(B,)``; chain arithmetic runs in float64 while the score sees
``x``'s dtype. Which decoder to use for which model: ``docs/likelihoods.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from scoresde.likelihood.gaussian import discretized_gaussian_log_likelihood, gaussian_kl, gaussian_log_prob
from scoresde.likelihood.monte_carlo import chunks, mean_and_stderr, repeat_rows
from scoresde.score import CountingScore, ScoreFn, check_input, gaussian_like, learned_variance_fn, progress_iter
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, batch_sum, check_choice, check_int, check_positive

F64 = torch.float64
VARIANCES = ("posterior", "forward")


@dataclass(frozen=True)
class Decoder:
    """``p(x | x_0) = N(mean, std^2)`` per element: discretised over ``num_levels`` cells, or a density."""

    std: float
    num_levels: int | None = None
    centered: bool = True

    def log_prob(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x | x_0)`` per sample, ``(B,)``: ``log P(v)`` for discrete data, else a log-density.
        ``std`` (shaped like ``x``: a learned variance's) replaces the fixed one."""
        if std is None:
            std = torch.full((x.shape[0],), self.std, dtype=x.dtype, device=x.device)
        if self.num_levels is None:
            return gaussian_log_prob(x, mean, std)
        std = append_dims(std, x.ndim)
        return batch_sum(discretized_gaussian_log_likelihood(x, mean, std, self.num_levels, self.centered))


def _check_chain(sde: SDE) -> None:
    if sde.N < 2:
        raise ValueError(f"the discrete chain needs sde.N >= 2 levels, got N={sde.N}")


def grid_time(sde: SDE, index: torch.Tensor) -> torch.Tensor:
    """``t_i = sde.level_time(i)`` (``i T / (N - 1)``, or the original level's time on a respaced chain):
    the time of level ``i`` (float64), where discrete models are trained (``train.losses.ddpm_loss``) and
    where ``sde.ancestral_step`` reads the level from."""
    return sde.level_time(index)


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
    """The model's discrete chain: reverse ``variance``, the ``decoder``, where the score is evaluated and
    a learned variance ``variance_fn(x, t, chain) -> Sigma_theta`` (``models.get_variance_fn``) when the
    model has one: it replaces ``variance`` and, at level 0, the decoder's std (Nichol & Dhariwal 2021)."""

    variance: str
    decoder: Decoder
    score_times: str
    variance_fn: Callable | None = None

    @classmethod
    def build(cls, sde: SDE, x: torch.Tensor, variance: str = "posterior", num_levels: int | None = None,
              centered: bool = True, decoder_std: float | None = None, score_times: str = "grid",
              variance_fn: Callable | None = None) -> "ChainModel":
        """Checks every argument (``ValueError`` naming it) and builds the chain of ``vlb_terms``."""
        _check_chain(sde)
        check_input(x)
        check_choice("variance", variance, VARIANCES)
        check_choice("score_times", score_times, list(SCORE_TIMES))
        if num_levels is not None:
            check_int("num_levels", num_levels, minimum=2)
        if variance_fn is not None and not callable(variance_fn):
            raise ValueError(f"variance_fn must be None or a callable (x, t, chain) -> Sigma, got {variance_fn!r}")
        std = default_decoder_std(sde) if decoder_std is None else check_positive("decoder_std", decoder_std)
        return cls(variance, Decoder(std=std, num_levels=num_levels, centered=bool(centered)), score_times,
                   variance_fn)

    def step(self, sde: SDE, score: CountingScore, xi: torch.Tensor, index: torch.Tensor,
             score_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Mean and std of the model's ``p(x_{i-1} | x_i)`` (for ``i = 0`` the mean is the decoder's) and
        the decoder's std at level 0 (``None``: the fixed one); stds ``(B,)``, or shaped like ``xi`` for a
        learned variance."""
        s = score(xi.to(score_dtype), SCORE_TIMES[self.score_times](sde, index).to(score_dtype)).to(F64)
        variance, decoder_std, t = self.variance, None, grid_time(sde, index)
        if self.variance_fn is not None:  # at the level's own time: it interpolates that level's variances
            variance = self.variance_fn(xi.to(score_dtype), t.to(score_dtype), sde).to(F64)
            decoder_std = variance.sqrt()
        mean, std = sde.ancestral_step(xi, t, s, variance=variance)
        return mean, std, decoder_std


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
    mean_p, std_p, decoder_std = chain.step(sde, score, xi, index, score_dtype)
    # q(x_{i-1} | x_i, x) is the ancestral step of the exact conditional score -(x_i - alpha_i x) / sigma_i^2
    exact = -(xi - append_dims(alpha, x64.ndim) * x64) / append_dims(sigma ** 2, x64.ndim)
    mean_q, std_q = sde.ancestral_step(xi, grid_time(sde, index), exact, variance="posterior")
    first = index == 0
    kl = gaussian_kl(mean_q, torch.where(first, torch.ones_like(std_q), std_q), mean_p,
                     torch.where(append_dims(first, std_p.ndim), torch.ones_like(std_p), std_p))
    return torch.where(first, -chain.decoder.log_prob(x64, mean_p, decoder_std), kl)


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
              progress: bool = False, variance_fn: Callable | None = None) -> VLBTerms:
    """Every term of DDPM's variational bound for ``x`` (model space), ``N`` score evaluations.

    ``num_levels`` ``K`` discretises the decoder over the dequantisation cells (``centered``: data in
    ``[-1, 1]``, else ``[0, 1]``); ``None`` keeps it a Gaussian density. ``variance``: the model's
    reverse variance, ``"posterior"`` (``beta_tilde``) or ``"forward"`` (``beta``). ``decoder_std``:
    default ``sqrt(beta_tilde_1)``. ``score_times``: ``"grid"`` evaluates the score of level ``i`` at
    ``t_i = i T / (N - 1)`` (discrete-time models, ``continuous=False``); ``"log_snr"`` at the time with
    level ``i``'s log-SNR (continuous-time models, whose score at ``t = 0`` is undefined). See the
    module docstring. ``variance_fn(x, t, chain) -> Sigma_theta`` (a learned variance,
    ``models.get_variance_fn``; by default the one ``score_fn`` carries) replaces ``variance`` and the
    decoder's std (``ChainModel``).
    """
    counting = CountingScore(score_fn, "vlb_terms")
    chain = ChainModel.build(sde, x, variance, num_levels, centered, decoder_std, score_times,
                             learned_variance_fn(score_fn, variance_fn))
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
             generator: torch.Generator | None = None, progress: bool = False,
             variance_fn: Callable | None = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
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
                  score_times=score_times, variance_fn=learned_variance_fn(score_fn, variance_fn))
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
    mean, stderr = mean_and_stderr(sde.N * torch.stack(draws, dim=1), dim=1)
    return -(prior_kl(sde, x) + mean), stderr, counting.nfe


# ------------------------------------------------------------------------ importance-weighted bound
def iw_log_weights(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, n_paths: int, *,
                   num_levels: int | None = None, centered: bool = True, variance: str = "posterior",
                   decoder_std: float | None = None, score_times: str = "grid",
                   generator: torch.Generator | None = None, paths_per_call: int | None = None,
                   progress: bool = False, variance_fn: Callable | None = None) -> Tuple[torch.Tensor, int]:
    """``log p(x, path) - log q(path | x)`` for ``n_paths`` forward paths per sample: ``(B, n_paths)``
    float64, and the NFE per sample (``N n_paths``).

    ``path = x_{0:N-1}`` is drawn from the forward chain ``q`` started at ``x``; ``p`` is the model's
    reverse chain of ``vlb_terms`` (same arguments). ``paths_per_call`` paths (default all) share one
    score call of ``B paths_per_call`` rows.
    """
    chain = ChainModel.build(sde, x, variance, num_levels, centered, decoder_std, score_times,
                             learned_variance_fn(score_fn, variance_fn))
    n_paths = check_int("n_paths", n_paths, minimum=1)
    chunk = n_paths if paths_per_call is None else check_int("paths_per_call", paths_per_call, minimum=1)
    x64 = x.detach().to(F64)
    out = []
    for k in chunks(n_paths, chunk):
        counting = CountingScore(score_fn, "iw_bound")  # one per chunk: its batch size is fixed
        with torch.no_grad(), counting.guard():
            out.append(_path_log_weights(sde, chain, counting, repeat_rows(x64, k), generator, x.dtype,
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
        mean_p, std_p, decoder_std = chain.step(sde, score, xi, index, score_dtype)
        log_w = log_w + (chain.decoder.log_prob(xr, mean_p, decoder_std) if i == 0
                         else gaussian_log_prob(prev, mean_p, std_p))
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
    return mean_and_stderr(torch.logsumexp(groups, dim=2) - math.log(K), dim=1)


def iw_bound(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, K: int = 1, *, repeats: int = 2,
             num_levels: int | None = None, centered: bool = True, variance: str = "posterior",
             decoder_std: float | None = None, score_times: str = "grid",
             generator: torch.Generator | None = None, paths_per_call: int | None = None,
             progress: bool = False, variance_fn: Callable | None = None) -> Tuple[torch.Tensor, torch.Tensor, int]:
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
                                generator=generator, paths_per_call=paths_per_call, progress=progress,
                                variance_fn=variance_fn)
    bound, stderr = iw_from_log_weights(log_w, K)
    return bound, stderr, nfe
