"""A lower bound on ``log p(x)`` of a latent diffusion model (Rombach et al. 2022; Vahdat et al. 2021,
LSGM, eq. 2): a first stage ``q(z|x)``, ``p(x|z)`` and a diffusion on ``u = c z`` (``c`` the latent scale
factor)::

    log p(x) >= E_{q(z|x)}[ log p(x|z) + log p_theta(z) - log q(z|x) ],
    log p_theta(z) = log p_u(c z) + d_z log c

where ``log p_u`` is the diffusion's exact ``log p_eps`` by the probability-flow ODE (``log_likelihood``)
or its continuous ELBO (``elbo``, a further lower bound). ``K`` posterior draws per image give a Monte
Carlo mean and its standard error; each draw is an unbiased estimate of the bound (with ``"elbo"``, of a
bound below it), so the error bar covers the ODE's / ELBO's own noise too. ``docs/latent_diffusion.md``
derives it and the conversion to bits/dim of the pixels.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Tuple

import torch

from scoresde.likelihood.bits import bits_per_dim_bound
from scoresde.likelihood.elbo import elbo
from scoresde.likelihood.monte_carlo import mean_and_stderr, repeat_rows
from scoresde.likelihood.ode import log_likelihood
from scoresde.score import ScoreFn, check_input
from scoresde.sde_lib import SDE
from scoresde.utils import batch_sum, check_choice, check_int

PRIORS = ("ode", "elbo")
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class LatentBound(NamedTuple):
    """Per image (``(B,)``, nats): the bound, its standard error and its three terms' means."""
    bound: torch.Tensor
    stderr: torch.Tensor
    recon: torch.Tensor      # E log p(x|z)
    prior: torch.Tensor      # E log p_theta(z), with the scale factor's d_z log c
    entropy: torch.Tensor    # E[-log q(z|x)]
    dim: int                 # pixel dimensions D of x
    nfe: int                 # score evaluations per latent draw

    def bits_per_dim(self, num_levels: int | None = 256, centered: bool = False,
                     log_det: float | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Upper bound on bits/dim of the pixels and its standard error, converted as the pixel-space
        bounds are (``bits_per_dim_bound``): ``log p(x|z)`` is a density of dequantised model-space
        pixels, so the scaler's log-determinant and ``- D log K`` apply exactly as for ``log_likelihood``."""
        return bits_per_dim_bound(self.bound, self.stderr, self.dim, num_levels=num_levels, centered=centered,
                                  log_det=log_det)


def diagonal_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mean, diag e^logvar)`` per sample (nats, ``(B,)``)."""
    return -0.5 * batch_sum((z - mean) ** 2 * torch.exp(-logvar) + logvar) - z[0].numel() * HALF_LOG_2PI


def latent_bound(first_stage, sde: SDE, score_fn: ScoreFn, x: torch.Tensor, n_latents: int = 8, *,
                 prior: str | Callable[[torch.Tensor], torch.Tensor] = "ode",
                 generator: torch.Generator | None = None, ode_kwargs: dict | None = None,
                 elbo_kwargs: dict | None = None) -> LatentBound:
    """``E_q[log p(x|z) + log p_theta(z) - log q(z|x)]`` by ``n_latents`` draws ``z ~ q(z|x)`` per image.

    ``first_stage`` has ``encode(x) -> (mean, logvar)``, ``decoder_log_prob(x, z) -> (B,)`` and
    ``scale_factor`` (``scoresde.models.autoencoder``); ``sde`` / ``score_fn`` model ``u = scale_factor z``.
    ``prior``: ``"ode"`` (exact ``log p_eps(u)``, ``log_likelihood(**ode_kwargs)``), ``"elbo"``
    (``elbo(**elbo_kwargs)``, a lower bound) or a callable ``log p_u(u) -> (B,)`` (e.g. a known density).
    All ``B * n_latents`` draws go through the prior in one batch. ``generator`` draws the latents (and
    the ELBO's times and noise).
    """
    n_latents = check_int("n_latents", n_latents, minimum=2)
    if not callable(prior):
        check_choice("prior", prior, PRIORS)
    check_input(x)
    scale = float(first_stage.scale_factor)
    with torch.no_grad():
        mean, logvar = first_stage.encode(x)
        mean, logvar, xr = repeat_rows(mean, n_latents), repeat_rows(logvar, n_latents), repeat_rows(x, n_latents)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=mean.device,
                                                         dtype=mean.dtype)
        recon = first_stage.decoder_log_prob(xr, z)
        entropy = -diagonal_log_prob(z, mean, logvar)
    log_pu, nfe = _latent_log_prob(prior, sde, score_fn, scale * z, generator, ode_kwargs, elbo_kwargs)
    log_pz = log_pu.to(recon.dtype) + z[0].numel() * math.log(scale)
    per_draw = lambda v: v.reshape(x.shape[0], n_latents)  # noqa: E731  rows b K + j -> [b, j]
    bound, stderr = mean_and_stderr(per_draw(recon + log_pz + entropy), dim=1)
    return LatentBound(bound, stderr, per_draw(recon).mean(1), per_draw(log_pz).mean(1),
                       per_draw(entropy).mean(1), x[0].numel(), nfe)


def _latent_log_prob(prior, sde: SDE, score_fn: ScoreFn, u: torch.Tensor, generator,
                     ode_kwargs: dict | None, elbo_kwargs: dict | None) -> Tuple[torch.Tensor, int]:
    """``log p_u(u)`` (or a bound on it) and the score evaluations it took."""
    if callable(prior):
        with torch.no_grad():
            return prior(u), 0
    if prior == "ode":
        logp, _, nfe = log_likelihood(sde, score_fn, u, **(ode_kwargs or {}))
        return logp, nfe
    kwargs = dict(elbo_kwargs or {})
    kwargs.setdefault("generator", generator)
    bound, _, nfe = elbo(sde, score_fn, u, **kwargs)
    return bound, nfe
