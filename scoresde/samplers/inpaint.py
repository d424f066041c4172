"""Imputation (inpainting) and colorization with an unconditional score model (Song et al. 2021, App. I.2
and I.3; Lugmayr et al. 2022, RePaint).

Both run the predictor-corrector sampler of ``samplers.pc`` on ``sde.N`` steps and, after every
predictor and corrector step, replace the known coordinates by a fresh forward sample of the data at the
level the state is at (``alpha_i x_known + sigma_i z`` of the discrete chain; the clean data after the
last step). ``method="repaint"`` in addition jumps back one level and re-noises the state with the
forward step of the chain (``sde.discretize``) ``resample - 1`` times per step but the last, re-running
the reverse step each time (Lugmayr et al. 2022, Alg. 1 with jump length 1), so the unknown coordinates
harmonise with the known ones. The known coordinates of the result equal ``x_known`` exactly.

The replacement method samples the exact conditional when the known and unknown coordinates are
independent; otherwise it ignores part of their coupling (the unknown coordinates see the noisy known
ones only through the score). RePaint reduces that error as ``resample`` grows, at ``resample`` times
the cost (``tests/unit/test_inpaint.py`` and ``bench/controllable.py`` measure both against the exact
conditional of a Gaussian mixture).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from scoresde.samplers.pc import build_pc
from scoresde.samplers.schedules import pc_grid
from scoresde.score import CountingScore, ScoreFn, batch_time, check_eps, progress_iter, tweedie_denoise
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, check_choice, check_int

METHODS = ("replacement", "repaint")


def _check_data(name: str, x) -> None:
    if not torch.is_tensor(x) or x.ndim < 2 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor of shape (B, ...), got {got}")


def check_mask(mask, x_known: torch.Tensor) -> torch.Tensor:
    """The mask as a bool tensor of ``x_known``'s shape (``True`` = known). It may broadcast to that
    shape (e.g. ``(1, C, H, W)`` for one mask for the whole batch) and must hold only 0 and 1."""
    if not torch.is_tensor(mask) or mask.ndim != x_known.ndim:
        got = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"mask must be a tensor with the shape of x_known {tuple(x_known.shape)} (or one that "
                         f"broadcasts to it with the same number of dims), got {got}")
    try:
        full = torch.broadcast_shapes(mask.shape, x_known.shape)
    except RuntimeError:
        full = None
    if full != x_known.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x_known's shape "
                         f"{tuple(x_known.shape)}")
    check_mask_values("mask", mask)
    return mask.to(device=x_known.device, dtype=torch.bool).expand(x_known.shape)


def check_mask_values(name: str, mask: torch.Tensor, shown: int = 4) -> None:
    """``ValueError`` naming the values other than 0 and 1 in ``mask`` (NaN included), how many entries
    hold each and where the first is, e.g. for a mask read from a file."""
    if mask.dtype == torch.bool:
        return
    bad = ~((mask == 0) | (mask == 1))
    if not bool(bad.any()):
        return
    values, counts = torch.unique(mask[bad].double().cpu(), return_counts=True)   # NaNs count one by one
    tally: dict = {}
    for value, count in zip(values.tolist(), counts.tolist()):
        tally[repr(value)] = tally.get(repr(value), 0) + count
    listed = ", ".join(f"{v} ({c} {'entry' if c == 1 else 'entries'})" for v, c in list(tally.items())[:shown])
    more = f", ... ({len(tally)} values in all)" if len(tally) > shown else ""
    first = tuple(int(i) for i in bad.nonzero()[0])
    raise ValueError(f"{name} must hold only 0 (missing) and 1 (known); it holds {listed}{more}: "
                     f"{int(bad.sum())} bad entries of {mask.numel()}, the first at index {first}")


def _known_data(x_known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x_known`` with its missing entries set to 0 (they may hold anything, NaN included)."""
    known = torch.where(mask, x_known, torch.zeros_like(x_known))
    if not bool(torch.isfinite(known).all()):
        raise ValueError("x_known contains NaN or infinite values where mask is 1")
    return known


