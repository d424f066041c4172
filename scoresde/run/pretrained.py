"""Models from elsewhere in ``eval``, ``sample``, ``inpaint`` and ``colorize``: with ``model.pretrained``
set, the score comes from a diffusers ``save_pretrained`` directory (``models.load_diffusers_dir``: a
``UNet2DModel`` and its DDPM/DDIM scheduler; nothing is downloaded) or a score_sde_pytorch checkpoint
(``models.from_score_sde``, with the config it was trained with in ``model.pretrained_config``: a JSON
dump of that config, or its ``.py`` file, which is executed). The data set, its scaling and the samplers still come from the
config; the process (the scheduler's betas, the checkpoint's SDE) comes with the model.

A name of ``SHIPPED`` instead of a path (``model.pretrained=digits``) is a model that ships with the
package, in ``scoresde/pretrained/``: ``<stem>.pt``, its weights (a plain state dict, floating tensors in
float16), and ``<stem>.json``, their SHA-256, the options they were trained with (``RunOptions.to_json``)
and the config file that trained them. The file's checksum is verified, the weights are cast to float32
and loaded strictly into the network the stored options build, and the requested config must match the
stored options in every model leaf (``check_options_drift``); the process comes from the stored options.
A local path of the same name is given as ``./digits``."""
from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from scoresde.models import get_score_fn
from scoresde.models.score_sde_import import load_score_sde_checkpoint, score_sde_score_kwargs, sde_from_score_sde_config
from scoresde.data.datasets import ITEM_SHAPES, NUM_CLASSES, NUM_LEVELS
from scoresde.run.checkpoint import atomic_write_text, file_sha256
from scoresde.run.distributed import DistContext
from scoresde.run.drift import check_options_drift
from scoresde.run.options import RunOptions
from scoresde.data.pipeline import DataSpec, spec_from_meta
from scoresde.run.runtime import local_processes, set_threads
from scoresde.sde_lib import SDE
from scoresde.utils import Registry

logger = logging.getLogger(__name__)


@dataclass
class Pretrained:
    sde: SDE                          # the process the model comes with
    model: nn.Module
    score_fn: Callable                # score_fn(x, t) or, for a class-conditional model, score_fn(x, t, cond)
    data: DataSpec                    # tensor-free: the config's data set and scaling
    path: Path
    trained: RunOptions | None = None  # a shipped model's stored options (scored as a checkpoint here is)
    step: int = 0                     # a shipped model's training step


CONFIG_SUFFIXES = (".json", ".py")


