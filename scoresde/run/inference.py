"""What ``eval`` and ``sample`` share: the newest checkpoint's EMA weights in the network its stored
options build, and the score function of that network (or a pretrained model's,
``scoresde/run/pretrained.py``); and a noise-conditional classifier's for guidance. The training weights
are not loaded."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from scoresde.distill import ConsistencyFunction
from scoresde.models import ExponentialMovingAverage, get_logits_fn, get_score_fn, null_label
from scoresde.models.image_cond import null_condition
from scoresde.sde_lib import SDE
from scoresde.run.checkpoint import load_latest
from scoresde.run.drift import check_options_drift
from scoresde.run.distributed import DistContext
from scoresde.run.options import DataOptions, DistillOptions, RunOptions, SamplerOptions
from scoresde.run.pretrained import SHIPPED, Pretrained, load_pretrained, shipped_model, shipped_network
from scoresde.data.pipeline import DataSpec, spec_from_meta
from scoresde.run.runtime import accelerated_score_fn, local_processes, resolve_accel, set_threads
from scoresde.run.workdir import checkpoint_dir

logger = logging.getLogger(__name__)


@dataclass
class Inference:
    sde: SDE
    model: nn.Module                  # the EMA's network, in eval mode
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: DataSpec                    # tensor-free: shape, levels, scaling
    step: int
    checkpoint: Path
    trained: RunOptions               # the options the weights were trained with (what checks of the model read)
    score_with: Callable | None = None   # score_with(cond): the score given class labels (conditional models)
    pretrained: bool = False          # model.pretrained's weights (``checkpoint`` is their path), not trained here
    consistency: bool = False         # a consistency student: ``score_fn`` is its f(x, t), not a score

    @property
    def weights(self) -> str:
        """Which weights these are, for captions and log lines."""
        if not self.pretrained:
            return f"EMA weights of step {self.step}"
        return f"pretrained weights from {self.checkpoint}" + (f" (step {self.step})" if self.step else "")


def _check_dataset(options: DataOptions, meta: dict, path: Path) -> None:
    if meta["dataset"] != options.dataset or bool(meta["centered"]) != bool(options.centered):
        raise ValueError(f"{path} was trained on data.dataset={meta['dataset']!r} (centered={meta['centered']}), "
                         f"but config.data.dataset={options.dataset!r} (centered={options.centered})")


@dataclass
class Trained:
    """The newest checkpoint of a work directory, read: the options it was trained with and its state."""

    options: RunOptions               # stored with it (``RunOptions.from_json``)
    state: dict                       # ``checkpoint.read_checkpoint``'s dict
    path: Path

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_trained(workdir: str | Path, missing: str) -> Trained:
    """The newest readable checkpoint of ``workdir``; ``FileNotFoundError`` with ``missing`` (a message
    with ``{directory}``) when there is none."""
    directory = checkpoint_dir(workdir)
    found = load_latest(directory)
    if found is None:
        raise FileNotFoundError(missing.format(directory=directory))
    state, path = found
    return Trained(options=RunOptions.from_json(state["options"]), state=state, path=path)


def ema_network(trained: Trained, device: torch.device) -> nn.Module:
    """The checkpoint's EMA weights, loaded strictly into the network its stored options build (in eval mode)."""
    shape = spec_from_meta(trained.state["meta"]).model_shape
    ema = ExponentialMovingAverage(trained.options.network.build(shape).to(device))
    try:
        ema.load_state_dict(trained.state["ema"])
    except ValueError as err:
        raise ValueError(f"{trained.path}: the EMA weights do not match the network built from the config: "
                         f"{err}") from err
    return ema.module


def load_for_inference(options: RunOptions, workdir: str | Path, ctx: DistContext) -> Inference:
    """The newest readable checkpoint of ``workdir``; its EMA weights, loaded strictly. With
    ``model.pretrained``, that model instead (``scoresde/run/pretrained.py``)."""
    if options.network.pretrained is not None:
        return pretrained_inference(options, ctx)
    trained = read_trained(workdir, "no checkpoint in {directory}; run --mode train first")
    path = trained.path
    check_options_drift(trained.options, options, str(path), resume=False)
    if trained.options.loss.is_classifier:
        raise ValueError(f"{path} holds a noise-conditional classifier: it has no score to sample from or "
                         f"likelihood to evaluate; use it through sampling.classifier_workdir")
    _check_dataset(options.data, trained.state["meta"], path)
    module = ema_network(trained, ctx.device)
    if ctx.device.type == "cpu":
        set_threads(options.train.threads, local_processes())
    sde = options.sde.build()
    logger.info("loaded EMA weights of step %d from %s", trained.step, path)
    accel = resolve_accel(ctx.device, options.train.accel)
    network = torch.compile(module) if accel.compile else module
    distill = check_distilled_sampler(trained.options, options.sampler, path)
    if distill is not None and distill.is_consistency:
        classes = trained.options.network.num_classes        # a conditional network: its unconditional model
        f = ConsistencyFunction(network, sde, eps=distill.eps, sigma_data=distill.sigma_data,
                                cond=null_label(classes) if classes else None)
        return Inference(sde=sde, model=module, score_fn=f, data=spec_from_meta(trained.state["meta"]),
                         step=trained.step, checkpoint=path, trained=trained.options, consistency=True)

    def score_with(cond: torch.Tensor | None):
        score_fn = get_score_fn(sde, network, train=False, cond=cond, **options.network.score_kwargs)
        return accelerated_score_fn(score_fn, accel, ctx.device)

    return Inference(sde=sde, model=module, score_fn=marginal_score(trained.options, score_with),
                     data=spec_from_meta(trained.state["meta"]), step=trained.step, checkpoint=path,
                     trained=trained.options, score_with=score_with)


