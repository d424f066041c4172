"""From a raw network to a score: the one place where eps-, x0- and score-predictions become
``s_theta(x, t)`` (like EDM's preconditioning wrapper). Networks see ``(x, noise_label, cond)`` only."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from scoresde.sde_lib import SDE, predictions
from scoresde.sde_lib.predictions import SIGMA_DATA, PathCoeffs
from scoresde.utils import check_choice, check_positive

PARAMETERIZATIONS = ("eps", "x0", "score", "velocity", "v", "edm")


def get_model_fn(model: nn.Module, train: bool = False) -> Callable:
    """``model_fn(x, labels, cond=None)`` running ``model`` in train or eval mode."""
    def model_fn(x: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        model.train(train)
        # cond only when there is one: score_sde-style networks take forward(x, labels)
        return model(x, labels) if cond is None else model(x, labels, cond)
    return model_fn


def trained_marginal(sde: SDE, t: torch.Tensor, continuous: bool, like: torch.Tensor,
              derivatives: bool = False) -> PathCoeffs:
    """``(alpha_t, sigma_t)`` the network was trained with (continuous, or the discrete chain's level),
    broadcast against ``like``; with ``derivatives`` also ``(alpha_t', sigma_t')`` (continuous only)."""
    if continuous:
        return PathCoeffs.at(sde, t, like, derivatives=derivatives)
    return PathCoeffs(*sde.discrete_marginal(sde.timestep_index(t), like)).broadcast(like)


def get_score_fn(sde: SDE, model: nn.Module, train: bool = False, continuous: bool = True,
                 parameterization: str | None = None, scale_by_sigma: bool = False,
                 cond: torch.Tensor | None = None,
                 sigma_data: float = SIGMA_DATA) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn(x, t)`` from a network, as in score_sde's ``get_score_fn``.

    - ``"eps"`` (default for VP and sub-VP): ``s = -eps_theta(x, t) / sigma_t`` (Song et al. 2021, App. C;
      ``sigma_t = sqrt(1 - alpha_bar_t)`` for VP, ``1 - alpha_bar_t`` for sub-VP).
    - ``"score"`` (default for VE): the network output is the score, divided by ``sigma_t`` when
      ``scale_by_sigma`` (NCSN++'s output scaling; Song & Ermon 2020, technique 3).
    - ``"x0"``: ``s = (alpha_t x0_theta - x) / sigma_t^2`` (Tweedie's formula inverted).
    - ``"velocity"`` (default for ``RectifiedFlow``): the flow-matching velocity ``alpha' x_0 + sigma' z``
      (Lipman et al. 2023); continuous time only.
    - ``"v"``: v-prediction ``(alpha eps - sigma x_0) / sqrt(alpha^2 + sigma^2)`` (Salimans & Ho 2022;
      their ``v`` on variance-preserving schedules).
    - ``"edm"`` (default for ``EDMSDE``): EDM's preconditioning (Karras et al. 2022, Table 1) on the scaled
      variable ``x / alpha_t`` with noise level ``sigma_t / alpha_t``: the network sees
      ``c_in x / alpha_t`` and the label, and ``x0 = c_skip x / alpha_t + c_out F``; ``sigma_data`` is the
      data's standard deviation. ``c_noise`` is the SDE's noise label (``sigma`` on EDM's process).
    The maps are ``sde_lib.predictions``. The network sees ``sde.noise_label(t, continuous)``: ``999 t`` or
    the DDPM timestep for VP, ``sigma(t)`` or the NCSN sigma index for VE. Discrete models use the
    discrete chain's ``sigma_i``. ``cond`` reaches the network only when given (``model(x, labels)`` else).
    A network with ``learn_variance`` (``2 C`` output channels) gives its first half to the score; the
    second is the variance (``get_variance_fn``), and ``score_fn.with_variance(x, t, chain=None) ->
    (score, Sigma_theta)`` gives both from one network call (the hybrid loss).
    """
    parameterization = parameterization or sde.default_parameterization
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "velocity" and not continuous:
        raise ValueError("parameterization 'velocity' needs continuous=True: the discrete chain has no velocity")
    sigma_data = check_positive("sigma_data", sigma_data)
    model_fn = get_model_fn(model, train=train)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = sde.noise_label(t, continuous)
        coeffs = trained_marginal(sde, t, continuous, x, derivatives=parameterization == "velocity")
        if parameterization == "edm":
            return _edm_score(model_fn, x, labels, cond, coeffs, sigma_data)
        return _output_score(model_fn(x, labels, cond), x, coeffs)

    def _output_score(out: torch.Tensor, x: torch.Tensor, coeffs: PathCoeffs) -> torch.Tensor:
        out = eps_half(model, out)
        if parameterization == "score":
            return out / coeffs.sigma if scale_by_sigma else out
        return predictions.to_score(parameterization, x, out, coeffs)

    def score_and_variance(x: torch.Tensor, t: torch.Tensor, chain: SDE | None = None):
        out = model_fn(x, sde.noise_label(t, continuous), cond)
        score = _output_score(out, x, trained_marginal(sde, t, continuous, x))
        return score, (chain or sde).learned_variance(t, (out.chunk(2, dim=1)[1] + 1.0) / 2.0)

    if learns_variance(model):
        if parameterization in ("edm", "velocity"):
            raise ValueError(f"a learned variance needs parameterization eps, x0, score or v, got {parameterization!r}")
        score_fn.with_variance = score_and_variance
        score_fn.variance_fn = lambda x, t, chain=None: score_and_variance(x, t, chain)[1]
    return score_fn


def _edm_score(model_fn: Callable, x: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None,
               coeffs: PathCoeffs, sigma_data: float) -> torch.Tensor:
    """EDM's ``D = c_skip x^ + c_out F(c_in x^, c_noise)`` (Karras et al. 2022, eq. 7) on ``x^ = x / alpha``,
    then Tweedie's score ``(alpha D - x) / sigma^2``."""
    c = predictions.edm_coefficients(coeffs, sigma_data)
    x_hat = x / coeffs.alpha
    denoised = c.c_skip * x_hat + c.c_out * model_fn(c.c_in * x_hat, labels, cond)
    return predictions.score_from_x0(x, denoised, coeffs)


def learns_variance(model: nn.Module) -> bool:
    """Whether ``model`` outputs a variance besides its prediction (``learn_variance=True``)."""
    return bool(getattr(model, "learn_variance", False))


def eps_half(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The prediction half of a learned-variance network's output (channels ``[:C]``), else ``out``."""
    return out.chunk(2, dim=1)[0] if learns_variance(model) else out


def get_variance_fn(sde: SDE, model: nn.Module, train: bool = False, continuous: bool = True,
                    cond: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """``variance_fn(x, t, chain=None) -> Sigma_theta(x, t)`` (shaped like ``x``) of a network with
    ``learn_variance``: its second output half ``out_v`` read as ``v = (out_v + 1) / 2`` and
    ``Sigma = exp(v log beta_i + (1 - v) log beta_tilde_i)`` on the levels of ``chain`` (default ``sde``;
    a respaced chain of it interpolates its own ``beta`` and ``beta_tilde``; Nichol & Dhariwal 2021,
    eq. 15 and Sec. 4). The network sees ``sde.noise_label(t, continuous)``."""
    if not learns_variance(model):
        raise ValueError("get_variance_fn needs a network built with learn_variance=True (2 C output channels)")
    model_fn = get_model_fn(model, train=train)

    def variance_fn(x: torch.Tensor, t: torch.Tensor, chain: SDE | None = None) -> torch.Tensor:
        out_v = model_fn(x, sde.noise_label(t, continuous), cond).chunk(2, dim=1)[1]
        return (chain or sde).learned_variance(t, (out_v + 1.0) / 2.0)

    return variance_fn
