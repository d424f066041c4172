"""The predictor-corrector sampler (Song et al. 2021, Alg. 1; VP/VE forms in Alg. 2 and 3)."""
from __future__ import annotations

from typing import NamedTuple, Tuple, Type

import torch

from scoresde.samplers.correctors import CORRECTORS, Corrector
from scoresde.samplers.predictors import PREDICTORS, Predictor
from scoresde.samplers.schedules import pc_grid
from scoresde.score import CountingScore, ScoreFn, batch_time, check_eps, initial_noise, progress_iter, tweedie_denoise
from scoresde.sde_lib import SDE
from scoresde.utils import check_int, check_positive


class PCOptions(NamedTuple):
    """The checked choices of a predictor-corrector sampler."""
    predictor: Type[Predictor]
    corrector: Type[Corrector]
    snr: float
    n_steps: int
    probability_flow: bool


def _pc_options(predictor: str, corrector: str, snr: float, n_steps: int, probability_flow: bool) -> PCOptions:
    predictor_cls, corrector_cls = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none'; "
                         f"predictors: {PREDICTORS.names()}, correctors: {CORRECTORS.names()}")
    snr = check_positive("snr", snr)
    n_steps = check_int("n_steps", n_steps, minimum=0)
    predictor_cls.check_probability_flow(probability_flow)
    return PCOptions(predictor_cls, corrector_cls, snr, n_steps, bool(probability_flow))


def check_pc_options(predictor: str, corrector: str, snr: float = 0.16, n_steps: int = 1,
                     probability_flow: bool = False) -> None:
    """Raise the ``ValueError`` that ``pc_sample`` would for these names and numbers, without sampling:
    unknown predictor or corrector, both ``'none'``, ``snr`` not positive, ``n_steps`` not an integer
    ``>= 0``, ``probability_flow`` with a predictor that has no ODE form (``'ancestral_sampling'``).
    The constructors' own keyword arguments (``predictor_kwargs`` / ``corrector_kwargs``) are not checked."""
    _pc_options(predictor, corrector, snr, n_steps, probability_flow)


def build_pc(sde: SDE, score_fn: ScoreFn, predictor: str, corrector: str, snr: float, n_steps: int,
             probability_flow: bool, predictor_kwargs: dict | None,
             corrector_kwargs: dict | None) -> Tuple[Predictor, Corrector]:
    """Check the names and numbers (as ``check_pc_options``) and build the predictor and corrector."""
    opts = _pc_options(predictor, corrector, snr, n_steps, probability_flow)
    pred = opts.predictor(sde, score_fn, opts.probability_flow, **(predictor_kwargs or {}))
    corr = opts.corrector(sde, score_fn, opts.snr, opts.n_steps, **(corrector_kwargs or {}))
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
    counting = CountingScore(score_fn, "pc_sample")
    eps = check_eps(sde, eps)
    pred, corr = build_pc(sde, counting, predictor, corrector, snr, n_steps, probability_flow,
                          predictor_kwargs, corrector_kwargs)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype)
    with torch.no_grad(), counting.guard():
        x = _pc_loop(sde, pred, corr, x, eps, generator, progress)
        if denoise:
            x = tweedie_denoise(sde, counting, x, batch_time(eps, x))
    return x, counting.nfe


def _pc_loop(sde, pred, corr, x, eps, generator, show_progress):
    ts, dt = pc_grid(sde, eps, x)
    for i in progress_iter(range(sde.N), show_progress, desc="PC sampling"):
        t = ts[i].expand(x.shape[0])
        x, _ = corr.update(x, t, generator)
        x, _ = pred.update(x, t, dt, generator)
    return x
