"""Denoising score-matching losses, returned per sample (the training step reduces them).

All three are ``E ||sigma s_theta(x_t, t) + z||^2`` in different clothes:
- ``dsm_loss``: continuous time, ``t ~ U(eps, T)`` (Song et al. 2021, eq. 7), optionally with the
  likelihood weighting ``lambda(t) = g(t)^2`` and its importance sampling (Song, Durkan, Murray &
  Ermon 2021, "Maximum likelihood training of score-based diffusion models", Thm. 1 and Sec. 5).
- ``ddpm_loss``: DDPM's ``L_simple = ||eps - eps_theta(sqrt(alpha_bar_i) x_0 + sqrt(1 - alpha_bar_i) eps, i)||^2``
  over integer timesteps (Ho et al. 2020, eq. 14).
- ``smld_loss``: SMLD's ``sigma_i^2``-weighted loss over the geometric noise levels (Song & Ermon 2019, eq. 6).
``score_fn(x, t)`` comes from ``models.get_score_fn`` (``continuous=False`` for the discrete losses).

Each loss draws its own noise when not given it; ``get_noise_fn(name)`` draws the same noise for a
whole batch up front (what the multi-process trainer uses to give every sample of the global batch the
same noise whatever the number of ranks).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from scoresde import models
from scoresde.sde_lib import SDE
from scoresde.utils import Registry, append_dims, check_choice
from scoresde.sde_lib import predictions  # flow / v / EDM losses
from scoresde.sde_lib.predictions import SIGMA_DATA, PathCoeffs
from scoresde.utils import check_float, check_positive

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
REDUCTIONS = ("mean", "sum")
LOSSES: Registry = Registry("loss")
NOISE: Registry = Registry("loss noise")


def _reduce(sq_err: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-sample reduction: mean over dims, or ``½ sum`` (the ½ of Song et al. 2021, eq. 7)."""
    flat = sq_err.reshape(sq_err.shape[0], -1)
    return flat.mean(dim=1) if reduce == "mean" else 0.5 * flat.sum(dim=1)


def _noise(x0: torch.Tensor, z: torch.Tensor | None, generator) -> torch.Tensor:
    if z is None:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if z.shape != x0.shape:
        raise ValueError(f"z must have the shape of x0 {tuple(x0.shape)}, got {tuple(z.shape)}")
    return z


def _check_eps(sde: SDE, eps: float) -> None:
    if not isinstance(eps, (int, float)) or not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}")


