"""Import score_sde_pytorch checkpoints (Song et al. 2021; github.com/yang-song/score_sde_pytorch).

score_sde's DDPM++ and NCSN++ are one class (score_sde's ``models/ncsnpp.py: NCSNpp``, ``model.name = 'ncsnpp'`` in
both its DDPM++ and NCSN++ configs), and so is this toolkit's :class:`models.unet.UNet`, built block
for block the same way. Only the names differ: score_sde keeps every layer in one flat
``all_modules`` list and uses Flax-style names (``GroupNorm_0``, ``Conv_0``, ``NIN_0``); here they are
named by role (``encoder.0.blocks.1.norm_0``). The mapping is computed from the network itself
(:func:`score_sde_parameter_map`), walking the toolkit modules in the order score_sde appends them.
One layer changes form: score_sde's ``NIN`` (a 1x1 convolution stored as a matrix ``W`` of shape
``(in, out)``, used in attention and in DDPM blocks' shortcuts) becomes a 1x1 ``Conv2d`` whose weight is
``W.T[:, :, None, None]``.

score_sde's network also does two things this toolkit leaves to the data scaler and the score wrapper:
it maps ``[0, 1]`` data to ``[-1, 1]`` when ``data.centered`` is false, and divides its output by
sigma when ``model.scale_by_sigma``. :class:`ScoreSDEUNet` (a :class:`UNet`) does both, so
``model(x, labels)`` is exactly score_sde's ``model(x, labels)``; wrap it in a score function with
``score_sde_score_kwargs(config)`` (the output is already divided by sigma), or let
:func:`from_score_sde` do everything.

A checkpoint is what score_sde's ``run_lib`` saves: ``{'model': state dict of the DataParallel-wrapped
network (names start with 'module.'), 'ema': {'decay', 'num_updates', 'shadow_params'}, 'optimizer',
'step'}``. Loading is strict: a missing, unexpected or wrongly shaped parameter is a one-line
``ValueError`` naming the first that does not fit.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn as nn

from scoresde import sde_lib
from scoresde.utils import append_dims, check_choice

from .layers import (AttnBlock, Combine, FIRConv2d, GaussianFourierProjection, ResnetBlockBigGAN, ResnetBlockDDPM,
                     _Resample)
from .unet import UNet
from .utils import get_score_fn

SCORE_SDE_MODEL_NAMES = ("ncsnpp", "ddpmpp")   # score_sde registers DDPM++ and NCSN++ as 'ncsnpp'
SCORE_SDE_SDES = ("vpsde", "subvpsde", "vesde")


# ---------------------------------------------------------------------------------------------- config
def _field(config: Any, dotted: str) -> Any:
    """``config.model.nf`` for ``"model.nf"``, from an ml_collections ConfigDict or nested dicts (JSON)."""
    node = config
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not isinstance(node, Mapping) and hasattr(node, part):
            node = getattr(node, part)
        else:
            raise ValueError(f"the score_sde config has no field {dotted}")
    return node


def _lower(config: Any, dotted: str) -> str:
    return str(_field(config, dotted)).lower()   # score_sde lower-cases its string options


def unet_kwargs_from_score_sde_config(config: Any) -> dict:
    """Keyword arguments of :class:`UNet` for the network a score_sde config builds (``config.model`` and
    ``config.data``; an ml_collections ConfigDict or the same as nested dicts). Raises ``ValueError``
    naming a field this toolkit cannot reproduce: another network (``model.name``), an activation other
    than swish, or an unconditional network (``model.conditional = False``)."""
    check_choice("model.name", _lower(config, "model.name"), SCORE_SDE_MODEL_NAMES)
    check_choice("model.nonlinearity", _lower(config, "model.nonlinearity"), ("swish",))
    if not bool(_field(config, "model.conditional")):
        raise ValueError("model.conditional=False (no noise-level input) is not supported; allowed: True")
    m = lambda name: _field(config, f"model.{name}")  # noqa: E731
    embedding_type = _lower(config, "model.embedding_type")
    return dict(
        in_channels=_field(config, "data.num_channels"),
        image_size=_field(config, "data.image_size"),
        nf=m("nf"),
        ch_mult=tuple(m("ch_mult")),
        num_res_blocks=m("num_res_blocks"),
        attn_resolutions=tuple(m("attn_resolutions")),
        dropout=m("dropout"),
        resblock_type=_lower(config, "model.resblock_type"),
        embedding_type=embedding_type,
        # score_sde reads fourier_scale only for a Fourier embedding (some positional configs lack it)
        fourier_scale=m("fourier_scale") if embedding_type == "fourier" else 16.0,
        fir=bool(m("fir")),
        fir_kernel=tuple(m("fir_kernel")),
        skip_rescale=bool(m("skip_rescale")),
        resamp_with_conv=bool(m("resamp_with_conv")),
        init_scale=float(m("init_scale")),
        progressive=_lower(config, "model.progressive"),
        progressive_input=_lower(config, "model.progressive_input"),
        progressive_combine=_lower(config, "model.progressive_combine"),
    )


def score_sde_sigmas(config: Any) -> torch.Tensor:
    """score_sde's ``utils.get_sigmas``: ``num_scales`` noise levels, geometric from sigma_max down to
    sigma_min (float64, as the network's ``sigmas`` buffer holds them)."""
    sigma_min, sigma_max = float(_field(config, "model.sigma_min")), float(_field(config, "model.sigma_max"))
    n = int(_field(config, "model.num_scales"))
    log_sigmas = torch.linspace(torch.log(torch.tensor(sigma_max, dtype=torch.float64)),
                                torch.log(torch.tensor(sigma_min, dtype=torch.float64)), n, dtype=torch.float64)
    return torch.exp(log_sigmas)


# --------------------------------------------------------------------------------------------- network
class ScoreSDEUNet(UNet):
    """score_sde's ``NCSNpp``: a :class:`UNet` plus the input centring and output scaling score_sde does
    inside the network. ``forward(x, labels)`` returns what score_sde's ``model(x, labels)`` does."""

    def __init__(self, *,
                 centered: bool,           # data.centered: inputs already in [-1, 1] (else x -> 2x - 1 first)
                 scale_by_sigma: bool,     # model.scale_by_sigma: output divided by the noise level
                 sigmas: torch.Tensor,     # score_sde's `sigmas` buffer (its discrete noise levels)
                 **unet_kwargs):           # the UNet's arguments (unet_kwargs_from_score_sde_config)
        super().__init__(**unet_kwargs)
        self.centered, self.scale_by_sigma = bool(centered), bool(scale_by_sigma)
        self.register_buffer("sigmas", sigmas.clone())

    def forward(self, x: torch.Tensor, labels: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = super().forward(x if self.centered else 2 * x - 1, labels, cond)
        if not self.scale_by_sigma:
            return h
        # score_sde: the label is sigma itself for a Fourier embedding, an index into `sigmas` otherwise
        used_sigmas = labels if self.fourier_embedding else self.sigmas[labels.long()]
        return h / append_dims(used_sigmas.to(h.dtype), h.ndim)

    @property
    def fourier_embedding(self) -> bool:
        return self.embed.fourier is not None


def build_score_sde_unet(config: Any) -> ScoreSDEUNet:
    """The (randomly initialised) network of a score_sde config."""
    return ScoreSDEUNet(centered=bool(_field(config, "data.centered")),
                        scale_by_sigma=bool(_field(config, "model.scale_by_sigma")),
                        sigmas=score_sde_sigmas(config), **unet_kwargs_from_score_sde_config(config))


# -------------------------------------------------------------------------------------------- name map
# (score_sde child, toolkit child, is NIN) per block, in score_sde's registration order
_RESBLOCK_CHILDREN = (("GroupNorm_0", "norm_0", False), ("Conv_0", "conv_0", False), ("Dense_0", "dense_0", False),
                      ("GroupNorm_1", "norm_1", False), ("Conv_1", "conv_1", False))
_ATTN_CHILDREN = (("GroupNorm_0", "norm", False), ("NIN_0", "qkv.0", True), ("NIN_1", "qkv.1", True),
                  ("NIN_2", "qkv.2", True), ("NIN_3", "proj_out", True))


def _children(module: nn.Module) -> list[tuple[str, str, bool]]:
    """``(score_sde child, toolkit child, is NIN)`` for one entry of score_sde's ``all_modules``; the
    empty child ``""`` is the module's own weight and bias."""
    if isinstance(module, (ResnetBlockBigGAN, ResnetBlockDDPM)):
        children = [c for c in _RESBLOCK_CHILDREN if getattr(module, c[1]) is not None]
        if module.shortcut is not None:  # BigGAN: conv1x1 Conv_2; DDPM: NIN_0
            children.append(("Conv_2", "shortcut", False) if isinstance(module, ResnetBlockBigGAN)
                            else ("NIN_0", "shortcut", True))
        return children
    if isinstance(module, AttnBlock):
        return list(_ATTN_CHILDREN)
    if isinstance(module, _Resample):    # no parameters, Conv_0 (plain) or Conv2d_0 (fused with FIR)
        if module.conv is None:
            return []
        return [("Conv2d_0" if isinstance(module.conv, FIRConv2d) else "Conv_0", "conv", False)]
    if isinstance(module, Combine):
        return [("Conv_0", "conv", False)]
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.GroupNorm)):
        return [("", "", False)]
    raise TypeError(f"no score_sde counterpart for {type(module).__name__}")


