"""Everything that runs a process backwards: predictor-corrector, probability-flow ODE, few-step
solvers (DPM-Solver++ / DDIM) and exact likelihoods. Samplers need only a ``score_fn(x, t)``.

Every sampler and ``log_likelihood`` checks what the score returns: a shape other than ``x.shape`` is a
``ValueError`` at once; NaN / infinite values are recorded on the device (no host sync per step) and
raise one ``ValueError`` naming the sampler, the first time and the number of samples affected when
the call ends (``samplers.common.CountingScore``).

The name tuples (``PREDICTORS`` / ``CORRECTORS`` registries, ``ODE_METHODS``, ``TRACES``,
``FAST_ORDERS``, ``SKIP_TYPES``) and ``check_pc_options`` let a config validator reject bad choices
before any work starts."""
from samplers.correctors import CORRECTORS, Corrector, register_corrector
from samplers.fast import ORDERS as FAST_ORDERS
from samplers.fast import SKIP_TYPES, ddim_sample, fast_sample, get_time_steps
from samplers.likelihood import TRACES, bits_per_dim, log_likelihood
from samplers.ode import METHODS as ODE_METHODS
from samplers.ode import ode_encode, ode_sample
from samplers.pc import check_pc_options, pc_sample
from samplers.predictors import PREDICTORS, Predictor, register_predictor

__all__ = ["pc_sample", "ode_sample", "ode_encode", "fast_sample", "ddim_sample", "get_time_steps",
           "log_likelihood", "bits_per_dim", "check_pc_options", "register_predictor", "register_corrector",
           "PREDICTORS", "CORRECTORS", "Predictor", "Corrector", "SKIP_TYPES", "FAST_ORDERS", "ODE_METHODS",
           "TRACES"]