class _Imputer:
    """The replacement of the known coordinates and the forward re-noising step of the chain."""

    def __init__(self, sde: SDE, known: torch.Tensor, mask: torch.Tensor, generator):
        self.sde, self.known, self.mask, self.generator = sde, known, mask, generator

    def _noise(self, x):
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

    def replace(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Known coordinates <- ``alpha_i x_known + sigma_i z`` at chain level ``i`` (``-1``: the data)."""
        alpha, sigma = self.sde.discrete_marginal(level, x)
        noisy = append_dims(alpha, x.ndim) * self.known + append_dims(sigma, x.ndim) * self._noise(x)
        return torch.where(self.mask, noisy, x)

    def renoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One forward step of the chain, level ``i - 1`` -> ``i`` of ``t``: ``x + f + G z`` (RePaint's
        ``x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I)`` for VP)."""
        f, G = self.sde.discretize(x, t)
        return x + f + append_dims(G, x.ndim) * self._noise(x)


def inpaint(sde: SDE, score_fn: ScoreFn, x_known: torch.Tensor, mask: torch.Tensor, method: str = "replacement",
            resample: int = 1, eps: float = 1e-3, generator: torch.Generator | None = None, *,
            predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16, n_steps: int = 1,
            probability_flow: bool = False, denoise: bool = True, progress: bool = False,
            predictor_kwargs: dict | None = None, corrector_kwargs: dict | None = None
            ) -> Tuple[torch.Tensor, int]:
    """Sample the missing coordinates of ``x_known`` (``mask`` 1 = known, 0 = missing); ``(x, nfe)``.

    ``method="replacement"``: score_sde's PC inpainter (Song et al. 2021, App. I.2); ``"repaint"``:
    ``resample`` reverse steps per level with a forward re-noising step between them (Lugmayr et al.
    2022; ``resample = 1`` is the replacement method; the last step is not resampled). The
    predictor-corrector arguments are those of ``pc_sample``; with ``c`` score evaluations per step
    (1 for the predictor, ``n_steps`` for the corrector) ``nfe = ((sde.N - 1) resample + 1) c + denoise``.
    The output's known coordinates are exactly ``x_known``'s; its missing entries may hold anything.
    """
    counting = CountingScore(score_fn, "inpaint")
    check_choice("method", method, METHODS)
    resample = check_int("resample", resample, minimum=1)
    if method == "replacement" and resample != 1:
        raise ValueError(f"resample must be 1 for method='replacement' (resampling is method='repaint'), "
                         f"got {resample}")
    eps = check_eps(sde, eps)
    _check_data("x_known", x_known)
    mask = check_mask(mask, x_known)
    pred, corr = build_pc(sde, counting, predictor, corrector, snr, n_steps, probability_flow,
                          predictor_kwargs, corrector_kwargs)
    imputer = _Imputer(sde, _known_data(x_known, mask), mask, generator)
    x = sde.prior_sampling(tuple(x_known.shape), generator=generator, device=x_known.device, dtype=x_known.dtype)
    with torch.no_grad(), counting.guard():
        x = _loop(sde, pred, corr if corrector != "none" else None, imputer, x, eps, resample, progress)
        if denoise:
            x = tweedie_denoise(sde, counting, x, batch_time(eps, x))
    return torch.where(mask, x_known, x), counting.nfe


def _loop(sde, pred, corr, imputer: _Imputer, x, eps, resample, show):
    """Song et al. 2021 App. I.2 (``resample = 1``) / RePaint Alg. 1 with jump length 1."""
    ts, dt = pc_grid(sde, eps, x)
    x = imputer.replace(x, sde.timestep_index(ts[:1].expand(x.shape[0])))
    for i in progress_iter(range(sde.N), show, desc="inpainting"):
        t = ts[i].expand(x.shape[0])
        level = sde.timestep_index(t)
        repeats = resample if i < sde.N - 1 else 1  # RePaint: no resampling at the last step
        for u in range(repeats):
            if u > 0:
                x = imputer.renoise(x, t)             # jump back one level
            if corr is not None:
                x, _ = corr.update(x, t, imputer.generator)
                x = imputer.replace(x, level)
            x, _ = pred.update(x, t, dt, imputer.generator)
            x = imputer.replace(x, level - 1)
    return x


# ----- colorization --------------------------------------------------------------------------------
def grey_basis(weights: Sequence[float] | None = None, dtype=torch.float64, device=None) -> torch.Tensor:
    """An orthogonal 3x3 matrix ``M`` whose first row is the grey direction ``w / |w|`` (the Householder
    reflection taking ``e_1`` to it; symmetric). ``y = M x`` per pixel puts the grey value
    ``w . x = |w| y_0`` in channel 0 and the colour in channels 1-2 (Song et al. 2021, App. I.3)."""
    w = _grey_weights(weights)
    u = w / w.norm()
    v = u - torch.eye(3, dtype=torch.float64)[0]
    M = torch.eye(3, dtype=torch.float64)
    if float(v.norm()) > 0:
        M = M - 2.0 * torch.outer(v, v) / (v @ v)
    return M.to(device=device, dtype=dtype)


def colorize(sde: SDE, score_fn: ScoreFn, gray: torch.Tensor, eps: float = 1e-3,
             generator: torch.Generator | None = None, *, weights: Sequence[float] | None = None,
             method: str = "replacement", resample: int = 1, **pc_kwargs) -> Tuple[torch.Tensor, int]:
    """Colour images ``(B, 3, H, W)`` whose grey level ``sum_c weights[c] x_c`` equals ``gray``
    ``(B, 1, H, W)`` (to float round-off); ``(x, nfe)``. ``weights`` default to the channel mean (score_sde).

    Imputation in the orthogonal basis ``y = M x`` of ``grey_basis`` (Song et al. 2021, App. I.3): the
    linear SDEs act the same on ``y`` and the score transforms as ``M s(M^T y)``, so the grey channel
    ``y_0 = gray / |w|`` is known and channels 1-2 are sampled by ``inpaint`` (``method``,
    ``resample`` and the predictor-corrector arguments as there).
    """
    if not torch.is_tensor(gray) or gray.ndim != 4 or gray.shape[1] != 1 or not gray.is_floating_point():
        got = f"{gray.dtype} tensor of shape {tuple(gray.shape)}" if torch.is_tensor(gray) else type(gray).__name__
        raise ValueError(f"gray must be a float tensor of shape (B, 1, H, W), got {got}")
    if not bool(torch.isfinite(gray).all()):
        raise ValueError("gray contains NaN or infinite values")
    M = grey_basis(weights, dtype=gray.dtype, device=gray.device)
    w64 = _grey_weights(weights)
    w = w64.to(device=gray.device, dtype=gray.dtype)

    def decouple(x):
        return torch.einsum("ij,bjhw->bihw", M, x)

    def couple(y):
        return torch.einsum("ji,bjhw->bihw", M, y)

    def latent_score(y, t):
        s = score_fn(couple(y), t)
        if not torch.is_tensor(s) or s.shape != y.shape:
            got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"colorize: score_fn must return colour images shaped {tuple(y.shape)}, got {got} "
                             f"(colorize needs a model of 3-channel data)")
        return decouple(s)

    b, _, h, wd = gray.shape
    y_known = torch.cat([gray / float(w64.norm()), gray.new_zeros(b, 2, h, wd)], dim=1)
    mask = torch.tensor([1.0, 0.0, 0.0], device=gray.device, dtype=gray.dtype).reshape(1, 3, 1, 1)
    y, nfe = inpaint(sde, latent_score, y_known, mask, method=method, resample=resample, eps=eps,
                     generator=generator, **pc_kwargs)
    x = couple(y)
    # put the grey level back to the input's (removes the basis change's round-off)
    w = w[None, :, None, None]
    x = x + w * ((gray - (w * x).sum(1, keepdim=True)) / float(w64 @ w64))
    return x, nfe


def _grey_weights(weights) -> torch.Tensor:
    """The grey weights as a float64 ``(3,)`` tensor, the channel mean by default."""
    try:
        w = torch.tensor((1 / 3, 1 / 3, 1 / 3) if weights is None else tuple(weights), dtype=torch.float64)
    except (TypeError, ValueError):
        w = None
    if w is None or w.shape != (3,) or not bool(torch.isfinite(w).all()) or float(w.norm()) == 0.0:
        raise ValueError(f"weights must be 3 finite numbers, not all 0, got {weights!r}")
    return w
