"""The exact maps between what a network can predict about ``x_t = alpha_t x_0 + sigma_t z``.

At time ``t`` with ``(alpha, sigma)`` and their time derivatives ``(alpha', sigma')``, the posterior means
given ``x = x_t`` of these targets determine each other (all maps are affine in the prediction):

- ``"score"``: ``s = grad_x log p_t(x) = -E[z | x] / sigma`` (Tweedie; Efron 2011);
- ``"eps"``: ``E[z | x] = -sigma s`` (Ho et al. 2020);
- ``"x0"``: ``E[x_0 | x] = (x + sigma^2 s) / alpha`` (Tweedie's formula);
- ``"velocity"``: ``E[alpha' x_0 + sigma' z | x]``, the conditional flow-matching target (Lipman et al.
  2023, eq. 15; rectified flow, Liu et al. 2023, where it is ``z - x_0``). It equals the probability-flow
  drift ``f x - ½ g^2 s`` (Song et al. 2021, eq. 13), with ``f = alpha'/alpha`` and
  ``½ g^2 = sigma sigma' - f sigma^2``;
- ``"v"``: v-prediction, ``E[alpha~ z - sigma~ x_0 | x]`` with ``(alpha~, sigma~) = (alpha, sigma) / r``,
  ``r = sqrt(alpha^2 + sigma^2)`` (Salimans & Ho 2022, Sec. 4 and App. D). For variance-preserving
  schedules ``r = 1`` and this is their ``v = alpha eps - sigma x_0``; elsewhere it is that ``v`` for the
  variance-preserving process with the same log-SNR, ``x / r``, so the target keeps unit scale on VE and
  EDM schedules (``sigma`` up to 80) too.

The score is the hub: ``to_score(kind, ...)`` and ``from_score(kind, ...)`` are exact inverses, and
``convert`` chains them for any pair. ``edm_coefficients`` is EDM's preconditioning (Karras et al. 2022,
Table 1) in its general form, on the scaled variable ``x / alpha`` with noise level ``sigma / alpha``
(their Sec. 4 / App. B.2, ``s(t) = alpha_t``).

Every function takes tensors already broadcast against ``x`` (``append_dims``); ``PathCoeffs.at``
builds them from an SDE.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from scoresde.utils import append_dims, check_choice

PREDICTIONS = ("score", "eps", "x0", "velocity", "v")
# EDM's default data standard deviation (Karras et al. 2022, Table 1)
SIGMA_DATA = 0.5


class PathCoeffs(NamedTuple):
    """``alpha_t, sigma_t`` (and ``alpha_t', sigma_t'`` when a velocity is involved), broadcastable to ``x``."""
    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: Optional[torch.Tensor] = None
    d_sigma: Optional[torch.Tensor] = None

    @classmethod
    def at(cls, sde, t: torch.Tensor, like: torch.Tensor, derivatives: bool = False) -> "PathCoeffs":
        """The continuous-time coefficients of ``sde`` at ``t``, on ``like``'s dtype, shaped to broadcast."""
        coeffs = sde.marginal_coeffs(t) + (sde.marginal_derivatives(t) if derivatives else ())
        return cls(*(append_dims(c.to(like.dtype), like.ndim) for c in coeffs))

    def broadcast(self, like: torch.Tensor) -> "PathCoeffs":
        """``(B,)`` coefficients (e.g. of the discrete chain) shaped to broadcast against ``like``."""
        return PathCoeffs(*(None if c is None else append_dims(c.to(like.dtype), like.ndim) for c in self))


def _derivatives(c: PathCoeffs):
    if c.d_alpha is None or c.d_sigma is None:
        raise ValueError("a velocity needs the path's derivatives: PathCoeffs.at(..., derivatives=True)")
    return c.d_alpha, c.d_sigma


# ----- to the score ------------------------------------------------------------------------------------
def score_from_eps(x, eps, c: PathCoeffs):
    return -eps / c.sigma


def score_from_x0(x, x0, c: PathCoeffs):
    return (c.alpha * x0 - x) / c.sigma ** 2


def score_from_velocity(x, velocity, c: PathCoeffs):
    """From ``[x; v] = [[alpha, sigma], [alpha', sigma']] [x_0; z]``: ``E[z | x] = (alpha v - alpha' x) / det``,
    ``det = alpha sigma' - sigma alpha' = alpha^2 (sigma / alpha)' > 0``."""
    d_alpha, d_sigma = _derivatives(c)
    det = c.alpha * d_sigma - c.sigma * d_alpha
    return (d_alpha * x - c.alpha * velocity) / (c.sigma * det)


