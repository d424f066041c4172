"""Data for training and evaluation: which tensors, and how a batch reaches model space.

Toy data sets are drawn once (``num_train`` training points, ``num_test`` held-out points, each from
its own seeded generator), so a fixed tensor feeds ``ShardedBatchLoader`` exactly like image data.
Images stay uint8 grey levels until a batch is used; then (datasets.py conventions)

    y = (v + u) / K      uniform dequantisation (u ~ U[0, 1)), or the cell centre u = 1/2
    x = 2y - 1 or y      data_scaler(centered)

Evaluation always dequantises uniformly, which the bits/dim bound requires.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from scoresde.data.datasets import (NUM_CLASSES, TOY_DATASETS, ImageDataset, ToyDistribution, data_scaler, dequantize,
                               get_image_dataset, get_toy_dataset, inverse_data_scaler)
from scoresde.models.image_cond import downsample
from scoresde.data.latents import check_first_stage, decode_latents, encoded, latent_draw, load_first_stage
from scoresde.run.options import DataOptions
from scoresde.data.streams import Stream, generator


@dataclass(frozen=True, eq=False)
class DataSpec:
    """The tensors of one data set and how to turn a batch of them into model inputs.

    ``train`` / ``test`` hold float points ``(N, D)`` for toy data and uint8 grey levels
    ``(N, C, H, W)`` for images; either is ``None`` when it was not asked for (sampling needs
    neither: ``spec_from_meta`` rebuilds the rest from a checkpoint).
    """

    name: str
    train: torch.Tensor | None
    test: torch.Tensor | None
    shape: tuple
    num_levels: int = 0                 # K for images, 0 for continuous data
    toy: ToyDistribution | None = None  # the exact density, for toy data
    centered: bool = False
    uniform_dequantization: bool = False
    random_flip: bool = False
    train_labels: torch.Tensor | None = None  # class labels (N,) of ``train`` / ``test``
    test_labels: torch.Tensor | None = None
    num_classes: int = 0                # how many classes the labels have
    class_names: tuple = ()             # the name of each class, when the data set names them (image folders)
    # latent diffusion (data.first_stage): train / test hold q(z|x)'s [mean, logvar]; the model sees latents
    first_stage: object | None = None   # the autoencoder (models.autoencoder interface)
    first_stage_path: str = ""          # data.first_stage, as given
    latent_shape: tuple = ()            # (c, H/f, W/f)
    resolution: int = 0                 # images average-pooled to resolution x resolution in model space (0 = native)

    @property
    def is_image(self) -> bool:
        return self.num_levels > 0

    @property
    def dim(self) -> int:
        """D, the number of scalars per item (pixels, with a first stage too)."""
        return math.prod(self.shape)

    @property
    def model_shape(self) -> tuple:
        """The shape of one network input: the latent shape with a first stage, else the item's."""
        if self.first_stage is not None:
            return self.latent_shape
        return (self.shape[0], self.resolution, self.resolution) if self.resolution else self.shape


def _toy_spec(dist: ToyDistribution, name: str, num_train: int, num_test: int, seed: int,
              with_train: bool) -> DataSpec:
    if num_train < 1:
        raise ValueError(f"config.data.num_train must be >= 1 for toy data ({name!r}), got {num_train}")
    train = dist.sample(num_train, generator=generator(seed, Stream.TOY_TRAIN)) if with_train else None
    test = dist.sample(num_test, generator=generator(seed, Stream.TOY_TEST))
    return DataSpec(name=name, train=train, test=test, shape=(dist.dim,), toy=dist,
                    train_labels=dist.labels(train) if with_train else None, test_labels=dist.labels(test),
                    num_classes=dist.num_classes)


