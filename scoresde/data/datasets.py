"""Data sets: 2-D toy distributions with exact densities, image readers, dequantisation and scaling.

Toy data (generated in code, exact ``log_prob``):
  * ``gmm``          8 equal-weight isotropic Gaussians, std 0.1, means 2(cos 2πk/8, sin 2πk/8).
  * ``checkerboard`` uniform on the 8 dark cells of a 4×4 board over [-2, 2]²; cell (i, j) =
                     [i, i+1) × [j, j+1) with i, j ∈ {-2, -1, 0, 1} is dark when i + j is even.

Image data (uint8 grey levels ``v ∈ {0, …, K-1}`` plus ``K = num_levels``):
  * ``digits``  scikit-learn's 1,797 8×8 digits, K = 17, fixed 1,497 / 300 train/test split.
  * ``cifar10`` the python-pickle batches, (N, 3, 32, 32), K = 256.
  * ``mnist``   the IDX files, (N, 1, 28, 28), K = 256.
  * ``folder``  a folder of PNG / JPEG / WebP / BMP files (``folder.py``), (N, C, S, S), K = 256.

From levels to model space (Ho et al. 2020, Song et al. 2021, App. D):
  y = (v + u) / K,  u ~ U[0, 1)        (uniform dequantisation; u = 1/2 for the cell centre)
  x = 2y - 1 if centered else y        (``data_scaler``; log|dx/dy| = D log 2 if centered)
  v = clip(floor(y K), 0, K - 1)       (``quantize``, for writing samples)
"""
from __future__ import annotations

import gzip
import math
import pickle
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scoresde.data.folder import FOLDER_LEVELS, FolderSettings, class_names, read_folder
from scoresde.utils import Registry, check_choice, check_finite

SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------
# Toy 2-D distributions
# --------------------------------------------------------------------------------------------

def _rng_device(generator: torch.Generator | None, device) -> torch.device:
    """Device to draw random numbers on: the generator's if one is given, else ``device`` (CPU default)."""
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def _check_count(n) -> None:
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise ValueError(f"n must be a positive integer, got {n!r}")


