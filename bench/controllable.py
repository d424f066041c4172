"""Controllable generation on exact mixture scores: class accuracy against guidance scale and NFE, and
inpainting error against method, resampling and NFE.

    python -m bench.controllable              # ~5 min on 2 CPU cores
    python -m bench.controllable --quick      # fewer samples and settings, ~1 min

Data: the labelled 2-D mixture of ``tests/unit/test_guidance.py`` (six components, three overlapping
classes; the Bayes accuracy of the exact ``p_0(y | x)`` is 0.976) under the VP SDE. Scores are exact, so
only the sampler and the guidance rule are measured.

- **Guidance.** For each class, CFG of the exact scores ``s_u + w (s_c - s_u)`` (identical, with exact
  components, to classifier guidance with the exact ``p_t(y | x)``: both are ``s_u + w grad log p_t(y|x)``;
  the table gives the cost of the autograd gradient instead) and classifier guidance with an MLP
  classifier trained for 300 steps (``classifier_mlp``). Accuracy: the fraction of samples whose Bayes
  class under ``p_0`` is the requested class, averaged over the classes. The exact conditional
  ``p(x | y)`` scores the "exact" row; scale 1 should match it, scale 0 the unconditional mixture.
- **Inpainting.** ``x1 = 0.3`` known, ``x2`` missing, in a two-mode mixture with within-mode correlation
  0.8 (the exact conditional is a two-component mixture with weights 0.23 / 0.77). Error: the
  Kolmogorov-Smirnov distance of the ``x2`` samples to the exact conditional CDF (null level for exact
  samples: mean 0.87 / sqrt(n)), the error of the mean, and the variance ratio to the exact one.

Measured (full run, 2 CPU cores, ~5 min):

- Scale 1 reproduces the exact conditional with every sampler (accuracy 0.976-0.979 against 0.977,
  standard error 0.006) and scale 0 the unconditional mixture (0.331-0.340 against 0.333).
- Between 0 and 1 the samplers disagree (w = 0.5: 0.69 fast/ODE, 0.79 DDIM eta = 1, 0.86 / 0.91 PC with
  N = 100 / 500): a guided score at w not in {0, 1} is not the score of one family of marginals, so each
  sampler draws from a different distribution. Accuracy saturates at 1.000 from w = 2 (fast 20 steps).
- Large scales need steps: at w = 8 the 5-step solver falls to 0.756 and the 10-step one to 0.991.
- Exact classifier guidance gives the CFG samples to round-off at ~1.5x the cost per step (4.1 against
  2.6 ms for 2000 points: the autograd gradient). The MLP classifier (300 steps, 1.5 s) reaches 0.952 at
  w = 1 and 0.998 at w = 2.
- Inpainting: the replacement method errs by KS 0.13-0.15 whatever N (x2's variance 2.1-2.2x the exact
  one: the mode weights are wrong); one Langevin step per level helps more as N grows (0.107 / 0.065 /
  0.036 at N = 50 / 100 / 200). RePaint's error halves with each doubling of U up to U = 8 (KS 0.016
  at every N) and keeps falling to the sampling noise by U = 32 (0.0086 / 0.0067 / 0.0100 against the
  null mean 0.0097; variance ratio 1.02-1.05), whatever N: at equal NFE, resampling beats more steps
  (N = 50, U = 8, 394 NFE: 0.016; N = 200 replacement + Langevin, 401 NFE: 0.036).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: bench/ itself would shadow the samplers package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

from scoresde import models
from scoresde import sde_lib
from scoresde.samplers import (classifier_free_guidance, classifier_guidance, classifier_log_prob_fn, ddim_sample,
                      fast_sample, inpaint, pc_sample)

LABELLED = sde_lib.labelled.three_class_mixture()
CORRELATED = sde_lib.GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], [[[0.5, 0.4], [0.4, 0.5]]] * 2)
KNOWN_X1 = 0.3
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def accuracy(x: torch.Tensor, y: int) -> float:
    return (LABELLED.class_log_prob_t(None, x).argmax(1) == y).double().mean().item()


# ----- guidance ------------------------------------------------------------------------------------
def sampler_runs(quick: bool):
    """(label, sde, run(score, n, seed) -> (x, nfe))."""
    vp = sde_lib.VPSDE()
    runs = [(f"fast {s} steps", vp, lambda score, n, seed, s=s: fast_sample(vp, score, (n, 2), steps=s,
                                                                          generator=gen(seed)))
            for s in ((5, 10, 20) if not quick else (10, 20))]
    runs.append(("ddim eta=1, 100", vp, lambda score, n, seed: ddim_sample(vp, score, (n, 2), steps=100, eta=1.0,
                                                                         generator=gen(seed))))
    for N in ((100, 500) if not quick else (100,)):
        sde = sde_lib.VPSDE(N=N)
        runs.append((f"pc rd+langevin N={N}", sde,
                     lambda score, n, seed, sde=sde: pc_sample(sde, score, (n, 2), generator=gen(seed))))
    return runs


def train_classifier(steps: int = 300):
    sde = sde_lib.VPSDE()
    torch.manual_seed(0)
    net = models.get_model("classifier_mlp", dim=2, hidden=64, n_blocks=2, embedding_type="positional",
                           fourier_scale=16.0, num_classes=LABELLED.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    logits, g = models.get_logits_fn(sde, net, train=True), gen(0)
    for _ in range(steps):
        x, y = LABELLED.sample_labelled(256, generator=g)
        loss = models.classifier_loss(sde, logits, x, y, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return models.get_logits_fn(sde, net)


def guidance_table(n: int, quick: bool) -> None:
    exact = sum(accuracy(LABELLED.class_mixture(y).sample(100_000, generator=gen(1)), y)
                for y in range(LABELLED.num_classes)) / LABELLED.num_classes
    data = LABELLED.sample(100_000, generator=gen(2))
    uncond_acc = sum(accuracy(data, y) for y in range(LABELLED.num_classes)) / LABELLED.num_classes
    print(f"\n## Class accuracy against guidance scale (n = {n} per class, 3 classes; standard error "
          f"<= {math.sqrt(0.25 / (3 * n)):.3f})\n")
    print(f"exact p(x | y): {exact:.3f}   unconditional p(x): {uncond_acc:.3f}\n")
    print("| sampler | guidance | NFE | " + " | ".join(f"w={s:g}" for s in SCALES) + " | per step |")
    print("|---|---|---|" + "---|" * len(SCALES) + "---|")
    t0 = time.perf_counter()
    logits = train_classifier()
    train_s = time.perf_counter() - t0
    for label, sde, run in sampler_runs(quick):
        kinds = [("CFG (exact)", None)]
        if label.startswith("fast 20") or label.startswith("ddim"):
            kinds += [("classifier (exact)", "exact"), ("classifier (MLP)", "mlp")]
        for kind, clf in kinds:
            accs, nfe, seconds = [], 0, 0.0
            for s in SCALES:
                acc = 0.0
                for y in range(LABELLED.num_classes):
                    labels = torch.full((n,), y)
                    uncond = LABELLED.shared_score_fn(sde)
                    if clf is None:
                        score = classifier_free_guidance(uncond, LABELLED.conditional_score_fn(sde, labels), s)
                    else:
                        log_prob = (LABELLED.classifier_log_prob_fn(sde, labels) if clf == "exact"
                                    else classifier_log_prob_fn(logits, labels))
                        score = classifier_guidance(uncond, log_prob, s)
                    t0 = time.perf_counter()
                    x, nfe = run(score, n, 10 + y)
                    seconds += time.perf_counter() - t0 if s == 2.0 else 0.0
                    acc += accuracy(x, y) / LABELLED.num_classes
                accs.append(acc)
            per_call = seconds / (nfe * LABELLED.num_classes)
            print(f"| {label} | {kind} | {nfe} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {per_call * 1e3:.2f} ms |")
    print(f"\n(MLP classifier: 300 Adam steps, batch 256, {train_s:.1f} s; 'per step' is the wall time of one "
          f"sampler step (score + guidance) at w = 2, batch {n}.)")


# ----- inpainting ----------------------------------------------------------------------------------
def ks_distance(samples: torch.Tensor, mixture: sde_lib.GaussianMixture) -> float:
    x = samples.double().sort().values
    std = torch.sqrt(mixture.covs[:, 0, 0])
    cdf = (mixture.weights * 0.5 * (1 + torch.erf((x[:, None] - mixture.means[:, 0]) / (math.sqrt(2) * std)))).sum(1)
    i = torch.arange(1, len(x) + 1, dtype=torch.float64)
    return max((i / len(x) - cdf).max().item(), (cdf - (i - 1) / len(x)).max().item())


def inpaint_table(n: int, quick: bool) -> None:
    exact = sde_lib.condition_mixture(CORRELATED, [True, False], [KNOWN_X1])
    mean = float((exact.weights * exact.means[:, 0]).sum())
    var = float((exact.weights * (exact.covs[:, 0, 0] + exact.means[:, 0] ** 2)).sum()) - mean ** 2
    x_known = torch.tensor([[KNOWN_X1, float("nan")]]).expand(n, 2).contiguous()
    mask = torch.tensor([[1.0, 0.0]])
    print(f"\n## Inpainting x2 given x1 = {KNOWN_X1} (n = {n}; KS of exact samples: mean "
          f"{0.87 / math.sqrt(n):.4f}, 99% {1.63 / math.sqrt(n):.4f}; mean standard error "
          f"{math.sqrt(var / n):.4f})\n")
    print("| N | method | U | corrector | NFE | KS | mean error | variance ratio | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    settings = [("replacement", 1, "none"), ("replacement", 1, "langevin")]
    settings += [("repaint", u, "none") for u in ((2, 4, 8, 16, 32) if not quick else (2, 4, 8))]
    for N in ((50, 100, 200) if not quick else (100,)):
        sde = sde_lib.VPSDE(N=N)

        def score(x, t, sde=sde):
            return CORRELATED.score_t(sde, x, t[:1])

        for method, u, corrector in settings:
            t0 = time.perf_counter()
            x, nfe = inpaint(sde, score, x_known, mask, method=method, resample=u, corrector=corrector,
                             generator=gen(1))
            seconds = time.perf_counter() - t0
            x2 = x[:, 1].double()
            print(f"| {N} | {method} | {u} | {corrector} | {nfe} | {ks_distance(x2, exact):.4f} | "
                  f"{x2.mean().item() - mean:+.4f} | {x2.var().item() / var:.3f} | {seconds:.1f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=None, help="samples per class / per inpainting run")
    parser.add_argument("--quick", action="store_true", help="fewer samples and settings")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_guidance = args.n or (1000 if args.quick else 2000)
    n_inpaint = args.n or (4000 if args.quick else 8000)
    guidance_table(n_guidance, args.quick)
    inpaint_table(n_inpaint, args.quick)


if __name__ == "__main__":
    main()
