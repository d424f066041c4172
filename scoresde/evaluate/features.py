"""The feature spaces sample-quality metrics are computed in, and reference statistics cached in them.

- ``feature_space(spec, inception_weights, device)``: the digits classifier's 64-d features for digits
  (``metrics.digits_classifier``), the FID Inception's 2048-d pool features for other images (the
  user's weights file, loaded once); ``ValueError`` for data that are not images.
- ``items_from_samples(x, spec)``: model-space samples as the real items are read, quantised to the
  data's grey levels and taken at the cell centres (the same ``(v + 1/2) / K`` as the held-out items).
- ``load_reference(path, space)``: a pytorch-fid ``.npz`` (``mu`` ``(d,)``, ``sigma`` ``(d, d)``) read
  strictly, or a one-line ``ValueError`` naming the file and what was expected.
- ``RunningStatistics``: mean and covariance of features added batch by batch (50 000 Inception
  features need not be held at once).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scoresde.data.datasets import dequantize, quantize
from scoresde.data.pipeline import DataSpec, to_data_space
from scoresde.evaluate.metrics import digits_classifier, inception_weights_path

F64 = torch.float64
DIGITS_FEATURES, INCEPTION_FEATURES = "digits-classifier", "inception-2048"


@dataclass(frozen=True)
class FeatureSpace:
    """A feature network: its name (in file names and reports), its dimension and ``fn(images) -> (N, d)``
    for images ``(N, C, H, W)`` in ``[0, 1]``."""

    name: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    describe: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images).double().cpu()


def check_image_data(spec: DataSpec, what: str) -> None:
    """``ValueError`` unless ``spec`` holds images: ``what`` (FID, KID) compares image features."""
    if not spec.is_image:
        raise ValueError(f"{what} applies to image data sets (it compares the statistics of image features); "
                         f"data.dataset={spec.name!r} is {spec.shape[0]}-D points: --mode eval reports its NLL "
                         f"gap to the true density and --mode sample the fraction of samples on its support")


def check_feature_network(spec: DataSpec, inception_weights: str | None = None) -> None:
    """What ``feature_space`` needs, checked without building it: image data, and for images other than
    digits the Inception weights file (a one-line ``FileNotFoundError`` naming it)."""
    check_image_data(spec, "FID")
    if spec.name != "digits":
        inception_weights_path("scoresde", inception_weights)


def feature_space(spec: DataSpec, inception_weights: str | None = None, device=None) -> FeatureSpace:
    """The digits classifier's features for digits, the FID Inception's for other images: the pytorch-fid
    weights file ``inception_weights`` (``None``: the one in the torch hub cache), which must exist (a
    one-line ``FileNotFoundError`` naming it and its URL otherwise; nothing is downloaded)."""
    check_image_data(spec, "FID")
    if spec.name == "digits":
        judge = digits_classifier()
        dim = int(judge.features(torch.full((2,) + tuple(spec.shape), 0.5)).shape[1])
        return FeatureSpace(DIGITS_FEATURES, dim, judge.features,
                            f"digits classifier ({dim}-d, test accuracy {judge.test_accuracy:.4f})")
    from scoresde.evaluate.inception import fid_inception_outputs, load_fid_inception
    model = load_fid_inception(inception_weights_path("scoresde", inception_weights), device=device)

    def features(images: torch.Tensor) -> torch.Tensor:
        return fid_inception_outputs(model, images, batch_size=100)[0]

    return FeatureSpace(INCEPTION_FEATURES, 2048, features, "FID Inception (pytorch-fid weights, 2048-d pool3)")


def items_from_samples(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Model-space samples as images in ``[0, 1]``, quantised to ``spec``'s levels and read at the cell
    centres, as ``items_at_centres`` reads the real items."""
    return items_at_centres(quantize(to_data_space(x.cpu(), spec), spec.num_levels), spec)


def items_at_centres(levels: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Grey levels ``v`` of ``K`` as images ``(v + 1/2) / K``."""
    return dequantize(levels.long(), spec.num_levels, uniform=False)


def features_of(levels: torch.Tensor, spec: DataSpec, space: FeatureSpace, batch_size: int = 500) -> torch.Tensor:
    """The features ``(N, d)`` of real items (grey levels), in batches."""
    return torch.cat([space(items_at_centres(part, spec)) for part in levels.split(batch_size)])


# ---------------------------------------------------------------------------- reference statistics
def load_reference(path: str | Path, space: FeatureSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)`` from a pytorch-fid ``.npz`` at ``path``, strictly: arrays ``mu`` ``(d,)`` and
    ``sigma`` ``(d, d)`` of finite numbers, ``d`` the dimension of ``space``; anything else is a one-line
    ``ValueError`` naming the file and what was expected."""
    expected = (f"a pytorch-fid statistics .npz with arrays mu ({space.dim},) and sigma ({space.dim}, "
                f"{space.dim}) of {space.name} features")
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as err:          # noqa: BLE001 -- zip, pickle or format errors all mean "not such a file"
        raise ValueError(f"eval.fid_reference {path}: expected {expected}; it is not an .npz file "
                         f"({type(err).__name__})") from None
    got = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(arrays.items())) or "no arrays"
    mu, sigma = arrays.get("mu"), arrays.get("sigma")
    if (mu is None or sigma is None or mu.shape != (space.dim,) or sigma.shape != (space.dim, space.dim)
            or not np.issubdtype(mu.dtype, np.number) or not np.issubdtype(sigma.dtype, np.number)):
        raise ValueError(f"eval.fid_reference {path}: expected {expected}; got {got}")
    mu, sigma = torch.from_numpy(mu.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64))
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"eval.fid_reference {path}: expected {expected}; its arrays hold NaN or inf")
    return mu, sigma


class RunningStatistics:
    """Mean and unbiased covariance of feature batches added one at a time, in float64, about a shift
    (the first batch's mean) so that large means do not cancel digits: equal to
    ``metrics.feature_statistics`` of all rows to rounding."""

    def __init__(self):
        self.n, self.shift, self.total, self.outer = 0, None, None, None

    def add(self, features: torch.Tensor) -> None:
        f = features.detach().to(device="cpu", dtype=F64)
        if self.shift is None:
            self.shift = f.mean(dim=0)
            self.total = torch.zeros_like(self.shift)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=F64)
        c = f - self.shift
        self.n += f.shape[0]
        self.total += c.sum(dim=0)
        self.outer += c.T @ c

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 feature rows, got {self.n}")
        mean_c = self.total / self.n
        sigma = (self.outer - self.n * torch.outer(mean_c, mean_c)) / (self.n - 1)
        return self.shift + mean_c, sigma


def reference_subset(num_items: int, limit: int, seed: int) -> torch.Tensor:
    """Indices of at most ``limit`` of ``num_items`` items, a seeded random choice (in increasing order)."""
    if num_items <= limit:
        return torch.arange(num_items)
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))[:limit].sort().values