def _score_sde_module_order(net: UNet) -> list[nn.Module]:
    """The toolkit modules in the order score_sde's ``NCSNpp.__init__`` appends them to ``all_modules``
    (parameter-free pyramid resamplers are attributes there, not list entries)."""
    order = [net.embed.fourier] if net.embed.fourier is not None else []
    order += [net.embed.dense_0, net.embed.dense_1, net.conv_in]
    for stage in net.encoder:
        for block, attn in zip(stage["blocks"], stage["attns"]):
            order += [block] + ([] if isinstance(attn, nn.Identity) else [attn])
        if "downsample" in stage:
            order.append(stage["downsample"])
            if net.progressive_input == "input_skip":
                order.append(stage["combine"])
            elif net.progressive_input == "residual":
                order.append(stage["pyramid"])
    order += [net.mid_block_0, net.mid_attn, net.mid_block_1]
    for stage in net.decoder:
        order += list(stage["blocks"]) + ([] if isinstance(stage["attn"], nn.Identity) else [stage["attn"]])
        if "pyramid_norm" in stage:
            order += [stage["pyramid_norm"], stage["pyramid_conv"]]
        elif net.progressive == "residual":
            order.append(stage["pyramid_up"])
        if "upsample" in stage:
            order.append(stage["upsample"])
    if net.head is not None:
        order += [net.head[0], net.head[2]]
    return order