def check_distilled_sampler(trained: RunOptions, sampler: SamplerOptions, path: Path) -> DistillOptions | None:
    """A distilled student samples only as it was trained: a consistency student (distill.method cd / ct)
    with ``sampling.method=consistency``, a progressive one with ``ddim`` on its own grid (its steps and
    eps); a score model never with ``consistency``. Returns the student's distill options (``None``: a
    score model of ``--mode train``)."""
    distill = trained.distill
    if distill is None:
        if sampler.method == "consistency":
            raise ValueError(f"config.sampling.method='consistency' samples a consistency student (--mode distill "
                             f"with distill.method cd or ct); {path} holds a score model: use pc, ode, fast, ddim, "
                             f"edm or ddpm")
        return None
    if distill.is_consistency and sampler.method != "consistency":
        raise ValueError(f"{path} holds a consistency student (distill.method={distill.method!r}): it has no score; "
                         f"sample it with --config.sampling.method=consistency --config.sampling.steps=1 (or 2, 4), "
                         f"got sampling.method={sampler.method!r}")
    if distill.method == "progressive":
        eps = trained.sampler.eps
        if (sampler.method, sampler.steps, sampler.eps) != ("ddim", distill.student_steps, eps):
            raise ValueError(f"{path} holds a progressive-distillation student for {distill.student_steps} DDIM "
                             f"steps: sample it with --config.sampling.method=ddim --config.sampling.steps="
                             f"{distill.student_steps} (sampling.eps={eps:g}), got method={sampler.method!r}, "
                             f"steps={sampler.steps}, eps={sampler.eps:g}")
    return distill


def pretrained_inference(options: RunOptions, ctx: DistContext) -> Inference:
    """``Inference`` of the model ``model.pretrained`` names (step 0: it was not trained here, so the
    requested options stand for the trained ones)."""
    loaded = load_pretrained(options, ctx)
    if loaded.trained is not None:       # a shipped model: its own options say how it was trained
        return shipped_inference(loaded)

    def score_with(cond: torch.Tensor | None):
        if cond is None:
            return loaded.score_fn
        return lambda x, t: loaded.score_fn(x, t, cond)

    return Inference(sde=loaded.sde, model=loaded.model, score_fn=loaded.score_fn, data=loaded.data, step=0,
                     checkpoint=loaded.path, trained=options, score_with=score_with, pretrained=True)


def shipped_inference(loaded: Pretrained) -> Inference:
    """``Inference`` of a shipped model, scored as a checkpoint of this package is (its stored options
    give the score's arguments and, for a class-conditional model, its null label's score of ``p(x)``)."""
    trained = loaded.trained

    def score_with(cond: torch.Tensor | None):
        return get_score_fn(loaded.sde, loaded.model, train=False, cond=cond, **trained.network.score_kwargs)

    return Inference(sde=loaded.sde, model=loaded.model, score_fn=marginal_score(trained, score_with),
                     data=loaded.data, step=loaded.step, checkpoint=loaded.path, trained=trained, score_with=score_with,
                     pretrained=True)


