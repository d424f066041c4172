"""Everything that runs a process backwards: predictor-corrector, probability-flow ODE, few-step
solvers (DPM-Solver++ / DDIM) and exact likelihoods. Samplers need only a ``score_fn(x, t)``."""
