"""The objectives of ``--mode distill``: a few-step student trained by the training loop (``loop.train``
with an ``Objective``), so it gets the same checkpoints, exact resume, signals, metrics and snapshots.

- ``ConsistencyObjective``: consistency distillation from a teacher's score (``distill.cd_loss``, the
  target network ``theta^-`` an EMA of the student, kept in the checkpoint) or improved consistency
  training without a teacher (``distill.ct_loss``, the grid growing with ``ct_steps``). The student is
  ``ConsistencyFunction(network)``; it samples with ``sampling.method=consistency``.
- ``ProgressiveObjective``: progressive distillation (``distill.progressive_loss``): ``pd_rounds`` rounds of
  ``training.n_iters / pd_rounds`` updates, each halving the DDIM steps of DDIM's own grid
  (``samplers.schedules.DDIM_SKIP_TYPE``, nested: every other time of the 2K-step grid is the K-step grid);
  at a round's start the student's weights become the teacher (kept in the checkpoint) and the EMA restarts.
  The student is a score model sampled with ``sampling.method=ddim``, ``steps`` its final steps.

A class-conditional network (e.g. initialised from a teacher trained with label dropout) is distilled and
sampled with its null label: the unconditional model. Every step's random draws come from a generator re-seeded with (seed, ``Stream.DISTILL``, step, rank), so a
resumed run repeats them exactly.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch
from torch import nn

from scoresde.distill import (ConsistencyFunction, cd_loss, consistency_grid, ct_loss, ct_steps, make_target,
                              progressive_loss)
from scoresde.models import ExponentialMovingAverage, get_score_fn, null_label
from scoresde.run import checkpoint as ckpt
from scoresde.run.options import DistillOptions, SamplerOptions
from scoresde.samplers.schedules import DDIM_SKIP_TYPE, get_time_steps
from scoresde.data.streams import Stream, step_seed
from scoresde.train.conditioning import network_fn
from scoresde.train.loop import Objective, TrainRun, ema_score_fn, finish_update


def step_generator(run: TrainRun) -> torch.Generator:
    """The CPU generator of this step's levels and noise (the distill losses draw on the CPU)."""
    return torch.Generator().manual_seed(step_seed(run.options.seed, Stream.DISTILL, run.step, run.ctx.rank))


def gradient_update(run: TrainRun, per_sample: torch.Tensor) -> torch.Tensor:
    """Backward of the mean of ``per_sample`` (after ``zero_grad``), then the loop's update; the detached loss."""
    loss = per_sample.float().mean()
    loss.backward()
    return finish_update(run, loss.detach())


def null_class(run: TrainRun) -> int | None:
    """The label a class-conditional student always gets (its null label); ``None`` for an unconditional one."""
    classes = run.options.network.num_classes
    return null_label(classes) if classes else None


def null_labels(run: TrainRun, x: torch.Tensor) -> torch.Tensor | None:
    cond = null_class(run)
    return None if cond is None else torch.full((x.shape[0],), cond, dtype=torch.long, device=x.device)


def start_from(run: TrainRun, network: nn.Module, what: str) -> None:
    """The student's weights := ``network``'s (strictly), and a fresh EMA of them."""
    ckpt.load_module_state(run.model, network.state_dict(), what)
    run.ema = ExponentialMovingAverage(run.model, decay=run.options.train.ema_rate)


