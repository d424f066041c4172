"""Few-step generators distilled from (or trained like) a diffusion model; between the samplers and the
training loop in the layering (they use ``samplers`` and ``models``, and nothing above them).

- ``consistency``: consistency models (Song et al. 2023; Song & Dhariwal 2023): ``ConsistencyFunction``,
  ``cd_loss`` (distillation from a teacher ``score_fn``), ``ct_loss`` (improved consistency training),
  ``make_target`` (the EMA target network), ``consistency_sample`` (multistep sampling, ``(x, nfe)``).
- ``progressive``: progressive distillation (Salimans & Ho 2022): ``progressive_loss``, ``ddim_targets``.
"""
from scoresde.distill.consistency import (DISTANCES, ODE_STEPS, ConsistencyFunction, ConsistencyGrid, cd_loss,
                                          consistency_grid, consistency_sample, ct_loss, ct_steps, make_target,
                                          ode_step, pseudo_huber)
from scoresde.distill.progressive import ddim_targets, progressive_loss, student_times

__all__ = ["ConsistencyFunction", "ConsistencyGrid", "consistency_grid", "cd_loss", "ct_loss", "ct_steps",
           "make_target", "ode_step", "pseudo_huber", "consistency_sample", "ODE_STEPS", "DISTANCES",
           "progressive_loss", "ddim_targets", "student_times"]