class ToyDistribution(ABC):
    """A 2-D distribution with an exact density. Subclasses implement ``_sample`` and ``_log_prob``."""

    dim = 2
    name = ""

    def sample(self, n: int, generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``n`` i.i.d. points, shape ``(n, 2)``, on ``device`` (random numbers from ``generator``)."""
        _check_count(n)
        x = self._sample(n, generator, _rng_device(generator, device), dtype)
        return x.to(device) if device is not None else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density in nats, ``(B, 2) -> (B,)``, computed in ``x``'s dtype and device."""
        if not (isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] == self.dim):
            raise ValueError(f"x must be a tensor of shape (B, {self.dim}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        check_finite("x", x)
        return self._log_prob(x)

    def true_nll(self, n: int = 100_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """The data's own entropy H = -E[log p(x)] in nats and its Monte Carlo standard error.

        Estimated in float64 as  H ≈ -(1/n) Σ log p(x_i),  stderr = std(log p(x_i)) / sqrt(n).
        This is the lowest NLL any model can reach on this data.
        """
        _check_count(n)
        logp = self.log_prob(self.sample(n, generator=generator, dtype=torch.float64))
        return float(-logp.mean()), float(logp.std() / math.sqrt(n))

    entropy = true_nll

    num_classes = 8

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Class labels ``(B,)`` of points ``(B, 2)``: which of the ``num_classes`` parts of the data
        (a mixture component, a dark cell) each point belongs to, a function of the point alone."""
        if not (isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] == self.dim):
            raise ValueError(f"x must be a tensor of shape (B, {self.dim}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self._labels(x)

    @abstractmethod
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        """Labels of validated points."""

    @abstractmethod
    def _sample(self, n: int, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``n`` points ``(n, 2)`` drawn on ``device`` with ``generator``."""

    @abstractmethod
    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for validated ``(B, 2)`` float input."""


TOY_DATASETS: Registry[type] = Registry("toy dataset")


@TOY_DATASETS.register("gmm")
class GaussianMixture2D(ToyDistribution):
    """p(x) = (1/M) Σ_k N(x; μ_k, σ² I),  μ_k = r (cos 2πk/M, sin 2πk/M),  M = 8, r = 2, σ = 0.1."""

    name = "gmm"

    def __init__(self, num_modes: int = 8, radius: float = 2.0, std: float = 0.1):
        self.num_modes, self.radius, self.std = num_modes, radius, std

    def means(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(M, 2)`` mode centres μ_k."""
        angles = 2 * math.pi * torch.arange(self.num_modes, dtype=torch.float64) / self.num_modes
        mu = self.radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return mu.to(device=device, dtype=dtype)

    def _sample(self, n, generator, device, dtype):
        k = torch.randint(self.num_modes, (n,), generator=generator, device=device)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        return self.means(device, dtype)[k] + self.std * z

    def _labels(self, x):
        # the nearest mode: modes are 2 r sin(pi / M) = 15 sigma apart, so a point is nearer to another
        # mode than its own with probability about 1e-14
        sq_dist = (x[:, None, :] - self.means(x.device, x.dtype)[None]).square().sum(dim=-1)
        return sq_dist.argmin(dim=1)

    def _log_prob(self, x):
        # log p(x) = logsumexp_k [ -|x - μ_k|² / (2σ²) ] - log(2π σ²) - log M   (stable far from the modes)
        sq_dist = (x[:, None, :] - self.means(x.device, x.dtype)[None]).square().sum(dim=-1)
        log_norm = math.log(2 * math.pi * self.std ** 2) + math.log(self.num_modes)
        return torch.logsumexp(-sq_dist / (2 * self.std ** 2), dim=1) - log_norm


@TOY_DATASETS.register("checkerboard")
class Checkerboard(ToyDistribution):
    """Uniform on the dark cells of a 4×4 board over [-2, 2)²; density 1/8 there, 0 elsewhere.

    Cell (i, j) = [i, i+1) × [j, j+1), i, j ∈ {-2, -1, 0, 1}, is dark when (i + j) is even, i.e. when
    floor(x₁) + floor(x₂) is even; the 8 dark cells include [0, 1)² and [-2, -1)².
    """

    name = "checkerboard"
    half_width = 2

    def dark_cells(self, device=None) -> torch.Tensor:
        """The ``(8, 2)`` integer lower-left corners (i, j) of the dark cells."""
        r = torch.arange(-self.half_width, self.half_width, device=device)
        i, j = torch.meshgrid(r, r, indexing="ij")
        cells = torch.stack([i.flatten(), j.flatten()], dim=1)
        return cells[(cells.sum(dim=1) % 2) == 0]

    def _sample(self, n, generator, device, dtype):
        cells = self.dark_cells(device)
        k = torch.randint(len(cells), (n,), generator=generator, device=device)
        u = torch.rand(n, self.dim, generator=generator, device=device, dtype=dtype)
        return cells[k].to(dtype) + u

    def _labels(self, x):
        # the dark cell a point lies in (the nearest cell's index outside the board)
        corner = torch.floor(x).clamp(-self.half_width, self.half_width - 1)
        cells = self.dark_cells(x.device).to(x.dtype)
        return (corner[:, None, :] - cells[None]).abs().sum(dim=-1).argmin(dim=1)

    def _log_prob(self, x):
        inside = ((x >= -self.half_width) & (x < self.half_width)).all(dim=1)
        dark = torch.remainder(torch.floor(x).sum(dim=1), 2) == 0
        log_density = -math.log(2 * self.half_width ** 2)     # area of the dark cells = 8
        out = torch.full_like(x[:, 0], -math.inf)
        return out.masked_fill(inside & dark, log_density)

    def true_nll(self, n: int = 100_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """Exact: H = log 8 nats (uniform on area 8), standard error 0."""
        return math.log(2 * self.half_width ** 2), 0.0

    entropy = true_nll


def get_toy_dataset(name: str) -> ToyDistribution:
    """A fresh toy distribution by name (``"gmm"`` or ``"checkerboard"``)."""
    return TOY_DATASETS.get(name)()


# --------------------------------------------------------------------------------------------
# Image data
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images as integer grey levels ``v ∈ {0, …, num_levels-1}``, shape ``(N, C, H, W)``, dtype uint8."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_levels: int
    name: str = ""
    class_names: tuple = ()            # the name of each class label, when the data set names them

    def __post_init__(self):
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape ``(C, H, W)``."""
        return tuple(self.images.shape[1:])


IMAGE_DATASETS: Registry[Callable[[Path | None, str], ImageDataset]] = Registry("image dataset")

DIGITS_SEED = 0
DIGITS_NUM_TEST = 300


@IMAGE_DATASETS.register("digits")
def load_digits_dataset(root=None, split: str = "train") -> ImageDataset:
    """scikit-learn's 8×8 digits (1,797 images, grey levels 0..16, K = 17); ``root`` is unused.

    The split is a fixed permutation from ``numpy.random.RandomState(0)`` (a frozen, version-stable
    stream): its last 300 indices are the test set, the first 1,497 the training set.
    """
    check_choice("split", split, SPLITS)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install -e .[digits]") from err
    bunch = load_digits()
    perm = np.random.RandomState(DIGITS_SEED).permutation(len(bunch.images))
    idx = perm[:-DIGITS_NUM_TEST] if split == "train" else perm[-DIGITS_NUM_TEST:]
    images = torch.from_numpy(bunch.images[idx].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return ImageDataset(images, labels, num_levels=NUM_LEVELS["digits"], name="digits")


def _default_root(name: str, root) -> Path:
    """``root`` as a Path; ``None`` means ``./data/<name>``."""
    return Path(root) if root is not None else Path("data") / name


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds plain numpy arrays and nothing else (no arbitrary code from a data file)."""

    _ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"),
                                                   ("_codecs", "encode")}   # bytes in protocol-2 pickles

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch: dict with b"data" (n, 3072) uint8, rows = R, G, B planes of 32×32, and b"labels"."""
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {err}") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers in 0..9")
    return data, labels


def _missing_files(files: dict, split: str, present: Callable[[str], bool]) -> str:
    """``missing [...]``: the missing files of ``split``, then those of the other splits (training reads
    both, the test split for the held-out loss, so naming one split's files only sends the user back
    twice); empty when nothing is missing."""
    missing = {s: [n for n in names if not present(n)] for s, names in files.items()}
    others = [f"the {s} split's {names}" for s, names in missing.items() if s != split and names]
    if not missing[split]:
        return ""
    also = f" (and {', '.join(others)}: training reads every split, eval and sample the test split)" if others else ""
    return f"missing {missing[split]}{also}"


def _cifar_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py`` (the extracted archive), or ``root`` itself if it holds the batches."""
    nested = root / CIFAR10_FOLDER
    flat = any((root / n).is_file() for names in CIFAR10_FILES.values() for n in names)
    return root if flat and not nested.is_dir() else nested


@IMAGE_DATASETS.register("cifar10")
def load_cifar10(root=None, split: str = "train") -> ImageDataset:
    """CIFAR-10 from the python batches: (N, 3, 32, 32) uint8, K = 256, labels 0..9.

    Pixel (c, h, w) of an image is byte ``c·1024 + h·32 + w`` of its 3072-byte row.
    """
    check_choice("split", split, SPLITS)
    folder = _cifar_folder(_default_root("cifar10", root))
    names = CIFAR10_FILES[split]
    missing = _missing_files(CIFAR10_FILES, split, lambda n: (folder / n).is_file())
    if missing:
        every = [n for files in CIFAR10_FILES.values() for n in files]
        raise FileNotFoundError(
            f"CIFAR-10 {split} split: {missing} in {folder.resolve()}; that folder must hold {every}. Download "
            f"'CIFAR-10 python version' (cifar-10-python.tar.gz) from Alex Krizhevsky's CIFAR page "
            f"(www.cs.toronto.edu/~kriz/cifar.html) and extract it inside {folder.parent.resolve()}.")
    parts = [_read_cifar_batch(folder / n) for n in names]
    data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([lab for _, lab in parts])
    return ImageDataset(torch.from_numpy(data), torch.from_numpy(labels), num_levels=NUM_LEVELS["cifar10"],
                        name="cifar10")


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_MAGIC = {3: 2051, 1: 2049}     # 0x0000 0803 (uint8, 3 dims) images, 0x0000 0801 (uint8, 1 dim) labels


def parse_idx(raw: bytes, ndim: int, source: str = "IDX data") -> np.ndarray:
    """Parse an unsigned-byte IDX file: big-endian magic (2051 for 3-D images, 2049 for 1-D labels),
    then ``ndim`` big-endian uint32 sizes, then the bytes in C order. Malformed input -> ValueError."""
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header])
    if magic != IDX_MAGIC[ndim]:
        raise ValueError(f"{source}: IDX magic number {magic}, expected {IDX_MAGIC[ndim]}")
    if len(raw) != header + math.prod(dims):
        raise ValueError(f"{source}: header says {dims} ({math.prod(dims)} bytes of data), "
                         f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder`` or in torchvision's ``folder/MNIST/raw``."""
    for base in (folder, folder / "MNIST" / "raw"):
        for candidate in (base / name, base / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:      # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot decompress: {err}") from err
    return parse_idx(raw, ndim, source=str(path))


@IMAGE_DATASETS.register("mnist")
def load_mnist(root=None, split: str = "train") -> ImageDataset:
    """MNIST from the IDX files (plain or ``.gz``): (N, 1, 28, 28) uint8, K = 256, labels 0..9."""
    check_choice("split", split, SPLITS)
    folder = _default_root("mnist", root)
    names = MNIST_FILES[split]
    paths = [_find_idx(folder, n) for n in names]
    if None in paths:
        missing = _missing_files(MNIST_FILES, split, lambda n: _find_idx(folder, n) is not None)
        every = [n for files in MNIST_FILES.values() for n in files]
        raise FileNotFoundError(
            f"MNIST {split} split: {missing} in {folder.resolve()}; put {every} there (plain or .gz). They are "
            f"the four files of Yann LeCun's MNIST page (yann.lecun.com/exdb/mnist) or any of its mirrors.")
    images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1),
                        torch.from_numpy(labels.astype(np.int64)), num_levels=NUM_LEVELS["mnist"], name="mnist")


