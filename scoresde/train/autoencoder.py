"""The ``train_autoencoder`` mode: the first stage of latent diffusion (Rombach et al. 2022, Sec. 3.1), a
``models.KLAutoencoder`` (``config.autoencoder``), trained by the score models' loop (``train/loop.py``:
the same data order, checkpoints, exact resume, signals, progress bar, ``metrics.jsonl``, loss curve,
``training.*`` and ``optim.*`` settings) with its own hooks:

- the update: ``-log p(x|z) + beta KL(q(z|x) || N(0, I))`` per pixel dimension at one posterior draw of a
  (dequantised, as the data options say) training batch; the draw's noise comes from the step's noise
  stream for the whole global batch, as a score model's does;
- the held-out evaluation: the loss and its two terms on one eval batch (fixed noise, EMA weights), and
  the VAE's own bits/dim bound (its ELBO with the N(0, I) prior, uniformly dequantised items);
- the snapshot: ``snapshots/reconstructions_<step>.png``, held-out items above their reconstructions;
- at the end (or after a stop signal): ``<workdir>/autoencoder.pt``, the EMA weights with LDM's scale factor
  measured over the training set (``measure_scale_factor``) and the data set, item shape and scaling it
  was trained on, so that ``--config.data.first_stage=<workdir>`` trains a latent diffusion model on it.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from scoresde.data.datasets import data_scaler, dequantize, inverse_data_scaler
from scoresde.data.latents import FIRST_STAGE_FILE
from scoresde.data.pipeline import DataSpec, to_model_space
from scoresde.data.streams import Stream, generator
from scoresde.likelihood.bits import bits_per_dim_bound
from scoresde.models.autoencoder import KLAutoencoder, load_autoencoder, measure_scale_factor, save_autoencoder
from scoresde.run.checkpoint import atomic_write_bytes
from scoresde.run.distributed import DistContext, barrier
from scoresde.run.generation import sample_files
from scoresde.run.options import RunOptions
from scoresde.run.workdir import SNAPSHOT_DIR
from scoresde.train.loop import (TrainHooks, TrainRun, finish_update, next_batch, redraw_loss_curve, step_generator,
                                 train)

logger = logging.getLogger(__name__)

GRID_COLUMNS = 8        # items per row of the reconstruction picture
SCALE_BATCH = 256       # items per encoder call when the scale factor is measured


# ---------------------------------------------------------------------------------------- checks
def check_pixel_data(options: RunOptions) -> None:
    """The first stage is trained on pixels: ``data.first_stage`` must be empty."""
    if options.data.first_stage:
        raise ValueError(f"config.data.first_stage={options.data.first_stage!r} must be '' for --mode "
                         f"train_autoencoder, which trains a first stage on the pixels; data.first_stage=<its "
                         f"work directory> is for --mode train afterwards")


def build_autoencoder(options: RunOptions, data: DataSpec) -> KLAutoencoder:
    """``config.autoencoder``'s network for ``data``'s images (weights seeded by ``config.seed``);
    ``ValueError`` for vector data or a downsampling that does not divide the image size."""
    if not data.is_image:
        raise ValueError(f"--mode train_autoencoder trains a first stage of images; data.dataset={data.name!r} "
                         f"holds vectors of shape {data.shape}")
    f = options.autoencoder.downsampling
    if data.shape[1] % f or data.shape[2] % f:
        raise ValueError(f"config.autoencoder.downsampling={f} must divide the image size {data.shape[1]}x"
                         f"{data.shape[2]} of data.dataset={data.name!r}")
    torch.manual_seed(options.seed)
    return options.autoencoder.build(data.shape[0])


def describe(options: RunOptions) -> str:
    beta = options.autoencoder.beta
    return (f"-log p(x|z) + {beta:g} KL(q(z|x) || N(0, I)) of the first stage (a VAE, Kingma & Welling 2014"
            f"{'' if beta == 1 else '; beta-VAE, Higgins et al. 2017'}), one draw z ~ q(z|x), nats per pixel "
            f"dimension; lower is better")


def title(options: RunOptions) -> str:
    a = options.autoencoder
    return f"{options.data.dataset}, first stage: {a.latent_channels} latent channels, f = {a.downsampling}"


# ---------------------------------------------------------------------------------------- hooks
def latent_noise(run: TrainRun, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise of the posterior draw, drawn for the whole global batch (this rank's rows)."""
    shape = (run.loader.global_batch_size, *run.model.latent_shape(tuple(x.shape[1:])))
    noise = torch.randn(shape, generator=gen, device=gen.device)
    return noise.to(x.device)[run.loader.local_rows]


