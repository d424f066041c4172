"""Image conditions of super-resolution networks (``models/image_cond.py``, the U-Net's ``cond_channels``,
training's augmentation draws): resampling in closed form, the packed condition, noise-conditioning
augmentation, that the network reads each part of the condition, and an exact conditional score of a
Gaussian sampled through the library's conditioning path reproducing the conditional mean and covariance."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from helpers.tiny import tiny_config
from scoresde.cli.factory import network_defaults, options_from_config
from scoresde.models import get_model, get_score_fn
from scoresde.models.image_cond import (downsample, image_condition, noised_condition, null_condition,
                                        pack_condition, unpack_condition, upsample)
from scoresde.run.distributed import DistContext
from scoresde.run.generation import generate
from scoresde.sde_lib import VPSDE
from scoresde.train.conditioning import conditioned_labels, draw_condition_noise


def test_downsample_is_the_block_mean_and_inverts_nearest_upsampling():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    low = downsample(x, 2)
    # block (0, 0) of item 0 holds 0, 1, 4, 5: mean 2.5; block (1, 1) holds 10, 11, 14, 15: mean 12.5
    assert low.shape == (2, 1, 2, 2) and low[0, 0, 0, 0] == 2.5 and low[0, 0, 1, 1] == 12.5
    up = upsample(low, 4)
    assert up.shape == (2, 1, 4, 4)
    assert torch.equal(up[0, 0, :2, :2], torch.full((2, 2), 2.5, dtype=torch.float64))   # nearest: repeated
    y = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    # every block holds 16 equal values: their mean is the value up to round-off (float64)
    torch.testing.assert_close(downsample(upsample(y, 12), 3), y, rtol=1e-14, atol=1e-14)
    assert torch.equal(downsample(x, 4), x)                    # factor 1 is the identity


def test_resampling_refuses_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="low_res must divide the image size 8"):
        downsample(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="x must be square images"):
        downsample(torch.zeros(1, 8, 8), 4)


def test_pack_unpack_round_trip_and_the_null_condition():
    y = torch.randn(3, 2, 4, 4)
    level, keep = torch.tensor([0.0, 0.3, 0.7]), torch.tensor([True, True, False])
    cond = pack_condition(y, level, keep)
    assert cond.shape == (3, 4, 4, 4)
    image, got_level, got_keep = unpack_condition(cond, 2)
    assert torch.equal(image[:2], y[:2]) and torch.equal(image[2], torch.zeros(2, 4, 4))   # dropped: zeros
    assert torch.equal(got_level, torch.tensor([0.0, 0.3, 0.0])) and torch.equal(got_keep, torch.tensor([1.0, 1, 0]))
    assert torch.equal(cond[2], null_condition(cond)[2])       # a dropped row is the null condition
    with pytest.raises(ValueError, match=r"cond must be a packed image condition \(B, 4, r, r\)"):
        unpack_condition(y, 2)


def test_noise_augmentation_is_the_forward_process_and_level_zero_is_clean():
    sde = VPSDE()
    y, z = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.randn(4, 1, 2, 2, dtype=torch.float64)
    level = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    noised = noised_condition(sde, y, level, z)
    mean, std = sde.marginal_prob(y, level)
    assert torch.equal(noised[0], y[0])
    torch.testing.assert_close(noised[1:], mean[1:] + std[1:, None, None, None] * z[1:], rtol=0, atol=1e-12)
    # level 1: alpha_1 = exp(-(20 - 0.1) / 4 - 0.05) ~ 0.0067, nearly pure noise
    assert float((noised[3] - z[3]).abs().max()) < 0.03 * float(y[3].abs().max() + 1)


def test_augmentation_draws_are_seeded_and_within_the_range():
    options = options_from_config(tiny_config("digits/ddpmpp_vp", model__cond_channels=1, data__low_res=4,
                                              training__cond_noise_max=0.4, training__label_dropout=0.5))
    draw = lambda seed: draw_condition_noise(options, (64, 1, 4, 4), torch.Generator().manual_seed(seed),  # noqa: E731
                                             "cpu", torch.float32)
    a, b, c = draw(1), draw(1), draw(2)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["cond_level"], c["cond_level"])
    assert float(a["cond_level"].min()) >= 0 and float(a["cond_level"].max()) <= 0.4
    assert float(a["cond_level"].max()) > 0.3                  # 64 uniform draws reach the top decile
    y = torch.randn(64, 1, 4, 4)
    noise = {**a, "drop": torch.arange(64) % 2 == 0, "z": torch.zeros(1)}
    cond = conditioned_labels(options, VPSDE(), y, noise)
    assert set(noise) == {"z"}                                 # the conditioning draws are consumed
    image, level, keep = unpack_condition(cond, 1)
    assert torch.equal(keep, (torch.arange(64) % 2 == 1).float()) and float(cond[0::2].abs().max()) == 0
    torch.testing.assert_close(level[1::2], a["cond_level"][1::2])


def _unet(**kwargs):
    args = network_defaults("ddpmpp")
    args.update(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), init_scale=1.0, dropout=0.0)
    args.update(kwargs)
    torch.manual_seed(0)
    return get_model("ddpmpp", in_channels=1, image_size=8, **args).eval()


def test_the_network_reads_image_level_and_keep_flag():
    net = _unet(cond_channels=1)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 500.0)
    y = torch.randn(2, 1, 4, 4)
    base = pack_condition(y, torch.zeros(2), torch.ones(2, dtype=torch.bool))
    with torch.no_grad():
        out = net(x, t, base)
        assert torch.equal(out, net(x, t, base.clone()))
        for other in (pack_condition(y + 1, torch.zeros(2), torch.ones(2, dtype=torch.bool)),   # the image
                      pack_condition(y, torch.full((2,), 0.5), torch.ones(2, dtype=torch.bool)),  # the level
                      null_condition(base)):                                                    # the flag
            assert float((net(x, t, other) - out).abs().max()) > 1e-4
        # each item sees its own condition: changing item 1's leaves item 0's output alone
        changed = base.clone()
        changed[1, 0] += 1
        moved = net(x, t, changed)
        assert torch.equal(moved[0], out[0]) and not torch.equal(moved[1], out[1])


def test_the_network_refuses_a_missing_or_misshapen_condition():
    net = _unet(cond_channels=1)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 500.0)
    with pytest.raises(ValueError, match="image-conditioned .* got None"):
        net(x, t)
    with pytest.raises(ValueError, match=r"cond must be a packed image condition \(B, 3, r, r\)"):
        net(x, t, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="condition's resolution must divide"):
        net(x, t, torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="cond_channels=1 .* and num_classes=10 .* cannot both be set"):
        _unet(cond_channels=1, num_classes=10)


class ExactConditionalScore(nn.Module):
    """``forward(x, 999 t, cond)``: the exact score of ``p_t(x_t | y)`` for ``x ~ N(m, S)`` of shape (1, 2, 2)
    and ``y = mean(x)`` (its 1x1 average pooling), read from the packed condition: ``x | y`` is Gaussian
    with mean ``m + S a (y - a'm) / a'Sa`` and covariance ``S - S a a'S / a'Sa``, ``a = 1/4``."""

    def __init__(self, sde, m, cov):
        super().__init__()
        self.sde, self.m, self.cov = sde, m, cov
        self.a = torch.full((4,), 0.25, dtype=torch.float64)

    def conditional(self, y):
        sa = self.cov @ self.a
        var = self.a @ sa
        mean = self.m + (y[:, None] - self.a @ self.m) * sa / var
        return mean, self.cov - torch.outer(sa, sa) / var

    def forward(self, x, label, cond):
        image, _, keep = unpack_condition(cond, 1)
        assert bool((keep == 1).all())
        t = label / 999.0
        alpha, std = self.sde.marginal_prob(torch.ones_like(t), t)
        mean, cov = self.conditional(image.reshape(-1))
        flat = x.reshape(len(x), 4)
        prec = torch.linalg.inv(alpha[:, None, None] ** 2 * cov + std[:, None, None] ** 2 * torch.eye(4, dtype=x.dtype))
        score = -torch.einsum("bij,bj->bi", prec, flat - alpha[:, None] * mean)
        return score.reshape(x.shape)


def test_exact_conditional_score_through_the_conditioning_path_gives_the_conditional_gaussian():
    """Two conditions y = -1 and y = 2 alternate over 4000 samples drawn by ``generate`` (per-batch slices of
    the packed conditions) with the probability-flow ODE (dopri5, tolerances 1e-6): each group's mean and
    covariance match the closed form, and the samples' average pooling equals their condition."""
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    m = torch.tensor([0.5, -0.3, 0.2, 1.0], dtype=torch.float64)
    root = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    cov = root @ root.T / 4 + 0.3 * torch.eye(4, dtype=torch.float64)
    model = ExactConditionalScore(sde, m, cov)
    n = 4000
    y = torch.tensor([-1.0, 2.0], dtype=torch.float64).repeat(n // 2)
    conds = image_condition(sde, y.reshape(n, 1, 1, 1), torch.zeros(n, dtype=torch.float64),
                            torch.zeros(n, 1, 1, 1, dtype=torch.float64))
    options = options_from_config(tiny_config("digits/ddpmpp_vp", sampling__method="ode", sampling__rtol=1e-6,
                                              sampling__atol=1e-6, sampling__eps=1e-5, sampling__denoise=False,
                                              sampling__batch_size=1000))
    sampler = dataclasses.replace(options.sampler)
    x, _ = generate(sde, None, n, (1, 2, 2), sampler, generator=torch.Generator().manual_seed(1),
                    ctx=DistContext(), labels=conds,
                    score_for=lambda c: get_score_fn(sde, model, parameterization="score", cond=c))
    x = x.double()
    # consistency: std of a'x_eps given y is sigma(1e-5) ~ 1.4e-3 / 2 (plus the solver's error)
    assert float((downsample(x, 1).reshape(n) - y).abs().max()) < 0.01
    for value in (-1.0, 2.0):
        group = x.reshape(n, 4)[y == value]
        mean, c = model.conditional(torch.tensor([value], dtype=torch.float64))
        # 2000 samples: mean error sd <= sqrt(max var / 2000) < 0.03 for these variances (< 1.8); 4.5 sd
        assert float((group.mean(0) - mean[0]).abs().max()) < 0.12
        # covariance entries: sd ~ sqrt(2 / 2000) * max var < 0.06; tolerance ~ 4 sd
        assert float((torch.cov(group.T) - c).abs().max()) < 0.2
        # and the conditional covariance differs from the prior one by more than that (a mutation that
        # drops the conditioning fails)
        assert float((cov - c).abs().max()) > 0.3