@IMAGE_DATASETS.register("folder")
def load_image_folder(root=None, split: str = "train", *, image_size: int = 32, channels: int = 3,
                      resize: str = "center_crop", labels_from_folders: bool = False,
                      heldout_fraction: float = 0.05) -> ImageDataset:
    """A folder of image files (``scoresde/data/folder.py``): (N, channels, image_size, image_size) uint8,
    K = 256, labels from the sorted sub-folder names with ``labels_from_folders``."""
    check_choice("split", split, SPLITS)
    settings = FolderSettings(image_size=image_size, channels=channels, resize=resize,
                              labels_from_folders=labels_from_folders)
    images, labels, names = read_folder(_default_root("folder", root), split, settings, heldout_fraction)
    return ImageDataset(torch.from_numpy(images), None if labels is None else torch.from_numpy(labels),
                        num_levels=FOLDER_LEVELS, name="folder", class_names=tuple(names))


def get_image_dataset(name: str, root=None, split: str = "train", **options) -> ImageDataset:
    """Image data set by name (``"digits"``, ``"cifar10"``, ``"mnist"``, ``"folder"``) and split
    (``"train"``/``"test"``); ``options`` are the folder's settings (``load_image_folder``)."""
    check_choice("split", split, SPLITS)
    return IMAGE_DATASETS.get(name)(root, split, **options)


