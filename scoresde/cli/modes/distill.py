"""The ``distill`` mode: train a few-step student of a trained teacher (``distill.method`` cd or
progressive) or a consistency model without one (ct) in ``--workdir``, with the training loop's
checkpoints, exact resume after SIGTERM / SIGINT, metrics, loss curve and snapshots
(``scoresde/train/distill.py``). Sample the student with ``--mode sample``: ``sampling.method=consistency``
(cd / ct, ``sampling.steps`` 1, 2, 4, ...) or ``ddim`` with ``steps = pd_start_steps / 2^pd_rounds``
(progressive)."""
from __future__ import annotations

from pathlib import Path

from scoresde.run.distributed import DistContext
from scoresde.run.inference import Teacher, load_teacher
from scoresde.run.options import RunOptions
from scoresde.train.distill import ConsistencyObjective, ProgressiveObjective
from scoresde.train.loop import Objective, train

TEACHER_METHODS = ("cd", "progressive")


def check_distill_run(options: RunOptions, workdir: str | Path) -> None:
    """What ``--mode distill`` needs besides a valid config: a teacher for cd / progressive (in another
    work directory), a score network (a class-conditional one is distilled with its null label), and
    progressive's student starting as its teacher."""
    d = options.distill
    if d is None:
        raise ValueError("--mode distill needs options built with distill options (options_from_config(config, "
                         "distill=True))")
    if d.method in TEACHER_METHODS and d.teacher_workdir is None:
        raise ValueError(f"config.distill.teacher_workdir is required for distill.method={d.method!r}: the work "
                         f"directory of a teacher trained with --mode train (distill.method='ct' needs none)")
    if d.teacher_workdir is not None and Path(d.teacher_workdir).resolve() == Path(workdir).resolve():
        raise ValueError(f"config.distill.teacher_workdir={d.teacher_workdir!r} is --workdir itself: the student "
                         f"needs a work directory of its own")
    if options.loss.is_classifier:
        raise ValueError("--mode distill trains a generator: training.loss must be a score model's loss, got "
                         "'classifier'")
    if d.method == "progressive" and not d.init_from_teacher:
        raise ValueError("config.distill.init_from_teacher must be True for distill.method='progressive' (the "
                         "student starts as its teacher and takes its place each round)")


def check_same_network(options: RunOptions, teacher: Teacher) -> None:
    """Initialising the student from the teacher needs the teacher's network (its output may be read
    otherwise: a consistency function's F, or progressive's model.parameterization)."""
    mine, theirs = options.network, teacher.options.network
    if (mine.name, dict(mine.kwargs)) != (theirs.name, dict(theirs.kwargs)):
        raise ValueError(f"config.distill.init_from_teacher=True needs the teacher's network: {teacher.checkpoint} is "
                         f"{theirs.name} {dict(theirs.kwargs)}, the config gives {mine.name} {dict(mine.kwargs)}; "
                         f"start from the teacher's config or set distill.init_from_teacher=False (cd / ct)")


def objective_for(options: RunOptions, teacher: Teacher | None) -> Objective:
    d = options.distill
    if teacher is not None and d.init_from_teacher:
        check_same_network(options, teacher)
    if d.method == "progressive":
        return ProgressiveObjective(d, teacher.network, teacher.options.network.score_kwargs, eps=options.sampler.eps,
                                    teacher_path=str(teacher.checkpoint))
    if teacher is None:
        return ConsistencyObjective(d)
    score = teacher.score_fn if d.method == "cd" else None
    return ConsistencyObjective(d, teacher.network, score, teacher_path=str(teacher.checkpoint))


def distill(options: RunOptions, workdir: str | Path, ctx: DistContext) -> dict:
    """``--mode distill``; returns the training loop's ``{"step", "stopped_by_signal", "signal"}``."""
    check_distill_run(options, workdir)
    teacher = load_teacher(options.distill.teacher_workdir, options, ctx) if options.distill.teacher_workdir else None
    return train(options, workdir, ctx, objective=objective_for(options, teacher))
