"""First stages for latent diffusion: a small KL-regularised convolutional autoencoder and an adapter
presenting a diffusers ``AutoencoderKL`` through the same interface (Rombach et al. 2022, LDM, Sec. 3.1).

Every first stage offers::

    mean, logvar = ae.encode(x)            # q(z|x) = N(mean, diag(exp(logvar))), z of shape (B, c, h/f, w/f)
    x_mean = ae.decode(z)                  # the mean of p(x|z)
    logp = ae.decoder_log_prob(x, z)       # log p(x|z) in nats per sample, a proper density in x
    ae.scale_factor                        # LDM's scale factor: the diffusion models u = scale_factor * z

The decoder is ``p(x|z) = N(decode(z), s^2 I)`` with one scalar ``s`` (learned or fixed), so the
reconstruction term of the loss is a log-density and the latent bound (``scoresde.likelihood.latent``)
is a bound on ``log p(x)`` in the same units as the pixel-space likelihoods.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, NamedTuple, Tuple

import torch
from torch import nn

from scoresde.utils import batch_sum, check_choice, check_int, check_positive, save_atomic

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_kl_standard(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag e^logvar) || N(0, I))`` per sample (nats, ``(B,)``)."""
    return 0.5 * batch_sum(mean ** 2 + logvar.exp() - 1.0 - logvar)


def isotropic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, s^2 I)`` per sample with a scalar ``log s`` (nats, ``(B,)``)."""
    dim = x[0].numel()
    return -0.5 * batch_sum((x - mean) ** 2) * torch.exp(-2.0 * log_std) - dim * (log_std + HALF_LOG_2PI)


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``z ~ N(mean, diag e^logvar)`` (the reparameterisation trick, Kingma & Welling 2014)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


class AutoencoderLoss(NamedTuple):
    """Per-sample terms (``(B,)``, nats): the loss is ``-recon + beta * kl``."""
    loss: torch.Tensor
    recon: torch.Tensor      # log p(x|z) at one posterior draw
    kl: torch.Tensor         # KL(q(z|x) || N(0, I))


def _block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(min(8, cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))


class KLAutoencoder(nn.Module):
    """A small convolutional VAE: images ``(B, C, H, W)`` to latents ``(B, c, H/f, W/f)``, ``f = 2^n_down``.

    The constructor's arguments are its saved configuration (``config``); ``save_autoencoder`` /
    ``load_autoencoder`` write and strictly read them with the weights and ``scale_factor``.
    """

    def __init__(self,
                 in_channels: int = 1,            # image channels C
                 latent_channels: int = 4,        # latent channels c
                 channels: int = 32,              # width of the first level; doubles per downsampling
                 n_down: int = 1,                 # downsamplings: f = 2^n_down
                 decoder_std: float = 0.1,        # s of p(x|z) = N(decode(z), s^2 I); initial value if learned
                 learn_decoder_std: bool = True):  # learn log s with the rest
        super().__init__()
        self.config = dict(in_channels=check_int("in_channels", in_channels, minimum=1),
                           latent_channels=check_int("latent_channels", latent_channels, minimum=1),
                           channels=check_int("channels", channels, minimum=1),
                           n_down=check_int("n_down", n_down, minimum=0),
                           decoder_std=check_positive("decoder_std", decoder_std),
                           learn_decoder_std=check_choice("learn_decoder_std", learn_decoder_std, (True, False)))
        widths = [channels * 2 ** i for i in range(n_down + 1)]
        enc = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            enc += [_block(cin, cin), nn.Conv2d(cin, cout, 3, stride=2, padding=1)]
        enc += [_block(widths[-1], widths[-1]), _block(widths[-1], 2 * latent_channels)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), _block(widths[-1], widths[-1])]
        for cin, cout in zip(widths[:0:-1], widths[-2::-1]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                    _block(cout, cout)]
        dec += [_block(widths[0], in_channels)]
        self.decoder = nn.Sequential(*dec)
        log_std = torch.tensor(math.log(decoder_std))
        if learn_decoder_std:
            self.log_decoder_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_decoder_std", log_std)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def downsampling(self) -> int:
        return 2 ** self.config["n_down"]

    def latent_shape(self, image_shape: Tuple[int, int, int]) -> Tuple[int, int, int]:
        """``(c, H/f, W/f)`` for an image shape ``(C, H, W)``; ``ValueError`` unless ``f`` divides ``H, W``."""
        return _latent_shape(image_shape, self.config["in_channels"], self.config["latent_channels"],
                             self.downsampling)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.latent_shape(tuple(x.shape[1:]))
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decoder_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return isotropic_log_prob(x, self.decode(z), self.log_decoder_std)

    def loss(self, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None) -> AutoencoderLoss:
        """``-log p(x|z) + beta KL(q(z|x) || N(0, I))`` per sample at one draw ``z ~ q(z|x)``; with
        ``beta = 1`` its mean is the negative ELBO of the VAE (Kingma & Welling 2014). ``noise``: the
        standard normal draw of ``z = mean + std * noise`` (latent-shaped), else drawn from ``generator``."""
        mean, logvar = self.encode(x)
        if noise is None:
            z = sample_posterior(mean, logvar, generator)
        else:
            z = mean + torch.exp(0.5 * logvar) * noise
        recon = self.decoder_log_prob(x, z)
        kl = gaussian_kl_standard(mean, logvar)
        return AutoencoderLoss(-recon + beta * kl, recon, kl)

    def forward(self, x: torch.Tensor, beta: float = 1.0, noise: torch.Tensor | None = None) -> AutoencoderLoss:
        """``loss`` (the training forward pass, so that a ``DistributedDataParallel`` wrapper syncs it)."""
        return self.loss(x, beta, noise=noise)


def _latent_shape(image_shape, in_channels: int, latent_channels: int, f: int) -> Tuple[int, int, int]:
    if len(image_shape) != 3 or image_shape[0] != in_channels or image_shape[1] % f or image_shape[2] % f:
        raise ValueError(f"images must have shape ({in_channels}, H, W) with H and W multiples of the first "
                         f"stage's downsampling {f}, got {tuple(image_shape)}")
    return (latent_channels, image_shape[1] // f, image_shape[2] // f)


@torch.no_grad()
def measure_scale_factor(ae: nn.Module, batches: Iterable[torch.Tensor],
                         generator: torch.Generator | None = None) -> float:
    """LDM's ``scale_factor = 1 / std(z)`` over posterior draws ``z ~ q(z|x)`` of the given batches
    (Rombach et al. 2022, Sec. 4.3.2 / App. G: unit-variance latents for the diffusion)."""
    total, total_sq, count = 0.0, 0.0, 0
    for x in batches:
        z = sample_posterior(*ae.encode(x), generator=generator).double()
        total, total_sq, count = total + z.sum().item(), total_sq + (z ** 2).sum().item(), count + z.numel()
    if count < 2:
        raise ValueError("measure_scale_factor needs at least 2 latent values; batches was empty")
    var = (total_sq - total ** 2 / count) / (count - 1)
    return 1.0 / math.sqrt(var)


def save_autoencoder(path, ae: KLAutoencoder, **metadata) -> None:
    """The configuration, weights (with ``scale_factor``) and ``metadata`` (plain values, e.g. the
    dataset it was trained on) in one file, written to a temporary file and renamed."""
    path = Path(path)
    payload = {"config": dict(ae.config), "state_dict": ae.state_dict(), "metadata": dict(metadata)}
    save_atomic(payload, path)


def load_autoencoder(path, map_location="cpu") -> Tuple[KLAutoencoder, dict]:
    """``(autoencoder, metadata)`` from ``save_autoencoder``'s file; weights loaded strictly."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    ae = KLAutoencoder(**payload["config"])
    ae.load_state_dict(payload["state_dict"], strict=True)
    return ae, payload["metadata"]


class DiffusersAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` behind the first-stage interface.

    ``p(x|z) = N(vae.decode(z), decoder_std^2 I)``: diffusers' VAEs are trained with an L1 + perceptual
    loss and carry no decoder variance, so ``decoder_std`` is a stated modelling choice (the bound is a
    bound for that density). ``scale_factor`` is the VAE config's ``scaling_factor`` unless given
    (e.g. from ``measure_scale_factor`` on the training set).
    """

    def __init__(self, vae: nn.Module, decoder_std: float = 0.1, scale_factor: float | None = None):
        super().__init__()
        self.vae = vae
        self.register_buffer("log_decoder_std", torch.tensor(math.log(check_positive("decoder_std", decoder_std))))
        scale = vae.config.scaling_factor if scale_factor is None else check_positive("scale_factor", scale_factor)
        self.register_buffer("scale_factor", torch.tensor(float(scale)))

    @classmethod
    def from_pretrained(cls, folder, decoder_std: float = 0.1, scale_factor: float | None = None):
        """Load ``AutoencoderKL`` from a local ``save_pretrained`` folder (never the network)."""
        try:
            from diffusers import AutoencoderKL
        except ImportError as err:
            raise ImportError('this needs the diffusers extra: pip install -e ".[diffusers]"') from err
        if not Path(folder, "config.json").is_file():
            raise ValueError(f"folder must be an AutoencoderKL save_pretrained folder with config.json, got {folder}")
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        return cls(vae.eval(), decoder_std=decoder_std, scale_factor=scale_factor)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_shape(self, image_shape: Tuple[int, int, int]) -> Tuple[int, int, int]:
        return _latent_shape(image_shape, self.vae.config.in_channels, self.vae.config.latent_channels,
                             self.downsampling)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.latent_shape(tuple(x.shape[1:]))
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    def decoder_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return isotropic_log_prob(x, self.decode(z), self.log_decoder_std)