def dataset_names() -> list[str]:
    """Every data set name, toy and image, sorted."""
    return sorted(TOY_DATASETS.names() + IMAGE_DATASETS.names())


# The shape of one item of each data set, known without reading any file (config validation uses it).
ITEM_SHAPES = {"gmm": (2,), "checkerboard": (2,), "digits": (1, 8, 8), "cifar10": (3, 32, 32),
               "mnist": (1, 28, 28)}
# Grey levels K of each image data set (what bits/dim counts), known without reading its files.
NUM_LEVELS = {"digits": 17, "cifar10": 256, "mnist": 256}
# How many classes each data set's labels have (toy data: the mixture components / dark cells).
NUM_CLASSES = {"gmm": 8, "checkerboard": 8, "digits": 10, "cifar10": 10, "mnist": 10}
# Data sets whose item shape and classes come from the config (an image folder's size, its sub-folders).
CONFIGURED_DATASETS = ("folder",)


def item_shape(name: str, image_size: int = 32, channels: int = 3) -> tuple:
    """The shape of one item: ``ITEM_SHAPES[name]``, or ``(channels, image_size, image_size)`` for a folder."""
    return (channels, image_size, image_size) if name in CONFIGURED_DATASETS else ITEM_SHAPES[name]


def dataset_classes(name: str, root=None, labels_from_folders: bool = False) -> int:
    """How many classes the labels have: ``NUM_CLASSES[name]`` (0 if unlabelled), or for a folder with
    ``labels_from_folders`` its number of sub-folders (0 without)."""
    if name in CONFIGURED_DATASETS:
        return len(class_names(_default_root(name, root))) if labels_from_folders else 0
    return NUM_CLASSES.get(name, 0)


