"""Sample quality from features: Fréchet distance (FID), kernel inception distance (KID), improved
precision and recall, and the class distribution of samples (an Inception-score analogue).

Every metric is a plain function of two feature arrays ``(N, d)`` (torch tensors or NumPy arrays),
so any feature extractor plugs in:

- ``frechet_distance(mu1, sigma1, mu2, sigma2)``: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^½)``
  (Fréchet 1957; Dowson & Landau 1982; FID: Heusel et al. 2017), statistics from
  ``feature_statistics``; ``fid_from_features(a, b)`` does both.
- ``kid(a, b)``: the unbiased MMD^2 with the cubic polynomial kernel ``(x·y / d + 1)^3``, averaged
  over random subsets, with its standard deviation (Bińkowski et al. 2018, "Demystifying MMD GANs").
- ``precision_recall(real, fake, k=3)``: the fraction of samples inside the other set's k-NN
  manifold (Kynkäänniemi et al. 2019, "Improved precision and recall metric").
- ``class_histogram`` / ``classifier_score(probs)``: ``exp E_x KL(p(y|x) || p(y))`` (Salimans et al.
  2016's Inception score, here with any classifier).
- ``save_statistics`` / ``load_statistics``: ``(mu, sigma)`` in pytorch-fid's ``.npz`` format (arrays
  ``mu``, ``sigma``), so its reference statistics can be reused.

Feature extractors:

- ``digits_classifier()``: a small CNN trained in seconds on the clean training split of
  scikit-learn's 8x8 digits (``training.datasets``), deterministically, cached under the user cache
  directory; ``features(images)`` is its 64-d penultimate layer, ``predict(images)`` its class.
- ``inception_features(images, weights_path=...)``: the standard TF-ported Inception (2048-d pool
  features). The default backend ``"scoresde"`` is ``evaluate/inception.py``'s plain-torch network
  with pytorch-fid's weights file (the user's; nothing is downloaded here), checked against
  pytorch-fid by ``bench/inception_check.py``. The ``torch-fidelity`` and ``pytorch-fid`` backends call
  those packages, which import ``torchvision``; on a CPU-only torch whose ``torchvision`` wheel does not
  load (``operator torchvision::nms does not exist``) they cannot run, and they are untested here.
- ``inception_score(logits)``: the Inception score over 10 splits (Salimans et al. 2016).
- ``cached_statistics(path, features_fn)``: reference statistics read from, or computed once into, a
  pytorch-fid ``.npz``.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import nn

from scoresde.data.folder import default_cache_dir
from scoresde.utils import check_choice, check_int

F64 = torch.float64


# ---------------------------------------------------------------------------------------- helpers
def _as_features(name: str, features) -> torch.Tensor:
    """``(N, d)`` float64 CPU tensor from a tensor or array; ``ValueError`` naming ``name`` otherwise."""
    f = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if f.ndim != 2 or f.shape[0] < 2 or f.is_complex():
        raise ValueError(f"{name} must be a 2-D array of features (N >= 2, d), got shape {tuple(f.shape)}")
    f = f.detach().to(device="cpu", dtype=F64)
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return f


def feature_statistics(features) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (``np.cov(rowvar=False)``, as pytorch-fid), float64."""
    f = _as_features("features", features)
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