def score_from_v(x, v, c: PathCoeffs):
    """``E[z | x] = sigma~ x~ + alpha~ v`` with ``x~ = x / r`` (Salimans & Ho 2022, App. D, rescaled)."""
    r2 = c.alpha ** 2 + c.sigma ** 2
    return -(c.sigma * x + r2.sqrt() * c.alpha * v) / (c.sigma * r2)


# ----- from the score ----------------------------------------------------------------------------------
def eps_from_score(x, score, c: PathCoeffs):
    return -c.sigma * score


def x0_from_score(x, score, c: PathCoeffs):
    return (x + c.sigma ** 2 * score) / c.alpha


def velocity_from_score(x, score, c: PathCoeffs):
    """``alpha' x_0 + sigma' z`` at the posterior means: ``(alpha'/alpha) x + sigma (alpha' sigma/alpha - sigma') s``,
    i.e. the probability-flow drift ``f x - ½ g^2 s``."""
    d_alpha, d_sigma = _derivatives(c)
    return (d_alpha / c.alpha) * x + c.sigma * (d_alpha * c.sigma / c.alpha - d_sigma) * score


def v_from_score(x, score, c: PathCoeffs):
    """``(alpha eps - sigma x_0) / r`` at the posterior means."""
    r = (c.alpha ** 2 + c.sigma ** 2).sqrt()
    return (c.alpha * eps_from_score(x, score, c) - c.sigma * x0_from_score(x, score, c)) / r


_TO_SCORE = {"score": lambda x, s, c: s, "eps": score_from_eps, "x0": score_from_x0,
             "velocity": score_from_velocity, "v": score_from_v}
_FROM_SCORE = {"score": lambda x, s, c: s, "eps": eps_from_score, "x0": x0_from_score,
               "velocity": velocity_from_score, "v": v_from_score}


def to_score(kind: str, x: torch.Tensor, prediction: torch.Tensor, c: PathCoeffs) -> torch.Tensor:
    """The score implied by a ``kind`` prediction (one of ``PREDICTIONS``) at ``x``."""
    return _TO_SCORE[check_choice("prediction", kind, PREDICTIONS)](x, prediction, c)


def from_score(kind: str, x: torch.Tensor, score: torch.Tensor, c: PathCoeffs) -> torch.Tensor:
    """The ``kind`` prediction implied by a score at ``x``."""
    return _FROM_SCORE[check_choice("prediction", kind, PREDICTIONS)](x, score, c)


def convert(x: torch.Tensor, prediction: torch.Tensor, source: str, target: str, c: PathCoeffs) -> torch.Tensor:
    """A ``source`` prediction as a ``target`` one, e.g. ``convert(x, v, "velocity", "eps", c)``."""
    return from_score(target, x, to_score(source, x, prediction, c), c)


# ----- EDM's preconditioning -----------------------------------------------------------------------------
class EDMCoeffs(NamedTuple):
    """``D(x^; sigma^) = c_skip x^ + c_out F(c_in x^, c_noise)`` on ``x^ = x / alpha``, ``sigma^ = sigma / alpha``."""
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor     # multiplies x^ (so the network sees x / sqrt(sigma^2 + alpha^2 sigma_data^2))
    sigma_hat: torch.Tensor


def edm_coefficients(c: PathCoeffs, sigma_data: float) -> EDMCoeffs:
    """Karras et al. 2022, Table 1 ("Ours"): ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``,
    ``c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``, ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``
    at the scaled noise level ``sigma^ = sigma_t / alpha_t`` (their eq. 4 with ``s(t) = alpha_t``)."""
    sigma_hat = c.sigma / c.alpha
    total = sigma_hat ** 2 + sigma_data ** 2
    return EDMCoeffs(sigma_data ** 2 / total, sigma_hat * sigma_data / total.sqrt(), total.rsqrt(), sigma_hat)


def edm_loss_weight(sigma_hat: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2`` (Karras et al. 2022, Table 1)."""
    return (sigma_hat ** 2 + sigma_data ** 2) / (sigma_hat * sigma_data) ** 2