def read_score_sde_config(path: str | None):
    """score_sde's config: a JSON file (``config.to_dict()`` dumped) or a ``.py`` file whose ``get_config()``
    is executed (score_sde's configs are Python; importable only if its own imports resolve, e.g. with
    score_sde's ``configs`` package on the path)."""
    if not path:
        raise ValueError("config.model.pretrained names a score_sde checkpoint: set config.model.pretrained_config "
                         "to the config it was trained with (a JSON dump of it, or its .py file)")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"config.model.pretrained_config={path!r} does not exist")
    if file.suffix not in CONFIG_SUFFIXES:
        raise ValueError(f"config.model.pretrained_config={path!r} must be a {' or '.join(CONFIG_SUFFIXES)} file "
                         f"(a JSON dump of score_sde's config, or its Python file, which is executed), got "
                         f"{file.suffix or 'no suffix'!r}")
    if file.suffix == ".json":
        return json.loads(file.read_text())
    logger.info("executing the Python file %s for its get_config() (config.model.pretrained_config)", file)
    spec = importlib.util.spec_from_file_location("score_sde_config", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config()
    except Exception as err:   # noqa: BLE001 -- the user's file; one line naming it
        raise ValueError(f"config.model.pretrained_config={path!r}: the Python file was executed and its "
                         f"get_config() failed ({type(err).__name__}: {err}); save the config as JSON where "
                         f"score_sde is installed (json.dump(get_config().to_dict(), f)) and pass that") from err


def _data_spec(options: RunOptions):
    name = options.data.dataset
    if name not in NUM_LEVELS:
        raise ValueError(f"config.model.pretrained: pretrained image models need image data "
                         f"({', '.join(NUM_LEVELS)}), got data.dataset={name!r}")
    return spec_from_meta({"dataset": name, "shape": list(ITEM_SHAPES[name]), "num_levels": NUM_LEVELS[name],
                           "centered": options.data.centered, "num_classes": NUM_CLASSES[name]})


def _from_diffusers(options: RunOptions, path: Path, ctx: DistContext):
    from scoresde.models.diffusers_interop import load_diffusers_dir

    if not options.data.centered:
        raise ValueError("config.model.pretrained is a diffusers model, which takes images in [-1, 1]: set "
                         "config.data.centered=True")
    # the model's own score: diffusers' clip_sample (a clamp of x0 at every step) is a sampling heuristic
    sde, score_fn, unet, _ = load_diffusers_dir(path, device=ctx.device, clip_sample=False)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    return sde, score_fn, unet, shape


def _from_score_sde(options: RunOptions, path: Path, ctx: DistContext):
    config = read_score_sde_config(options.network.pretrained_config)
    centered = bool(config["data"]["centered"] if isinstance(config, dict) else config.data.centered)
    if centered != options.data.centered:
        raise ValueError(f"config.data.centered={options.data.centered} but the score_sde checkpoint was trained "
                         f"with data.centered={centered}: set them equal (the data scaling is the model's)")
    model = load_score_sde_checkpoint(path, config).to(ctx.device)
    sde = sde_from_score_sde_config(config)
    shape = (model.in_channels, model.image_size, model.image_size) if hasattr(model, "image_size") else None
    return sde, get_score_fn(sde, model, **score_sde_score_kwargs(config)), model, shape


# ---------------------------------------------------------------------------------------- shipped models
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "pretrained"    # package data
WEIGHTS_DTYPE = torch.float16                                          # on disk; loaded as float32


@dataclass(frozen=True)
class ShippedModel:
    """A model in ``SHIPPED_DIR``: ``<stem>.pt`` (weights) and ``<stem>.json`` (what they are)."""

    name: str
    stem: str
    description: str

    @property
    def weights_path(self) -> Path:
        return SHIPPED_DIR / f"{self.stem}.pt"

    @property
    def info_path(self) -> Path:
        return SHIPPED_DIR / f"{self.stem}.json"

    def read_info(self) -> dict:
        """The JSON beside the weights: ``sha256``, ``options`` (an object), ``data_meta``, ``config``, ..."""
        if not self.info_path.is_file():
            raise ValueError(f"the shipped model {self.name!r} is missing its file {self.info_path} (reinstall scoresde)")
        return json.loads(self.info_path.read_text())

    def options(self, info: dict | None = None) -> RunOptions:
        """The options the weights were trained with."""
        return RunOptions.from_json(json.dumps((info or self.read_info())["options"]))

    def read_weights(self, info: dict | None = None) -> dict:
        """The stored state dict (float16 tensors as on disk), after its SHA-256 is checked against the JSON's."""
        info = info or self.read_info()
        path = self.weights_path
        if not path.is_file():
            raise ValueError(f"the shipped model {self.name!r} is missing its weights {path} (reinstall scoresde)")
        digest = file_sha256(path)
        if digest != info["sha256"]:
            raise ValueError(f"the shipped model {self.name!r}: {path} does not match its checksum (sha256 "
                             f"{digest[:16]}..., expected {info['sha256'][:16]}...): the file is damaged; "
                             f"reinstall scoresde")
        return torch.load(path, map_location="cpu", weights_only=True)


SHIPPED: Registry[ShippedModel] = Registry("shipped model")
SHIPPED.register("digits", ShippedModel(
    name="digits", stem="digits_cond",
    description="class-conditional DDPM++ (VP SDE, label dropout 0.1) on 8x8 digits, configs/digits/ddpmpp_vp_cond.py"))


def shipped_model(name: str) -> ShippedModel:
    """The shipped model ``name``; ``ValueError`` listing the available names for any other."""
    return SHIPPED.get(name)


def half_state_dict(module: nn.Module) -> dict:
    """``module``'s state dict as shipped: floating tensors in float16, others as they are, all on the CPU."""
    return {k: (v.to(WEIGHTS_DTYPE) if v.is_floating_point() else v).detach().cpu().clone()
            for k, v in module.state_dict().items()}


def write_shipped(module: nn.Module, stem: str, info: dict, directory: Path | None = None) -> Path:
    """``<stem>.pt`` (``half_state_dict(module)``) and ``<stem>.json`` (``info`` with the file's ``sha256``
    and ``dtype`` added) in ``directory`` (default ``SHIPPED_DIR``); returns the weights' path."""
    directory = Path(directory or SHIPPED_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.pt"
    torch.save(half_state_dict(module), path)
    info = {**info, "weights": path.name, "dtype": str(WEIGHTS_DTYPE).replace("torch.", ""),
            "size_bytes": path.stat().st_size, "sha256": file_sha256(path)}
    atomic_write_text(directory / f"{stem}.json", json.dumps(info, indent=2) + "\n")
    return path


def shipped_network(name: str, device: torch.device) -> tuple[nn.Module, dict]:
    """The shipped model ``name``'s network (checksum checked, float32 weights loaded strictly, eval mode)
    and its JSON info."""
    shipped = shipped_model(name)
    info = shipped.read_info()
    trained = shipped.options(info)
    model = trained.network.build(spec_from_meta(info["data_meta"]).shape)
    state = {k: v.float() if v.is_floating_point() else v for k, v in shipped.read_weights(info).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the shipped model {name!r}: its weights do not match the network its options build: "
                         f"{' '.join(str(err).split())}") from err
    return model.to(device).eval(), info


def load_shipped(options: RunOptions, ctx: DistContext, name: str) -> Pretrained:
    """The shipped model ``name``: checksum checked, weights cast to float32 and loaded strictly into the
    network its stored options build; the requested options must agree with those in every model leaf."""
    shipped = shipped_model(name)
    trained = shipped.options()
    check_options_drift(trained, options, f"the shipped model {name!r}", resume=False)
    model, info = shipped_network(name, ctx.device)
    data = spec_from_meta(info["data_meta"])
    sde = trained.sde.build()
    score_fn = get_score_fn(sde, model, train=False, **trained.network.score_kwargs)
    if ctx.device.type == "cpu":
        set_threads(options.train.threads, local_processes())
    logger.info("loaded the shipped model %r (%s, step %s) from %s", name, shipped.description, info.get("step"),
                shipped.weights_path)
    return Pretrained(sde=sde, model=model, score_fn=score_fn, data=data, path=shipped.weights_path, trained=trained,
                      step=int(info["step"]))


def load_pretrained(options: RunOptions, ctx: DistContext) -> Pretrained:
    """The model ``model.pretrained`` names and its score: a shipped model by name, or a path."""
    name = options.network.pretrained
    if name in SHIPPED:
        return load_shipped(options, ctx, name)
    path = Path(name)
    if not path.exists():
        raise ValueError(f"config.model.pretrained={str(path)!r} does not exist, so it is neither a diffusers "
                         f"directory nor a score_sde checkpoint file (give the path of either) nor a shipped "
                         f"model (available: {SHIPPED.names()})")
    if path.is_dir():
        sde, score_fn, model, shape = _from_diffusers(options, path, ctx)
    elif path.is_file():
        sde, score_fn, model, shape = _from_score_sde(options, path, ctx)
    else:
        raise ValueError(f"config.model.pretrained={str(path)!r} is neither a diffusers directory nor a score_sde "
                         f"checkpoint file")
    data = _data_spec(options)
    if shape is not None and tuple(shape) != tuple(data.shape):
        raise ValueError(f"config.model.pretrained: the model takes items of shape {tuple(shape)}, "
                         f"data.dataset={options.data.dataset!r} has {tuple(data.shape)}")
    if ctx.device.type == "cpu":
        set_threads(options.train.threads, local_processes())
    logger.info("loaded the pretrained model %s (%s process, N = %d)", path, type(sde).__name__, sde.N)
    return Pretrained(sde=sde, model=model, score_fn=score_fn, data=data, path=path)
