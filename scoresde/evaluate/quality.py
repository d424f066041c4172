"""Sample quality in ``--mode eval`` (``eval.sample_quality``): ``eval.quality_samples`` samples from the
config's sampler against the held-out items, in a feature space: the digits classifier's for digits
(``scoresde/evaluate/metrics.py``: deterministic, trained on the clean training split, cached), the
TF-ported FID Inception otherwise (``evaluate/features.py``; the user's weights file, ``eval.inception_weights``).
Reports the Fréchet distance (``fd``; FID with Inception features), KID (``kid``, x 1e3, with the spread
over subsets), improved precision / recall, and for digits the classifier score and the class histogram.
Samples are quantised to the data's grey levels and read at the cell centres, as the real items are."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from scoresde.run.distributed import DistContext
from scoresde.run.generation import generate
from scoresde.run.inference import Inference
from scoresde.run.options import RunOptions
from scoresde.data.pipeline import DataSpec
from scoresde.evaluate.features import (DIGITS_FEATURES, FeatureSpace, feature_space, items_at_centres,
                                        items_from_samples)
from scoresde.evaluate.metrics import (class_histogram, classifier_score, digits_classifier, fid_from_features,
                                     kid, precision_recall)
from scoresde.data.streams import Stream, generator

KID_SUBSETS, KID_SUBSET_SIZE = 100, 200


def sample_quality_metrics(options: RunOptions, inf: Inference, spec: DataSpec, ctx: DistContext) -> dict:
    """FD, KID, precision / recall (and for digits the classifier score) of fresh samples against ``spec.test``
    (images; a latent model's samples are decoded by its first stage, ``inf.data``)."""
    n = options.eval.quality_samples
    start = time.perf_counter()
    x, nfe = generate(inf.sde, inf.score_fn, n, inf.data.model_shape, options.sampler,
                      generator=generator(options.seed, Stream.QUALITY, ctx.rank, ctx.device), ctx=ctx)
    space = feature_space(spec, options.eval.inception_weights, ctx.device)
    fake = items_from_samples(x, inf.data)
    fake_features, real_features = space(fake), space(items_at_centres(spec.test, spec))
    kid_mean, kid_std = kid(real_features, fake_features, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                            generator=torch.Generator().manual_seed(options.seed))
    precision, recall = precision_recall(real_features, fake_features)
    metrics = {"fd": fid_from_features(real_features, fake_features), "kid": 1e3 * kid_mean, "kid_std": 1e3 * kid_std,
               "precision": precision, "recall": recall, "quality_samples": n, "quality_nfe": nfe,
               "quality_sampler": options.sampler.method, "quality_time_s": round(time.perf_counter() - start, 3),
               "quality_features": "digits classifier" if space.name == DIGITS_FEATURES else "Inception (pytorch-fid)"}
    if space.name == DIGITS_FEATURES:
        judge = digits_classifier()
        probs = judge.probs(fake)
        metrics["classifier_score"] = classifier_score(probs)
        metrics["class_histogram"] = [round(float(v), 4) for v in class_histogram(probs.argmax(1), 10)]
    return metrics


def quality_line(metrics: dict) -> str:
    line = (f"sample quality ({metrics['quality_samples']} samples, {metrics['quality_sampler']} sampler, "
            f"{metrics['quality_nfe']} NFE; {metrics['quality_features']} features, against the held-out items): "
            f"FD {metrics['fd']:.3f}, KID x 1e3 {metrics['kid']:.2f} +- {metrics['kid_std']:.2f}, precision "
            f"{metrics['precision']:.3f}, recall {metrics['recall']:.3f}")
    if "classifier_score" in metrics:
        line += f", classifier score {metrics['classifier_score']:.2f} (10 at most)"
    return line


# ------------------------------------------------------------------------------ during training
@dataclass(frozen=True)
class QualityReference:
    """The held-out items' features, computed once per training run, that training's KID / FD compare with."""

    space: FeatureSpace
    features: torch.Tensor


def heldout_reference(spec: DataSpec, inception_weights: str | None, device) -> QualityReference:
    space = feature_space(spec, inception_weights, device)
    return QualityReference(space, space(items_at_centres(spec.test.cpu(), spec)))


def training_quality(samples: torch.Tensor, spec: DataSpec, metric: str, reference: QualityReference) -> dict:
    """KID (x 1e3, with its spread over subsets; keys ``kid@<n>``, ``kid_std@<n>``) or the Fréchet distance
    (``fd@<n>``) of ``n`` model-space samples against the held-out items, labelled with the feature network."""
    n = len(samples)
    features = reference.space(items_from_samples(samples, spec))
    labels = {"quality_features": reference.space.name, "quality_reference_items": len(reference.features)}
    if metric == "fid":
        return {f"fd@{n}": fid_from_features(reference.features, features), **labels}
    kid_mean, kid_std = kid(reference.features, features, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                            generator=torch.Generator().manual_seed(0))
    return {f"kid@{n}": 1e3 * kid_mean, f"kid_std@{n}": 1e3 * kid_std, **labels}