def autoencoder_step(run: TrainRun) -> torch.Tensor:
    """One update on this rank's next batch; returns the detached mean loss (nats per dimension)."""
    x, _ = next_batch(run)
    noise = latent_noise(run, x, step_generator(run, Stream.NOISE))
    run.optimizer.zero_grad(set_to_none=True)
    terms = run.train_model(x, run.options.autoencoder.beta, noise)
    loss = terms.loss.float().mean() / run.data.dim
    loss.backward()
    loss = loss.detach()
    finish_update(run, loss)
    return loss


@torch.no_grad()
def heldout_metrics(run: TrainRun) -> dict:
    """The EMA weights on the first ``eval.batch_size`` held-out items, uniformly dequantised (fixed
    draws): the loss and its terms, and the VAE's bits/dim bound (its ELBO: beta = 1, prior N(0, I))."""
    data, options = run.data, run.options
    items = data.test[:options.eval.batch_size].to(run.ctx.device)
    gen = generator(options.seed, Stream.EVAL_LOSS, run.ctx.rank, run.ctx.device)
    x = to_model_space(items, data, gen, train=False)
    ae = run.ema.module
    terms = ae.loss(x, options.autoencoder.beta, noise=latent_noise_for(ae, x, gen))
    elbo = (terms.recon - terms.kl).double()
    bpd, _ = bits_per_dim_bound(elbo, torch.zeros_like(elbo), data.dim, num_levels=data.num_levels,
                                centered=data.centered)
    return {"eval_loss": float(terms.loss.mean()) / data.dim, "eval_recon_nats": float(terms.recon.mean()),
            "eval_kl_nats": float(terms.kl.mean()), "vae_bpd": float(bpd.mean()),
            "decoder_std": float(ae.log_decoder_std.exp())}