def _first(images: ImageDataset, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` items (all for ``n = 0``) and their labels."""
    end = n if n > 0 else len(images.images)
    return images.images[:end], None if images.labels is None else images.labels[:end]


def _image_spec(name: str, root: str | None, num_train: int, num_test: int, with_train: bool,
                centered: bool, uniform_dequantization: bool, random_flip: bool, loader_kwargs: dict) -> DataSpec:
    test_set = get_image_dataset(name, root, split="test", **loader_kwargs)
    train, train_labels = (_first(get_image_dataset(name, root, split="train", **loader_kwargs), num_train)
                           if with_train else (None, None))
    test, test_labels = _first(test_set, num_test)
    return DataSpec(name=name, train=train, test=test, shape=test_set.shape,
                    num_levels=test_set.num_levels, centered=centered,
                    uniform_dequantization=uniform_dequantization, random_flip=random_flip,
                    train_labels=train_labels, test_labels=test_labels,
                    num_classes=(len(test_set.class_names) or NUM_CLASSES[name]) if test_labels is not None else 0,
                    class_names=test_set.class_names)


def load_data(options: DataOptions, seed: int, with_train: bool = True) -> DataSpec:
    """The training (unless ``with_train`` is False) and held-out data ``options`` describe; toy
    points are drawn from the run's ``seed``. With ``first_stage`` the images are encoded (once, cached)."""
    if options.dataset in TOY_DATASETS:
        return _toy_spec(get_toy_dataset(options.dataset), options.dataset, options.num_train, options.num_test,
                         seed, with_train)
    spec = _image_spec(options.dataset, options.root, options.num_train, options.num_test, with_train,
                       options.centered, options.uniform_dequantization, options.random_flip, options.loader_kwargs)
    if options.resolution:
        spec = dataclasses.replace(spec, resolution=options.resolution)
    return with_first_stage(spec, options.first_stage) if options.first_stage else spec


def with_first_stage(spec: DataSpec, path: str) -> DataSpec:
    """``spec`` with its items replaced by their encodings ``[mean, logvar]`` under the first stage at ``path``."""
    latent_shape = check_first_stage(path, spec.name, spec.shape, spec.centered)
    ae = load_first_stage(path)

    def encode(items, split):
        return encoded(ae, path, items, spec.name, split, spec.num_levels, spec.centered)

    return dataclasses.replace(spec, train=encode(spec.train, "train"), test=encode(spec.test, "test"),
                               first_stage=ae, first_stage_path=path, latent_shape=latent_shape)


def data_meta(spec: DataSpec) -> dict:
    """What sampling needs to know about the data, as plain values (stored in checkpoints)."""
    meta = {"dataset": spec.name, "shape": list(spec.shape), "num_levels": spec.num_levels,
            "centered": spec.centered, "num_classes": spec.num_classes}
    if spec.class_names:
        meta["class_names"] = list(spec.class_names)
    if spec.resolution:
        meta["resolution"] = spec.resolution
    if spec.first_stage is not None:
        meta["first_stage"] = spec.first_stage_path
        meta["latent_shape"] = list(spec.latent_shape)
    return meta


def spec_from_meta(meta: dict) -> DataSpec:
    """A tensor-free ``DataSpec`` from ``data_meta``'s dict: enough to build a model and write samples."""
    toy = get_toy_dataset(meta["dataset"]) if meta["dataset"] in TOY_DATASETS else None
    spec = DataSpec(name=meta["dataset"], train=None, test=None, shape=tuple(int(s) for s in meta["shape"]),
                    num_levels=int(meta["num_levels"]), toy=toy, centered=bool(meta["centered"]),
                    num_classes=int(meta.get("num_classes", 0)), class_names=tuple(meta.get("class_names", ())),
                    resolution=int(meta.get("resolution", 0)))
    if "first_stage" in meta:
        spec = with_first_stage(spec, meta["first_stage"])
    return spec


def _flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    coin = torch.rand(x.shape[0], generator=generator, device=x.device if generator is None else generator.device)
    return torch.where(coin.to(x.device).reshape(-1, 1, 1, 1) < 0.5, x.flip(-1), x)


def to_model_space(batch: torch.Tensor, spec: DataSpec, generator: torch.Generator | None = None,
                   train: bool = True) -> torch.Tensor:
    """A batch of stored data -> network input ``x`` (float32, on the batch's device); with a first stage
    one latent draw ``u = scale_factor z`` of each stored posterior."""
    if spec.first_stage is not None:
        return latent_draw(batch, float(spec.first_stage.scale_factor), generator)
    if not spec.is_image:
        return batch.float()
    uniform = spec.uniform_dequantization or not train
    y = dequantize(batch.long(), spec.num_levels, generator=generator, uniform=uniform)
    if train and spec.random_flip:
        y = _flip(y, generator)
    x = data_scaler(spec.centered)(y)
    return downsample(x, spec.resolution) if spec.resolution else x


def check_data_space(items, spec: DataSpec, what: str) -> None:
    """``ValueError`` naming ``what`` unless ``items`` (a NumPy array or tensor) lie in ``spec``'s data space,
    what ``to_data_space`` returns: floats in [0, 1] for images (never stored grey levels, which would
    be clipped), finite numbers for points."""
    items = torch.as_tensor(items)
    if not items.numel():
        raise ValueError(f"{what} holds no items")
    found = (f"found {str(items.dtype).replace('torch.', '')} values in "
             f"[{float(items.min()):g}, {float(items.max()):g}]")
    if spec.is_image:
        if not items.is_floating_point() or not bool(((items >= 0) & (items <= 1)).all()):
            raise ValueError(f"{what} must hold {spec.name} images in data space: floating-point values in [0, 1] "
                             f"(grey level v of {spec.num_levels} as (v + 1/2) / {spec.num_levels}, as samples.npz "
                             f"and inpaint.npz hold them); {found}")
    elif items.dtype == torch.bool or items.is_complex() or not bool(torch.isfinite(items.double()).all()):
        raise ValueError(f"{what} must hold finite numbers (data space of {spec.name!r} points); {found}")


def to_data_space(x: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Model-space samples -> data space: images in [0, 1] (clipped), points as they are; latents are
    decoded first (the decoder's mean)."""
    if not spec.is_image:
        return x
    if spec.first_stage is not None:
        x = decode_latents(spec.first_stage, x)
    return inverse_data_scaler(spec.centered)(x).clamp(0.0, 1.0)
