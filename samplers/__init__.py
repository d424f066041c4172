"""Everything that runs a process backwards: predictor-corrector, probability-flow ODE, few-step
solvers (DPM-Solver++ / DDIM) and exact likelihoods. Samplers need only a ``score_fn(x, t)``."""
from samplers.correctors import CORRECTORS, Corrector, register_corrector
from samplers.fast import SKIP_TYPES, ddim_sample, fast_sample, get_time_steps
from samplers.likelihood import bits_per_dim, log_likelihood
from samplers.ode import ode_encode, ode_sample
from samplers.pc import pc_sample
from samplers.predictors import PREDICTORS, Predictor, register_predictor

__all__ = ["pc_sample", "ode_sample", "ode_encode", "fast_sample", "ddim_sample", "get_time_steps", "SKIP_TYPES",
           "log_likelihood", "bits_per_dim", "register_predictor", "register_corrector", "PREDICTORS",
           "CORRECTORS", "Predictor", "Corrector"]
