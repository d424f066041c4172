"""Latent data for latent diffusion (Rombach et al. 2022): a data set encoded once by a first stage
(``data.first_stage``, a ``models.save_autoencoder`` file or a folder holding ``autoencoder.pt``).

The stored items are the posterior parameters ``[mean, logvar]`` of ``q(z|x)`` at the dequantisation
cell centres, ``(N, 2c, h, w)`` float32, cached next to the first stage; a batch reaches model space as
one draw ``u = scale_factor z``, ``z ~ q(z|x)`` (``to_model_space``), and samples go back through the
decoder's mean (``to_data_space``).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Tuple

import torch

from scoresde.data.datasets import data_scaler, dequantize
from scoresde.models.autoencoder import load_autoencoder, sample_posterior

FIRST_STAGE_FILE = "autoencoder.pt"
CACHE_DIR = "latents"
ENCODE_BATCH = 256


def first_stage_file(path: str) -> Path:
    """The autoencoder file ``data.first_stage`` names: the file itself, or ``<folder>/autoencoder.pt``."""
    found = Path(path)
    if found.is_dir():
        found = found / FIRST_STAGE_FILE
    if not found.is_file():
        raise ValueError(f"config.data.first_stage={path!r}: no autoencoder there (a models.save_autoencoder file, "
                         f"or a folder holding {FIRST_STAGE_FILE})")
    return found


def first_stage_header(path: str) -> Tuple[dict, dict]:
    """The first stage's constructor arguments and metadata (``dataset``, ``shape``, ``centered``)."""
    payload = torch.load(first_stage_file(path), map_location="cpu", weights_only=True)
    return payload["config"], payload["metadata"]


def check_first_stage(path: str, dataset: str, shape: tuple, centered: bool) -> tuple:
    """The latent shape ``(c, H/f, W/f)``; ``ValueError`` unless the first stage was trained on this data
    set, at this item shape and scaling."""
    config, meta = first_stage_header(path)
    missing = [k for k in ("dataset", "shape", "centered") if k not in meta]
    if missing:
        raise ValueError(f"config.data.first_stage={path!r} does not record {missing} of the data it was trained "
                         f"on (save_autoencoder(path, ae, dataset=..., shape=..., centered=...))")
    mine = {"dataset": dataset, "shape": list(shape), "centered": bool(centered)}
    theirs = {"dataset": meta["dataset"], "shape": list(meta["shape"]), "centered": bool(meta["centered"])}
    if mine != theirs:
        raise ValueError(f"config.data.first_stage={path!r} was trained on {theirs}, but config.data gives {mine}")
    f = 2 ** config["n_down"]
    return (config["latent_channels"], shape[1] // f, shape[2] // f)


def _cache_path(file: Path, dataset: str, split: str, count: int, centered: bool) -> Path:
    digest = hashlib.sha1(file.read_bytes()).hexdigest()[:12]
    return file.parent / CACHE_DIR / f"{dataset}_{split}_{count}_c{int(centered)}_{digest}.pt"


@torch.no_grad()
def encode_items(first_stage, items: torch.Tensor, num_levels: int, centered: bool, *,
                 cache: Path | None = None, progress: bool = True) -> torch.Tensor:
    """``[mean, logvar]`` of ``q(z|x)`` for uint8 grey levels ``items`` at the cell centres, ``(N, 2c, h, w)``;
    read from ``cache`` when it exists, else computed (with a progress bar) and written there atomically."""
    if cache is not None and cache.is_file():
        return torch.load(cache, map_location="cpu", weights_only=True)
    from tqdm.auto import tqdm
    scale = data_scaler(centered)
    out = []
    starts = range(0, len(items), ENCODE_BATCH)
    for start in tqdm(starts, desc="encoding latents", unit="batch", leave=False, disable=not progress):
        x = scale(dequantize(items[start:start + ENCODE_BATCH].long(), num_levels, uniform=False))
        out.append(torch.cat(first_stage.encode(x), dim=1).float())
    params = torch.cat(out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache.parent, prefix=cache.stem, suffix=".tmp")
        os.close(handle)
        try:
            torch.save(params, temporary)
            os.replace(temporary, cache)
        finally:
            Path(temporary).unlink(missing_ok=True)
    return params


def load_first_stage(path: str):
    """The first stage (eval mode, CPU) from ``data.first_stage``."""
    ae, _ = load_autoencoder(first_stage_file(path))
    return ae.eval()


def encoded(first_stage, path: str, items: torch.Tensor | None, dataset: str, split: str, num_levels: int,
            centered: bool) -> torch.Tensor | None:
    """``encode_items`` with its cache next to the first stage's file (``None`` stays ``None``)."""
    if items is None:
        return None
    cache = _cache_path(first_stage_file(path), dataset, split, len(items), centered)
    return encode_items(first_stage, items, num_levels, centered, cache=cache)


def latent_draw(params: torch.Tensor, scale_factor: float, generator: torch.Generator | None) -> torch.Tensor:
    """``u = scale_factor z``, ``z ~ N(mean, e^logvar)`` from stored ``[mean, logvar]`` rows."""
    mean, logvar = params.float().chunk(2, dim=1)
    if generator is not None and generator.device != mean.device:
        noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
        return scale_factor * (mean + torch.exp(0.5 * logvar) * noise)
    return scale_factor * sample_posterior(mean, logvar, generator)


@torch.no_grad()
def decode_latents(first_stage, u: torch.Tensor) -> torch.Tensor:
    """Model-space pixels: the decoder's mean at ``z = u / scale_factor``."""
    first_stage = first_stage.to(u.device)
    return first_stage.decode(u / float(first_stage.scale_factor))
