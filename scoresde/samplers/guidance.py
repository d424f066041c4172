"""Guidance as score transforms: each function here takes score functions and returns one, so every
sampler (``pc_sample``, ``ode_sample``, ``fast_sample``, ``ddim_sample``) and ``log_likelihood`` (for
``log p(x | y)``) runs a guided model unchanged.

Conditional scores by Bayes' rule (Song et al. 2021, Sec. 5 and App. I.1):
``grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)``.

- ``classifier_guidance(score_fn, log_prob_fn, scale)``: ``s(x, t) + scale grad_x log p_phi(y | x, t)``.
  Dhariwal & Nichol 2021 (Alg. 2) write it for a noise predictor as
  ``eps_bar = eps - scale sigma_t grad_x log p_phi``, the same thing since ``s = -eps / sigma_t``; their
  ``s`` is our ``scale``. Scale 1 is the exact conditional score when ``p_phi`` is the exact ``p_t(y|x)``.
- ``classifier_free_guidance(score_uncond, score_cond, scale)``: ``s_u + scale (s_c - s_u)``; scale 0 is
  the unconditional model, 1 the conditional one. Ho & Salimans 2022 write
  ``eps_tilde = (1 + w) eps_c - w eps_u``: **scale = 1 + w** (their ``w = 0`` is our 1, the plain
  conditional model; our 0 is their ``w = -1``).
  Both score functions are evaluated at every call (one, at scale 0 or 1); for a network trained with
  label dropout ``score_uncond`` is ``get_score_fn(sde, model, cond=null)`` with ``null`` the null label
  ``models.null_label(num_classes)`` repeated over the batch. ``classifier_free_guidance_batched`` gets
  both from one network call on the doubled batch.
- ``dynamic_thresholding(sde, score_fn, percentile)``: Imagen's dynamic thresholding of the data
  prediction (Saharia et al. 2022, Sec. 2.3), also the ``thresholding=`` option of ``fast_sample`` and
  ``ddim_sample``: large guidance scales push ``x0`` out of the data range ``[-1, 1]``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from scoresde.score import ScoreFn
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, check_float

LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_callable(name: str, fn) -> None:
    if not callable(fn):
        raise ValueError(f"{name} must be callable, got {type(fn).__name__}")


def _check_scale(scale) -> float:
    return check_float("scale", scale)  # any finite number; negative scales steer away from the class


def classifier_free_guidance(score_uncond: ScoreFn, score_cond: ScoreFn, scale: float) -> ScoreFn:
    """``score_fn(x, t) = s_u + scale (s_c - s_u)`` (Ho & Salimans 2022 with ``w = scale - 1``).

    ``scale = 0`` gives ``s_u`` and ``scale = 1`` gives ``s_c``, each with one evaluation; otherwise
    both are evaluated, each checked to have ``x``'s shape (a ``(B, 1)`` or ``(1, D)`` score would
    broadcast into a right-shaped, wrong result). With scores of ``p_t(x)`` and ``p_t(x | y)`` the result is the score of
    ``p_t(x)^(1 - scale) p_t(x | y)^scale`` (up to normalisation), ``∝ p_t(x) p_t(y | x)^scale``.
    """
    _check_callable("score_uncond", score_uncond)
    _check_callable("score_cond", score_cond)
    scale = _check_scale(scale)
    if scale == 0.0:
        return score_uncond
    if scale == 1.0:
        return score_cond

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s_u = _shaped_like("score_uncond", score_uncond(x, t), x)
        return s_u + scale * (_shaped_like("score_cond", score_cond(x, t), x) - s_u)

    return score_fn


def _shaped_like(name: str, score, x: torch.Tensor) -> torch.Tensor:
    """``score`` if it is a tensor of ``x``'s shape; a ``(B, 1)`` or ``(1, D)`` score would broadcast
    into a right-shaped but wrong guided score."""
    if not torch.is_tensor(score) or score.shape != x.shape:
        got = tuple(score.shape) if torch.is_tensor(score) else type(score).__name__
        raise ValueError(f"{name} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    return score


def classifier_free_guidance_batched(score_pair: ScoreFn, scale: float) -> ScoreFn:
    """CFG with both scores from one evaluation on the doubled batch (one network call of ``2B`` items
    instead of two of ``B``): ``score_pair([x; x], [t; t])`` returns ``[s_c; s_u]`` stacked along the
    batch, e.g. ``get_score_fn(sde, model, cond=torch.cat([labels, null]))`` with ``null`` the null label
    repeated ``B`` times. Same values as ``classifier_free_guidance``; always one doubled evaluation."""
    _check_callable("score_pair", score_pair)
    scale = _check_scale(scale)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both = score_pair(torch.cat([x, x]), torch.cat([t, t]))
        if not torch.is_tensor(both) or both.shape != (2 * x.shape[0],) + tuple(x.shape[1:]):
            got = tuple(both.shape) if torch.is_tensor(both) else type(both).__name__
            raise ValueError(f"score_pair must return the doubled batch {(2 * x.shape[0],) + tuple(x.shape[1:])}, "
                             f"got {got}")
        s_c, s_u = both.chunk(2)
        return s_u + scale * (s_c - s_u)

    return score_fn


def grad_log_prob(log_prob_fn: LogProbFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``grad_x sum_b log_prob_fn(x, t)_b`` by autograd, shaped like ``x``.

    Works inside samplers that run under ``torch.no_grad()`` or ``torch.inference_mode()``. When the
    caller differentiates through the result (``x.requires_grad`` with grad mode on, as in
    ``log_likelihood``'s divergence), the gradient keeps its graph (``create_graph``).
    """
    outer = torch.is_grad_enabled() and x.requires_grad
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x if outer else x.detach().clone().requires_grad_(True)
        t = t.clone() if t.is_inference() else t  # an inference tensor cannot be saved for backward
        logp = log_prob_fn(x_in, t)
        if not torch.is_tensor(logp) or logp.shape != (x.shape[0],):
            got = tuple(logp.shape) if torch.is_tensor(logp) else type(logp).__name__
            raise ValueError(f"log_prob_fn must return shape ({x.shape[0]},), got {got}")
        if not logp.requires_grad:
            raise ValueError("log_prob_fn must be differentiable in x (no torch.no_grad() or .detach() inside it)")
        (grad,) = torch.autograd.grad(logp.sum(), x_in, create_graph=outer)
    return grad.to(x.dtype) if outer else grad.detach().to(x.dtype)


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, scale: float) -> ScoreFn:
    """``score(x, t) = score_fn(x, t) + scale grad_x log_prob_fn(x, t)``; ``log_prob_fn(x, t) -> (B,)``,
    e.g. ``classifier_log_prob_fn(logits_fn, labels)`` (Dhariwal & Nichol 2021, Alg. 2: their ``s``).

    The gradient is taken by autograd (see ``grad_log_prob``), so samplers that run under
    ``torch.no_grad()`` need no change. ``scale = 0`` returns ``score_fn`` and never calls the classifier.
    """
    _check_callable("score_fn", score_fn)
    _check_callable("log_prob_fn", log_prob_fn)
    scale = _check_scale(scale)
    if scale == 0.0:
        return score_fn

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return score_fn(x, t) + scale * grad_log_prob(log_prob_fn, x, t)

    return guided


