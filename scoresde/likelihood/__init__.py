"""Likelihoods of score models, in nats per sample, each needing only a ``score_fn(x, t)``.

- ``ode``: the exact ``log p_eps(x)`` of the probability-flow ODE by the instantaneous change of
  variables (``log_likelihood``; Chen et al. 2018, Song et al. 2021, App. D.2), exact or Hutchinson traces.
- ``elbo``: the continuous ELBO of the reverse SDE (``elbo``; Song, Durkan, Murray & Ermon 2021, Thm. 2).
- ``chain``: bounds through the discrete chain, DDPM's variational bound (``vlb_terms``, ``ddpm_vlb``;
  Ho et al. 2020) and the importance-weighted bound (``iw_bound``; Burda et al. 2016).
- ``analytic``: the optimal reverse variance of each chain level (Bao et al. 2022, Analytic-DPM;
  ``analytic_variances``, ``score_mean_square``, ``level_variance_fn``).
- ``latent``: the bound of a latent diffusion model through its first stage (``latent_bound``; LSGM, eq. 2).
- ``bits``: bits per dimension from any of them (``bits_per_dim``, ``bits_per_dim_bound``).

This package imports neither the samplers nor anything above them: the shared pieces (the checked
score, the ODE solvers) live in ``scoresde.score`` and ``scoresde.integrate``. ``scoresde.samplers``
re-exports these names for the public API. Measured values: ``docs/likelihoods.md``.
"""
from scoresde.likelihood.analytic import analytic_variances, level_variance_fn, score_mean_square
from scoresde.likelihood.bits import bits_per_dim, bits_per_dim_bound
from scoresde.likelihood.chain import SCORE_TIMES, VARIANCES, VLBTerms, ddpm_vlb, default_decoder_std, iw_bound
from scoresde.likelihood.chain import iw_from_log_weights, iw_log_weights, prior_kl, vlb_terms
from scoresde.likelihood.elbo import elbo
from scoresde.likelihood.gaussian import discretized_gaussian_log_likelihood
from scoresde.likelihood.latent import LatentBound, latent_bound
from scoresde.likelihood.ode import TRACES, log_likelihood

__all__ = ["log_likelihood", "TRACES", "bits_per_dim", "bits_per_dim_bound", "elbo", "vlb_terms", "ddpm_vlb",
           "VLBTerms", "iw_bound", "iw_log_weights", "iw_from_log_weights", "prior_kl", "default_decoder_std",
           "discretized_gaussian_log_likelihood", "VARIANCES", "SCORE_TIMES", "analytic_variances",
           "score_mean_square", "level_variance_fn", "latent_bound", "LatentBound"]
