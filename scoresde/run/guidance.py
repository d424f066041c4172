"""The score a batch of samples (or completions) is drawn with, by ``sampling.label`` and
``sampling.guidance``: the model's score of ``p(x)``, its class-conditional score, classifier-free
guidance or classifier guidance. What ``sample``, ``inpaint`` and ``colorize`` share."""
from __future__ import annotations

from typing import Callable

import torch

from scoresde import samplers
from scoresde.models import null_label
from scoresde.models.image_cond import null_condition
from scoresde.run.inference import Inference, LoadedClassifier
from scoresde.run.options import RunOptions


def unconditional_score(options: RunOptions, inf: Inference) -> Callable:
    """The model's score of ``p_t(x)`` (``inf.score_fn``: the network itself, or the null label of one
    trained with label dropout); a one-line error for a class-conditional model without one. How the
    model was trained is read from the options stored with its weights (``inf.trained``), never from
    the requested ones."""
    trained = inf.trained.train
    if inf.trained.network.cond_channels and not trained.label_dropout and options.sampler.guidance != "none":
        raise ValueError(f"this image-conditioned model was trained without condition dropout "
                         f"(training.label_dropout={trained.label_dropout} in its checkpoint), so it has no "
                         f"unconditional score: config.sampling.guidance={options.sampler.guidance!r} needs that "
                         f"score: use sampling.guidance='none'")
    if inf.trained.network.num_classes and not trained.label_dropout:
        guidance = options.sampler.guidance
        fix = ("set config.sampling.label to a class index or 'all'" if guidance == "none" else
               f"config.sampling.guidance={guidance!r} needs that score: use sampling.guidance='none'")
        raise ValueError(f"this model is class-conditional and was trained without label dropout "
                         f"(training.label_dropout={trained.label_dropout} in its checkpoint), so it has no "
                         f"unconditional score: {fix}")
    return inf.score_fn


def guided_score_for(options: RunOptions, inf: Inference, classifier: LoadedClassifier | None) -> Callable:
    """``score_for(labels)``: the score a batch of samples of classes ``labels`` is drawn with, by
    ``sampling.guidance``: the conditional model itself (none), classifier-free guidance
    ``s_u + w (s_c - s_u)`` (cfg), or ``s_u + w grad_x log p_phi(y | x_t, t)`` (classifier)."""
    sampler = options.sampler
    # refused at once, before any sample is drawn, when guidance needs a score the model never learnt
    uncond = unconditional_score(options, inf) if sampler.guidance != "none" else None

    def score_for(labels: torch.Tensor) -> Callable:
        if sampler.guidance == "none":
            return inf.score_with(labels)
        if sampler.guidance == "cfg":
            if sampler.guidance_scale in (0.0, 1.0):
                return samplers.classifier_free_guidance(uncond, inf.score_with(labels), sampler.guidance_scale)
            null = (null_condition(labels) if inf.trained.network.cond_channels else
                    torch.full_like(labels, null_label(inf.trained.network.num_classes)))
            return samplers.classifier_free_guidance_batched(inf.score_with(torch.cat([labels, null])),
                                                             sampler.guidance_scale)
        log_prob = samplers.classifier_log_prob_fn(classifier.logits_fn, labels)
        return samplers.classifier_guidance(uncond, log_prob, sampler.guidance_scale)

    return score_for