def latent_noise_for(ae: KLAutoencoder, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shape = (len(x), *ae.latent_shape(tuple(x.shape[1:])))
    return torch.randn(shape, generator=gen, device=gen.device).to(x.device)


def log_heldout(run: TrainRun, bar=None) -> None:
    """``heldout_metrics`` into ``metrics.jsonl``, the log and the bar; the loss curve redrawn."""
    metrics = heldout_metrics(run)
    run.metrics.write({"step": run.step, **metrics})
    logger.info("step %d: held-out loss %.5g (EMA weights, %d items); the VAE's bits/dim <= %.4f (ELBO, N(0, I) "
                "prior); reconstruction %.2f, KL %.2f nats per item; decoder std %.4f", run.step,
                metrics["eval_loss"], min(len(run.data.test), run.options.eval.batch_size), metrics["vae_bpd"],
                metrics["eval_recon_nats"], metrics["eval_kl_nats"], metrics["decoder_std"])
    if bar is not None and not bar.disable:
        bar.set_postfix_str(f"{getattr(bar, 'postfix', None) or ''} held_out={metrics['eval_loss']:.4g}".strip())
    redraw_loss_curve(run)


def cell_centres(items: torch.Tensor, data: DataSpec) -> torch.Tensor:
    """Grey levels -> model-space pixels at the cell centres (what the latents are encoded from)."""
    return data_scaler(data.centered)(dequantize(items.long(), data.num_levels, uniform=False))


@torch.no_grad()
def reconstructions(ae: nn.Module, items: torch.Tensor, data: DataSpec) -> torch.Tensor:
    """Data-space pictures: rows of ``GRID_COLUMNS`` held-out items, each row followed by their
    reconstructions (the decoder's mean at the posterior mean)."""
    device = next(ae.parameters()).device
    x = cell_centres(items, data).to(device)
    recon = ae.decode(ae.encode(x)[0])
    to_data = inverse_data_scaler(data.centered)
    rows = []
    for start in range(0, len(x), GRID_COLUMNS):
        rows += [to_data(x[start:start + GRID_COLUMNS]), to_data(recon[start:start + GRID_COLUMNS])]
    return torch.cat(rows).clamp(0.0, 1.0).cpu()


def write_reconstructions(run: TrainRun, bar=None) -> None:
    """``snapshots/reconstructions_<step>.npz/.png`` of the EMA weights (rank 0)."""
    n = (run.options.train.snapshot_num_samples // GRID_COLUMNS) * GRID_COLUMNS or run.options.train.snapshot_num_samples
    items = run.data.test[:n]
    if not run.ctx.is_main or not len(items):
        return
    pictures = reconstructions(run.ema.module, items, run.data)
    cols = min(GRID_COLUMNS, len(items))
    labels = ["held-out", "reconstructed"] * (len(pictures) // (2 * cols))
    caption = (f"step {run.step}, EMA weights: held-out {run.data.name} images, each row above its reconstruction "
               f"(decoder mean at the posterior mean)")
    files = sample_files(pictures, run.data, f"reconstructions_{run.step:08d}", caption, row_labels=labels)
    directory = run.workdir / SNAPSHOT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        atomic_write_bytes(directory / name, content)


def export_first_stage(run: TrainRun) -> dict:
    """``<workdir>/autoencoder.pt`` (rank 0): the EMA weights, the scale factor ``1 / std(z)`` of
    posterior draws over the whole training set (cell centres, seeded) and the data it was trained on."""
    path = Path(run.workdir) / FIRST_STAGE_FILE
    if run.ctx.is_main and exported_step(path) != run.step:    # a finished run's file is kept as it is
        data = run.data
        ae = copy.deepcopy(run.ema.module).cpu().eval()
        batches = (cell_centres(chunk, data) for chunk in data.train.cpu().split(SCALE_BATCH))
        scale = measure_scale_factor(ae, batches, generator=generator(run.options.seed, Stream.SCALE_FACTOR))
        ae.scale_factor.fill_(scale)
        save_autoencoder(path, ae, dataset=data.name, shape=list(data.shape), centered=bool(data.centered),
                         num_levels=data.num_levels, step=run.step)
        logger.info("wrote the first stage (EMA weights of step %d, scale factor %.4f over %d training items) to %s; "
                    "train a latent diffusion model on it with --config.data.first_stage=%s", run.step, scale,
                    len(data.train), path, run.workdir)
    barrier(run.ctx)
    return {"first_stage": str(path)}


def exported_step(path: Path) -> int | None:
    """The training step ``autoencoder.pt`` at ``path`` was exported at (``None``: no such file)."""
    if not path.is_file():
        return None
    return load_autoencoder(path)[1].get("step")


AUTOENCODER_HOOKS = TrainHooks(step=autoencoder_step, evaluate=log_heldout, snapshot=write_reconstructions,
                               describe=describe, title=title, finish=export_first_stage)


def train_autoencoder(options: RunOptions, workdir: str | Path, ctx: DistContext | None = None) -> dict:
    """The ``train_autoencoder`` mode; returns ``train``'s dict and ``"first_stage"``, the file written."""
    check_pixel_data(options)
    return train(options, workdir, ctx, hooks=AUTOENCODER_HOOKS, model_for=build_autoencoder)
