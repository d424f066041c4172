"""The ``sample`` mode: draw samples with the sampler the config names (``pc`` / ``ode`` / ``fast``)
from the newest checkpoint's EMA weights, and write ``samples/samples.npz`` (array ``samples``, in data
space: images in [0, 1], 2-D points raw) with a PNG grid or scatter plot and ``samples/info.json``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from training.distributed import DistContext
from training.generation import count_nonfinite, generate, sample_files, sample_stats
from training.inference import load_for_inference
from training.options import RunOptions
from training.pipeline import to_data_space
from training.runtime import bars_enabled, logs_above_bars
from training.streams import Stream, generator
from training.workdir import SAMPLES_DIR, NonFiniteResultsError, write_results

logger = logging.getLogger(__name__)


def summary_line(info: dict) -> str:
    """What was drawn and, for toy data, how much of it lands where the data lives."""
    line = (f"{info['num_samples']} samples by the {info['method']} sampler ({info['nfe_per_batch']} score "
            f"evaluations per batch, {info['time_s']:.1f} s)")
    if "in_support_frac" in info:
        line += (f"; {100 * info['in_support_frac']:.1f}% on the data's support (where the true density is at "
                 f"least its 1% quantile: about 99% for perfect samples)")
    if info["nonfinite_samples"]:
        line += f"; {info['nonfinite_samples']} samples hold NaN or inf"
    return line


def sample(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """The ``sample`` mode: ``samples.npz``, a picture, ``info.json`` and the resolved ``config.json`` in
    ``outdir`` (default ``<workdir>/samples``), written once the samples exist; returns the info.
    Samples holding NaN or inf are counted in ``info.json`` and raise ``NonFiniteResultsError``."""
    inf = load_for_inference(options, workdir, ctx)
    sampler = options.sampler
    logger.info("drawing %d samples from the EMA weights of step %d with the %s sampler", sampler.num_samples,
                inf.step, sampler.method)
    start = time.perf_counter()
    with logs_above_bars():
        x, nfe = generate(inf.sde, inf.score_fn, sampler.num_samples, inf.data.shape, sampler,
                          generator=generator(options.seed, Stream.SAMPLING, ctx.rank, ctx.device), ctx=ctx,
                          show_progress=bars_enabled(options.train.progress_bar) and ctx.is_main)
    elapsed = time.perf_counter() - start
    data = to_data_space(x.cpu(), inf.data)
    bad = count_nonfinite(data)
    info = {"step": inf.step, "method": sampler.method, "num_samples": int(len(data)), "nfe_per_batch": nfe,
            "time_s": round(elapsed, 3), "nonfinite_samples": bad, **sample_stats(data, inf.data)}
    directory = Path(outdir) if outdir is not None else Path(workdir) / SAMPLES_DIR
    if ctx.is_main:
        caption = (f"step {inf.step}, EMA weights, {sampler.method} sampler, {nfe} NFE per batch, "
                   f"{len(data)} samples")
        files = {**sample_files(data, inf.data, "samples", caption), "info.json": json.dumps(info, indent=2) + "\n"}
        run_dir = write_results(directory, f"step{inf.step:08d}_{sampler.method}", files, options.config_json)
        logger.info("sample: %s", summary_line(info))
        logger.info("samples in %s (kept) and %s (the latest)", run_dir, directory / "samples.npz")
    if bad:
        raise NonFiniteResultsError(f"{bad} of {len(data)} samples hold NaN or inf values (see "
                                    f"{directory / 'info.json'}); the model or the sampler settings are broken")
    return info
