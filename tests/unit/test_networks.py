"""Checks of the score networks (MLP, DDPM++/NCSN++ U-Net) and their layers (the EMA: tests/unit/test_ema.py)."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import convolve2d

from scoresde.models import layers
from scoresde.models.mlp import MLP
from scoresde.models.registry import MODELS, get_model
from scoresde.models.unet import UNet
from scoresde.cli.factory import network_defaults

def mlp(**kwargs) -> MLP:
    """The MLP with configs/default.py's arguments (the networks have no defaults of their own)."""
    return MLP(**{"dim": 2, **network_defaults("mlp"), **kwargs})


def ddpmpp(**kwargs) -> UNet:
    """DDPM++ with the paper's CIFAR-10 arguments from configs/default.py, overridden by ``kwargs``."""
    return UNet(**{"in_channels": 3, "image_size": 32, **network_defaults("ddpmpp"), **kwargs})


def ncsnpp(**kwargs) -> UNet:
    """NCSN++ likewise."""
    return UNet(**{"in_channels": 3, "image_size": 32, **network_defaults("ncsnpp"), **kwargs})


TINY_8 = dict(in_channels=1, image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
TINY_16 = dict(in_channels=3, image_size=16, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))


def perturb_(model, scale=0.1, seed=0):
    """Add noise to every parameter so zero-initialised output layers no longer hide the inputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def labels_for(embedding_type, batch, gen):
    """Positional labels are 999 t; Fourier labels are sigmas (positive), as the score wrapper passes them."""
    u = torch.rand(batch, generator=gen)
    return 999 * u if embedding_type == "positional" else 0.01 * (5000 ** u)


def rel_diff(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------------------------------------- registry
def test_registry_builds_and_rejects_unknown():
    assert set(MODELS.names()) >= {"mlp", "ddpmpp", "ncsnpp"}
    assert isinstance(get_model("mlp", **{**network_defaults("mlp"), "dim": 3, "hidden": 8}), MLP)
    net = get_model("ncsnpp", **{**network_defaults("ncsnpp"), **TINY_8})
    assert isinstance(net, UNet) and net.embed.embedding_type == "fourier"
    with pytest.raises(ValueError, match="unknown model 'nope'; available"):
        get_model("nope")
    with pytest.raises(TypeError, match="missing .* required keyword-only argument"):
        UNet(**TINY_8)                                     # no hidden defaults in the network


# ---------------------------------------------------------------------------------------------- embeddings
def test_timestep_embedding_values():
    t = torch.tensor([0.0, 5.0])
    emb = layers.get_timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) / 3 * torch.arange(4.0))  # DDPM: 10000^(-i/(half-1))
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(emb[1], torch.cat([torch.sin(5 * freqs), torch.cos(5 * freqs)]), atol=1e-6)
    assert layers.get_timestep_embedding(t, 7).shape == (2, 7)  # odd size is zero padded
    assert torch.all(layers.get_timestep_embedding(t, 7)[:, -1] == 0)


def test_fourier_projection_is_fixed_and_has_the_right_scale():
    torch.manual_seed(1)
    a = layers.GaussianFourierProjection(4096, scale=16.0)
    torch.manual_seed(2)
    b = layers.GaussianFourierProjection(4096, scale=16.0)
    assert torch.equal(a.W, b.W)  # independent of the global seed
    assert "W" in dict(a.named_buffers()) and not list(a.parameters())
    assert abs(a.W.std().item() - 16.0) < 0.6  # std error of the std ~ 16/sqrt(2*4096) = 0.18
    s = torch.tensor([0.3])
    out = a(s)
    assert torch.allclose(out[0, :4096], torch.sin(2 * math.pi * 0.3 * a.W), atol=1e-4)


def test_fourier_embedding_sees_log_sigma():
    # NCSN++ embeds log(sigma), not sigma (Song et al. 2021, App. H).
    emb = layers.NoiseEmbedding("fourier", 8, 16)
    seen = []
    emb.fourier.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    sigma = torch.tensor([0.01, 1.0, 50.0])
    assert emb(sigma).shape == (3, 16)
    assert torch.allclose(seen[0], torch.log(sigma))


# ---------------------------------------------------------------------------------------------- FIR resampling
def test_fir_with_box_kernel_is_average_pool_and_nearest():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(layers.downsample_2d(x, (1, 1)), F.avg_pool2d(x, 2), atol=1e-12)
    assert torch.allclose(layers.upsample_2d(x, (1, 1)), F.interpolate(x, scale_factor=2, mode="nearest"),
                          atol=1e-12)


def test_fir_matches_scipy_convolution():
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    full_down = convolve2d(x[0, 0].numpy(), k, mode="full")  # (11, 11)
    # Downsampling keeps filtered samples centred on pixel pairs: full-convolution indices 2, 4, ..., 16.
    assert np.allclose(layers.downsample_2d(x)[0, 0].numpy(), full_down[2:10:2, 2:10:2], atol=1e-12)
    stuffed = np.zeros((16, 16))
    stuffed[::2, ::2] = x[0, 0].numpy()
    full_up = convolve2d(stuffed, 4 * k, mode="full")  # gain factor**2 keeps constant images constant
    assert np.allclose(layers.upsample_2d(x)[0, 0].numpy(), full_up[1:17, 1:17], atol=1e-12)


def test_fir_preserves_constant_images_in_the_interior():
    x = torch.full((1, 2, 8, 8), 3.0, dtype=torch.float64)
    assert torch.allclose(layers.upsample_2d(x)[..., 2:-2, 2:-2], x.new_tensor(3.0))
    assert torch.allclose(layers.downsample_2d(x)[..., 1:-1, 1:-1], x.new_tensor(3.0))


@pytest.mark.parametrize("kernel", [(1, 1), (1, 3, 3, 1)])
def test_fused_fir_conv_equals_resample_then_conv(kernel):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    up_fused = layers.upsample_conv_2d(x, w, kernel)
    up_split = F.conv2d(layers.upsample_2d(x, kernel), w, padding=1)
    down_fused = layers.conv_downsample_2d(x, w, kernel)
    down_split = layers.downsample_2d(F.conv2d(x, w, padding=1), kernel)
    # Equal wherever the zero padding of the two orders does not reach (everywhere for the box kernel).
    assert torch.allclose(up_fused[..., 2:-2, 2:-2], up_split[..., 2:-2, 2:-2], atol=1e-10)
    assert torch.allclose(down_fused[..., 1:-1, 1:-1], down_split[..., 1:-1, 1:-1], atol=1e-10)
    assert up_fused.shape == (2, 5, 16, 16) and down_fused.shape == (2, 5, 4, 4)


# ---------------------------------------------------------------------------------------------- blocks
def test_attention_is_equivariant_to_pixel_permutations():
    torch.manual_seed(0)
    block = layers.AttnBlock(16, skip_rescale=True, init_scale=1.0)
    x = torch.randn(2, 16, 4, 4)
    perm = torch.randperm(16)
    out_perm = block(x.flatten(2)[..., perm].reshape(x.shape))
    assert torch.allclose(out_perm.flatten(2), block(x).flatten(2)[..., perm], atol=1e-5)
    assert rel_diff(block(x), x / math.sqrt(2)) > 1e-2  # the attention path is not a no-op


def test_attention_matches_scaled_dot_product_attention():
    torch.manual_seed(0)
    block = layers.AttnBlock(8, skip_rescale=False, init_scale=1.0)
    x = torch.randn(2, 8, 4, 4)
    q, k, v = (conv(block.norm(x)).flatten(2).transpose(1, 2) for conv in block.qkv)  # (B, HW, C)
    attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)  # softmax(qk^T/sqrt C) v
    assert torch.allclose(block(x), x + block.proj_out(attn), atol=1e-5)


def test_resblock_skip_rescale_and_default_init():
    torch.manual_seed(0)
    block = layers.ResnetBlockBigGAN(16, temb_dim=8, skip_rescale=True, init_scale=0.0)
    x, temb = torch.randn(2, 16, 4, 4), torch.randn(2, 8)
    # init_scale=0 -> last conv ~ U(+-sqrt(3e-10/fan_avg)): the block is x / sqrt(2) up to ~1e-4.
    assert torch.allclose(block(x, temb), x / math.sqrt(2), atol=1e-3)
    conv = layers.conv2d(32, 64)  # DDPM init: Var = 1 / fan_avg = 1 / (9 * 48)
    assert abs(conv.weight.var().item() * 9 * 48 - 1.0) < 0.05 and torch.all(conv.bias == 0)


# ---------------------------------------------------------------------------------------------- MLP
@pytest.mark.parametrize("dim,embedding_type", [(2, "fourier"), (5, "positional")])
def test_mlp_shape_and_dependence(dim, embedding_type):
    gen = torch.Generator().manual_seed(0)
    net = mlp(dim=dim, hidden=32, n_blocks=2, embedding_type=embedding_type).eval()
    x = torch.randn(6, dim, generator=gen)
    t1, t2 = labels_for(embedding_type, 6, gen), labels_for(embedding_type, 6, gen)
    out = net(x, t1)
    assert out.shape == (6, dim)
    assert rel_diff(net(x, t2), out) > 1e-2
    assert rel_diff(net(x + 0.5, t1), out) > 1e-2
    assert torch.allclose(net(x[:3], t1[:3]), out[:3], atol=1e-6)  # samples are independent


def test_mlp_rejects_bad_shapes_and_kwargs():
    net = mlp(dim=2, hidden=8)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="noise_label"):
        net(torch.randn(4, 2), torch.ones(4, 1))
    with pytest.raises(ValueError, match="embedding_type"):
        mlp(embedding_type="learned")


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim=True), "dim must be an integer >= 1, got True"),
    (dict(hidden=0), "hidden must be an integer >= 1, got 0"),
    (dict(hidden=8.0), "hidden must be an integer >= 1, got 8.0"),
    (dict(n_blocks=-1), "n_blocks must be an integer >= 0, got -1"),
    (dict(fourier_scale=float("nan")), r"fourier_scale must be a number in \(0.0, inf\), got nan"),
    (dict(num_classes=True), "num_classes must be an integer >= 0, got True"),
])
def test_mlp_rejects_bad_numbers(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlp(**kwargs)


# ---------------------------------------------------------------------------------------------- U-Net
UNET_COMBOS = list(itertools.product(("ddpm", "biggan"), ("fourier", "positional"), (False, True),
                                     ("none", "input_skip", "residual")))


@pytest.mark.parametrize("resblock_type,embedding_type,fir,progressive_input", UNET_COMBOS)
def test_unet_shape_and_dependence(resblock_type, embedding_type, fir, progressive_input):
    torch.manual_seed(0)
    net = ddpmpp(**TINY_8, resblock_type=resblock_type, embedding_type=embedding_type, fir=fir,
               progressive_input=progressive_input)
    perturb_(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=gen)
    t1, t2 = labels_for(embedding_type, 2, gen), labels_for(embedding_type, 2, gen)
    with torch.no_grad():
        out = net(x, t1)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert rel_diff(net(x, t2), out) > 1e-3
        assert rel_diff(net(torch.randn(2, 1, 8, 8, generator=gen), t1), out) > 1e-3


@pytest.mark.parametrize("progressive,progressive_combine", [("output_skip", "sum"), ("residual", "sum"),
                                                            ("none", "cat"), ("output_skip", "cat")])
def test_unet_output_pyramid_and_combine(progressive, progressive_combine):
    torch.manual_seed(0)
    net = ncsnpp(**TINY_16, progressive=progressive, progressive_input="input_skip",
                 progressive_combine=progressive_combine)
    perturb_(net)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, 10.0]))
        assert out.shape == x.shape
        assert rel_diff(net(x, torch.tensor([1.0, 1.0])), out) > 1e-3


def test_unet_init_output_is_near_zero():
    # init_scale=0 makes the last conv ~1e-5: a fresh DDPM++ predicts ~0 (Song et al. 2021, App. H).
    torch.manual_seed(0)
    net = ddpmpp(**TINY_16).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0]))
    assert out.abs().max() < 1e-3
    assert get_model("ddpmpp", **{**network_defaults("ddpmpp"), **TINY_16, "init_scale": 1.0}).eval()(
        torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0])).abs().max() > 1e-2


def test_unet_runs_in_float64_and_backpropagates():
    torch.manual_seed(0)
    net = ncsnpp(**TINY_8).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = net(x, torch.tensor([0.5, 5.0], dtype=torch.float64))
    assert out.dtype == torch.float64
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_construction_is_deterministic():
    torch.manual_seed(123)
    a = ncsnpp(**TINY_8).state_dict()
    torch.manual_seed(123)
    b = ncsnpp(**TINY_8).state_dict()
    torch.manual_seed(124)
    c = ncsnpp(**TINY_8).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_conditional_output_depends_on_class():
    torch.manual_seed(0)
    net = perturb_(ddpmpp(**TINY_8, num_classes=10))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 500.0])
    with torch.no_grad():
        out = net(x, t, torch.tensor([0, 1]))
        assert rel_diff(net(x, t, torch.tensor([2, 3])), out) > 1e-3
    with pytest.raises(ValueError, match="cond"):
        net(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        ddpmpp(**TINY_8)(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs,name", [
    (dict(resblock_type="resnet"), "resblock_type"),
    (dict(embedding_type="learned"), "embedding_type"),
    (dict(progressive="skip"), "progressive"),
    (dict(progressive_input="skip"), "progressive_input"),
    (dict(progressive_combine="mean"), "progressive_combine"),
    (dict(ch_mult=()), "ch_mult"),
    (dict(image_size=12, ch_mult=(1, 2, 2, 2)), "image_size"),
    (dict(attn_resolutions=(5,)), "attn_resolutions"),
    (dict(nf=18), "nf"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_classes=-1), "num_classes"),
    # booleans are not integers (True == 1 used to pass as one residual block)
    (dict(num_res_blocks=True), "num_res_blocks must be an integer >= 1, got True"),
    (dict(in_channels=True), "in_channels must be an integer >= 1, got True"),
    (dict(num_classes=False), "num_classes must be an integer >= 0, got False"),
    (dict(ch_mult=(1, True)), r"ch_mult\[1\] must be an integer >= 1, got True"),
    (dict(nf=True), "nf must be an integer >= 4, got True"),
    (dict(dropout=float("nan")), r"dropout must be a number in \[0.0, 1.0\), got nan"),
])
def test_unet_rejects_bad_kwargs(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ddpmpp(**{**TINY_8, **kwargs})


def test_unet_rejects_bad_input_shape():
    net = ddpmpp(**TINY_8)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 3, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match="noise_label"):
        net(torch.randn(2, 1, 8, 8), torch.ones(3))


def test_paper_scale_parameter_counts():
    # Song et al. 2021 (App. H) give DDPM++ cont. about 62M parameters, NCSN++ cont. the same order,
    # on CIFAR-10 (nf=128, ch_mult=(1,2,2,2), 4 res blocks per level, attention at 16x16); we get
    # 61.8M and 62.8M. The band 55M-70M leaves ~10% for the paper's rounding but fails on structural
    # slips: 3 res blocks per level gives 50.6M, dropping a level 43.6M, the deep 8-block variant 106.6M.
    # (DDPM-type blocks at 57.6M would pass; the shape tests cover that path.)
    for build in (ddpmpp, ncsnpp):
        count = sum(p.numel() for p in build().parameters())
        print(f"{build.__name__}: {count / 1e6:.2f}M parameters")
        assert 55e6 < count < 70e6


# ---------------------------------------------------------------------------------------------- class labels
def test_null_label_is_one_past_the_classes():
    """Classifier-free guidance's null label is index num_classes: a row of its own in the embedding."""
    from scoresde import models
    assert models.null_label(10) == 10
    with pytest.raises(ValueError, match="num_classes"):
        models.null_label(0)
    torch.manual_seed(0)
    for net, x, t in ((perturb_(ddpmpp(**TINY_8, num_classes=10)), torch.randn(3, 1, 8, 8), torch.full((3,), 100.0)),
                      (perturb_(mlp(num_classes=10)), torch.randn(3, 2), torch.full((3,), 100.0))):
        assert net.embed.class_embed.num_embeddings == 11
        with torch.no_grad():
            null = net(x, t, torch.full((3,), models.null_label(10)))
            assert rel_diff(net(x, t, torch.full((3,), 9)), null) > 1e-3
            assert torch.isfinite(null).all()


