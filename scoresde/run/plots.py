"""Figures a person reads at a glance, drawn with matplotlib (Agg backend, no display needed): sample
scatter plots with axes, a title and the true density's contours; image grids with a caption (and
one row per class when asked); the training loss curve. Each function returns PNG bytes."""
from __future__ import annotations

import io
import math
import re
import textwrap
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

GRID_PAD = 1           # pixels between tiles, in tile pixels
MAX_COLUMNS = 10       # images per row of a grid: more are too small to read at 100 %
TILE_PIXELS = 64       # small images (8x8 digits) are enlarged by a whole factor to at least this size
DPI = 100


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def grid_columns(n: int, cols: int | None = None) -> int:
    """Columns of a grid of ``n`` images: ``cols`` if given, else about square; at most ``MAX_COLUMNS``."""
    return max(1, min(MAX_COLUMNS, cols or math.ceil(math.sqrt(n))))


def tile_images(images: np.ndarray, cols: int | None = None, pad: int = GRID_PAD) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [0, 1] -> one ``(rows*(H+pad)+pad, cols*(W+pad)+pad, C)`` array on white,
    ``grid_columns(N, cols)`` wide (row-major: image i is in row ``i // cols``)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {images.shape}")
    n, c, h, w = images.shape
    cols = grid_columns(n, cols)
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    for i, image in enumerate(np.clip(images, 0.0, 1.0)):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = image.transpose(1, 2, 0)
    return grid


def image_grid(images: np.ndarray, caption: str = "", cols: int | None = None,
               row_labels: Sequence[str] | None = None) -> bytes:
    """A grid of images, at most ``MAX_COLUMNS`` a row, each enlarged by a whole factor (pixels kept
    sharp) to at least ``TILE_PIXELS``, with ``caption`` underneath (what was run: step, sampler, NFE)
    and, for class-conditional grids (one row per class), a label per row."""
    grid = tile_images(images, cols)
    height, width = grid.shape[:2]
    scale = max(1, math.ceil(TILE_PIXELS / max(images.shape[2:])))
    fig = plt.figure(figsize=(width * scale / DPI, height * scale / DPI))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))      # the whole figure: one image pixel is ``scale`` pixels
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        h = images.shape[2]
        ax.set_yticks([GRID_PAD + i * (h + GRID_PAD) + h / 2 for i in range(len(row_labels))])
        ax.set_yticklabels(row_labels, fontsize=10)
    else:
        ax.set_yticks([])
    if caption:
        ax.set_xlabel(textwrap.fill(caption, max(40, int(width * scale / 6.5))), fontsize=9)
    return _png(fig)


def _extent(points: np.ndarray) -> float:
    """Half-width of the square view: the data's 99.5% |coordinate| quantile, with a margin, at least 2.5."""
    finite = points[np.isfinite(points).all(axis=1)]
    return max(2.5, 1.15 * float(np.quantile(np.abs(finite), 0.995))) if len(finite) else 2.5


