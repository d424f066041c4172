"""The FID Inception network in plain torch (no torchvision): the TensorFlow graph of 2015-12-05
(``inception-2015-12-05.tgz``) that FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and the
Inception score (Salimans et al. 2016) are reported with, as ported to PyTorch by pytorch-fid and
torch-fidelity.

It is Inception v3 (Szegedy et al. 2016) with the differences of the TF graph: 1008 output classes; the
average pools inside the A, C and first E blocks leave the zero padding out of the mean
(``count_include_pad=False``); the last E block pools with a 3x3 max instead of an average. Module names
follow torchvision's ``Inception3`` (``Conv2d_1a_3x3``, ``Mixed_5b`` ... ``Mixed_7c``, ``fc``), so
pytorch-fid's weights file ``pt_inception-2015-12-05-6726825d.pth`` loads strictly.

``FIDInception()(images)`` takes ``(N, 3, H, W)`` floats in ``[0, 1]``, resizes them bilinearly to
299x299 (``align_corners=False``), maps them to ``[-1, 1]`` and returns the 2048-d ``pool3`` features
(the average pool of the last block) and the 1008 logits of the Inception score: ``pool3 @ W^T``
without the fc bias, as the score's original code computes them (Salimans et al. 2016, improved-gan's
``inception_score.py``) and torch-fidelity's ``logits_unbiased``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_NAME}"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TF's), ReLU: every convolution of the network."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


# the pools a path may start with
def _tf_avg_pool(x):                          # TF's 3x3 average: padded zeros do not count
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x):                        # 3x3 max, size kept (the FID graph's last block)
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _max_pool_reduce(x):                      # 3x3 max, stride 2 (the reduction blocks)
    return F.max_pool2d(x, 3, stride=2)


POOLS = {"avg": _tf_avg_pool, "max": _max_pool_same, "max/2": _max_pool_reduce}


class Mixed(nn.Module):
    """An Inception block: parallel paths whose outputs are concatenated along channels.

    ``convs``: ``{name: (in, out, kernel, stride, padding)}``, registered under those names.
    ``paths``: each a sequence of steps: a conv name, a pool name of ``POOLS``, or a pair of conv names
    applied to the same input and concatenated (the split 1x3 / 3x1 ends of the E blocks).
    """

    def __init__(self, convs: dict, paths: list):
        super().__init__()
        for name, (c_in, c_out, kernel, stride, padding) in convs.items():
            self.add_module(name, ConvBN(c_in, c_out, kernel, stride, padding))
        self.paths = paths

    def _step(self, step, x):
        if isinstance(step, tuple):
            return torch.cat([getattr(self, name)(x) for name in step], 1)
        if step in POOLS:
            return POOLS[step](x)
        return getattr(self, step)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for path in self.paths:
            y = x
            for step in path:
                y = self._step(step, y)
            outputs.append(y)
        return torch.cat(outputs, 1)


def block_a(c_in: int, pool_features: int) -> Mixed:
    """35x35 block (Mixed_5b-d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-1x1."""
    return Mixed({"branch1x1": (c_in, 64, 1, 1, 0),
                  "branch5x5_1": (c_in, 48, 1, 1, 0), "branch5x5_2": (48, 64, 5, 1, 2),
                  "branch3x3dbl_1": (c_in, 64, 1, 1, 0), "branch3x3dbl_2": (64, 96, 3, 1, 1),
                  "branch3x3dbl_3": (96, 96, 3, 1, 1),
                  "branch_pool": (c_in, pool_features, 1, 1, 0)},
                 [("branch1x1",), ("branch5x5_1", "branch5x5_2"),
                  ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), ("avg", "branch_pool")])


def block_b(c_in: int) -> Mixed:
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max/2."""
    return Mixed({"branch3x3": (c_in, 384, 3, 2, 0),
                  "branch3x3dbl_1": (c_in, 64, 1, 1, 0), "branch3x3dbl_2": (64, 96, 3, 1, 1),
                  "branch3x3dbl_3": (96, 96, 3, 2, 0)},
                 [("branch3x3",), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"), ("max/2",)])


def block_c(c_in: int, c7: int) -> Mixed:
    """17x17 block (Mixed_6b-e) with factorised 7x7s: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg-1x1."""
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return Mixed({"branch1x1": (c_in, 192, 1, 1, 0),
                  "branch7x7_1": (c_in, c7, 1, 1, 0), "branch7x7_2": (c7, c7, *row), "branch7x7_3": (c7, 192, *col),
                  "branch7x7dbl_1": (c_in, c7, 1, 1, 0), "branch7x7dbl_2": (c7, c7, *col),
                  "branch7x7dbl_3": (c7, c7, *row), "branch7x7dbl_4": (c7, c7, *col),
                  "branch7x7dbl_5": (c7, 192, *row),
                  "branch_pool": (c_in, 192, 1, 1, 0)},
                 [("branch1x1",), ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                  tuple(f"branch7x7dbl_{i}" for i in range(1, 6)), ("avg", "branch_pool")])


def block_d(c_in: int) -> Mixed:
    """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max/2."""
    return Mixed({"branch3x3_1": (c_in, 192, 1, 1, 0), "branch3x3_2": (192, 320, 3, 2, 0),
                  "branch7x7x3_1": (c_in, 192, 1, 1, 0), "branch7x7x3_2": (192, 192, (1, 7), 1, (0, 3)),
                  "branch7x7x3_3": (192, 192, (7, 1), 1, (3, 0)), "branch7x7x3_4": (192, 192, 3, 2, 0)},
                 [("branch3x3_1", "branch3x3_2"), tuple(f"branch7x7x3_{i}" for i in range(1, 5)), ("max/2",)])


def block_e(c_in: int, pool: str) -> Mixed:
    """8x8 block (Mixed_7b with ``pool="avg"``, Mixed_7c with ``"max"``, the FID graph's quirk):
    1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1."""
    row, col = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
    return Mixed({"branch1x1": (c_in, 320, 1, 1, 0),
                  "branch3x3_1": (c_in, 384, 1, 1, 0), "branch3x3_2a": (384, 384, *row),
                  "branch3x3_2b": (384, 384, *col),
                  "branch3x3dbl_1": (c_in, 448, 1, 1, 0), "branch3x3dbl_2": (448, 384, 3, 1, 1),
                  "branch3x3dbl_3a": (384, 384, *row), "branch3x3dbl_3b": (384, 384, *col),
                  "branch_pool": (c_in, 192, 1, 1, 0)},
                 [("branch1x1",), ("branch3x3_1", ("branch3x3_2a", "branch3x3_2b")),
                  ("branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")), (pool, "branch_pool")])


class FIDInception(nn.Module):
    """The FID Inception v3: ``forward(images in [0, 1]) -> (pool3 (N, 2048), unbiased logits (N, 1008))``."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = block_a(192, 32), block_a(256, 64), block_a(288, 64)
        self.Mixed_6a = block_b(288)
        self.Mixed_6b, self.Mixed_6c = block_c(768, 128), block_c(768, 160)
        self.Mixed_6d, self.Mixed_6e = block_c(768, 160), block_c(768, 192)
        self.Mixed_7a = block_d(768)
        self.Mixed_7b, self.Mixed_7c = block_e(1280, "avg"), block_e(2048, "max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` images -> bilinear 299x299 (``align_corners=False``) -> ``2 x - 1`` in ``[-1, 1]``."""
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> the 2048-d average pool of the last block."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max_pool_reduce(x)))
        x = _max_pool_reduce(x)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pool3(self.preprocess(images))
        return features, features @ self.fc.weight.T


def _weights_error(path, what: str) -> str:
    return (f"Inception weights {path}: {what}; eval.inception_weights must be pytorch-fid's {FID_WEIGHTS_NAME} "
            f"(download it from {FID_WEIGHTS_URL}). Nothing is downloaded here.")


def load_fid_inception(path, device=None) -> FIDInception:
    """The network with pytorch-fid's weights file at ``path``, loaded strictly (``weights_only=True``),
    in eval mode. A missing file is a one-line ``FileNotFoundError``, another file a one-line
    ``ValueError``, both naming the file and the URL it comes from."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(_weights_error(path, "no such file"))
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:                  # a pickle, zip or torch error: any means "not this file"
        raise ValueError(_weights_error(path, f"not a torch state dict ({type(err).__name__})")) from None
    model = FIDInception()
    if not isinstance(state, dict):
        raise ValueError(_weights_error(path, f"holds a {type(state).__name__}, not a state dict"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        missing = sorted(set(model.state_dict()) - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        detail = (f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                  f"(e.g. {unexpected[:2]})" if missing or unexpected else "tensor shapes differ")
        raise ValueError(_weights_error(path, f"not the FID Inception weights: {detail}")) from err
    return model.to(device or "cpu").eval()


@torch.no_grad()
def fid_inception_outputs(model: FIDInception, images: torch.Tensor, batch_size: int = 100,
                          device=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pool3 features (N, 2048), logits (N, 1008))`` of ``images`` (``(N, 1 or 3, H, W)`` floats in
    ``[0, 1]``; grey images repeated to RGB), in batches, as float64 on the CPU."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1] of shape (N, 1 or 3, H, W), got "
                         f"{tuple(images.shape)} {images.dtype}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = images.split(batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="Inception features", unit="batch", leave=False)
    features, logits = [], []
    for batch in batches:
        f, z = model(batch.to(device=device, dtype=torch.float32).clamp(0, 1).expand(-1, 3, -1, -1))
        features.append(f.double().cpu())
        logits.append(z.double().cpu())
    return torch.cat(features), torch.cat(logits)
