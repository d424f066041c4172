"""Run options as plain JSON (what a checkpoint stores): every shipped config's options come back equal,
tuples as tuples and keyword arguments as read-only mappings, with no config or factory involved."""
import importlib
import json
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from scoresde.cli.factory import options_from_config
from scoresde.run.options import RunOptions, frozen_mapping

CONFIGS = Path(__file__).resolve().parents[2] / "scoresde" / "configs"


def shipped_configs() -> list[str]:
    """Every config file of ``scoresde/configs/<group>/`` with a ``get_config()``."""
    names = []
    for path in sorted(CONFIGS.glob("*/*.py")):
        module = importlib.import_module(f"scoresde.configs.{path.parent.name}.{path.stem}")
        if hasattr(module, "get_config"):
            names.append(f"{path.parent.name}/{path.stem}")
    return names


def test_every_group_has_configs():
    assert {name.split("/")[0] for name in shipped_configs()} == {"toy", "digits", "cifar10"}


def with_stand_in_first_stage(config, folder):
    """A latent config (``data.first_stage``, trained by another run) pointed at a random autoencoder of
    the latent shape it expects (``configs/digits/autoencoder.py``'s: 2 channels, f = 2)."""
    from scoresde.models.autoencoder import KLAutoencoder, save_autoencoder
    if config.data.first_stage:
        ae = KLAutoencoder(in_channels=1, latent_channels=2, channels=8, n_down=1)
        save_autoencoder(folder / "autoencoder.pt", ae, dataset=config.data.dataset, shape=[1, 8, 8],
                         centered=config.data.centered)
        config.data.first_stage = str(folder)
    return config


@pytest.mark.parametrize("name", shipped_configs())
def test_json_round_trip_of_every_config(name, tmp_path):
    module = importlib.import_module(f"scoresde.configs.{name.replace('/', '.')}")
    options = options_from_config(with_stand_in_first_stage(module.get_config(), tmp_path))
    text = options.to_json()
    assert "config_json" not in json.loads(text)            # the config is stored beside, for people
    back = RunOptions.from_json(text)
    assert back == options
    assert back.to_json() == text
    assert isinstance(back.network.kwargs, MappingProxyType) and isinstance(back.sde.kwargs, MappingProxyType)
    assert isinstance(back.eval.bounds.iw_k, tuple)
    for key, value in options.network.kwargs.items():
        assert type(back.network.kwargs[key]) is type(value), key


def test_nested_values_keep_their_kind():
    options = options_from_config(importlib.import_module("scoresde.configs.toy.gmm_vp").get_config())
    network = options.network
    odd = replace(options, network=replace(network, kwargs=frozen_mapping(
        {**network.kwargs, "table": {"a": (1, (2.5, None))}})))
    back = RunOptions.from_json(odd.to_json())
    assert back == odd
    assert isinstance(back.network.kwargs["table"], MappingProxyType)
    assert back.network.kwargs["table"]["a"] == (1, (2.5, None))


def test_what_json_cannot_give_back_is_refused():
    options = options_from_config(importlib.import_module("scoresde.configs.toy.gmm_vp").get_config())
    network = options.network
    listed = replace(options, network=replace(network, kwargs=frozen_mapping({**network.kwargs, "widths": [1, 2]})))
    with pytest.raises(ValueError, match=r"options\.network\.kwargs\.widths must be None, a bool"):
        listed.to_json()
    plain = json.loads(options.to_json())
    plain["optim"]["momentum"] = 0.9
    with pytest.raises(ValueError, match=r"options\.optim: unknown fields \['momentum'\]"):
        RunOptions.from_json(json.dumps(plain))
    del plain["optim"]["momentum"], plain["optim"]["lr"]
    with pytest.raises(ValueError, match=r"options\.optim: missing fields \['lr'\]"):
        RunOptions.from_json(json.dumps(plain))
