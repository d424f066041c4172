"""Our FID Inception (``scoresde/evaluate/inception.py``) against pytorch-fid's, on one random state dict.

    python -m bench.inception_check                                    # pytorch-fid and torchvision importable
    python -m bench.inception_check --torchvision-inception PATH       # torchvision's models/inception.py file
    python -m bench.inception_check --torchvision-inception PATH --write-keys tests/fixtures/fid_inception_keys.json

pytorch-fid builds its network as torchvision's ``Inception3`` (1008 classes, no auxiliary head) with
its four patched blocks. Where torchvision does not load (a CPU-only torch beside a CUDA wheel of it),
``--torchvision-inception`` names torchvision's ``models/inception.py`` source file (from its wheel,
e.g. ``pip download torchvision --no-deps`` and unzip): it is loaded as ``torchvision.models.inception``
with stand-ins for the weight-registry modules it imports (none of which affects the network).

Checks: (1) pytorch-fid's state-dict keys and shapes equal ours; (2) with one random state dict (random
convolutions, batch-norm statistics and fc, seed 0) loaded into both, the pool3 features (pytorch-fid's
``InceptionV3`` block 3) and the logits (``fc``'s weight on them, no bias) of random images agree: the
largest absolute difference is printed and must be <= 1e-4. ``--write-keys`` saves the key/shape list,
the fixture ``tests/unit/test_inception.py`` compares against without pytorch-fid.
"""
from __future__ import annotations

import argparse
import enum
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

from scoresde.evaluate.inception import FIDInception

TOLERANCE = 1e-4


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class _WeightsEnum(enum.Enum):
    @classmethod
    def verify(cls, weights):
        return weights


def stub_torchvision(inception_source: Path) -> None:
    """``torchvision`` and ``torchvision.models.inception`` from torchvision's own inception.py source,
    with stand-ins for the modules it imports only to register weights."""
    def passthrough(*args, **kwargs):
        return lambda fn: fn
    package = _module("torchvision", __version__="0.29.0", __path__=[])
    models = _module("torchvision.models", __path__=[])
    _module("torchvision.transforms", __path__=[])
    _module("torchvision.transforms._presets", ImageClassification=object)
    _module("torchvision.utils", _log_api_usage_once=lambda obj: None)
    _module("torchvision.models._api", register_model=passthrough, Weights=lambda **kwargs: kwargs,
            WeightsEnum=_WeightsEnum)
    _module("torchvision.models._meta", _IMAGENET_CATEGORIES=[])
    _module("torchvision.models._utils", _ovewrite_named_param=lambda kwargs, name, value: kwargs.setdefault(name, value),
            handle_legacy_interface=passthrough)
    spec = importlib.util.spec_from_file_location("torchvision.models.inception", inception_source)
    inception = importlib.util.module_from_spec(spec)
    sys.modules["torchvision.models.inception"] = inception
    spec.loader.exec_module(inception)
    package.models, models.inception, models.inception_v3 = models, inception, inception.inception_v3


def random_state(model: torch.nn.Module, seed: int = 0) -> dict:
    """Every float tensor of ``model``'s state dict drawn at random (variances positive), so that a wrong
    wiring shows; batch-norm counters kept."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith(("bn.weight", "running_mean", "bn.bias")):
            state[key] = 0.9 + 0.2 * torch.rand(value.shape, generator=generator) if key.endswith("weight") else \
                0.1 * torch.randn(value.shape, generator=generator)
        else:                                  # He-scaled weights keep activations O(1) through 94 layers
            fan_in = value[0].numel() if value.ndim > 1 else 1
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


def pytorch_fid_model(state: dict):
    """pytorch-fid's ``InceptionV3`` (block 3) and its inner torchvision network, both holding ``state``."""
    from pytorch_fid import inception as pfid
    pfid.load_state_dict_from_url = lambda *args, **kwargs: state     # instead of downloading the weights
    inner = pfid.fid_inception_v3().eval()
    wrapper = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    return wrapper, inner


def key_shapes(state: dict) -> list:
    return [[key, list(value.shape)] for key, value in state.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torchvision-inception", type=Path, default=None,
                        help="torchvision's models/inception.py, used when torchvision does not import")
    parser.add_argument("--write-keys", type=Path, default=None, help="write pytorch-fid's key/shape list here")
    parser.add_argument("--n", type=int, default=4, help="random images compared")
    parser.add_argument("--size", type=int, default=32, help="their side (resized to 299 by both)")
    args = parser.parse_args()
    if args.torchvision_inception is not None:
        stub_torchvision(args.torchvision_inception)
    ours = FIDInception().eval()
    state = random_state(ours)
    ours.load_state_dict(state, strict=True)
    wrapper, inner = pytorch_fid_model(state)
    theirs = key_shapes(inner.state_dict())
    same_keys = theirs == key_shapes(ours.state_dict())
    print(f"state dict: {len(theirs)} tensors; keys and shapes equal pytorch-fid's (same order): {same_keys}")
    if args.write_keys is not None:
        args.write_keys.write_text("[\n" + ",\n".join(json.dumps(row) for row in theirs) + "\n]\n")
        print(f"wrote {args.write_keys}")
    images = torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, logits = ours(images)
        their_features = wrapper(images)[0].flatten(1)
        their_logits = their_features @ inner.fc.weight.T      # the Inception score's logits: no fc bias
    feature_diff = float((features - their_features).abs().max())
    logit_diff = float((logits - their_logits).abs().max())
    print(f"pool3 features {tuple(features.shape)}: max |ours - pytorch-fid| = {feature_diff:.3g} "
          f"(feature scale {float(their_features.abs().max()):.3g}); logits: {logit_diff:.3g}")
    ok = same_keys and feature_diff <= TOLERANCE and logit_diff <= TOLERANCE
    print("PASS" if ok else f"FAIL (tolerance {TOLERANCE})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