def score_sde_parameter_map(net: ScoreSDEUNet) -> list[tuple[str, str, bool, bool]]:
    """``(score_sde name, toolkit name, is NIN, trainable)`` for every tensor of score_sde's state dict
    (without the 'module.' prefix), in its order. ``is NIN``: stored as ``W (in, out)`` there, a 1x1 conv
    weight ``W.T[:, :, None, None]`` here. ``trainable``: in score_sde's EMA (all parameters but the fixed
    Fourier frequencies)."""
    toolkit_names = {id(module): name for name, module in net.named_modules()}
    entries = [("sigmas", "sigmas", False, False)]
    for index, module in enumerate(_score_sde_module_order(net)):
        prefix, target = f"all_modules.{index}", toolkit_names[id(module)]
        if isinstance(module, GaussianFourierProjection):
            entries.append((f"{prefix}.W", f"{target}.W", False, False))
            continue
        for child, tk_child, nin in _children(module):
            src = ".".join(p for p in (prefix, child) if p)
            dst = ".".join(p for p in (target, tk_child) if p)
            pairs = (("W", "weight"), ("b", "bias")) if nin else (("weight", "weight"), ("bias", "bias"))
            entries += [(f"{src}.{a}", f"{dst}.{b}", nin and a == "W", True) for a, b in pairs]
    return entries


