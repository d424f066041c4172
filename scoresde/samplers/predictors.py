"""Predictors of the predictor-corrector sampler (Song et al. 2021, Sec. 4.2 and App. G).

A predictor takes one step of a reverse-time process from ``t`` to ``t + dt`` (``dt < 0``). All share
one signature, ``update(x, t, dt, generator) -> (x, x_mean)``, where ``x_mean`` is the step without its
fresh noise. New predictors subclass ``Predictor`` and register by name::

    @samplers.register_predictor("my_predictor")
    class MyPredictor(samplers.Predictor):
        def update(self, x, t, dt, generator=None): ...
"""
from __future__ import annotations

import abc
from typing import Tuple

import torch

from scoresde.score import ScoreFn, gaussian_like
from scoresde.sde_lib import SDE
from scoresde.utils import Registry, append_dims, check_choice

PREDICTORS: Registry = Registry("predictor")


def register_predictor(name: str):
    """Decorator registering a ``Predictor`` subclass under ``name`` for ``pc_sample(predictor=name)``."""
    return PREDICTORS.register(name)


class Predictor(abc.ABC):
    """One reverse-time step; ``probability_flow=True`` follows the probability-flow ODE instead."""

    supports_probability_flow = True

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.check_probability_flow(probability_flow)
        self.sde = sde
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.rsde = sde.reverse(score_fn, probability_flow)

    @classmethod
    def check_probability_flow(cls, probability_flow: bool) -> None:
        """``ValueError`` when ``probability_flow`` is asked of a predictor that has no ODE form."""
        if probability_flow and not cls.supports_probability_flow:
            raise ValueError(f"probability_flow=True is not supported by predictor {cls.__name__}; "
                             f"allowed with it: a predictor that integrates the ODE, e.g. 'euler_maruyama' "
                             f"or 'reverse_diffusion'")

    @abc.abstractmethod
    def update(self, x: torch.Tensor, t: torch.Tensor, dt: float,
               generator: torch.Generator | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Step from ``t`` (shape ``(B,)``) by ``dt < 0``; returns ``(x, x_mean)``."""

    def _add_noise(self, x_mean, std, generator):
        """``x_mean + std z``; no draw at all when following the (noise-free) probability flow."""
        if self.probability_flow:
            return x_mean
        return x_mean + append_dims(std, x_mean.ndim) * gaussian_like(x_mean, generator)


@register_predictor("euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """``x + [f - g^2 s] dt + g sqrt(|dt|) z`` (Song et al. 2021, eq. 6), or with the flow
    ``x + [f - ½ g^2 s] dt`` (eq. 13; the reference crashes there, its diffusion being a float)."""

    def update(self, x, t, dt, generator=None):
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        return self._add_noise(x_mean, diffusion * abs(dt) ** 0.5, generator), x_mean


@register_predictor("reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """The reverse of the SDE's own discretisation: ``x - f + G^2 s + G z`` (Song et al. 2021, eq. 46);
    steps level ``i`` of the discrete chain to ``i - 1``, so ``dt`` is implied by the grid."""

    def update(self, x, t, dt, generator=None):
        f, G = self.rsde.discretize(x, t)
        x_mean = x - f
        return self._add_noise(x_mean, G, generator), x_mean


@register_predictor("ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling of the discrete chain: DDPM's ``p(x_{i-1} | x_i)`` for VP (Ho et al. 2020,
    Alg. 2), SMLD's for VE (Song et al. 2021, eq. 47); ``sde.ancestral_step`` does the algebra.

    ``variance="posterior"`` uses ``beta_tilde`` (Ho et al.'s sigma_t^2 = beta_tilde), ``"forward"``
    the forward step's variance (``beta`` for VP). Stochastic by nature: no probability-flow form.
    """

    supports_probability_flow = False

    def __init__(self, sde, score_fn, probability_flow=False, variance: str = "posterior"):
        super().__init__(sde, score_fn, probability_flow)
        check_choice("variance", variance, ("posterior", "forward"))
        self.variance = variance

    def update(self, x, t, dt, generator=None):
        x_mean, std = self.sde.ancestral_step(x, t, self.score_fn(x, t), variance=self.variance)
        return self._add_noise(x_mean, std, generator), x_mean


@register_predictor("none")
class NonePredictor(Predictor):
    """No predictor: a corrector-only sampler (e.g. annealed Langevin dynamics, NCSN)."""

    def update(self, x, t, dt, generator=None):
        return x, x
