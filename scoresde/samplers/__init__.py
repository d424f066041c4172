"""Everything that runs a process backwards; each sampler needs only a ``score_fn(x, t)`` and returns
``(x, nfe)``. One file per algorithm:

- ``pc``: the predictor-corrector sampler (``pc_sample``), with its ``predictors`` and ``correctors``
  registries (``register_predictor``, ``register_corrector``) and ``check_pc_options``.
- ``ode``: the probability-flow ODE (``ode_sample``, ``ode_encode``) with the solvers of
  ``scoresde.integrate`` (``ODE_METHODS``).
- ``fast``: ``fast_sample``, one call for the few-step solvers (``FAST_SOLVERS``), each also callable:
  ``dpm_solver``: multistep DPM-Solver++, orders 1-3 (``dpm_solver_sample``);
  ``sde_dpm_solver``: SDE-DPM-Solver++ (``sde_dpm_solver_sample``);
  ``unipc``: UniPC (``unipc_sample``); they share ``solver``'s signature and set-up.
- ``ddim``: DDIM with its stochastic ``eta`` (``ddim_sample``).
- ``ddpm``: DDPM's ancestral sampler on the full or a respaced chain, fixed or learned variances
  (``ddpm_sample``; Nichol & Dhariwal 2021).
- ``edm``: EDM's Heun and stochastic (churn) samplers (``edm_sample``).
- ``schedules``: every time / noise-level grid (``get_time_steps``, ``SKIP_TYPES``, ``karras_sigmas``);
  ``time_grid``: grids fitted to a score (``optimize_time_grid``).
- ``guidance``: score transforms every sampler takes unchanged (``classifier_free_guidance``,
  ``classifier_guidance``, ``dynamic_thresholding``).
- ``inpaint``: imputation and colorization (``inpaint``, ``colorize``; replacement and RePaint).

Likelihoods live in ``scoresde.likelihood`` (exact ODE likelihood, ELBO, DDPM's VLB, importance-weighted
bounds); their names are re-exported here (``log_likelihood``, ``bits_per_dim``, ``elbo``, ...).

Every sampler and ``log_likelihood`` checks what the score returns: a shape other than ``x.shape`` is a
``ValueError`` at once; NaN / infinite values are recorded on the device (no host sync per step) and
raise one ``ValueError`` naming the sampler, the first time and the number of samples affected when
the call ends (``scoresde.score.CountingScore``).

The name tuples (``PREDICTORS`` / ``CORRECTORS`` registries, ``ODE_METHODS``, ``TRACES``,
``FAST_ORDERS``, ``SKIP_TYPES``) and ``check_pc_options`` let a config validator reject bad choices
before any work starts."""
from scoresde.likelihood import SCORE_TIMES as VLB_SCORE_TIMES
from scoresde.likelihood import VARIANCES as VLB_VARIANCES
from scoresde.likelihood import (TRACES, VLBTerms, bits_per_dim, bits_per_dim_bound, ddpm_vlb,
                                 discretized_gaussian_log_likelihood, elbo, iw_bound, iw_from_log_weights,
                                 iw_log_weights, log_likelihood, vlb_terms)
from scoresde.samplers.correctors import CORRECTORS, Corrector, register_corrector
from scoresde.samplers.ddim import ddim_sample
from scoresde.samplers.ddpm import ddpm_sample
from scoresde.samplers.dpm_solver import dpm_solver_sample
from scoresde.samplers.edm import edm_sample
from scoresde.samplers.fast import SOLVERS as FAST_SOLVERS
from scoresde.samplers.fast import fast_sample
from scoresde.samplers.guidance import (classifier_free_guidance, classifier_free_guidance_batched, classifier_guidance,
                                        classifier_log_prob_fn, dynamic_threshold, dynamic_thresholding)
from scoresde.samplers.inpaint import METHODS as INPAINT_METHODS
from scoresde.samplers.inpaint import colorize, grey_basis, inpaint
from scoresde.samplers.ode import METHODS as ODE_METHODS
from scoresde.samplers.ode import ode_encode, ode_sample
from scoresde.samplers.pc import check_pc_options, pc_sample
from scoresde.samplers.predictors import PREDICTORS, Predictor, register_predictor
from scoresde.samplers.schedules import SKIP_TYPES, get_time_steps, karras_sigmas
from scoresde.samplers.sde_dpm_solver import sde_dpm_solver_sample
from scoresde.samplers.solver import ORDERS as FAST_ORDERS
from scoresde.samplers.time_grid import TimeGridFit, fit_time_grids, optimize_time_grid
from scoresde.samplers.unipc import UNIPC_VARIANTS, unipc_sample

__all__ = ["pc_sample", "ode_sample", "ode_encode", "fast_sample", "dpm_solver_sample", "sde_dpm_solver_sample",
           "unipc_sample", "ddim_sample", "ddpm_sample", "get_time_steps", "log_likelihood", "bits_per_dim", "check_pc_options",
           "register_predictor", "register_corrector", "PREDICTORS", "CORRECTORS", "Predictor", "Corrector",
           "SKIP_TYPES", "UNIPC_VARIANTS", "FAST_ORDERS", "ODE_METHODS", "TRACES", "edm_sample", "karras_sigmas",
           "FAST_SOLVERS", "classifier_free_guidance", "classifier_guidance", "classifier_log_prob_fn",
           "classifier_free_guidance_batched", "dynamic_threshold", "dynamic_thresholding", "inpaint", "colorize",
           "grey_basis", "INPAINT_METHODS", "elbo", "vlb_terms", "ddpm_vlb", "VLBTerms", "VLB_VARIANCES",
           "VLB_SCORE_TIMES", "iw_bound", "iw_log_weights", "iw_from_log_weights", "bits_per_dim_bound",
           "discretized_gaussian_log_likelihood", "optimize_time_grid", "fit_time_grids", "TimeGridFit"]