# ---------------------------------------------------------------------------------------------- loading
def _read_checkpoint(path_or_state) -> Mapping:
    if isinstance(path_or_state, (str, os.PathLike)):
        # score_sde checkpoints hold tensors, dicts, lists and numbers only
        return torch.load(path_or_state, map_location="cpu", weights_only=True)
    if not isinstance(path_or_state, Mapping):
        raise ValueError(f"path_or_state must be a checkpoint path or dict, got {type(path_or_state).__name__}")
    return path_or_state


def _model_weights(state: Mapping) -> tuple[dict, str]:
    """score_sde's network state dict, without the DataParallel prefix, and that prefix."""
    if "model" in state:
        weights = state["model"]
    elif state and all(torch.is_tensor(v) for v in state.values()):
        weights = state   # a bare state dict of the network
    else:
        raise ValueError(f"not a score_sde checkpoint: no 'model' entry (keys: {sorted(map(str, state))[:6]})")
    prefix = "module." if weights and all(k.startswith("module.") for k in weights) else ""
    return {k[len(prefix):]: v for k, v in weights.items()}, prefix


def _expected_shape(tensor: torch.Tensor, nin: bool) -> tuple[int, ...]:
    return (tensor.shape[1], tensor.shape[0]) if nin else tuple(tensor.shape)


def _convert(weights: dict, mapping, target: dict, prefix: str) -> dict:
    """The toolkit state dict from score_sde's, checked strictly against ``mapping``."""
    expected = {name for name, *_ in mapping}
    unexpected = [k for k in weights if k not in expected]
    converted = {}
    for name, tk_name, nin, _ in mapping:
        if name not in weights:
            extra = f" (and {len(unexpected)} unexpected, first {prefix + unexpected[0]!r})" if unexpected else ""
            raise ValueError(f"score_sde checkpoint does not fit the config: missing {prefix + name!r}{extra}")
        value, shape = weights[name], _expected_shape(target[tk_name], nin)
        if tuple(value.shape) != shape:
            raise ValueError(f"score_sde checkpoint does not fit the config: {prefix + name!r} has shape "
                             f"{tuple(value.shape)}, the config gives {shape}")
        converted[tk_name] = value.t().reshape(target[tk_name].shape) if nin else value
    if unexpected:
        raise ValueError(f"score_sde checkpoint does not fit the config: unexpected {prefix + unexpected[0]!r} "
                         f"({len(unexpected)} unexpected in all)")
    return converted


def _apply_ema(converted: dict, ema_state: Any, mapping, prefix: str) -> None:
    """Replace the trainable weights by score_sde's EMA ``shadow_params`` (kept in ``parameters()`` order,
    trainable parameters only, as its ``ExponentialMovingAverage.copy_to`` reads them)."""
    if not isinstance(ema_state, Mapping) or "shadow_params" not in ema_state:
        raise ValueError("the score_sde checkpoint has no 'ema' entry with 'shadow_params'; pass ema=False")
    shadows = list(ema_state["shadow_params"])
    trainable = [(name, tk_name, nin) for name, tk_name, nin, train in mapping if train]
    if len(shadows) != len(trainable):
        raise ValueError(f"score_sde checkpoint does not fit the config: ema.shadow_params has {len(shadows)} "
                         f"tensors, the network has {len(trainable)} trainable parameters")
    for i, (shadow, (name, tk_name, nin)) in enumerate(zip(shadows, trainable)):
        want = _expected_shape(converted[tk_name], nin)
        if not torch.is_tensor(shadow) or tuple(shadow.shape) != want:
            got = tuple(shadow.shape) if torch.is_tensor(shadow) else type(shadow).__name__
            raise ValueError(f"score_sde checkpoint does not fit the config: ema.shadow_params[{i}] (for "
                             f"{prefix + name!r}) has shape {got}, expected {want}")
        converted[tk_name] = shadow.t().reshape(converted[tk_name].shape) if nin else shadow


