"""score_sde_pytorch checkpoints load into the toolkit's U-Net and compute what score_sde computes.

The fixtures (tests/fixtures/score_sde_*) were written by tests/fixtures/make_score_sde_fixture.py,
which ran score_sde_pytorch's own NCSNpp, ExponentialMovingAverage and get_score_fn on four tiny
random-weight networks (see CASES there for the options each covers).
"""
import copy
import json
from pathlib import Path

import pytest
import torch

from scoresde import models
from scoresde.models.score_sde_import import (ScoreSDEUNet, build_score_sde_unet, score_sde_parameter_map,
                                     score_sde_score_kwargs)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = ["ddpmpp_vp", "ncsnpp_ve", "ncsnpp_ddpm_subvp", "ncsnpp_resin_vp"]

# Tolerance, relative to the largest output: score_sde and the toolkit run the same float32 operations
# in different orders (FIR resampling as one strided conv instead of conv-then-slice, attention through
# scaled_dot_product_attention instead of two einsums), so results differ by float32 rounding carried
# through ~20 layers with GroupNorm and softmax: measured <= 1.1e-6 here, and score_sde's own float32
# output differs from the same network in float64 by 6e-6. A wrong name, transpose or block order
# changes the output by O(1) (the raw and EMA weights of a fixture give outputs ~100% apart).
RTOL = 5e-5


def load_case(name):
    stem = FIXTURES / f"score_sde_{name}"
    config = json.loads((FIXTURES / f"score_sde_{name}.json").read_text())["config"]
    io = torch.load(f"{stem}_io.pt", map_location="cpu", weights_only=True)
    state = torch.load(f"{stem}.pth", map_location="cpu", weights_only=True)
    return stem, config, io, state


def assert_close(out, ref):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err <= RTOL, f"max error {err:.2e} of the largest output"


def one_line_value_error(fn, *match):
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for fragment in match:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("name", CASES)
def test_outputs_match_score_sde(name):
    stem, config, io, state = load_case(name)
    model = models.load_score_sde_checkpoint(f"{stem}.pth", config)        # EMA weights, from a path
    assert isinstance(model, ScoreSDEUNet) and not model.training
    with torch.no_grad():
        assert_close(model(io["x"], io["labels"]), io["out_ema"])
        raw = models.load_score_sde_checkpoint(state, config, ema=False)  # raw weights, from a dict
        assert_close(raw(io["x"], io["labels"]), io["out_raw"])


@pytest.mark.parametrize("name", ["ddpmpp_vp", "ncsnpp_ve", "ncsnpp_ddpm_subvp"])
def test_score_fn_matches_score_sde(name):
    """score_sde's conventions end to end: VP / sub-VP label 999 t and score = -out / std; VE label
    sigma(t) and the 1/sigma scaling inside the network (scale_by_sigma)."""
    stem, config, io, state = load_case(name)
    sde, score_fn = models.from_score_sde(state, config)
    assert torch.allclose(sde.noise_label(io["t"], True), io["labels"], rtol=1e-6)
    with torch.no_grad():
        assert_close(score_fn(io["x"], io["t"]), io["score"])


def test_score_kwargs_follow_score_sde():
    _, config, _, _ = load_case("ncsnpp_ve")
    assert score_sde_score_kwargs(config) == dict(continuous=True, parameterization="score", scale_by_sigma=False)
    discrete_subvp = copy.deepcopy(config)
    discrete_subvp["training"].update(sde="subvpsde", continuous=False)  # score_sde: sub-VP labels are 999 t
    assert score_sde_score_kwargs(discrete_subvp)["continuous"] is True
    assert score_sde_score_kwargs(discrete_subvp)["parameterization"] == "eps"


def test_ml_collections_config_reads_like_its_json():
    ml_collections = pytest.importorskip("ml_collections")
    _, config, _, _ = load_case("ncsnpp_ddpm_subvp")
    from_config_dict = models.unet_kwargs_from_score_sde_config(ml_collections.ConfigDict(config))
    assert from_config_dict == models.unet_kwargs_from_score_sde_config(config)