# ------------------------------------------------------------------------------- Fréchet distance
def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)`` between ``N(mu1, S1)`` and ``N(mu2, S2)``.

    ``tr((S1 S2)^½)`` is computed as the nuclear norm (the sum of singular values) of ``S1^½ S2^½``,
    whose squared singular values are the eigenvalues of ``S1^½ S2 S1^½`` and so of ``S1 S2``, in float64:
    no complex parts to drop and no ``eps`` offset, unlike ``scipy.linalg.sqrtm(S1 @ S2)``. Rounding
    noise in the null space of a rank-deficient covariance (fewer items than dimensions) enters the
    singular values linearly, not through a square root, so a set against itself gives ~1e-12.
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=F64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=F64) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"mu1, mu2 must have shape (d,) and sigma1, sigma2 (d, d); got {tuple(mu1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(s1.shape)}, {tuple(s2.shape)}")
    cross = torch.linalg.svdvals(_sqrtm_psd(s1) @ _sqrtm_psd(s2)).sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def fid_from_features(features1, features2) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets (FID with Inception features)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def save_statistics(path, mu, sigma) -> None:
    """Write ``mu``, ``sigma`` to ``path`` as pytorch-fid's ``.npz`` (float64 arrays), atomically."""
    from scoresde.run.checkpoint import atomic_write_bytes
    buffer = io.BytesIO()
    np.savez(buffer, mu=torch.as_tensor(np.asarray(mu)).double().numpy(),
             sigma=torch.as_tensor(np.asarray(sigma)).double().numpy())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_statistics(path) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mu, sigma)`` from a pytorch-fid ``.npz`` (arrays ``mu`` and ``sigma``) as float64 tensors."""
    with np.load(Path(path), allow_pickle=False) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not a pytorch-fid statistics file; missing arrays {sorted(missing)}, "
                             f"has {sorted(data.files)}")
        return torch.from_numpy(data["mu"].astype(np.float64)), torch.from_numpy(data["sigma"].astype(np.float64))


# ------------------------------------------------------------------------------------------- KID
def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0,
                    gamma: float | None = None) -> torch.Tensor:
    """Unbiased MMD^2 of two samples of one size ``m`` with ``k(a, b) = (gamma a·b + coef0)^degree``,
    ``gamma = 1/d`` by default (Bińkowski et al. 2018, eq. 3 and Sec. 5)."""
    m = x.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (gamma * x @ x.T + coef0) ** degree
    k_yy = (gamma * y @ y.T + coef0) ** degree
    k_xy = (gamma * x @ y.T + coef0) ** degree
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2.0 * k_xy.mean()


def kid(features1, features2, num_subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        coef0: float = 1.0, gamma: float | None = None,
        generator: torch.Generator | None = None) -> Tuple[float, float]:
    """KID: the mean and standard deviation of the unbiased polynomial-kernel MMD^2 over
    ``num_subsets`` random subsets of ``subset_size`` points of each set, drawn without replacement
    (``subset_size`` is capped at the smaller set's size), as torch-fidelity and Bińkowski et al. compute it.
    Each subset's estimate is unbiased, so the mean is 0 in expectation for one distribution."""
    a, b = _as_features("features1", features1), _as_features("features2", features2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features1 and features2 must have one dimension, got {a.shape[1]} and {b.shape[1]}")
    num_subsets = check_int("num_subsets", num_subsets, minimum=1)
    m = min(check_int("subset_size", subset_size, minimum=2), a.shape[0], b.shape[0])
    values = torch.stack([
        polynomial_mmd2(a[torch.randperm(a.shape[0], generator=generator)[:m]],
                        b[torch.randperm(b.shape[0], generator=generator)[:m]], degree, coef0, gamma)
        for _ in range(num_subsets)])
    return float(values.mean()), float(values.std()) if num_subsets > 1 else math.nan


# -------------------------------------------------------------------------- precision and recall
def _knn_radii(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its ``k``-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for part in f.split(chunk):
        radii.append(torch.cdist(part, f).kthvalue(k + 1, dim=1).values)   # the 1st is the point itself
    return torch.cat(radii)


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in some ball ``B(centre_i, radius_i)``."""
    return torch.cat([(torch.cdist(part, centres) <= radii[None, :]).any(dim=1) for part in points.split(chunk)])


def precision_recall(real_features, fake_features, k: int = 3, chunk: int = 1024) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-3): precision is the fraction
    of fake samples inside the real manifold (the union of balls around each real point reaching its
    ``k``-th nearest real neighbour); recall the fraction of real samples inside the fake manifold."""
    real, fake = _as_features("real_features", real_features), _as_features("fake_features", fake_features)
    k = check_int("k", k, minimum=1)
    if k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must be smaller than both set sizes ({real.shape[0]}, {fake.shape[0]}), got {k}")
    precision = _inside_manifold(fake, real, _knn_radii(real, k, chunk), chunk).double().mean()
    recall = _inside_manifold(real, fake, _knn_radii(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


# ---------------------------------------------------------------------- class distribution (IS)
def class_histogram(labels, num_classes: int) -> torch.Tensor:
    """The fraction of samples in each class, ``(num_classes,)``, from predicted labels ``(N,)``."""
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long().cpu()
    return torch.bincount(labels, minlength=check_int("num_classes", num_classes, minimum=1)).double() / labels.numel()


def classifier_score(probs) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities ``(N, C)`` (the Inception score formula
    of Salimans et al. 2016, with any classifier): 1 for uninformative, ``C`` for confident and balanced."""
    p = _as_features("probs", probs).clamp(min=1e-30)
    marginal = p.mean(dim=0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(dim=1).mean()))


# ------------------------------------------------------------------------------ digits classifier
@dataclass(frozen=True)
class DigitsRecipe:
    """Everything that determines the digits classifier's weights (part of its cache key)."""

    seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16          # channels of the first convolution (the second has 2x)
    feature_dim: int = 64    # the penultimate layer: the features FD/KID use (scaled to RMS 1 on the training digits)
    version: int = 2


DIGITS_LEVELS = 17
DIGITS_CLASSES = 10


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 grey digits: conv-conv-pool, a ``feature_dim`` ReLU layer (the features),
    and a linear layer to the 10 classes. Takes images in ``[0, 1]`` (floats) or grey levels 0..16
    (integers, read at the cell centres ``(v + ½) / 17``), shape ``(N, 1, 8, 8)``."""

    def __init__(self, width: int = 16, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, DIGITS_CLASSES)
        # 1 / RMS of the training digits' features, set after training: features of O(1) per dimension,
        # the scale KID's polynomial kernel (x·y / d + 1)^3 is made for (like Inception's pool features)
        self.register_buffer("feature_scale", torch.ones(()))
        self.test_accuracy = math.nan

    @staticmethod
    def to_input(images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must have shape (N, 1, 8, 8), got {tuple(images.shape)}")
        if not images.is_floating_point():
            return (images.double() + 0.5) / DIGITS_LEVELS
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)``; the network sees ``2 y - 1`` for images ``y`` in ``[0, 1]``."""
        x = 2.0 * self.to_input(images).to(self.head.weight.dtype) - 1.0
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate layer ``(N, feature_dim)`` times ``feature_scale``: the feature space of digits FD/KID."""
        return self.body(2.0 * self.to_input(images).to(self.head.weight.dtype) - 1.0) * self.feature_scale

    @torch.no_grad()
    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(images), dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).argmax(dim=1)


def _init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default layer initialisation, drawn from ``generator`` (not the global RNG)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _digits_split(split: str):
    from scoresde.data.datasets import get_image_dataset
    data = get_image_dataset("digits", split=split)
    return data.images, data.labels


def train_digits_classifier(recipe: DigitsRecipe = DigitsRecipe()) -> DigitsClassifier:
    """Train on the clean training split (1,497 digits), deterministically: initialisation, batch
    order and dequantisation noise ``y = (v + u) / 17`` come from ``recipe.seed``; one intra-op thread
    (restored afterwards) keeps the arithmetic order fixed. Sets ``test_accuracy`` on the 300 test digits."""
    generator = torch.Generator().manual_seed(recipe.seed)
    model = DigitsClassifier(recipe.width, recipe.feature_dim)
    _init_parameters(model, generator)
    images, labels = _digits_split("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(images), generator=generator)
            for idx in order.split(recipe.batch_size):
                noise = torch.rand(images[idx].shape, generator=generator)
                y = (images[idx].float() + noise) / DIGITS_LEVELS
                loss = nn.functional.cross_entropy(model(y), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
        model.eval()
        model.feature_scale.fill_(float(model.features(images).pow(2).mean().rsqrt()))
        model.test_accuracy = digits_accuracy(model)
    finally:
        torch.set_num_threads(threads)
    return model


def digits_accuracy(model: DigitsClassifier, split: str = "test") -> float:
    """The fraction of ``split`` digits (at their cell centres) classified correctly."""
    images, labels = _digits_split(split)
    return float((model.predict(images) == labels).double().mean())


def digits_classifier(path=None, recipe: DigitsRecipe = DigitsRecipe(), retrain: bool = False) -> DigitsClassifier:
    """The digits feature extractor, in eval mode: loaded from ``path`` (default
    ``default_cache_dir() / digits_classifier_v<version>_seed<seed>.pt``) when it holds weights of this
    ``recipe``, else trained (a few seconds) and written there atomically."""
    path = Path(path) if path is not None else default_cache_dir() / f"digits_classifier_v{recipe.version}_seed{recipe.seed}.pt"
    model = DigitsClassifier(recipe.width, recipe.feature_dim)
    if path.exists() and not retrain:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("recipe") == asdict(recipe):
            model.load_state_dict(state["state_dict"], strict=True)
            model.test_accuracy = float(state["test_accuracy"])
            return model.eval()
    model = train_digits_classifier(recipe)
    from scoresde.run.checkpoint import atomic_write_bytes
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "recipe": asdict(recipe),
                "test_accuracy": model.test_accuracy}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return model


# ---------------------------------------------------------------------------- Inception adapter
INCEPTION_BACKENDS = ("scoresde", "torch-fidelity", "pytorch-fid")
# the weights file each package downloads into the torch hub cache (torch.hub.get_dir()/checkpoints)
INCEPTION_WEIGHTS = {
    "torch-fidelity": ("weights-inception-2015-12-05-6726825d.pth",
                       "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                       "weights-inception-2015-12-05-6726825d.pth"),
    "pytorch-fid": ("pt_inception-2015-12-05-6726825d.pth",
                    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                    "pt_inception-2015-12-05-6726825d.pth"),
}
INCEPTION_WEIGHTS["scoresde"] = INCEPTION_WEIGHTS["pytorch-fid"]     # the same file, from any path


def inception_weights_path(backend: str = "torch-fidelity", weights_path=None) -> Path:
    """The Inception weights file to use: ``weights_path``, else the one ``backend`` keeps in the torch
    hub cache; ``FileNotFoundError`` (one line naming the file and where the package obtains it) if absent."""
    check_choice("backend", backend, INCEPTION_BACKENDS)
    name, url = INCEPTION_WEIGHTS[backend]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    path = Path(weights_path) if weights_path is not None else hub / name
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} not found: {backend} obtains {name} from {url} "
                                f"(it downloads into {hub}); place the file there or pass its path. "
                                f"Nothing is downloaded here.")
    if backend == "pytorch-fid" and path.resolve() != (hub / name).resolve():
        raise ValueError(f"pytorch-fid reads its weights only from the torch hub cache {hub / name}; copy "
                         f"{path} there or use backend='torch-fidelity', which takes any path")
    return path


def _inception_model(backend: str, path: Path):
    if backend == "scoresde":
        from scoresde.evaluate.inception import load_fid_inception
        return load_fid_inception(path)
    try:
        if backend == "torch-fidelity":
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path))
        from pytorch_fid.inception import InceptionV3
        return InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    except ImportError as err:
        raise ImportError(f"inception_features(backend={backend!r}) needs the {backend} package (pip install "
                          f"{backend}) and a torchvision that loads beside this torch: {err}") from err


@torch.no_grad()
def inception_features(images: torch.Tensor, weights_path=None, backend: str = "scoresde",
                       batch_size: int = 100, device=None) -> torch.Tensor:
    """The 2048-d pool features of the TF-ported Inception v3 (the FID/KID feature space), ``(N, 2048)``.

    ``images``: ``(N, 1 or 3, H, W)`` floats in ``[0, 1]`` (grey images are repeated to RGB). The
    ``"scoresde"`` backend is ``evaluate/inception.py`` (pytorch-fid's resize and weights); the others a thin call
    into ``torch-fidelity`` (``FeatureExtractorInceptionV3``, uint8 input, its TF-compatible resizing) or
    ``pytorch-fid`` (``InceptionV3`` block 3, float input); the weights file is the user's (see
    ``inception_weights_path``). Unverified in this repository: both packages import torchvision.
    """
    if backend == "scoresde":
        from scoresde.evaluate.inception import fid_inception_outputs
        model = _inception_model(backend, inception_weights_path(backend, weights_path)).to(device or "cpu")
        return fid_inception_outputs(model, images, batch_size=check_int("batch_size", batch_size, minimum=1))[0]
    path = inception_weights_path(backend, weights_path)
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1] of shape (N, 1 or 3, H, W), got "
                         f"{tuple(images.shape)} {images.dtype}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    model = _inception_model(backend, path).to(device or "cpu")
    out = []
    for batch in images.clamp(0, 1).expand(-1, 3, -1, -1).split(batch_size):
        batch = batch.to(device or "cpu")
        if backend == "torch-fidelity":
            out.append(model((batch * 255).round().to(torch.uint8))[0].cpu())
        else:
            out.append(model(batch.float())[0].squeeze(-1).squeeze(-1).cpu())
    return torch.cat(out).double()


# ------------------------------------------------------------------------------ Inception score
def inception_score(logits, splits: int = 10) -> Tuple[float, float]:
    """The Inception score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` on each of ``splits``
    consecutive parts of the samples (``p(y)`` that part's mean), the mean and standard deviation over
    parts, as improved-gan's code and torch-fidelity report it; ``logits`` ``(N, classes)`` of the
    Inception network (``inception.FIDInception``'s, without the fc bias)."""
    z = _as_features("logits", logits)
    splits = check_int("splits", splits, minimum=1)
    if splits > z.shape[0]:
        raise ValueError(f"splits must be at most the number of samples {z.shape[0]}, got {splits}")
    log_p = torch.log_softmax(z, dim=1)
    scores = []
    for part in log_p.tensor_split(splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        scores.append(torch.exp((part.exp() * (part - log_marginal)).sum(dim=1).mean()))
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False)) if splits > 1 else 0.0


def cached_statistics(path, features_fn) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference statistics ``(mu, sigma)``: read from the pytorch-fid ``.npz`` at ``path`` when it
    exists, else computed from ``features_fn()`` (an ``(N, d)`` array) and written there atomically."""
    if Path(path).is_file():
        return load_statistics(path)
    mu, sigma = feature_statistics(features_fn())
    save_statistics(path, mu, sigma)
    return mu, sigma