@pytest.mark.parametrize("labels,message", [
    (torch.tensor([0, 11]), r"cond must hold class labels in \[0, 10\) or the null label 10, got values in \[0, 11\]"),
    (torch.tensor([-1, 3]), r"cond must hold class labels in \[0, 10\) or the null label 10, got values in \[-1, 3\]"),
    (torch.tensor([0.0, 1.0]), "cond must be an integer tensor of class labels, got torch.float32"),
    (torch.tensor([True, False]), "cond must be an integer tensor"),
    (torch.tensor([0, 1, 2]), r"cond must be class labels of shape \(2,\)"),
    ([0, 1], r"cond must be class labels of shape \(2,\)"),
])
def test_labels_outside_the_range_are_errors(labels, message):
    for net in (mlp(num_classes=10), ddpmpp(**TINY_8, num_classes=10)):
        x = torch.randn(2, 2) if isinstance(net, MLP) else torch.randn(2, 1, 8, 8)
        with pytest.raises(ValueError, match=message):
            net(x, torch.ones(2), labels)


def test_label_check_runs_once_per_labels_tensor(monkeypatch):
    """A sampler passes the same labels at every step: checked once (one host sync on an accelerator);
    a new tensor, or the same one modified in place, is checked again."""
    net = mlp(num_classes=3)
    x, t = torch.randn(2, 2), torch.ones(2)
    labels = torch.tensor([0, 2])
    calls = []
    real = layers.check_labels
    monkeypatch.setattr(layers, "check_labels", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    for _ in range(5):
        net(x, t, labels)
    assert len(calls) == 1
    net(x, t, labels.clone())
    assert len(calls) == 2
    labels[1] = 5
    with pytest.raises(ValueError, match="null label 3"):
        net(x, t, labels)


# ---------------------------------------------------------------------------------------------- classifiers
def test_classifier_networks_give_logits_and_depend_on_inputs():
    from scoresde.models.classifier import ClassifierMLP, ClassifierUNet
    torch.manual_seed(0)
    mlp_kwargs = {k: v for k, v in network_defaults("mlp").items() if k != "num_classes"}
    clf = get_model("classifier_mlp", **{**mlp_kwargs, "dim": 2, "hidden": 16, "num_classes": 4})
    assert isinstance(clf, ClassifierMLP)
    x, t = torch.randn(5, 2), 999 * torch.rand(5)
    out = clf(x, t)
    assert out.shape == (5, 4)
    assert rel_diff(clf(x, t * 0.5), out) > 1e-4 and rel_diff(clf(x + 1, t), out) > 1e-4
    unet_kwargs = {k: v for k, v in network_defaults("ddpmpp").items() if not k.startswith("progressive")}
    for resblock_type, embedding_type in (("biggan", "positional"), ("ddpm", "fourier")):
        net = perturb_(get_model("classifier_unet", **{**unet_kwargs, **TINY_16, "resblock_type": resblock_type,
                                                      "embedding_type": embedding_type, "num_classes": 10}))
        assert isinstance(net, ClassifierUNet)
        x, t = torch.randn(2, 3, 16, 16), labels_for(embedding_type, 2, torch.Generator().manual_seed(0))
        out = net(x, t)
        assert out.shape == (2, 10)
        assert rel_diff(net(x, t * 0.5), out) > 1e-4 and rel_diff(net(x.flip(-1), t), out) > 1e-4
    net = get_model("classifier_unet", **{**unet_kwargs, **TINY_8, "num_classes": 10}).double()
    net(torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.ones(2, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        get_model("classifier_mlp", **{**mlp_kwargs, "dim": 2, "num_classes": 1})
    with pytest.raises(TypeError, match="missing .* required keyword-only argument"):
        ClassifierUNet(**TINY_8)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
