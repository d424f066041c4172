"""Latent data for latent diffusion (Rombach et al. 2022): a data set encoded once by a first stage
(``data.first_stage``, a ``models.save_autoencoder`` file or a folder holding ``autoencoder.pt``, or a
diffusers ``AutoencoderKL`` ``save_pretrained`` folder described by ``first_stage.json``, which
``write_first_stage_json`` writes).

The stored items are the posterior parameters ``[mean, logvar]`` of ``q(z|x)`` at the dequantisation
cell centres, ``(N, 2c, h, w)`` float32, cached next to the first stage; a batch reaches model space as
one draw ``u = scale_factor z``, ``z ~ q(z|x)`` (``to_model_space``), and samples go back through the
decoder's mean (``to_data_space``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Tuple

import torch

from scoresde.data.datasets import data_scaler, dequantize
from scoresde.models.autoencoder import DiffusersAutoencoder, load_autoencoder, sample_posterior
from scoresde.utils import save_atomic

FIRST_STAGE_FILE = "autoencoder.pt"
DIFFUSERS_JSON = "first_stage.json"      # beside a diffusers AutoencoderKL's config.json: the data it models
DIFFUSERS_KEYS = ("dataset", "shape", "centered", "decoder_std")
CACHE_DIR = "latents"
ENCODE_BATCH = 256


def is_diffusers_folder(path: str) -> bool:
    """Whether ``path`` is a diffusers ``save_pretrained`` folder (``config.json``, no ``autoencoder.pt``)."""
    folder = Path(path)
    return folder.is_dir() and (folder / "config.json").is_file() and not (folder / FIRST_STAGE_FILE).is_file()


def first_stage_file(path: str) -> Path:
    """The file that identifies the first stage ``data.first_stage`` names: the autoencoder file itself,
    ``<folder>/autoencoder.pt``, or a diffusers folder's ``first_stage.json``."""
    found = Path(path)
    if is_diffusers_folder(path):
        found = found / DIFFUSERS_JSON
        if not found.is_file():
            raise ValueError(f"config.data.first_stage={path!r} is a diffusers folder without {DIFFUSERS_JSON}, which "
                             f"states the data its VAE models and its decoder's std: write it with scoresde.data."
                             f"latents.write_first_stage_json(folder, dataset=..., shape=..., centered=..., "
                             f"decoder_std=...)")
        return found
    if found.is_dir():
        found = found / FIRST_STAGE_FILE
    if not found.is_file():
        raise ValueError(f"config.data.first_stage={path!r}: no autoencoder there (a models.save_autoencoder file, "
                         f"a folder holding {FIRST_STAGE_FILE}, or a diffusers AutoencoderKL folder)")
    return found


def write_first_stage_json(folder, *, dataset: str, shape, centered: bool, decoder_std: float,
                           scale_factor: float | None = None) -> Path:
    """``<folder>/first_stage.json`` for a diffusers ``AutoencoderKL`` folder: the data set, item shape
    and scaling it models, the std ``s`` of its decoder ``p(x|z) = N(decode(z), s^2 I)`` (a modelling
    choice: diffusers' VAEs have none) and optionally the latent scale factor (else the VAE config's
    ``scaling_factor``)."""
    meta = {"dataset": dataset, "shape": [int(s) for s in shape], "centered": bool(centered),
            "decoder_std": float(decoder_std)}
    if scale_factor is not None:
        meta["scale_factor"] = float(scale_factor)
    path = Path(folder) / DIFFUSERS_JSON
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def first_stage_header(path: str) -> Tuple[dict, dict]:
    """The first stage's ``latent_channels`` and ``n_down`` (with its other constructor arguments) and its
    metadata (``dataset``, ``shape``, ``centered``)."""
    if is_diffusers_folder(path):
        meta = json.loads(first_stage_file(path).read_text())
        missing = [k for k in DIFFUSERS_KEYS if k not in meta]
        if missing:
            raise ValueError(f"config.data.first_stage={path!r}: {DIFFUSERS_JSON} lacks {missing} (write it with "
                             f"scoresde.data.latents.write_first_stage_json)")
        vae = json.loads((Path(path) / "config.json").read_text())
        return {"latent_channels": vae["latent_channels"], "n_down": len(vae["block_out_channels"]) - 1}, meta
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
    """``<folder>/latents/<dataset>_<split>_<count>_c<centered>_<hash>.pt``, the hash of the autoencoder file
    (of a diffusers folder: of its files, weights and first_stage.json)."""
    files = sorted(p for p in file.parent.iterdir() if p.is_file()) if file.name == DIFFUSERS_JSON else [file]
    sha = hashlib.sha1()
    for part in files:
        sha.update(part.name.encode() + b"\0" + part.read_bytes())
    digest = sha.hexdigest()[:12]
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
        save_atomic(params, cache)
    return params


def load_first_stage(path: str):
    """The first stage (eval mode, CPU) from ``data.first_stage``."""
    if is_diffusers_folder(path):
        _, meta = first_stage_header(path)
        return DiffusersAutoencoder.from_pretrained(path, decoder_std=meta["decoder_std"],
                                                    scale_factor=meta.get("scale_factor")).eval()
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
