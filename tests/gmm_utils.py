"""Statistics for checking samples against a ``sde_lib.GaussianMixture``, with honest error bars.

Shared by the sampler tests. Every comparison is two-sample: the samples under test against a fresh
reference draw from the mixture, both summarised the same way (each point assigned to its most
probable component under ``p_0``), so overlapping modes bias neither side. Standard errors:

- a mode weight ``p`` from ``n`` points: ``sqrt(p (1 - p) / n)``;
- a per-mode mean coordinate: ``sqrt(S_ii / n_k)`` with ``S`` the mode's sample covariance;
- a per-mode covariance entry: ``std((x_i - m_i)(x_j - m_j)) / sqrt(n_k)`` (the empirical fourth
  moment, no Gaussian assumption: assigned modes are truncated);
- the difference of two independent estimates: ``sqrt(se_a^2 + se_b^2)``.

The MMD two-sample statistic (Gretton et al. 2012, unbiased estimator, Gaussian kernel) comes with a
permutation null: its mean and standard deviation over relabellings of the pooled samples.

API (stable; other test modules import it):
    make_test_mixture() -> GaussianMixture          (4 modes in 2-D, unequal weights, full covariances)
    shared_time_score(mixture, sde) -> score_fn     (mixture.score_fn(sde), ~3x faster, same values)
    gen(seed) -> torch.Generator
    reference_sample() -> (100000, 2) draw from make_test_mixture(), cached per process
    assign_modes(mixture, x) -> (n,) long
    mode_stats(mixture, x) -> ModeStats
    compare_mode_stats(mixture, x, reference, tol=0.0) -> dict[str, float]   (max z-score per kind)
    assert_matches_mixture(mixture, x, reference, z_max=4.0, tol=0.0, mmd_samples=2000, generator=None)
    mmd2_unbiased(x, y, bandwidth) -> float
    mmd_permutation_test(x, y, n_perm=200, bandwidth=None, generator=None) -> MMDResult
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Mapping, Union

import torch

from scoresde.sde_lib import GaussianMixture

KINDS = ("weights", "means", "covs")


@dataclass
class ModeStats:
    """Per-mode summaries of a sample and their standard errors (all float64)."""
    counts: torch.Tensor      # (K,)
    weights: torch.Tensor     # (K,)
    means: torch.Tensor       # (K, D)
    covs: torch.Tensor        # (K, D, D)
    weight_se: torch.Tensor   # (K,)
    mean_se: torch.Tensor     # (K, D)
    cov_se: torch.Tensor      # (K, D, D)


@dataclass
class MMDResult:
    stat: float         # unbiased MMD^2 of the two samples
    null_mean: float    # mean of MMD^2 over permutations (~0)
    null_std: float     # its standard deviation: the error bar of ``stat`` under H0
    p_value: float      # fraction of permutations at least as large (with the +1 correction)

    @property
    def z(self) -> float:
        return (self.stat - self.null_mean) / self.null_std


def make_test_mixture() -> GaussianMixture:
    """Four 2-D modes with unequal weights and full covariances (stds 0.28-0.5, means >= 2.1 apart)."""
    return GaussianMixture(
        weights=[0.4, 0.3, 0.2, 0.1],
        means=[[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0], [0.5, -1.8]],
        covs=[[[0.20, 0.08], [0.08, 0.15]], [[0.10, -0.05], [-0.05, 0.25]],
              [[0.15, 0.00], [0.00, 0.10]], [[0.08, 0.02], [0.02, 0.12]]])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=None)
def reference_sample(n: int = 100_000, seed: int = 12345) -> torch.Tensor:
    """A fresh draw from ``make_test_mixture()`` to compare samples with; drawn once per process."""
    return make_test_mixture().sample(n, generator=gen(seed))


def shared_time_score(mixture: GaussianMixture, sde):
    """``mixture.score_fn(sde)``, evaluated with the component covariances factorised once per call
    instead of once per sample when the whole batch shares one time (as in every sampler): passing
    ``t[:1]`` to ``score_t`` broadcasts over the batch. Same values, ~3x faster."""
    full = mixture.score_fn(sde)

    def score(x, t):
        if bool((t == t[0]).all()):
            return mixture.score_t(sde, x, t[:1])
        return full(x, t)

    return score


def assign_modes(mixture, x: torch.Tensor) -> torch.Tensor:
    """The most probable component of each point under ``p_0``; shape ``(n,)``."""
    return mixture.posterior_responsibilities(x.to(torch.float64)).argmax(dim=1)


def mode_stats(mixture, x: torch.Tensor) -> ModeStats:
    """Weights, means and covariances of the points assigned to each mode, with standard errors."""
    x = x.detach().to(torch.float64).cpu()
    k = assign_modes(mixture, x)
    K, D, n = mixture.weights.numel(), mixture.dim, x.shape[0]
    counts = torch.bincount(k, minlength=K).to(torch.float64)
    if bool((counts < 2).any()):
        raise AssertionError(f"every mode needs >= 2 samples to compare, got counts {counts.tolist()}")
    weights = counts / n
    means = torch.zeros(K, D, dtype=torch.float64)
    covs = torch.zeros(K, D, D, dtype=torch.float64)
    cov_se = torch.zeros(K, D, D, dtype=torch.float64)
    for j in range(K):
        xj = x[k == j]
        means[j] = xj.mean(0)
        c = xj - means[j]
        prods = c[:, :, None] * c[:, None, :]                      # (n_k, D, D)
        covs[j] = prods.sum(0) / (len(xj) - 1)
        cov_se[j] = prods.std(0) / len(xj) ** 0.5
    mean_se = (torch.diagonal(covs, dim1=1, dim2=2) / counts[:, None]).sqrt()
    weight_se = (weights * (1 - weights) / n).sqrt()
    return ModeStats(counts, weights, means, covs, weight_se, mean_se, cov_se)


def _tolerances(tol: Union[float, Mapping[str, float]]) -> Dict[str, float]:
    if isinstance(tol, Mapping):
        unknown = set(tol) - set(KINDS)
        if unknown:
            raise ValueError(f"tol keys must be among {KINDS}, got {sorted(unknown)}")
        return {kind: float(tol.get(kind, 0.0)) for kind in KINDS}
    return {kind: float(tol) for kind in KINDS}


def compare_mode_stats(mixture, x: torch.Tensor, reference: torch.Tensor,
                       tol: Union[float, Mapping[str, float]] = 0.0) -> Dict[str, float]:
    """Largest z-score per kind (``weights``, ``means``, ``covs``) between ``x`` and ``reference``.

    ``z = max(|a - b| - tol, 0) / sqrt(se_a^2 + se_b^2)``; ``tol`` (a number or a dict per kind) is an
    absolute allowance for a known, bounded bias such as a sampler's discretisation error.
    """
    a, b = mode_stats(mixture, x), mode_stats(mixture, reference)
    tols = _tolerances(tol)
    pairs = {"weights": (a.weights, b.weights, a.weight_se, b.weight_se),
             "means": (a.means, b.means, a.mean_se, b.mean_se),
             "covs": (a.covs, b.covs, a.cov_se, b.cov_se)}
    out = {}
    for kind, (va, vb, sa, sb) in pairs.items():
        excess = ((va - vb).abs() - tols[kind]).clamp(min=0)
        out[kind] = float((excess / (sa ** 2 + sb ** 2).sqrt()).max())
    return out


def _kernel(z: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel matrix of the pooled sample, in float32 (4x faster; its round-off, ~1e-7 of
    the O(1) kernel sums, is far below the permutation error bar of MMD^2)."""
    z = z.to(torch.float32)
    return torch.exp(-torch.cdist(z, z).pow(2) / (2 * bandwidth ** 2))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> float:
    """The median pairwise distance of the pooled samples (the usual kernel-width heuristic)."""
    z = torch.cat([x, y])[: max_points].to(torch.float64)
    d = torch.cdist(z, z)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def _mmd2_from_kernel(kern: torch.Tensor, signs: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Unbiased MMD^2 for labelings ``signs`` (``(n+m, P)``, +1 for the first sample, -1 for the second).

    ``sum_{i != j} k_ij [a_i a_j / (n(n-1)) + b_i b_j / (m(m-1)) - 2 a_i b_j / (n m)]`` with
    ``a = (1 + s)/2``, ``b = (1 - s)/2``.
    """
    a = (1 + signs) / 2
    b = (1 - signs) / 2
    diag = torch.diagonal(kern).to(torch.float64)[:, None]
    ka, kb = (kern @ a.to(kern.dtype)).to(torch.float64), (kern @ b.to(kern.dtype)).to(torch.float64)
    aa = ((a * ka).sum(0) - (diag * a).sum(0)) / (n * (n - 1))
    bb = ((b * kb).sum(0) - (diag * b).sum(0)) / (m * (m - 1))
    ab = (a * kb).sum(0) / (n * m)
    return aa + bb - 2 * ab


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 with the kernel ``exp(-|u - v|^2 / (2 bandwidth^2))`` (Gretton et al. 2012, eq. 3)."""
    x, y = x.detach().to(torch.float64).cpu().flatten(1), y.detach().to(torch.float64).cpu().flatten(1)
    kern = _kernel(torch.cat([x, y]), bandwidth)
    signs = torch.cat([torch.ones(len(x)), -torch.ones(len(y))]).to(torch.float64)[:, None]
    return float(_mmd2_from_kernel(kern, signs, len(x), len(y))[0])


def mmd_permutation_test(x: torch.Tensor, y: torch.Tensor, n_perm: int = 200, bandwidth: float | None = None,
                         generator: torch.Generator | None = None) -> MMDResult:
    """MMD^2 of ``x`` vs ``y`` with its permutation null distribution (mean, std, p-value)."""
    x, y = x.detach().to(torch.float64).cpu().flatten(1), y.detach().to(torch.float64).cpu().flatten(1)
    n, m = len(x), len(y)
    bw = bandwidth if bandwidth is not None else median_bandwidth(x, y)
    kern = _kernel(torch.cat([x, y]), bw)
    base = torch.cat([torch.ones(n), -torch.ones(m)]).to(torch.float64)
    perms = torch.stack([base[torch.randperm(n + m, generator=generator)] for _ in range(n_perm)], dim=1)
    stat = float(_mmd2_from_kernel(kern, base[:, None], n, m)[0])
    null = _mmd2_from_kernel(kern, perms, n, m)
    p_value = float(((null >= stat).sum() + 1) / (n_perm + 1))
    return MMDResult(stat, float(null.mean()), float(null.std()), p_value)


def assert_matches_mixture(mixture, x: torch.Tensor, reference: torch.Tensor, z_max: float = 4.0,
                           tol: Union[float, Mapping[str, float]] = 0.0, mmd_samples: int = 2000,
                           generator: torch.Generator | None = None, label: str = "") -> Dict[str, float]:
    """Assert that ``x`` matches the mixture: finite, per-mode weights/means/covariances within
    ``z_max`` standard errors (after ``tol``) of ``reference``, and MMD^2 within ``z_max`` permutation
    standard deviations of its null mean (on the first ``mmd_samples`` of each; 0 skips the MMD).
    Returns the z-scores so a caller can report them."""
    if not torch.isfinite(x).all():
        raise AssertionError(f"{label}: samples contain NaN or inf")
    z = compare_mode_stats(mixture, x, reference, tol)
    if mmd_samples:
        z["mmd"] = mmd_permutation_test(x[:mmd_samples], reference[:mmd_samples], generator=generator).z
    bad = {k: round(v, 2) for k, v in z.items() if v > z_max}
    if bad:
        raise AssertionError(f"{label}: z-scores above {z_max}: {bad} (all: "
                             f"{ {k: round(v, 2) for k, v in z.items()} })")
    return z