def test_renamed_key_is_one_line_error_naming_it():
    _, config, _, state = load_case("ddpmpp_vp")
    bad = dict(state, model=dict(state["model"]))
    bad["model"]["module.all_modules.5.Conv_X.weight"] = bad["model"].pop("module.all_modules.5.Conv_0.weight")
    one_line_value_error(lambda: models.load_score_sde_checkpoint(bad, config),
                         "missing 'module.all_modules.5.Conv_0.weight'", "'module.all_modules.5.Conv_X.weight'")
    extra = dict(state, model=dict(state["model"], **{"module.all_modules.99.weight": torch.zeros(1)}))
    one_line_value_error(lambda: models.load_score_sde_checkpoint(extra, config),
                         "unexpected 'module.all_modules.99.weight'")


def test_wrong_shape_is_one_line_error_naming_it():
    _, config, _, state = load_case("ncsnpp_ve")
    bad = dict(state, model=dict(state["model"]))
    name = "module.all_modules.8.NIN_1.W"          # an attention projection (stored as W (in, out))
    bad["model"][name] = torch.zeros(3, 5)
    one_line_value_error(lambda: models.load_score_sde_checkpoint(bad, config), repr(name), "(3, 5)")
    wrong_net = copy.deepcopy(config)
    wrong_net["model"]["nf"] = 12                  # another network than the checkpoint's
    one_line_value_error(lambda: models.load_score_sde_checkpoint(state, wrong_net), "has shape")


def test_ema_must_fit():
    _, config, _, state = load_case("ddpmpp_vp")
    shadows = list(state["ema"]["shadow_params"])
    short = dict(state, ema=dict(state["ema"], shadow_params=shadows[:-1]))
    one_line_value_error(lambda: models.load_score_sde_checkpoint(short, config), "shadow_params has")
    swapped = dict(state, ema=dict(state["ema"], shadow_params=[shadows[1], shadows[0]] + shadows[2:]))
    one_line_value_error(lambda: models.load_score_sde_checkpoint(swapped, config), "shadow_params[0]")
    no_ema = {k: v for k, v in state.items() if k != "ema"}
    one_line_value_error(lambda: models.load_score_sde_checkpoint(no_ema, config), "ema=False")
    models.load_score_sde_checkpoint(no_ema, config, ema=False)


def test_bare_state_dict_without_prefix_loads():
    _, config, io, state = load_case("ncsnpp_resin_vp")
    bare = {k[len("module."):]: v for k, v in state["model"].items()}
    model = models.load_score_sde_checkpoint(bare, config, ema=False)
    with torch.no_grad():
        assert_close(model(io["x"], io["labels"]), io["out_raw"])
    one_line_value_error(lambda: models.load_score_sde_checkpoint({"step": 3}, config), "no 'model' entry")


def test_unsupported_configs_name_the_field():
    _, config, _, state = load_case("ddpmpp_vp")
    for field, value, fragment in (("name", "ddpm", "model.name"), ("nonlinearity", "elu", "model.nonlinearity"),
                                   ("conditional", False, "model.conditional")):
        bad = copy.deepcopy(config)
        bad["model"][field] = value
        one_line_value_error(lambda: models.unet_kwargs_from_score_sde_config(bad), fragment)
    bad = copy.deepcopy(config)
    del bad["model"]["fir"]
    one_line_value_error(lambda: models.load_score_sde_checkpoint(state, bad), "model.fir")


@pytest.mark.parametrize("options", [
    dict(resblock_type="ddpm", fir=True, resamp_with_conv=True, progressive="residual",
         progressive_input="residual"),
    dict(resblock_type="ddpm", fir=False, progressive="output_skip", progressive_input="input_skip",
         progressive_combine="cat"),
    dict(resblock_type="biggan", fir=True, progressive="residual", progressive_input="input_skip",
         embedding_type="positional"),
])
def test_name_map_covers_every_tensor_once(options):
    """Also for options score_sde_pytorch itself cannot run (see make_score_sde_fixture.py): every
    toolkit tensor has exactly one score_sde name, with score_sde's parameter count."""
    _, config, _, _ = load_case("ncsnpp_ve")
    config = copy.deepcopy(config)
    config["model"].update(options)
    net = build_score_sde_unet(config)
    mapping = score_sde_parameter_map(net)
    assert sorted(tk for _, tk, _, _ in mapping) == sorted(net.state_dict())
    assert len({name for name, *_ in mapping}) == len(mapping)
    trainable = sum(net.state_dict()[tk].numel() for _, tk, _, train in mapping if train)
    assert trainable == sum(p.numel() for n, p in net.named_parameters())
