"""From a raw network to a score: the one place where eps-, x0- and score-predictions become
``s_theta(x, t)`` (like EDM's preconditioning wrapper). Networks see ``(x, noise_label, cond)`` only."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sde_lib import SDE
from sde_lib.utils import append_dims, check_choice

PARAMETERIZATIONS = ("eps", "x0", "score")


def get_model_fn(model: nn.Module, train: bool = False) -> Callable:
    """``model_fn(x, labels, cond=None)`` running ``model`` in train or eval mode."""
    def model_fn(x: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        model.train(train)
        return model(x, labels, cond)
    return model_fn


def _marginal(sde: SDE, t: torch.Tensor, continuous: bool, like: torch.Tensor):
    """``(alpha_t, sigma_t)`` the network was trained with: continuous, or the discrete chain's level."""
    if continuous:
        alpha, sigma = sde.marginal_coeffs(t)
        return alpha.to(like.dtype), sigma.to(like.dtype)
    return sde.discrete_marginal(sde.timestep_index(t), like)


def get_score_fn(sde: SDE, model: nn.Module, train: bool = False, continuous: bool = True,
                 parameterization: str | None = None, scale_by_sigma: bool = False,
                 cond: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn(x, t)`` from a network, as in score_sde's ``get_score_fn``.

    - ``"eps"`` (default for VP and sub-VP): ``s = -eps_theta(x, t) / sigma_t`` (Song et al. 2021, App. C;
      ``sigma_t = sqrt(1 - alpha_bar_t)`` for VP, ``1 - alpha_bar_t`` for sub-VP).
    - ``"score"`` (default for VE): the network output is the score, divided by ``sigma_t`` when
      ``scale_by_sigma`` (NCSN++'s output scaling; Song & Ermon 2020, technique 3).
    - ``"x0"``: ``s = (alpha_t x0_theta - x) / sigma_t^2`` (Tweedie's formula inverted).
    The network sees ``sde.noise_label(t, continuous)``: ``999 t`` or the DDPM timestep for VP,
    ``sigma(t)`` or the NCSN sigma index for VE. Discrete models use the discrete chain's ``sigma_i``.
    """
    parameterization = parameterization or sde.default_parameterization
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    model_fn = get_model_fn(model, train=train)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model_fn(x, sde.noise_label(t, continuous), cond)
        alpha, sigma = _marginal(sde, t, continuous, x)
        if parameterization == "eps":
            return -out / append_dims(sigma, x.ndim)
        if parameterization == "x0":
            return (append_dims(alpha, x.ndim) * out - x) / append_dims(sigma ** 2, x.ndim)
        return out / append_dims(sigma, x.ndim) if scale_by_sigma else out

    return score_fn
