"""The predictor-corrector sampler (Song et al. 2021, Alg. 1; VP/VE forms in Alg. 2 and 3)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from samplers.common import (
    CountingScore, ScoreFn, batch_time, check_eps, check_positive_int, initial_noise, progress,
    tweedie_denoise,
)
from samplers.correctors import CORRECTORS, Corrector
from samplers.predictors import PREDICTORS, Predictor
from sde_lib import SDE


def check_snr(snr) -> float:
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr) or snr <= 0:
        raise ValueError(f"snr must be a positive finite number, got {snr!r}")
    return float(snr)


def time_grid(sde: SDE, eps: float, x: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """The ``N`` times ``linspace(T, eps, N)`` on ``x``'s device/dtype and the step ``dt < 0``.

    As in score_sde, every step has the grid's size ``dt = -(T - eps) / (N - 1)`` (score_sde: ``-1/N``,
    the same for its defaults ``eps = 1e-3``, ``N = 1000``), so the last step, taken at ``eps``, carries
    the state to about ``0``; the discrete predictors likewise end on the chain's clean level.
    """
    ts = torch.linspace(sde.T, eps, sde.N, device=x.device, dtype=x.dtype)
    return ts, -(sde.T - eps) / max(sde.N - 1, 1)


def build_pc(sde: SDE, score_fn: ScoreFn, predictor: str, corrector: str, snr: float, n_steps: int,
             probability_flow: bool, predictor_kwargs: dict | None,
             corrector_kwargs: dict | None) -> Tuple[Predictor, Corrector]:
    """Validate the names and numbers and build the predictor and corrector."""
    predictor_cls, corrector_cls = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none'; "
                         f"predictors: {PREDICTORS.names()}, correctors: {CORRECTORS.names()}")
    snr = check_snr(snr)
    n_steps = check_positive_int("n_steps", n_steps, minimum=0)
    pred = predictor_cls(sde, score_fn, probability_flow, **(predictor_kwargs or {}))
    corr = corrector_cls(sde, score_fn, snr, n_steps, **(corrector_kwargs or {}))
    return pred, corr


def pc_sample(sde: SDE, score_fn: ScoreFn, shape, predictor: str = "reverse_diffusion",
              corrector: str = "langevin", snr: float = 0.16, n_steps: int = 1,
              probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3, device=None,
              generator: torch.Generator | None = None, z: torch.Tensor | None = None,
              dtype: torch.dtype | None = None, progress: bool = False,
              predictor_kwargs: dict | None = None, corrector_kwargs: dict | None = None
              ) -> Tuple[torch.Tensor, int]:
    """Sample with ``sde.N`` predictor steps on ``linspace(T, eps, N)``, each preceded by ``n_steps``
    corrector steps (corrector first, as score_sde); returns ``(x, nfe)``.

    ``denoise=True`` ends with one Tweedie step at ``eps`` (one more score evaluation), else returns
    the last predictor step's noisy output. ``nfe`` counts score evaluations exactly. ``z`` fixes the
    initial noise; ``predictor_kwargs`` / ``corrector_kwargs`` reach their constructors, e.g.
    ``predictor_kwargs={"variance": "forward"}`` for ancestral sampling with DDPM's ``beta``.
    """
    counting = CountingScore(score_fn)
    eps = check_eps(sde, eps)
    pred, corr = build_pc(sde, counting, predictor, corrector, snr, n_steps, probability_flow,
                          predictor_kwargs, corrector_kwargs)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype)
    with torch.no_grad():
        x = _pc_loop(sde, pred, corr, x, eps, generator, progress)
        if denoise:
            x = tweedie_denoise(sde, counting, x, batch_time(eps, x))
    return x, counting.nfe


def _pc_loop(sde, pred, corr, x, eps, generator, show_progress):
    ts, dt = time_grid(sde, eps, x)
    for i in progress(range(sde.N), show_progress, desc="PC sampling"):
        t = ts[i].expand(x.shape[0])
        x, _ = corr.update(x, t, generator)
        x, _ = pred.update(x, t, dt, generator)
    return x