def classifier_log_prob_fn(logits_fn: LogitsFn, labels: torch.Tensor) -> LogProbFn:
    """``log_prob_fn(x, t) = log softmax(logits_fn(x, t))[b, labels[b]]`` for ``classifier_guidance``.

    ``logits_fn`` is e.g. ``models.get_logits_fn(sde, classifier)``; ``labels`` ``(B,)`` integer classes,
    one per sample of the batch the sampler runs (checked against the number of logits at the first
    call; one host sync).
    """
    _check_callable("logits_fn", logits_fn)
    if not torch.is_tensor(labels) or labels.ndim != 1 or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        got = f"{labels.dtype} tensor of shape {tuple(labels.shape)}" if torch.is_tensor(labels) \
            else type(labels).__name__
        raise ValueError(f"labels must be a 1-D integer tensor of class labels, got {got}")
    checked = []

    def log_prob_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = logits_fn(x, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0] or labels.shape[0] != x.shape[0]:
            raise ValueError(f"logits_fn must return (B, num_classes) with B = {x.shape[0]} = len(labels) "
                             f"({labels.shape[0]}), got {tuple(logits.shape)}")
        if not checked:
            _check_label_range(labels, logits.shape[1])
            checked.append(True)
        index = labels.to(device=logits.device, dtype=torch.long)[:, None]
        return F.log_softmax(logits, dim=1).gather(1, index)[:, 0]

    return log_prob_fn


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must hold classes in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per sample ``s`` = the
    ``percentile`` quantile of ``|x0|``, ``s <- max(s, 1)``, ``x0 <- clip(x0, -s, s) / s``.

    ``percentile`` is a fraction in ``(0, 1]`` (Imagen's "p = 99.5%" is ``0.995``). Data in ``[-1, 1]``
    is left unchanged when its quantile is at most 1.
    """
    percentile = check_float("thresholding", percentile, 0.0, 1.0, open_low=True)
    flat = x0.abs().reshape(x0.shape[0], -1)
    acc = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(acc, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = append_dims(s, x0.ndim)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def dynamic_thresholding(sde: SDE, score_fn: ScoreFn, percentile: float) -> ScoreFn:
    """The score whose data prediction is the thresholded one: with ``x0 = (x + sigma_t^2 s) / alpha_t``
    (Tweedie), ``s' = (alpha_t dynamic_threshold(x0) - x) / sigma_t^2``. A data-prediction solver
    (DPM-Solver++, DDIM) fed ``s'`` steps with the thresholded ``x0``, as Imagen's sampler does."""
    _check_callable("score_fn", score_fn)
    check_float("thresholding", percentile, 0.0, 1.0, open_low=True)

    def thresholded(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = _shaped_like("score_fn", score_fn(x, t), x)
        alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t))
        x0 = (x + sigma ** 2 * score) / alpha
        return (alpha * dynamic_threshold(x0, percentile) - x) / sigma ** 2

    return thresholded