def scatter_plot(points: np.ndarray, title: str = "",
                 log_density: Callable[[np.ndarray], np.ndarray] | None = None, half_width: float | None = None) -> bytes:
    """2-D points ``(N, 2)`` as dots, square axes with tick values, ``title``, and the contours of the
    true log-density (``log_density(grid (M, 2)) -> (M,)``) when it is known. The view is
    ``[-half_width, half_width]^2`` (default: from the points); points outside it are counted."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    half = half_width or _extent(points)
    fig, ax = plt.subplots(figsize=(6.0, 6.0))
    if log_density is not None:
        axis = np.linspace(-half, half, 200)
        gx, gy = np.meshgrid(axis, axis)
        logp = log_density(np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gx.shape)
        density = np.exp(logp - np.nanmax(logp))
        ax.contour(gx, gy, density, levels=[0.01, 0.1, 0.5], colors="0.55", linewidths=0.8)
    finite = points[np.isfinite(points).all(axis=1)]
    outside = int((np.abs(finite) > half).any(axis=1).sum())
    label = f"{len(finite)} samples" + (f" ({outside} outside this view)" if outside else "")
    ax.scatter(finite[:, 0], finite[:, 1], s=2, color="#1f5ab4", alpha=0.6, linewidths=0, label=label)
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_aspect("equal")
    ax.grid(True, color="0.92")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if log_density is not None:
        ax.plot([], [], color="0.55", label="true density (1%, 10%, 50% of max)")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(textwrap.fill(title, 70), fontsize=9)
    return _png(fig)


LIKELIHOOD_UNITS = {"bpd": "held-out bits/dim", "nll": "held-out NLL (nats per sample)"}


def _loss_panel(ax, records: Sequence[dict]) -> None:
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    heldout = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train), color="#1f5ab4", linewidth=1.0, label="training loss (mean since last line)")
    if heldout:
        ax.plot(*zip(*heldout), "o-", color="#d1603d", markersize=3, linewidth=1.0, label="held-out loss")
    ax.set_ylabel("loss (lower is better)")
    values = [v for _, v in train + heldout]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.grid(True, color="0.92")
    if train or heldout:
        ax.legend(loc="upper right", fontsize=8)


def _likelihood_panel(ax, measured: list[tuple[int, float]], key: str) -> None:
    """The eval mode's likelihood (bits/dim or NLL) at the steps it was measured, each value written."""
    steps, values = zip(*measured)
    ax.plot(steps, values, "s-", color="#3a9a4a", markersize=5, linewidth=1.0)
    for step, value in measured:
        ax.annotate(f"{value:.3g}", (step, value), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_ylabel(f"{LIKELIHOOD_UNITS[key]}\n(--mode eval)", fontsize=9)
    ax.grid(True, color="0.92")


QUALITY_KEY = re.compile(r"(kid|fd)@(\d+)")
QUALITY_NAMES = {"kid": "KID x 1e3", "fd": "Fréchet distance"}


def quality_keys(records: Sequence[dict]) -> list[str]:
    """The sample-quality keys training wrote (``kid@<n>``, ``fd@<n>``), in order of first appearance."""
    return list(dict.fromkeys(k for r in records for k in r if QUALITY_KEY.fullmatch(k) and r[k] is not None))


def _quality_panel(ax, records: Sequence[dict], key: str) -> None:
    """Training's KID (with its spread over subsets) or FD of n samples against the held-out items."""
    name, n = QUALITY_KEY.fullmatch(key).groups()
    rows = [r for r in records if r.get(key) is not None]
    steps, values = [r["step"] for r in rows], [r[key] for r in rows]
    spread = [r.get(f"kid_std@{n}") or 0.0 for r in rows] if name == "kid" else None
    ax.errorbar(steps, values, yerr=spread, fmt="D-", color="#8a4fb0", markersize=4, linewidth=1.0, capsize=2)
    features = rows[-1].get("quality_features", "")
    ax.set_ylabel(f"{QUALITY_NAMES[name]}, {n} samples\nvs held-out ({features})", fontsize=8)
    ax.grid(True, color="0.92")


def loss_curve(records: Sequence[dict], title: str = "", caption: str = "") -> bytes:
    """Training loss and held-out loss against step from ``metrics.jsonl`` records; below them, each in
    its own panel, the eval mode's bits/dim or NLL where it was measured and training's KID / FD of
    samples against the held-out items. ``title`` (one line) names the run, ``caption`` (under the
    figure) the loss."""
    keys = [key for key in LIKELIHOOD_UNITS if any(r.get(key) is not None for r in records)]
    quality = quality_keys(records)
    panels = 1 + len(keys) + len(quality)
    fig, axes = plt.subplots(panels, 1, sharex=True, squeeze=False, figsize=(7.0, 3.6 + 1.8 * (panels - 1)),
                             gridspec_kw={"height_ratios": [2] + [1] * (panels - 1)})
    axes = axes[:, 0]
    _loss_panel(axes[0], records)
    for ax, key in zip(axes[1:], keys):
        _likelihood_panel(ax, [(r["step"], r[key]) for r in records if r.get(key) is not None], key)
    for ax, key in zip(axes[1 + len(keys):], quality):
        _quality_panel(ax, records, key)
    axes[-1].set_xlabel("step" + (f"\n\n{textwrap.fill(caption, 110)}" if caption else ""), fontsize=9)
    if title:
        axes[0].set_title(textwrap.shorten(title, 100), fontsize=10)
    fig.tight_layout()
    return _png(fig)
