"""The SDE interface (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Every SDE here is linear with a scalar drift coefficient, ``dx = f(t) x dt + g(t) dw``, so its
perturbation kernel is Gaussian, ``x_t = alpha_t x_0 + sigma_t z`` (Lu et al. 2022 notation).
Subclasses provide the coefficients; everything samplers and losses need (drifts, marginals, the
log-SNR and its inverse, the discrete DDPM/SMLD chain, the ancestral step, network labels) is a method
here, so callers never branch on the SDE's type.
"""
from __future__ import annotations

import abc
import math
from typing import Callable, Tuple

import torch

from scoresde.utils import append_dims, batch_sum, check_choice, check_int, check_positive

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Float round-off allowed when mapping a time to its discrete index, in units of one grid step.
INDEX_TOL = 1e-4


class SDE(abc.ABC):
    """Abstract linear SDE on ``t in [0, T]`` with ``N`` discretisation steps."""

    #: what a network trained for this SDE predicts by default: "eps" (DDPM) or "score" (NCSN)
    default_parameterization = "eps"

    def __init__(self, N: int, T: float = 1.0):
        self.N = check_int("N", N, minimum=1)
        self.T = check_positive("T", T)
        self._table_cache: dict = {}

    # ----- what a subclass defines -------------------------------------------------------------
    @abc.abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``f(t)`` with drift ``f(t) x``; shape ``(B,)``."""

    @abc.abstractmethod
    def diffusion_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)``; shape ``(B,)``."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` with ``x_t = alpha_t x_0 + sigma_t z``; each ``(B,)``."""

    @abc.abstractmethod
    def inverse_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The time ``t`` at which ``log_snr(t)`` equals the argument."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at ``T``."""

    @abc.abstractmethod
    def _discrete_marginal_table(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_i, sigma_i)`` of the discrete chain's levels ``i = 0..N-1``, float64, shape ``(N,)``."""

    @abc.abstractmethod
    def noise_label(self, t: torch.Tensor, continuous: bool = True) -> torch.Tensor:
        """The conditioning value the network sees at time ``t`` (shape ``(B,)``)."""

    # ----- validation ----------------------------------------------------------------------------
    def check_t(self, t: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """``t`` must be a 1-D float tensor in ``[0, T]`` with one entry per sample of ``x`` (the range is
        checked for CPU tensors only: no host synchronisation per SDE call on a GPU)."""
        if not torch.is_tensor(t) or t.ndim != 1 or not t.is_floating_point():
            raise ValueError(f"t must be a 1-D float tensor of shape (B,), got {_describe(t)}")
        if x is not None and t.shape[0] != x.shape[0]:
            raise ValueError(f"t has shape {tuple(t.shape)} but x has batch size {x.shape[0]}")
        # The range check reads values back: free on a CPU, a host synchronisation on an accelerator,
        # where it is skipped (the samplers and losses build their times from validated eps and T), as it
        # is under torch.compile (a read-back would split the compiled graph).
        if t.device.type != "cpu" or torch.compiler.is_compiling():
            return
        slack = 1e-6 * self.T
        if bool(((t < -slack) | (t > self.T + slack) | torch.isnan(t)).any()):
            raise ValueError(f"t must lie in [0, T] = [0, {self.T}], got values in "
                             f"[{t.min().item():.6g}, {t.max().item():.6g}]")

    # ----- the forward process -------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(t) x`` and diffusion ``g(t)`` (shape ``(B,)``) of ``dx = f x dt + g dw``."""
        self.check_t(t, x)
        return append_dims(self.drift_coeff(t).to(x.dtype), x.ndim) * x, self.diffusion_coeff(t).to(x.dtype)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (``(B,)``) of the perturbation kernel ``p_0t(x_t | x_0 = x)``."""
        self.check_t(t, x)
        alpha, sigma = self.marginal_coeffs(t)
        return append_dims(alpha.to(x.dtype), x.ndim) * x, sigma.to(x.dtype)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``log(alpha_t^2 / sigma_t^2)`` (Kingma et al. 2021, VDM); DPM-Solver's ``lambda_t`` is half of it."""
        alpha, sigma = self.marginal_coeffs(t)
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def marginal_derivatives(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(d alpha_t / dt, d sigma_t / dt)``, each ``(B,)``: the moment ODEs of ``dx = f x dt + g dw``
        solved for them, ``alpha' = f alpha`` and ``sigma' = (½ g^2 + f sigma^2) / sigma`` (Särkkä & Solin
        2019, eq. 5.51). The conditional flow-matching velocity is ``alpha' x_0 + sigma' z``
        (Lipman et al. 2023, eq. 15). Subclasses with closed forms override this."""
        alpha, sigma = self.marginal_coeffs(t)
        f, g = self.drift_coeff(t), self.diffusion_coeff(t)
        return f * alpha, (0.5 * g ** 2 + f * sigma ** 2) / sigma

    def prior_sampling(self, shape, generator: torch.Generator | None = None, device=None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """A draw from the prior ``N(0, prior_std^2 I)``."""
        shape = tuple(shape)
        if len(shape) < 1 or any((not isinstance(s, int)) or s < 1 for s in shape):
            raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density (nats) of ``N(0, prior_std^2 I)`` at each sample; shape ``(B,)``."""
        dim = z[0].numel()
        var = self.prior_std ** 2
        return -0.5 * dim * math.log(2 * math.pi * var) - batch_sum(z ** 2) / (2 * var)

    # ----- the discrete chain (DDPM for VP, SMLD for VE) ---------------------------------------
    def timestep_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index ``i`` of the discrete level that time ``t`` falls on: ``floor(t (N-1) / T)``.

        The floor (as in score_sde) maps the PC grid ``linspace(T, eps, N)`` one-to-one onto
        ``N-1, ..., 0``; the small tolerance absorbs float round-off of times on the grid.
        """
        idx = torch.floor(t.double() * (self.N - 1) / self.T + INDEX_TOL).long()
        return idx.clamp(0, self.N - 1)

    def level_time(self, index: torch.Tensor) -> torch.Tensor:
        """``t_i = i T / (N - 1)``: the time of chain level ``i`` (float64), where discrete models are
        trained and where ``timestep_index`` maps back to ``i``. A respaced chain keeps its levels at the
        original chain's times (``sde_lib.respace``)."""
        return index.to(torch.float64) * (self.T / max(self.N - 1, 1))

    def _table(self, name: str, table: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The discrete ``table`` cast to ``like``'s device and dtype, cached per (name, device, dtype)."""
        key = (name, like.device, like.dtype)
        if key not in self._table_cache:
            self._table_cache[key] = table.to(device=like.device, dtype=like.dtype)
        return self._table_cache[key]

    @property
    def discrete_alphas_marginal(self) -> torch.Tensor:
        return self._discrete_marginal_table()[0]

    @property
    def discrete_sigmas_marginal(self) -> torch.Tensor:
        return self._discrete_marginal_table()[1]

    def discrete_marginal(self, index: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_i, sigma_i)`` of chain level ``index`` (``-1`` is the clean data: ``(1, 0)``)."""
        alphas = self._table("discrete_alphas_marginal", self.discrete_alphas_marginal, like)
        sigmas = self._table("discrete_sigmas_marginal", self.discrete_sigmas_marginal, like)
        safe = index.clamp(min=0)
        clean = index < 0
        alpha = torch.where(clean, torch.ones_like(alphas[safe]), alphas[safe])
        sigma = torch.where(clean, torch.zeros_like(sigmas[safe]), sigmas[safe])
        return alpha, sigma

    def _transition(self, t: torch.Tensor, like: torch.Tensor):
        """Coefficients of one chain step from level ``i-1`` to ``i`` and of both levels."""
        i = self.timestep_index(t)
        alpha_i, sigma_i = self.discrete_marginal(i, like)
        alpha_prev, sigma_prev = self.discrete_marginal(i - 1, like)
        ratio = alpha_i / alpha_prev  # alpha_{i|i-1}
        var = (sigma_i ** 2 - ratio ** 2 * sigma_prev ** 2).clamp(min=0)  # sigma^2_{i|i-1}
        return ratio, var, (alpha_i, sigma_i), (alpha_prev, sigma_prev)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step of the discrete chain at level ``i`` of ``t``: ``x_{i+1} = x_i + f + G z``.

        VP: ``f = (sqrt(1 - beta_i) - 1) x``, ``G = sqrt(beta_i)`` (Ho et al. 2020, eq. 2).
        VE: ``f = 0``, ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)`` (SMLD, Song & Ermon 2019).
        """
        self.check_t(t, x)
        ratio, var, _, _ = self._transition(t, x)
        return append_dims(ratio - 1, x.ndim) * x, var.sqrt()

    def chain_variances(self, t: torch.Tensor, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(beta_i, beta_tilde_i)`` (``(B,)``) of the level of ``t``: the forward step's variance
        ``sigma^2_{i|i-1}`` and the posterior's ``sigma_{i-1}^2 sigma^2_{i|i-1} / sigma_i^2``, the two ends of
        Nichol & Dhariwal's (2021, eq. 15) learned range. ``beta_tilde_0 = 0`` is replaced by
        ``beta_tilde_1``, as their ``posterior_log_variance_clipped`` does, so its log stays finite."""
        if self.N < 2:
            raise ValueError(f"the chain's variances need N >= 2 levels, got N={self.N}")
        beta = self._transition(t, like)[1]
        j = self.timestep_index(t).clamp(min=1)
        (alpha_j, sigma_j), (alpha_p, sigma_p) = self.discrete_marginal(j, like), self.discrete_marginal(j - 1, like)
        var_j = (sigma_j ** 2 - (alpha_j / alpha_p) ** 2 * sigma_p ** 2).clamp(min=0)
        return beta, var_j * sigma_p ** 2 / sigma_j ** 2

    def learned_variance(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``Sigma = exp(v log beta_i + (1 - v) log beta_tilde_i)`` (Nichol & Dhariwal 2021, eq. 15) for an
        interpolation ``v`` in ``[0, 1]`` shaped like the data (``v = (out + 1) / 2`` of a network output
        ``out`` in ``[-1, 1]``, their ``model_var_values``)."""
        beta, beta_tilde = self.chain_variances(t, v)
        log_beta, log_tilde = append_dims(torch.log(beta), v.ndim), append_dims(torch.log(beta_tilde), v.ndim)
        return torch.exp(v * log_beta + (1.0 - v) * log_tilde)

    def ancestral_step(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor,
                       variance: str | torch.Tensor = "posterior") -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``x_{i-1}`` given ``x_i`` and a score, along the discrete chain.

        The mean is the posterior mean ``q(x_{i-1} | x_i, x_0)`` at Tweedie's
        ``x_0 = (x_i + sigma_i^2 score) / alpha_i``; for VP it equals DDPM's
        ``(x_i + beta_i score) / sqrt(1 - beta_i)`` (Ho et al. 2020, eq. 11), for VE SMLD's
        ``x_i + (sigma_i^2 - sigma_{i-1}^2) score``. ``variance="posterior"`` uses
        ``beta_tilde_i = sigma_{i-1}^2 sigma^2_{i|i-1} / sigma_i^2``; ``"forward"`` uses ``sigma^2_{i|i-1}``
        (``beta_i`` for VP, Ho et al.'s other choice); both give a std of shape ``(B,)``. A tensor is a
        model's own variance ``Sigma_theta(x_i, t)`` (shape ``(B,)`` or that of ``x``, e.g. from
        ``learned_variance``), and the std has its shape. The step to ``x_0`` adds no noise either way.
        """
        if not torch.is_tensor(variance):
            check_choice("variance", variance, ("posterior", "forward"))
        ratio, var, (alpha_i, sigma_i), (alpha_prev, sigma_prev) = self._transition(t, x)
        x0 = (x + append_dims(sigma_i ** 2, x.ndim) * score) / append_dims(alpha_i, x.ndim)
        coef_x = ratio * sigma_prev ** 2 / sigma_i ** 2
        coef_x0 = alpha_prev * var / sigma_i ** 2
        mean = append_dims(coef_x, x.ndim) * x + append_dims(coef_x0, x.ndim) * x0
        if torch.is_tensor(variance):
            step_var = variance.to(mean.dtype)
            last = append_dims(sigma_prev > 0, step_var.ndim)
        else:
            step_var = var * sigma_prev ** 2 / sigma_i ** 2 if variance == "posterior" else var
            last = sigma_prev > 0
        # the last step (to x_0, sigma_prev = 0) adds no noise with any variance (Ho et al. 2020, Alg. 2)
        step_var = torch.where(last, step_var, torch.zeros_like(step_var))
        return mean, step_var.sqrt()

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """The ``alpha_i`` scaling of the Langevin step size (Song et al. 2021, Alg. 4 and 5)."""
        ratio, _, _, _ = self._transition(t, t)
        return ratio ** 2

    # ----- likelihood weighting ----------------------------------------------------------------
    def importance_density(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)^2 / sigma_t^2``: the likelihood weighting of the DSM loss in noise-prediction form."""
        _, sigma = self.marginal_coeffs(t)
        return self.diffusion_coeff(t) ** 2 / sigma ** 2

    def sample_importance_time(self, n: int, eps: float, generator=None, device=None,
                               dtype=torch.float32) -> Tuple[torch.Tensor, float]:
        """Times ``t ~ p(t) ∝ g(t)^2 / sigma_t^2`` on ``[eps, T]`` and the normaliser ``Z``.

        Song, Durkan, Murray & Ermon 2021 ("Maximum likelihood training of score-based diffusion
        models"), Sec. 5: ``E_{t~U}[g^2/sigma^2 l(t)] (T - eps) = Z E_{t~p}[l(t)]``. The inverse CDF
        is tabulated in float64 on a log-spaced grid (the density behaves like ``1/t`` near 0).
        """
        grid, cdf, total = self._importance_table(float(eps))
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else "cpu")
        u = u.cpu() * total
        j = torch.searchsorted(cdf, u).clamp(1, len(cdf) - 1)
        c0, c1, t0, t1 = cdf[j - 1], cdf[j], grid[j - 1], grid[j]
        t = t0 + (u - c0) / (c1 - c0).clamp(min=1e-300) * (t1 - t0)
        return t.to(device=device, dtype=dtype), total

    def _importance_table(self, eps: float):
        key = ("importance", eps)
        if key not in self._table_cache:
            if not 0 < eps < self.T:
                raise ValueError(f"eps must lie in (0, T) = (0, {self.T}), got {eps!r}")
            grid = torch.logspace(math.log10(eps), math.log10(self.T), 8193, dtype=torch.float64)
            dens = self.importance_density(grid)
            cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                             torch.cumulative_trapezoid(dens, grid)])
            self._table_cache[key] = (grid, cdf, float(cdf[-1]))
        return self._table_cache[key]

    # ----- running backwards -------------------------------------------------------------------
    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6) or the probability-flow ODE (eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """``dx = [f - g^2 s] dt + g dw_bar``, or with ``probability_flow`` ``dx = [f - ½ g^2 s] dt``."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        if not callable(score_fn):
            raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.forward_sde = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.N = forward.N
        self.T = forward.T

    def _combine(self, drift, diffusion, x, t):
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_drift = drift - append_dims(diffusion ** 2, x.ndim) * score * weight
        rev_diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
        return rev_drift, rev_diffusion

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        drift, diffusion = self.forward_sde.sde(x, t)
        return self._combine(drift, diffusion, x, t)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The reverse of ``forward.discretize``: ``f - G^2 s`` (halved for the flow), ``G`` (or 0)."""
        f, G = self.forward_sde.discretize(x, t)
        return self._combine(f, G, x, t)


def _describe(t) -> str:
    if torch.is_tensor(t):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return type(t).__name__
