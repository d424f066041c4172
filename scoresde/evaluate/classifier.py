"""``--mode eval`` of a noise-conditional classifier (``training.loss = "classifier"``): on the held-out
items, the cross-entropy of the training loss (``t ~ U(eps, T)``, fixed noise) and the accuracy of the
EMA weights on ``x_t`` at a few fixed times, written to ``<workdir>/eval/metrics.json``. A classifier has
no likelihood or samples; guide a score model with it (``sampling.guidance = "classifier"``)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from scoresde.utils import append_dims
from scoresde.run.distributed import DistContext, all_gather_cat
from scoresde.evaluate.heldout import my_items
from scoresde.run.inference import load_classifier
from scoresde.run.options import RunOptions
from scoresde.data.pipeline import load_data, to_model_space
from scoresde.data.streams import Stream, generator
from scoresde.run.workdir import EVAL_DIR, write_results

logger = logging.getLogger(__name__)

ACCURACY_TIMES = (0.01, 0.25, 0.5, 0.75)


def heldout_classification(options: RunOptions, workdir: str | Path, ctx: DistContext) -> dict:
    """Cross-entropy (nats) and accuracy at ``ACCURACY_TIMES`` of the classifier in ``workdir``."""
    loaded = load_classifier(workdir, options, ctx)
    spec = load_data(options.data, options.seed, with_train=False)
    gen = generator(options.seed, Stream.EVAL_LOSS, ctx.rank, ctx.device)
    sde = options.sde.build()
    x0 = to_model_space(my_items(spec.test, ctx).to(ctx.device), spec, gen, train=False)
    labels = my_items(spec.test_labels, ctx).to(ctx.device)
    losses, correct = [], {t: [] for t in ACCURACY_TIMES}
    with torch.no_grad():
        for xb, yb in zip(x0.split(options.eval.batch_size), labels.split(options.eval.batch_size)):
            losses.append(options.loss.fn(sde, loaded.logits_fn, xb, labels=yb, generator=gen, **options.loss.kwargs))
            for t in ACCURACY_TIMES:
                tt = torch.full((len(xb),), t, device=xb.device)
                mean, std = sde.marginal_prob(xb, tt)
                xt = mean + append_dims(std, xb.ndim) * torch.randn(xb.shape, generator=gen, device=xb.device)
                correct[t].append((loaded.logits_fn(xt, tt).argmax(dim=1) == yb).double())
    metrics = {"step": loaded.step, "loss": float(all_gather_cat(torch.cat(losses), ctx).mean()),
               "loss_is": options.loss.describe}
    for t in ACCURACY_TIMES:
        metrics[f"accuracy_t{t:g}"] = float(all_gather_cat(torch.cat(correct[t]), ctx).mean())
    return metrics


def evaluate_classifier(options: RunOptions, workdir: str | Path, ctx: DistContext,
                        outdir: str | Path | None = None) -> dict:
    """Write and log ``heldout_classification``'s numbers."""
    metrics = heldout_classification(options, workdir, ctx)
    if ctx.is_main:
        directory = Path(outdir) if outdir is not None else Path(workdir) / EVAL_DIR
        write_results(directory, f"step{metrics['step']:08d}", {"metrics.json": json.dumps(metrics, indent=2) + "\n"},
                      options.config_json)
        accuracies = ", ".join(f"t = {t:g}: {100 * metrics[f'accuracy_t{t:g}']:.1f}%" for t in ACCURACY_TIMES)
        logger.info("eval: held-out cross-entropy %.4f nats; accuracy on x_t at %s", metrics["loss"], accuracies)
    return metrics