def dsm_times(sde: SDE, n: int, *, eps: float, importance_sampling: bool, generator=None, device=None,
              dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``t ~ U(eps, T)`` with no weight, or ``t ~ p(t) ∝ g^2 / sigma^2`` with its constant weight
    ``Z / (T - eps)`` (Song, Durkan, Murray & Ermon 2021, Sec. 5)."""
    if not importance_sampling:
        return torch.rand(n, generator=generator, device=device, dtype=dtype) * (sde.T - eps) + eps, None
    t, total = sde.sample_importance_time(n, eps, generator=generator, device=device, dtype=dtype)
    return t, torch.full((n,), total / (sde.T - eps), device=device, dtype=dtype)


@LOSSES.register("dsm")
def dsm_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean",
             likelihood_weighting: bool = False, importance_sampling: bool = False, eps: float = 1e-5,
             generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             z: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Continuous denoising score matching; shape ``(B,)``.

    Unweighted (``lambda = sigma_t^2``): ``||sigma_t s + z||^2``. With ``likelihood_weighting``
    (``lambda = g^2``): ``g(t)^2 ||s + z / sigma_t||^2``, an upper bound on the NLL up to constants.
    With ``importance_sampling`` too, ``t ~ p(t) ∝ g^2 / sigma^2`` and the term is
    ``Z / (T - eps) ||sigma_t s + z||^2``: the same expectation with lower variance.
    Given ``t`` (and ``z``), nothing is drawn; ``weight`` (B,) then replaces the weighting (pass the one
    ``dsm_noise`` returns for importance-sampled times).
    """
    check_choice("reduce", reduce, REDUCTIONS)
    _check_eps(sde, eps)
    if importance_sampling and not likelihood_weighting:
        raise ValueError("importance_sampling=True requires likelihood_weighting=True")
    if t is None:
        t, drawn_weight = dsm_times(sde, x0.shape[0], eps=eps, importance_sampling=importance_sampling,
                                    generator=generator, device=x0.device, dtype=x0.dtype)
        weight = drawn_weight if weight is None else weight
    z = _noise(x0, z, generator)
    mean, std = sde.marginal_prob(x0, t)
    score = score_fn(mean + append_dims(std, x0.ndim) * z, t)
    per_sample = _reduce((append_dims(std, x0.ndim) * score + z) ** 2, reduce)
    if likelihood_weighting and weight is None:
        # g^2 ||s + z/sigma||^2 = (g^2 / sigma^2) ||sigma s + z||^2
        weight = (sde.diffusion_coeff(t) / std) ** 2
    return per_sample if weight is None else weight * per_sample


@NOISE.register("dsm")
def dsm_noise(sde: SDE, shape: tuple, *, importance_sampling: bool = False, eps: float = 1e-5,
              generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> dict:
    """The ``t``, ``z`` (and importance ``weight``) ``dsm_loss`` would draw for a batch of ``shape``,
    in the same order: row i of every tensor belongs to sample i."""
    _check_eps(sde, eps)
    t, weight = dsm_times(sde, shape[0], eps=eps, importance_sampling=importance_sampling,
                          generator=generator, device=device, dtype=dtype)
    noise = {"t": t, "z": torch.randn(shape, generator=generator, device=device, dtype=dtype)}
    return noise if weight is None else {**noise, "weight": weight}


def _levels(sde: SDE, n: int, generator, device) -> torch.Tensor:
    """Uniform random levels ``i`` of the discrete chain."""
    return torch.randint(0, sde.N, (n,), generator=generator, device=device)


def _discrete_dsm(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, reduce: str, generator,
                  index: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """``||sigma_i s(x_i, t_i) + z||^2`` at uniform random levels ``i`` of the discrete chain."""
    check_choice("reduce", reduce, REDUCTIONS)
    B = x0.shape[0]
    if index is None:
        index = _levels(sde, B, generator, x0.device)
    z = _noise(x0, z, generator)
    alpha, sigma = sde.discrete_marginal(index, x0)
    xt = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * z
    t = index.to(x0.dtype) * (sde.T / max(sde.N - 1, 1))  # the grid time of level i
    score = score_fn(xt, t)
    return _reduce((append_dims(sigma, x0.ndim) * score + z) ** 2, reduce)


@LOSSES.register("ddpm")
def ddpm_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean",
              generator: torch.Generator | None = None, index: torch.Tensor | None = None,
              z: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's ``L_simple``: with ``eps_theta = -sqrt(1 - alpha_bar_i) s``, ``||eps - eps_theta||^2 = ||sigma_i s + eps||^2``."""
    return _discrete_dsm(sde, score_fn, x0, reduce, generator, index, z)


@LOSSES.register("smld")
def smld_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "sum",
              generator: torch.Generator | None = None, index: torch.Tensor | None = None,
              z: torch.Tensor | None = None) -> torch.Tensor:
    """SMLD/NCSN: ``sigma_i^2 ||s + z / sigma_i||^2 = ||sigma_i s + z||^2`` (½ sum by default, as NCSN)."""
    return _discrete_dsm(sde, score_fn, x0, reduce, generator, index, z)


@NOISE.register("ddpm")
@NOISE.register("smld")
def discrete_noise(sde: SDE, shape: tuple, *, generator: torch.Generator | None = None, device=None,
                   dtype=torch.float32) -> dict:
    """The ``index`` and ``z`` ``ddpm_loss`` / ``smld_loss`` would draw for a batch of ``shape``."""
    return {"index": _levels(sde, shape[0], generator, device),
            "z": torch.randn(shape, generator=generator, device=device, dtype=dtype)}


# ----- Improved DDPM: the chain's variational terms with a learned variance ------------------------------
LN2 = math.log(2.0)


def _score_and_variance(score_fn: ScoreFn, loss: str):
    """``score_fn.with_variance``: both outputs of a learned-variance network from one call."""
    with_variance = getattr(score_fn, "with_variance", None)
    if with_variance is None:
        raise ValueError(f"training.loss {loss!r} needs a network with a learned variance "
                         f"(model.learn_variance=True); allowed losses without one: ddpm, dsm, smld, v, ...")
    return with_variance


def vlb_level_terms(sde: SDE, x0: torch.Tensor, xt: torch.Tensor, index: torch.Tensor, score: torch.Tensor,
                    variance: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """``L_{i-1} = KL(q(x_{i-1} | x_i, x_0) || N(mu_theta, Sigma_theta))`` at levels ``i >= 1`` and the
    decoder's ``L_0 = -log N(x_0; mu_theta, Sigma_theta)`` at level 0 (a density), per sample: with
    ``reduce="mean"`` in bits per dimension as Nichol & Dhariwal's ``L_vlb`` (their ``mean_flat / log 2``),
    with ``"sum"`` in nats. ``mu_theta`` is the ancestral step's mean from ``score``; ``variance``
    (``Sigma_theta``) is shaped like ``x0``."""
    check_choice("reduce", reduce, REDUCTIONS)
    t = sde.level_time(index).to(x0.dtype)
    alpha, sigma = sde.discrete_marginal(index, x0)
    exact = -(xt - append_dims(alpha, x0.ndim) * x0) / append_dims(sigma ** 2, x0.ndim)
    mean_q, std_q = sde.ancestral_step(xt, t, exact, variance="posterior")
    mean_p, _ = sde.ancestral_step(xt, t, score, variance="posterior")
    first = append_dims(index == 0, x0.ndim)
    var_q = append_dims(std_q ** 2, x0.ndim).expand_as(x0)
    var_q = torch.where(first, torch.ones_like(var_q), var_q)
    log_var = torch.log(variance)
    # per element: Gaussian KL (Nichol & Dhariwal's normal_kl) and, at level 0, the decoder's NLL
    kl = 0.5 * (log_var - torch.log(var_q) + (var_q + (mean_q - mean_p) ** 2) / variance - 1.0)
    nll = 0.5 * ((x0 - mean_p) ** 2 / variance + log_var + math.log(2 * math.pi))
    per_element = torch.where(first, nll, kl)
    flat = per_element.reshape(x0.shape[0], -1)
    return flat.mean(dim=1) / LN2 if reduce == "mean" else flat.sum(dim=1)


def _chain_point(sde: SDE, x0: torch.Tensor, index: torch.Tensor | None, z: torch.Tensor | None, generator):
    if index is None:
        index = _levels(sde, x0.shape[0], generator, x0.device)
    z = _noise(x0, z, generator)
    alpha, sigma = sde.discrete_marginal(index, x0)
    xt = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * z
    return index, z, xt, sigma, sde.level_time(index).to(x0.dtype)


@LOSSES.register("hybrid")
def hybrid_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean",
                vlb_weight: float = 0.001, generator: torch.Generator | None = None,
                index: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
    """``L_hybrid = L_simple + lambda L_vlb`` (Nichol & Dhariwal 2021, Sec. 3.1), per sample, at uniform
    levels: ``L_simple = ||eps - eps_theta||^2`` trains the mean, and the level's variational term
    (``vlb_level_terms``) with the mean's gradient stopped trains only the variance; ``lambda =
    vlb_weight``. ``score_fn`` needs ``with_variance`` (``models.get_score_fn`` of a ``learn_variance``
    network)."""
    check_choice("reduce", reduce, REDUCTIONS)
    vlb_weight = check_float("vlb_weight", vlb_weight, 0.0)
    with_variance = _score_and_variance(score_fn, "hybrid")
    index, z, xt, sigma, t = _chain_point(sde, x0, index, z, generator)
    score, variance = with_variance(xt, t)
    simple = _reduce((append_dims(sigma, x0.ndim) * score + z) ** 2, reduce)
    return simple + vlb_weight * vlb_level_terms(sde, x0, xt, index, score.detach(), variance, reduce)


@LOSSES.register("vlb")
def vlb_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean",
             generator: torch.Generator | None = None, index: torch.Tensor | None = None,
             z: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``L_vlb``'s term of one level per sample, mean and variance both trained (Nichol & Dhariwal 2021,
    Sec. 3.3), times ``weight`` (``1 / (N p_i)`` of importance-sampled levels, ``train.level_sampler``);
    uniform levels when ``index`` is not given."""
    with_variance = _score_and_variance(score_fn, "vlb")
    index, z, xt, _, t = _chain_point(sde, x0, index, z, generator)
    score, variance = with_variance(xt, t)
    terms = vlb_level_terms(sde, x0, xt, index, score, variance, reduce)
    return terms if weight is None else weight * terms


NOISE.register("hybrid", discrete_noise)


@NOISE.register("vlb")
def vlb_noise(sde: SDE, shape: tuple, *, level_sampler=None, generator: torch.Generator | None = None,
              device=None, dtype=torch.float32) -> dict:
    """The ``index``, ``z`` (and with a ``level_sampler``, its importance ``weight``) of ``vlb_loss``."""
    if level_sampler is None:
        return discrete_noise(sde, shape, generator=generator, device=device, dtype=dtype)
    index, weight = level_sampler.draw(shape[0], generator=generator, device=device, dtype=dtype)
    return {"index": index, "z": torch.randn(shape, generator=generator, device=device, dtype=dtype),
            "weight": weight}


def get_noise_fn(name: str) -> Callable[..., dict]:
    """The noise drawer of loss ``name``: ``noise_fn(sde, shape, generator=, device=, dtype=, ...)``."""
    return NOISE.get(name)


def get_loss_fn(name: str) -> Callable[..., torch.Tensor]:
    """``"dsm"``, ``"ddpm"`` or ``"smld"``."""
    return LOSSES.get(name)


# ----- flow matching, v-prediction and EDM -----------------------------------------------------------
# Each compares the network's prediction, recovered from ``score_fn`` through the exact maps of
# ``sde_lib.predictions`` (so any parameterisation trains with any of these losses), with its target.
@LOSSES.register("flow")
def flow_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean", eps: float = 1e-5,
              generator: torch.Generator | None = None, t: torch.Tensor | None = None,
              z: torch.Tensor | None = None) -> torch.Tensor:
    """Conditional flow matching with the Gaussian path (Lipman et al. 2023, eq. 23; rectified flow, Liu et
    al. 2023, eq. 1): ``||v_theta(x_t, t) - (alpha_t' x_0 + sigma_t' z)||^2``, ``t ~ U(eps, T)``; shape ``(B,)``.

    On ``RectifiedFlow`` the target is ``z - x_0``. In noise-prediction terms the loss is
    ``(sigma' - alpha' sigma / alpha)^2 ||eps_theta - z||^2`` (``1/(1-t)^2`` on the linear path). Given ``t``
    and ``z`` (``get_noise_fn("flow")`` draws them), nothing is drawn.
    """
    check_choice("reduce", reduce, REDUCTIONS)
    _check_eps(sde, eps)
    if t is None:
        t, _ = dsm_times(sde, x0.shape[0], eps=eps, importance_sampling=False, generator=generator,
                         device=x0.device, dtype=x0.dtype)
    z = _noise(x0, z, generator)
    c = PathCoeffs.at(sde, t, x0, derivatives=True)
    xt = c.alpha * x0 + c.sigma * z
    velocity = predictions.velocity_from_score(xt, score_fn(xt, t), c)
    return _reduce((velocity - (c.d_alpha * x0 + c.d_sigma * z)) ** 2, reduce)


NOISE.register("flow", dsm_noise)  # t ~ U(eps, T) and z, as the unweighted DSM loss draws them


@LOSSES.register("v")
def v_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean",
           generator: torch.Generator | None = None, index: torch.Tensor | None = None,
           z: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's ``L_simple`` with the v target (Salimans & Ho 2022, Sec. 4): ``||v - v_theta||^2`` with
    ``v = (alpha_i z - sigma_i x_0) / sqrt(alpha_i^2 + sigma_i^2)`` at uniform random levels ``i`` of the
    discrete chain, like ``ddpm_loss`` (so ``continuous=False`` networks, DDPM's integer timesteps, as
    diffusers' ``prediction_type="v_prediction"``). It equals ``(1 + sigma_i^2/alpha_i^2) ||eps_theta - z||^2``,
    i.e. ``(SNR + 1) ||x0_theta - x_0||^2``. ``get_noise_fn("v")`` draws ``index`` and ``z``.
    """
    check_choice("reduce", reduce, REDUCTIONS)
    if index is None:
        index = _levels(sde, x0.shape[0], generator, x0.device)
    z = _noise(x0, z, generator)
    c = PathCoeffs(*sde.discrete_marginal(index, x0)).broadcast(x0)
    xt = c.alpha * x0 + c.sigma * z
    t = index.to(x0.dtype) * (sde.T / max(sde.N - 1, 1))  # the grid time of level i
    target = (c.alpha * z - c.sigma * x0) / (c.alpha ** 2 + c.sigma ** 2).sqrt()
    return _reduce((predictions.v_from_score(xt, score_fn(xt, t), c) - target) ** 2, reduce)


NOISE.register("v", discrete_noise)

# EDM's training noise distribution (Karras et al. 2022, Table 1): ln sigma ~ N(P_mean, P_std^2)
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


def edm_times(sde: SDE, n: int, *, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD, eps: float = 1e-5,
              generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Times whose scaled noise level ``sigma_t / alpha_t`` is EDM's log-normal ``sigma``:
    ``t = lambda^{-1}(-2 ln sigma)`` on any process (``t = sigma`` on ``EDMSDE``), clamped to ``[eps, T]``
    (on EDM's defaults a draw beyond ``sigma_max = 80`` has probability 2e-6)."""
    log_sigma = p_mean + p_std * torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    return sde.inverse_log_snr(-2.0 * log_sigma).clamp(eps, sde.T).to(dtype)


@LOSSES.register("edm")
def edm_loss(sde: SDE, score_fn: ScoreFn, x0: torch.Tensor, *, reduce: str = "mean",
             sigma_data: float = SIGMA_DATA, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD,
             eps: float = 1e-5, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             z: torch.Tensor | None = None) -> torch.Tensor:
    """EDM's loss (Karras et al. 2022, eq. 8 and Table 1): ``lambda(sigma) ||D_theta(x^; sigma) - x_0||^2`` with
    ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, ``ln sigma ~ N(p_mean, p_std^2)``; shape ``(B,)``.

    On a general process ``x_t = alpha_t x_0 + sigma_t z`` the noise level is that of ``x^ = x_t / alpha_t``,
    ``sigma = sigma_t / alpha_t``, and the time is ``edm_times``; ``D_theta`` is Tweedie's ``x_0`` from the
    score. The weight is computed from the time used, so a clamped draw stays consistently weighted. With
    ``sigma_data`` the data's standard deviation and Gaussian data the minimum is exactly 1 per dimension.
    Given ``t`` and ``z`` (``get_noise_fn("edm")`` draws them), nothing is drawn.
    """
    check_choice("reduce", reduce, REDUCTIONS)
    _check_eps(sde, eps)
    sigma_data = check_positive("sigma_data", sigma_data)
    if t is None:
        t = edm_times(sde, x0.shape[0], p_mean=p_mean, p_std=p_std, eps=eps, generator=generator,
                      device=x0.device, dtype=x0.dtype)
    z = _noise(x0, z, generator)
    c = PathCoeffs.at(sde, t, x0)
    xt = c.alpha * x0 + c.sigma * z
    denoised = predictions.x0_from_score(xt, score_fn(xt, t), c)
    alpha, sigma = sde.marginal_coeffs(t)
    weight = predictions.edm_loss_weight((sigma / alpha).to(x0.dtype), sigma_data)
    return weight * _reduce((denoised - x0) ** 2, reduce)


@NOISE.register("edm")
def edm_noise(sde: SDE, shape: tuple, *, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD,
              eps: float = 1e-5, generator: torch.Generator | None = None, device=None,
              dtype=torch.float32) -> dict:
    """The ``t`` and ``z`` ``edm_loss`` would draw for a batch of ``shape``, in the same order."""
    _check_eps(sde, eps)
    t = edm_times(sde, shape[0], p_mean=p_mean, p_std=p_std, eps=eps, generator=generator, device=device,
                  dtype=dtype)
    return {"t": t, "z": torch.randn(shape, generator=generator, device=device, dtype=dtype)}


@LOSSES.register("classifier")
def classifier_loss(sde: SDE, logits_fn: Callable, x0: torch.Tensor, *, labels: torch.Tensor, eps: float = 1e-5,
                    generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                    z: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy ``-log p_phi(y | x_t, t)`` of a noise-conditional classifier on ``x_t ~ p_0t(x_t | x_0)``,
    ``t ~ U(eps, T)`` as in the DSM loss (``models.classifier_loss``; Song et al. 2021, App. I.1), shape ``(B,)``.
    ``logits_fn`` comes from ``models.get_logits_fn``."""
    _check_eps(sde, eps)
    return models.classifier_loss(sde, logits_fn, x0, labels, eps=eps, generator=generator, t=t, z=z)


@NOISE.register("classifier")
def classifier_noise(sde: SDE, shape: tuple, *, eps: float = 1e-5, generator: torch.Generator | None = None,
                     device=None, dtype=torch.float32) -> dict:
    """The ``t ~ U(eps, T)`` and ``z`` the classifier loss would draw (those of the unweighted DSM loss)."""
    return dsm_noise(sde, shape, eps=eps, generator=generator, device=device, dtype=dtype)