def marginal_score(trained: RunOptions, score_with: Callable) -> Callable:
    """The score of ``p_t(x)`` (what eval's likelihoods and unlabelled sampling use): the network's own, or
    for a class-conditional network trained with label dropout (by its ``trained`` options) its null label's."""
    classes, channels = trained.network.num_classes, trained.network.cond_channels
    if not classes and not channels:
        return score_with(None)
    if not trained.train.label_dropout:
        def unavailable(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            what, fix = (("class-conditional", "sampling.label") if classes else
                         ("image-conditioned", "sampling.cascade or sampling.low_res_from"))
            raise ValueError(f"this {what} model was trained without label dropout (training.label_dropout = 0): it "
                             f"has no score of p(x) for likelihoods or unconditional samples; sample with {fix}")
        return unavailable

    # one labels tensor and score per batch shape: the network checks a labels tensor once, not at every step
    by_batch: dict = {}

    def null_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = (x.shape[0], x.device)
        if key not in by_batch:
            if channels:   # the null image condition: zeros of the packed shape (B, C + 2, r, r)
                r = trained.data.low_res
                null = null_condition(x.new_empty((x.shape[0], channels + 2, r, r)))
            else:
                null = torch.full((x.shape[0],), null_label(classes), dtype=torch.long, device=x.device)
            by_batch[key] = score_with(null)
        return by_batch[key](x, t)

    return null_score


def check_companion(stored: RunOptions, options: RunOptions, who: str, other: str) -> None:
    """A model used beside the config's (a distillation teacher, a guiding classifier) must have been trained
    on its data and process: ``ValueError`` starting with ``who`` otherwise."""
    if stored.data.dataset != options.data.dataset or stored.data.centered != options.data.centered:
        raise ValueError(f"{who} was trained on data.dataset={stored.data.dataset!r} (centered={stored.data.centered}), "
                         f"{other} on {options.data.dataset!r} (centered={options.data.centered}); they must match")
    if stored.sde != options.sde:
        raise ValueError(f"{who} was trained on the process {stored.sde.name} {dict(stored.sde.kwargs)}, {other} on "
                         f"{options.sde.name} {dict(options.sde.kwargs)}; they must match")


@dataclass
class Teacher:
    """The EMA weights of a trained score model, as the teacher of ``--mode distill``."""

    network: nn.Module                # in eval mode
    options: RunOptions               # the options it was trained with
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    step: int
    checkpoint: Path


def teacher_network(source: str, ctx: DistContext) -> tuple[nn.Module, RunOptions, int, Path]:
    """``(EMA network, its options, step, file)`` of a work directory's newest checkpoint, or of the shipped
    model ``source`` names (``distill.teacher_workdir=digits``; a local folder of that name is ``./digits``)."""
    if source in SHIPPED:
        module, info = shipped_network(source, ctx.device)
        return module, shipped_model(source).options(info), int(info["step"]), shipped_model(source).weights_path
    trained = read_trained(source, "config.distill.teacher_workdir: no checkpoint in {directory}; train the "
                                   "teacher there first (--mode train)")
    if trained.options.loss.is_classifier:
        raise ValueError(f"config.distill.teacher_workdir: {trained.path} holds a classifier, which has no score; "
                         f"the teacher is a score model of --mode train")
    return ema_network(trained, ctx.device), trained.options, trained.step, trained.path


def load_teacher(source: str, options: RunOptions, ctx: DistContext) -> Teacher:
    """A work directory's newest checkpoint (or a shipped model) as a teacher: a score model of the data and
    process of ``options``, unconditional or class-conditional with label dropout (its null label's score:
    the unconditional model); ``ValueError`` naming ``config.distill.teacher_workdir`` otherwise."""
    what = "config.distill.teacher_workdir"
    module, stored, step, path = teacher_network(source, ctx)
    if stored.distill is not None and stored.distill.is_consistency:
        raise ValueError(f"{what}: {path} holds a consistency student, which has no score; the teacher is a score "
                         f"model")
    check_companion(stored, options, f"{what}: the teacher {path}", "this config")
    if stored.network.num_classes and not stored.train.label_dropout:
        raise ValueError(f"{what}: the teacher {path} is class-conditional without label dropout (training."
                         f"label_dropout=0): it has no unconditional score to distil")
    sde = stored.sde.build()

    def score_with(cond: torch.Tensor | None):
        return get_score_fn(sde, module, train=False, cond=cond, **stored.network.score_kwargs)

    logger.info("teacher: weights of step %d from %s", step, path)
    return Teacher(network=module, options=stored, score_fn=marginal_score(stored, score_with), step=step,
                   checkpoint=path)


@dataclass
class LoadedClassifier:
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    num_classes: int
    step: int
    checkpoint: Path


def load_classifier(workdir: str | Path, options: RunOptions, ctx: DistContext) -> LoadedClassifier:
    """The EMA weights of the noise-conditional classifier trained in ``workdir``, as ``logits_fn(x, t)``.
    It must have been trained on the same data and process as the score model it guides."""
    trained = read_trained(workdir, "config.sampling.classifier_workdir: no checkpoint in {directory}; train a "
                                    "classifier there first (training.loss='classifier')")
    stored, path = trained.options, trained.path
    if not stored.loss.is_classifier:
        raise ValueError(f"config.sampling.classifier_workdir: {path} holds a {stored.loss.name!r} model, not a "
                         f"classifier (training.loss='classifier')")
    check_companion(stored, options, f"config.sampling.classifier_workdir: the classifier {path}", "the score model")
    module = ema_network(trained, ctx.device)
    logger.info("loaded the classifier's EMA weights of step %d from %s", trained.step, path)
    logits_fn = get_logits_fn(stored.sde.build(), module, train=False, continuous=stored.network.continuous)
    return LoadedClassifier(logits_fn=logits_fn, num_classes=stored.network.num_classes, step=trained.step,
                            checkpoint=path)
