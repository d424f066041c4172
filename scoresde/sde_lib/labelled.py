"""Labelled Gaussian mixtures and exact conditionals: the closed forms controllable generation is
checked against (``tests/unit/test_guidance.py``, ``tests/unit/test_inpaint.py``, ``bench/controllable.py``).

Each class ``y`` owns a subset of the components, so under a linear SDE (``x_t = alpha_t x_0 + sigma_t z``)

    p_t(x | y) = sum_{k in y} w_k N_k(x) / pi_y,    pi_y = sum_{k in y} w_k,
    p_t(y | x) = sum_{k in y} w_k N_k(x) / sum_k w_k N_k(x)

with ``N_k`` the component pushed to time ``t``: exact conditional scores, the exact noise-conditional
classifier and its Bayes accuracy. ``condition_mixture`` gives the exact ``p(x_missing | x_known)`` of any
mixture (per-component Gaussian conditioning, components re-weighted by how well they explain the known
coordinates); ``marginal_mixture`` the marginal of some coordinates.
"""
from __future__ import annotations

import torch

from scoresde.sde_lib.base import SDE
from scoresde.sde_lib.mixture import GaussianMixture


class LabelledGaussianMixture(GaussianMixture):
    """``GaussianMixture`` whose component ``k`` belongs to class ``labels[k]`` (``0..C-1``, every class
    owning at least one component)."""

    def __init__(self, weights, means, covs, labels):
        super().__init__(weights, means, covs)
        labels = torch.as_tensor(labels)
        K = self.weights.numel()
        if labels.shape != (K,) or labels.is_floating_point() or bool((labels < 0).any()):
            raise ValueError(f"labels must be {K} non-negative integer classes, one per component, got {labels!r}")
        self.labels = labels.long()
        self.num_classes = int(self.labels.max()) + 1
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        if bool((counts == 0).any()):
            raise ValueError(f"every class in 0..{self.num_classes - 1} needs a component, got labels "
                             f"{self.labels.tolist()}")
        # (C, K) membership: onehot[y, k] = 1 when component k belongs to class y
        self.membership = torch.nn.functional.one_hot(self.labels, self.num_classes).T.to(torch.float64)

    # ----- the data ------------------------------------------------------------------------------
    @property
    def class_weights(self) -> torch.Tensor:
        """``pi_y = sum_{k in y} w_k``; shape ``(C,)``."""
        return self.membership @ self.weights

    def class_mixture(self, y: int) -> GaussianMixture:
        """``p_0(x | y)``: the class's components with their weights renormalised."""
        keep = self.labels == int(y)
        if not bool(keep.any()):
            raise ValueError(f"y must be a class in [0, {self.num_classes}), got {y!r}")
        return GaussianMixture(self.weights[keep], self.means[keep], self.covs[keep])

    def sample_labelled(self, n: int, generator: torch.Generator | None = None, device=None,
                        dtype=torch.float32):
        """``n`` draws ``x`` and their classes ``y`` (the class of the component each came from)."""
        x, comp = self.sample(n, generator=generator, device=device, dtype=dtype, return_components=True)
        return x, self.labels[comp].to(device=x.device)

    # ----- the mixture at time t -------------------------------------------------------------------
    def _coeffs(self, sde: SDE | None, x: torch.Tensor, t: torch.Tensor | None):
        """``(alpha_t, sigma_t)`` in float64 (``(1, 0)`` at ``sde=None``: the clean data). ``t`` may be
        ``(B,)`` or ``(1,)`` (one time for the whole batch: the covariances are factorised once)."""
        self._check_x(x)
        if sde is None:
            ones = torch.ones(1, dtype=torch.float64, device=x.device)
            return ones, torch.zeros_like(ones)
        alpha, sigma = sde.marginal_coeffs(t.to(torch.float64))
        return alpha.to(x.device), sigma.to(x.device)

    def class_log_joint_t(self, sde: SDE | None, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """``log sum_{k in y} w_k N_k(x)`` at time ``t``; shape ``(B, C)``, float64, differentiable in ``x``."""
        logw, _ = self._component_terms(x, *self._coeffs(sde, x, t))
        masked = logw[:, None, :] + torch.log(self.membership.to(x.device))[None]  # -inf off the class
        return torch.logsumexp(masked, dim=2)

    def class_log_prob_t(self, sde: SDE | None, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """The exact classifier ``log p_t(y | x)``; shape ``(B, C)`` (``sde=None``: at time 0)."""
        joint = self.class_log_joint_t(sde, x, t)
        return joint - torch.logsumexp(joint, dim=1, keepdim=True)

    def classifier_log_prob_fn(self, sde: SDE, labels: torch.Tensor):
        """``log_prob_fn(x, t) = log p_t(labels | x)`` ``(B,)`` for ``samplers.classifier_guidance``."""
        labels = self._check_labels(labels)

        def log_prob_fn(x, t):
            t = t[:1] if bool((t == t[0]).all()) else t
            return self.class_log_prob_t(sde, x, t).gather(1, labels.to(x.device)[:, None])[:, 0]

        return log_prob_fn

    def conditional_score_t(self, sde: SDE, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Exact ``grad_x log p_t(x | y)`` with ``y = labels[b]`` per sample: the score of the class's
        components alone, ``-sum_{k in y} r_k Sigma_k^{-1} (x - m_k)``; in ``x``'s dtype."""
        logw, sol = self._component_terms(x, *self._coeffs(sde, x, t))
        member = self.membership.to(x.device)[labels.to(x.device)]              # (B, K)
        resp = torch.softmax(logw + torch.log(member), dim=1)
        return -(resp[..., None] * sol).sum(1).to(x.dtype)

    def conditional_score_fn(self, sde: SDE, labels: torch.Tensor):
        """A ``score_fn(x, t)`` of ``p_t(x | y)`` for a batch with classes ``labels`` ``(B,)``."""
        labels = self._check_labels(labels)

        def score(x, t):
            t = t[:1] if bool((t == t[0]).all()) else t
            return self.conditional_score_t(sde, x, t, labels)

        return score

    def shared_score_fn(self, sde: SDE):
        """``score_fn(sde)`` factorising the covariances once per call when the batch shares one time."""
        def score(x, t):
            t = t[:1] if bool((t == t[0]).all()) else t
            logw, sol = self._component_terms(x, *self._coeffs(sde, x, t))
            return -(torch.softmax(logw, dim=1)[..., None] * sol).sum(1).to(x.dtype)

        return score

    def _check_labels(self, labels) -> torch.Tensor:
        if not torch.is_tensor(labels) or labels.ndim != 1 or labels.is_floating_point() \
                or bool(((labels < 0) | (labels >= self.num_classes)).any()):
            raise ValueError(f"labels must be a 1-D integer tensor of classes in [0, {self.num_classes}), "
                             f"got {labels!r}")
        return labels.long()


def marginal_mixture(mixture: GaussianMixture, dims) -> GaussianMixture:
    """The marginal of coordinates ``dims`` (a list of indices): same weights, sliced means and covariances."""
    dims = torch.as_tensor(dims, dtype=torch.long)
    covs = mixture.covs[:, dims][:, :, dims]
    return GaussianMixture(mixture.weights, mixture.means[:, dims], covs)


def condition_mixture(mixture: GaussianMixture, known, values) -> GaussianMixture:
    """Exact ``p(x_missing | x_known = values)`` of a mixture, itself a mixture over the missing coordinates.

    Per component (Bishop 2006, eqs. 2.81-2.82): ``m = mu_m + S_mk S_kk^{-1} (v - mu_k)``,
    ``C = S_mm - S_mk S_kk^{-1} S_km``; the weights become ``w_k N(v; mu_k, S_kk)`` renormalised.
    ``known`` is a ``(D,)`` bool mask (or index list) of the known coordinates, ``values`` their values.
    """
    D = mixture.dim
    known = torch.as_tensor(known)
    if known.dtype != torch.bool:
        known = torch.zeros(D, dtype=torch.bool).index_fill_(0, known.long(), True)
    if known.shape != (D,) or bool(known.all()) or not bool(known.any()):
        raise ValueError(f"known must mark between 1 and {D - 1} of the {D} coordinates, got {known.tolist()}")
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    k_idx, m_idx = known.nonzero()[:, 0], (~known).nonzero()[:, 0]
    if v.shape != k_idx.shape:
        raise ValueError(f"values must hold {len(k_idx)} numbers (one per known coordinate), got {v.numel()}")
    S = mixture.covs
    S_kk, S_mk, S_mm = S[:, k_idx][:, :, k_idx], S[:, m_idx][:, :, k_idx], S[:, m_idx][:, :, m_idx]
    diff = v[None] - mixture.means[:, k_idx]                                   # (K, d_k)
    gain = torch.linalg.solve(S_kk, S_mk.transpose(1, 2)).transpose(1, 2)    # S_mk S_kk^{-1}
    means = mixture.means[:, m_idx] + (gain @ diff[..., None])[..., 0]
    covs = S_mm - gain @ S_mk.transpose(1, 2)
    log_evidence = torch.distributions.MultivariateNormal(mixture.means[:, k_idx], S_kk).log_prob(v[None])
    logw = torch.log(mixture.weights) + log_evidence
    weights = torch.softmax(logw, dim=0)
    keep = weights > 1e-300  # components the known values rule out entirely
    return GaussianMixture(weights[keep], means[keep], 0.5 * (covs[keep] + covs[keep].transpose(1, 2)))


def three_class_mixture() -> LabelledGaussianMixture:
    """The labelled toy mixture the guidance tests and ``bench/controllable.py`` use: six 2-D components
    with full covariances, classes of two components each (weights 0.4 / 0.3 / 0.3); class 2's components
    sit between the others, so the classes overlap (Bayes accuracy of ``p_0(y | x)``: 0.976)."""
    return LabelledGaussianMixture(
        weights=[0.25, 0.15, 0.2, 0.1, 0.2, 0.1],
        means=[[-2.0, 0.0], [0.0, 2.0], [2.0, 0.5], [0.6, -1.6], [-0.6, 0.6], [0.3, 0.2]],
        covs=[[[0.20, 0.08], [0.08, 0.15]], [[0.15, 0.0], [0.0, 0.10]],
              [[0.10, -0.05], [-0.05, 0.25]], [[0.08, 0.02], [0.02, 0.12]],
              [[0.12, 0.04], [0.04, 0.12]], [[0.10, 0.0], [0.0, 0.10]]],
        labels=[0, 0, 1, 1, 2, 2])
