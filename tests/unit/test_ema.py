"""The EMA keeps its own averaged copy of the network: closed-form averages, the copy is independent
of the training network, and its state dict round-trips strictly (the checkpoint format)."""
import math

import pytest
import torch

from scoresde.models.ema import ExponentialMovingAverage
from scoresde.models.mlp import MLP
from scoresde.cli.factory import network_defaults


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


@pytest.mark.parametrize("use_num_updates", [False, True])
def test_ema_closed_form(use_num_updates):
    model, d, k = _Toy(), 0.9, 7
    ema = ExponentialMovingAverage(model, decay=d, use_num_updates=use_num_updates)
    with torch.no_grad():
        model.w.fill_(1.0)
        model.frozen.fill_(5.0)
        model.count.fill_(4)
    for _ in range(k):
        ema.update(model)
    # s_k = 1 - prod_n d_n for a parameter jumping 0 -> 1; d_n = min(d, (1+n)/(10+n)) with warm-up.
    decays = [min(d, (1 + n) / (10 + n)) if use_num_updates else d for n in range(1, k + 1)]
    assert torch.allclose(ema.module.w, torch.full((3,), 1 - math.prod(decays)), atol=1e-6)
    assert torch.equal(ema.module.frozen, torch.full((2,), 5.0))  # frozen params and buffers are copied
    assert ema.module.count.item() == 4


def test_ema_module_is_a_separate_copy_in_eval_mode():
    torch.manual_seed(0)
    model = MLP(**{**network_defaults("mlp"), "dim": 2, "hidden": 8, "n_blocks": 1})
    ema = ExponentialMovingAverage(model, decay=0.5, use_num_updates=False)
    assert ema.module is not model and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    # the average moved half way and the training weights are untouched
    torch.testing.assert_close(ema.module.linear_out.bias, before["linear_out.bias"] - 0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x, labels = torch.randn(4, 2), torch.rand(4)
    assert not torch.allclose(ema.module(x, labels), model(x, labels))


def test_ema_state_dict_roundtrip_and_strictness():
    model = _Toy()
    ema = ExponentialMovingAverage(model, decay=0.99)
    with torch.no_grad():
        model.w.fill_(2.0)
    ema.update(model)
    ema.update(model)
    state = ema.state_dict()
    assert set(state) == {"decay", "num_updates", "shadow"} and set(state["shadow"]) == {"w", "frozen", "count"}
    other = ExponentialMovingAverage(_Toy(), decay=0.5)
    other.load_state_dict(state)
    assert other.decay == 0.99 and other.num_updates == 2
    assert torch.equal(other.module.w, ema.module.w)
    bad = ema.state_dict()
    bad["shadow"]["extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
        other.load_state_dict(bad)
    bad = ema.state_dict()
    bad["shadow"]["w"] = torch.zeros(4)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(bad)
    with pytest.raises(ValueError, match="does not match"):
        ema.update(MLP(**{**network_defaults("mlp"), "dim": 2, "hidden": 8}))


@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan"), True])
def test_ema_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(_Toy(), decay=decay)
