"""Everything that runs a process backwards: predictor-corrector, probability-flow ODE, few-step
solvers (DPM-Solver++ / DDIM) and exact likelihoods. Samplers need only a ``score_fn(x, t)``.

Every sampler and ``log_likelihood`` checks what the score returns: a shape other than ``x.shape`` is a
``ValueError`` at once; NaN / infinite values are recorded on the device (no host sync per step) and
raise one ``ValueError`` naming the sampler, the first time and the number of samples affected when
the call ends (``samplers.common.CountingScore``).

Controllable generation: guidance as score transforms (``classifier_free_guidance``,
``classifier_guidance``, ``dynamic_thresholding``; ``scoresde/samplers/guidance.py``) that every sampler takes
unchanged, and imputation / colorization (``inpaint``, ``colorize``; ``scoresde/samplers/inpaint.py``).

The name tuples (``PREDICTORS`` / ``CORRECTORS`` registries, ``ODE_METHODS``, ``TRACES``,
``FAST_ORDERS``, ``SKIP_TYPES``) and ``check_pc_options`` let a config validator reject bad choices
before any work starts."""
from scoresde.samplers.bounds import SCORE_TIMES as VLB_SCORE_TIMES
from scoresde.samplers.bounds import VARIANCES as VLB_VARIANCES
from scoresde.samplers.bounds import (VLBTerms, bits_per_dim_bound, ddpm_vlb, discretized_gaussian_log_likelihood, elbo,
                             iw_bound, iw_from_log_weights, iw_log_weights, vlb_terms)
from scoresde.samplers.correctors import CORRECTORS, Corrector, register_corrector
from scoresde.samplers.edm import edm_sample, karras_sigmas  # EDM's Heun / churn samplers (issue 14)
from scoresde.samplers.fast import SOLVERS as FAST_SOLVERS  # ODE or SDE DPM-Solver++ (issue 14)
from scoresde.samplers.fast import ORDERS as FAST_ORDERS
from scoresde.samplers.fast import SKIP_TYPES, UNIPC_VARIANTS, ddim_sample, fast_sample, get_time_steps
from scoresde.samplers.time_grid import TimeGridFit, optimize_time_grid  # grids fitted to the score (issue 11)
from scoresde.samplers.guidance import (classifier_free_guidance, classifier_free_guidance_batched, classifier_guidance,
                               classifier_log_prob_fn, dynamic_threshold, dynamic_thresholding)
from scoresde.samplers.inpaint import METHODS as INPAINT_METHODS
from scoresde.samplers.inpaint import colorize, grey_basis, inpaint
from scoresde.samplers.likelihood import TRACES, bits_per_dim, log_likelihood
from scoresde.samplers.ode import METHODS as ODE_METHODS
from scoresde.samplers.ode import ode_encode, ode_sample
from scoresde.samplers.pc import check_pc_options, pc_sample
from scoresde.samplers.predictors import PREDICTORS, Predictor, register_predictor

__all__ = ["pc_sample", "ode_sample", "ode_encode", "fast_sample", "ddim_sample", "get_time_steps",
           "log_likelihood", "bits_per_dim", "check_pc_options", "register_predictor", "register_corrector",
           "PREDICTORS", "CORRECTORS", "Predictor", "Corrector", "SKIP_TYPES", "UNIPC_VARIANTS", "FAST_ORDERS", "ODE_METHODS",
           "TRACES", "edm_sample", "karras_sigmas", "FAST_SOLVERS", "classifier_free_guidance", "classifier_guidance", "classifier_log_prob_fn",
           "classifier_free_guidance_batched", "dynamic_threshold", "dynamic_thresholding", "inpaint", "colorize", "grey_basis", "INPAINT_METHODS",
           "elbo", "vlb_terms", "ddpm_vlb", "VLBTerms", "VLB_VARIANCES", "VLB_SCORE_TIMES", "iw_bound", "iw_log_weights",
           "iw_from_log_weights", "bits_per_dim_bound", "discretized_gaussian_log_likelihood",
           "optimize_time_grid", "TimeGridFit"]
