"""Every random stream of a run, and how its generator is derived from ``(seed, stream, step, rank)``.

A run has one ``seed`` (``config.seed``). Each purpose draws from its own stream, so changing how
much one purpose draws never shifts another, and each is a pure function of where it is used:

- per run:           ``stream_seed(seed, stream, rank)``
- per training step: ``step_seed(seed, stream, step, rank)``: a generator re-seeded at every optimizer
  step, so a resumed run (and a run on any number of ranks) draws the same numbers for step k;
- per epoch:         ``epoch_seed(seed, epoch)``: the shuffled data order.

The numbers are part of the results (they fix data draws, noise and samples): keep them.
"""
from __future__ import annotations

import enum

import torch

SEED_STRIDE = 1_000_003
_MODULUS = 2 ** 63


class Stream(enum.IntEnum):
    TRAIN = 1          # the trainer's generator, before its first re-seeding
    DATA = 2           # dequantisation and flips of a step's global batch
    NOISE = 3          # the loss's times / levels and noise for a step's global batch
    DROPOUT = 4        # the global torch RNG (dropout), per rank
    DISTILL = 5        # --mode distill: a step's levels and noise, per rank
    TOY_TRAIN = 11     # the toy training points
    TOY_TEST = 12      # the toy held-out points
    SAMPLING = 21      # --mode sample, per rank
    SNAPSHOT = 22      # samples drawn at training snapshots, per rank
    IMPUTATION = 23    # --mode inpaint / colorize: the held-out items' dequantisation, random masks, sampling
    LOW_RES = 24       # low-resolution conditions of held-out items or base samples: dequantisation, augmentation noise
    EVAL_LOSS = 31     # noise of the held-out loss (the same at every evaluation)
    LIKELIHOOD = 32    # dequantisation and Hutchinson probes of the likelihood, per rank
    ENTROPY = 33       # Monte Carlo draws of the toy data's own entropy
    BOUND_DATA = 34    # dequantisation of the held-out items the likelihood bounds share, per rank
    ELBO = 35          # the continuous ELBO's times and noise, per rank
    VLB = 36           # DDPM's VLB: levels and noise, per rank
    IW = 37            # the importance-weighted bounds' forward paths, per rank
    QUALITY = 38       # the samples of eval's sample-quality metrics, per rank
    FID = 39           # --mode fid: the samples of one seed, per rank
    TRAIN_QUALITY = 40 # the samples of training's KID / FD at every eval (the same at every eval), per rank
    LATENT_BOUND = 51  # the latent bound's posterior draws z ~ q(z|x) in --mode eval, per rank
    SCALE_FACTOR = 50  # the posterior draws that measure a trained first stage's latent scale factor


def stream_seed(seed: int, stream: Stream, rank: int = 0) -> int:
    """The seed of one purpose of one rank."""
    return ((seed * SEED_STRIDE + int(stream)) * 4096 + rank) % _MODULUS


def step_seed(seed: int, stream: Stream, step: int, rank: int = 0) -> int:
    """The seed of one purpose at optimizer step ``step`` (and ``rank``, for dropout)."""
    return (stream_seed(seed, stream, rank) * SEED_STRIDE + step) % _MODULUS


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the data order in ``epoch``."""
    return (seed * SEED_STRIDE + epoch) % _MODULUS


def generator(seed: int, stream: Stream, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one purpose of one rank, on ``device``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, rank))
