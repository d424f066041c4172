"""Pictures of samples with Pillow only: an image grid, or a scatter plot of 2-D points."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

GRID_PAD = 2
MIN_TILE = 32          # small images (8x8 digits) are enlarged to at least this many pixels
CANVAS = 600
POINT_RADIUS = 1.5


def image_grid(images: np.ndarray, pad: int = GRID_PAD) -> Image.Image:
    """Images ``(N, C, H, W)`` with values in [0, 1] -> one RGB/greyscale grid, about square."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {images.shape}")
    n, c, h, w = images.shape
    scale = max(1, math.ceil(MIN_TILE / max(h, w)))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = h * scale + pad, w * scale + pad
    grid = np.full((rows * th + pad, cols * tw + pad, c), 255, dtype=np.uint8)
    tiles = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, cols)
        grid[pad + r * th: pad + r * th + h * scale, pad + col * tw: pad + col * tw + w * scale] = tile
    return Image.fromarray(grid[..., 0] if c == 1 else grid, mode="L" if c == 1 else "RGB")


def _extent(points: np.ndarray) -> float:
    """Half-width of the square view: the data's 99.5% |coordinate| quantile, with a margin, at least 2.5."""
    return max(2.5, 1.15 * float(np.quantile(np.abs(points), 0.995)))


def scatter_plot(points: np.ndarray, size: int = CANVAS) -> Image.Image:
    """2-D points ``(N, 2)`` as dots on a square canvas centred on the origin, with unit grid lines."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    half = _extent(points)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (x + half) / (2 * half) * (size - 1), (half - y) / (2 * half) * (size - 1)

    for k in range(-math.floor(half), math.floor(half) + 1):
        colour = (150, 150, 150) if k == 0 else (225, 225, 225)
        draw.line([to_pixel(k, -half), to_pixel(k, half)], fill=colour)
        draw.line([to_pixel(-half, k), to_pixel(half, k)], fill=colour)
    for x, y in points[np.isfinite(points).all(axis=1)]:
        px, py = to_pixel(float(x), float(y))
        draw.ellipse([px - POINT_RADIUS, py - POINT_RADIUS, px + POINT_RADIUS, py + POINT_RADIUS],
                     fill=(31, 90, 180))
    return img