def load_score_sde_checkpoint(path_or_state, config: Any, ema: bool = True) -> ScoreSDEUNet:
    """A score_sde_pytorch checkpoint (a path, or the dict ``torch.load`` gives) as a :class:`ScoreSDEUNet`
    built from its score_sde ``config``, on the CPU, in eval mode.

    ``ema=True`` loads the exponential moving average of the weights (what score_sde samples and
    evaluates with); ``ema=False`` the raw training weights. The checkpoint must fit the config exactly:
    otherwise a one-line ``ValueError`` names the first parameter missing, unexpected or of the wrong
    shape. ``model(x, labels)`` then returns what score_sde's network does for the same inputs.
    """
    state = _read_checkpoint(path_or_state)
    model = build_score_sde_unet(config)
    weights, prefix = _model_weights(state)
    mapping = score_sde_parameter_map(model)
    converted = _convert(weights, mapping, model.state_dict(), prefix)
    if ema:
        _apply_ema(converted, state.get("ema"), mapping, prefix)
    model.load_state_dict(converted, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------- score
def score_sde_score_kwargs(config: Any) -> dict:
    """Keyword arguments of :func:`models.get_score_fn` that reproduce score_sde's ``get_score_fn`` for a
    :class:`ScoreSDEUNet`: VP / sub-VP networks predict noise (``score = -out / std``, labels ``999 t``
    when continuous; score_sde's sub-VP always uses continuous labels), VE networks the score itself
    (labels ``sigma(t)`` when continuous; the 1/sigma scaling is already inside the network)."""
    sde = check_choice("training.sde", _lower(config, "training.sde"), SCORE_SDE_SDES)
    continuous = bool(_field(config, "training.continuous")) or sde == "subvpsde"
    return dict(continuous=continuous, parameterization="score" if sde == "vesde" else "eps",
                scale_by_sigma=False)


def sde_from_score_sde_config(config: Any) -> sde_lib.SDE:
    """The process of a score_sde config (``training.sde`` with ``model.beta_*`` / ``sigma_*``, ``num_scales``)."""
    sde = check_choice("training.sde", _lower(config, "training.sde"), SCORE_SDE_SDES)
    n = int(_field(config, "model.num_scales"))
    if sde == "vesde":
        return sde_lib.VESDE(sigma_min=float(_field(config, "model.sigma_min")),
                             sigma_max=float(_field(config, "model.sigma_max")), N=n)
    cls = sde_lib.VPSDE if sde == "vpsde" else sde_lib.subVPSDE
    return cls(beta_min=float(_field(config, "model.beta_min")), beta_max=float(_field(config, "model.beta_max")), N=n)


def from_score_sde(path_or_state, config: Any, ema: bool = True
                   ) -> tuple[sde_lib.SDE, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``(sde, score_fn)`` of a score_sde_pytorch checkpoint and its config, ready for the samplers and
    the likelihood (like :func:`models.from_diffusers`). The network stays on the CPU; for another device
    load it with :func:`load_score_sde_checkpoint`, move it, and call
    ``get_score_fn(sde, model, **score_sde_score_kwargs(config))``."""
    model = load_score_sde_checkpoint(path_or_state, config, ema=ema)
    sde = sde_from_score_sde_config(config)
    return sde, get_score_fn(sde, model, **score_sde_score_kwargs(config))
