"""Everything that runs a process backwards: predictor-corrector, probability-flow ODE, few-step
solvers (DPM-Solver++ / DDIM) and exact likelihoods. Samplers need only a ``score_fn(x, t)``."""
from samplers.correctors import CORRECTORS, Corrector, register_corrector
from samplers.fast import SKIP_TYPES, ddim_sample, fast_sample, get_time_steps
from samplers.likelihood import bits_per_dim, log_likelihood
from samplers.ode import ode_encode, ode_sample
from samplers.pc import pc_sample
from samplers.predictors import PREDICTORS, Predictor, register_predictor