class ConsistencyObjective(Objective):
    """Consistency distillation (``teacher_score`` given, ``distill.method='cd'``) or improved consistency
    training (``'ct'``, no teacher)."""

    heldout_loss = False          # f is no score: options.loss does not apply

    def __init__(self, options: DistillOptions, teacher_net: nn.Module | None = None,
                 teacher_score: Callable | None = None, teacher_path: str = "the teacher"):
        self.options, self.teacher_net, self.teacher_score = options, teacher_net, teacher_score
        self.teacher_path = teacher_path
        self.describe = options.describe
        self.target: ExponentialMovingAverage | None = None
        self.grids: dict = {}

    def attach(self, run: TrainRun) -> None:
        if self.teacher_net is not None and self.options.init_from_teacher:
            start_from(run, self.teacher_net, self.teacher_path)
        if self.options.method == "cd":
            self.target = make_target(run.model, self.options.target_decay)

    def function(self, network: nn.Module, run: TrainRun) -> ConsistencyFunction:
        return ConsistencyFunction(network, run.sde, eps=self.options.eps, sigma_data=self.options.sigma_data,
                                   cond=null_class(run))

    def grid(self, run: TrainRun, n: int):
        if n not in self.grids:
            self.grids[n] = consistency_grid(run.sde, n, eps=self.options.eps)
        return self.grids[n]

    def step(self, run: TrainRun, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        o, gen = self.options, step_generator(run)
        f = self.function(run.train_model, run)
        run.optimizer.zero_grad(set_to_none=True)
        if o.method == "cd":
            per_sample = cd_loss(f, self.function(self.target.module, run), self.teacher_score, x,
                                 self.grid(run, o.grid_size), generator=gen, solver=o.solver, distance_kind=o.distance)
        else:
            n = ct_steps(run.step, run.options.train.n_iters, o.ct_s0, o.ct_s1)
            per_sample = ct_loss(f, x, self.grid(run, n), generator=gen)
        loss = gradient_update(run, per_sample)
        if self.target is not None:
            self.target.update(run.model)
        return loss

    def state_dict(self) -> dict:
        return {} if self.target is None else {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.target is not None:
            self.target.load_state_dict(state["target"])

    def sampler(self, run: TrainRun) -> tuple[Callable, SamplerOptions]:
        """The EMA student, one step unless the config already samples with ``consistency``."""
        s = run.options.sampler
        steps = s.steps if s.method == "consistency" else 1
        return self.function(run.ema.module, run), dataclasses.replace(s, method="consistency", steps=steps)


class ProgressiveObjective(Objective):
    """Progressive distillation from ``teacher_net`` (the student's network), read with ``teacher_kwargs`` (its
    score's arguments) in the first round and with the student's own (the config's) after a hand-over: the
    student may change the parameterisation (Salimans & Ho 2022 distil into v-prediction)."""

    heldout_loss = False          # the student is a few-step sampler's score, not a fit of every level

    def __init__(self, options: DistillOptions, teacher_net: nn.Module, teacher_kwargs: dict, eps: float,
                 teacher_path: str = "the teacher"):
        self.options, self.teacher_kwargs, self.eps, self.teacher_path = options, teacher_kwargs, eps, teacher_path
        self.teacher_net = copy.deepcopy(teacher_net).eval().requires_grad_(False)
        self.describe = options.describe

    def attach(self, run: TrainRun) -> None:
        start_from(run, self.teacher_net, self.teacher_path)

    def round(self, run: TrainRun, step: int) -> int:
        """The round of update ``step + 1``: ``training.n_iters`` split evenly, the last round taking the rest."""
        per_round = max(run.options.train.n_iters // self.options.pd_rounds, 1)
        return min(step // per_round, self.options.pd_rounds - 1)

    def teacher_steps(self, run: TrainRun) -> int:
        return self.options.pd_start_steps // 2 ** self.round(run, run.step)

    def step(self, run: TrainRun, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if run.step > 0 and self.round(run, run.step) > self.round(run, run.step - 1):
            self.teacher_net.load_state_dict(run.model.state_dict())     # Salimans & Ho 2022, Alg. 2
            run.ema = ExponentialMovingAverage(run.model, decay=run.options.train.ema_rate)
        times = get_time_steps(run.sde, self.teacher_steps(run), self.eps, DDIM_SKIP_TYPE)
        labels = null_labels(run, x)
        student = network_fn(run.options, run.sde, run.train_model, labels, train=True)
        kwargs = self.teacher_kwargs if self.round(run, run.step) == 0 else run.options.network.score_kwargs
        teacher = get_score_fn(run.sde, self.teacher_net, train=False, cond=labels, **kwargs)
        run.optimizer.zero_grad(set_to_none=True)
        per_sample = progressive_loss(run.sde, student, teacher, x, times, generator=step_generator(run))
        return gradient_update(run, per_sample)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher_net.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_net.load_state_dict(state["teacher"], strict=True)

    def sampler(self, run: TrainRun) -> tuple[Callable, SamplerOptions]:
        """The EMA student with DDIM on its grid of the last update's round."""
        steps = self.options.pd_start_steps // 2 ** (self.round(run, max(run.step - 1, 0)) + 1)
        cond = null_class(run)
        fn = ema_score_fn(run) if cond is None else marginal(run, cond)
        return fn, dataclasses.replace(run.options.sampler, method="ddim", steps=steps, eps=self.eps)


def marginal(run: TrainRun, cond: int) -> Callable:
    """The EMA network's score with label ``cond`` for every sample (any batch size)."""
    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = torch.full((x.shape[0],), cond, dtype=torch.long, device=x.device)
        return ema_score_fn(run, labels)(x, t)
    return score