# --------------------------------------------------------------------------------------------
# Dequantisation and scaling
# --------------------------------------------------------------------------------------------

def _check_levels(levels: torch.Tensor, num_levels: int) -> None:
    if not (isinstance(num_levels, int) and 2 <= num_levels):
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise ValueError(f"levels must be an integer tensor, got dtype {levels.dtype}")
    lo, hi = (int(levels.min()), int(levels.max())) if levels.numel() else (0, 0)
    if lo < 0 or hi >= num_levels:
        raise ValueError(f"levels must lie in 0..{num_levels - 1}, got range [{lo}, {hi}]")


def _snap_into_cells(y: torch.Tensor, levels: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Move y by a few ulps where rounding put it outside its cell, so floor(y K) == v holds exactly."""
    for _ in range(16):
        q = torch.floor(y * num_levels)
        if bool((q == levels).all()):
            return y
        y = torch.where(q > levels, torch.nextafter(y, torch.zeros_like(y)), y)
        y = torch.where(q < levels, torch.nextafter(y, torch.ones_like(y)), y)
    raise RuntimeError(f"dequantize: could not place values inside their cells at dtype {y.dtype}")


def dequantize(levels: torch.Tensor, num_levels: int, generator: torch.Generator | None = None,
               uniform: bool = True, noise: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Grey levels v ∈ {0, …, K-1} -> continuous y ∈ [0, 1):

        y = (v + u) / K,   u ~ U[0, 1) per pixel        (uniform=True, uniform dequantisation)
        y = (v + 1/2) / K                               (uniform=False, the cell centre)

    ``noise`` optionally supplies u (same shape, values in [0, 1)) instead of drawing it. Where
    floating-point rounding would put y on the wrong side of a cell edge it is moved by an ulp, so
    ``quantize(y, K) == v`` always holds.
    """
    _check_levels(levels, num_levels)
    if noise is not None:
        if noise.shape != levels.shape or not ((noise >= 0) & (noise < 1)).all():
            raise ValueError(f"noise must have shape {tuple(levels.shape)} and values in [0, 1)")
        u = noise.to(device=levels.device, dtype=torch.float64)
    elif uniform:
        u = torch.rand(levels.shape, generator=generator, dtype=torch.float64,
                       device=_rng_device(generator, levels.device)).to(levels.device)
    else:
        u = torch.full(levels.shape, 0.5, dtype=torch.float64, device=levels.device)
    y = ((levels.to(torch.float64) + u) / num_levels).to(dtype)
    return _snap_into_cells(y, levels.to(dtype), num_levels)


def quantize(y: torch.Tensor, num_levels: int) -> torch.Tensor:
    """y ∈ [0, 1] -> levels v = clip(floor(y K), 0, K-1) as uint8 (K <= 256), e.g. to write sample images."""
    if not (isinstance(num_levels, int) and 2 <= num_levels <= 256):
        raise ValueError(f"num_levels must be an integer in 2..256, got {num_levels!r}")
    check_finite("y", y)
    return torch.floor(y * num_levels).clamp(0, num_levels - 1).to(torch.uint8)


def data_scaler(centered: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """y ∈ [0, 1] -> model input x:  x = 2y - 1 (centered, x ∈ [-1, 1])  or  x = y."""
    return (lambda y: 2 * y - 1) if centered else (lambda y: y)


def inverse_data_scaler(centered: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model space x -> y ∈ [0, 1]:  y = (x + 1) / 2 (centered)  or  y = x."""
    return (lambda x: (x + 1) / 2) if centered else (lambda x: x)


def scaler_log_det(centered: bool, dim: int) -> float:
    """log|det dx/dy| of ``data_scaler`` for a whole image of ``dim`` = D pixels: D log 2 if centered, else 0.

    Densities transform as  log p_y(y) = log p_x(x) + D log 2  (centered), which bits/dim needs.
    """
    if not (isinstance(dim, int) and dim > 0):
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return dim * math.log(2.0) if centered else 0.0
