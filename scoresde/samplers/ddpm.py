"""DDPM's ancestral sampler on the full or a respaced chain (Ho et al. 2020, Alg. 2; Nichol & Dhariwal
2021, Sec. 4): ``K`` steps ``x_{k-1} ~ N(mu_theta(x_k), Sigma)`` down the chain's levels, with a fixed
variance (``beta_tilde`` or ``beta``) or a model's learned one (``variance_fn``)."""
from __future__ import annotations

from typing import Callable

import torch

from scoresde.likelihood.chain import SCORE_TIMES
from scoresde.score import CountingScore, ScoreFn, gaussian_like, initial_noise, learned_variance_fn, progress_iter
from scoresde.sde_lib import SDE, respace
from scoresde.utils import append_dims, check_choice

# variance_fn(x, t, chain) -> Sigma_theta(x, t) on ``chain``'s levels (``models.get_variance_fn``)
VarianceFn = Callable[[torch.Tensor, torch.Tensor, SDE], torch.Tensor]


def ddpm_chain(sde: SDE, steps: int | None) -> SDE:
    """``sde`` itself for ``steps`` ``None`` or ``N``, else its chain respaced to ``steps`` levels."""
    return sde if steps is None or steps == sde.N else respace(sde, steps)


def step_variance(chain: SDE, x: torch.Tensor, t: torch.Tensor, variance: str,
                  variance_fn: VarianceFn | None) -> str | torch.Tensor:
    """What ``chain.ancestral_step`` takes as its variance: the name, or the model's ``Sigma_theta``."""
    return variance if variance_fn is None else variance_fn(x, t, chain)


class _JointCall:
    """``score_fn.with_variance`` as a plain score function that keeps the variance of its last call: one
    network evaluation per step for both (a learned-variance network, scores at the levels' times)."""

    def __init__(self, with_variance: Callable, chain: SDE):
        self.with_variance, self.chain, self.variance = with_variance, chain, None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score, self.variance = self.with_variance(x, t, self.chain)
        return score


def _joint_score_and_variance(score_fn: ScoreFn, chain: SDE, variance_fn, score_times: str) -> _JointCall | None:
    joint = getattr(score_fn, "with_variance", None)
    if joint is None or variance_fn is not None or score_times != "grid":
        return None
    return _JointCall(joint, chain)


@torch.no_grad()
def ddpm_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int | None = None, variance: str = "posterior",
                variance_fn: VarianceFn | None = None, score_times: str = "grid", z: torch.Tensor | None = None, device=None,
                generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                progress: bool = False) -> tuple[torch.Tensor, int]:
    """Ancestral sampling of ``sde``'s chain, respaced to ``steps`` levels (``None``: all ``N``).

    Level ``k`` is stepped with the score at its time ``chain.level_time(k)`` (``score_times="grid"``:
    the original level's time, so ``score_fn`` of ``sde`` serves any respacing and a discrete network
    sees its own labels) or at the time with the level's log-SNR (``"log_snr"``: continuous-time models
    and exact scores; ``likelihood.chain.SCORE_TIMES``). The last
    step returns the mean, ``x0_hat`` (no noise). ``variance``: ``"posterior"`` (``beta_tilde``) or
    ``"forward"`` (``beta``); ``variance_fn(x, t, chain)`` (a learned ``Sigma_theta``) replaces it, by
    default the one ``score_fn`` carries (``models.get_score_fn`` of a ``learn_variance`` network).
    Returns ``(x, nfe)`` with ``nfe = steps``; there is no ``eps`` nor ``denoise``: the chain ends at its
    data level.
    """
    check_choice("variance", variance, ("posterior", "forward"))
    check_choice("score_times", score_times, list(SCORE_TIMES))
    chain = ddpm_chain(sde, steps)
    joint = _joint_score_and_variance(score_fn, chain, variance_fn, score_times)
    variance_fn = learned_variance_fn(score_fn, variance_fn)
    counting = CountingScore(score_fn if joint is None else joint, "ddpm_sample")
    x = initial_noise(chain, shape, z=z, device=device, generator=generator, dtype=dtype)
    with counting.guard():
        for k in progress_iter(range(chain.N - 1, -1, -1), progress, desc="DDPM", total=chain.N):
            level = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            t = chain.level_time(level).to(x.dtype)
            t_score = SCORE_TIMES[score_times](chain, level).to(x.dtype)
            score = counting(x, t_score)
            # the level's own variances; a learned one from the same network call as the score when it can
            var = joint.variance if joint is not None else step_variance(chain, x, t, variance, variance_fn)
            mean, std = chain.ancestral_step(x, t, score, variance=var)
            x = mean if k == 0 else mean + append_dims(std.to(x.dtype), x.ndim) * gaussian_like(x, generator)
    return x, counting.nfe
