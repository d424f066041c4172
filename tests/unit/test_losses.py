"""Score parameterisation and denoising score-matching losses against Gaussian closed forms.

For data N(mu, s^2 I) and x_t = alpha x_0 + sigma z, p_t = N(alpha mu, v I) with v = alpha^2 s^2 + sigma^2,
and the exact score gives E||sigma s(x_t) + z||^2 = D alpha^2 s^2 / v per time (the DSM minimum).
Moreover E[sigma s + z | x_t] = 0, so for any perturbation delta(x_t, t) of the exact score
E||sigma (s + delta) + z||^2 - E||sigma s + z||^2 = E[sigma^2 ||delta||^2] > 0: the exact score is the
strict minimiser.
"""
import math

import pytest
import torch
from torch import nn

from scoresde.models import get_score_fn
from scoresde.sde_lib import VESDE, VPSDE, CosineVPSDE, subVPSDE
from scoresde.utils import append_dims
from scoresde.train.losses import LOSSES, ddpm_loss, dsm_loss, get_loss_fn, smld_loss

MU, S, D = 0.6, 0.5, 3


class ExactGaussianNet(nn.Module):
    """A 'network' that returns the exact eps / x0 / score for N(MU, S^2 I), reading t back from its label."""

    def __init__(self, sde, output, continuous=True):
        super().__init__()
        self.sde, self.output, self.continuous = sde, output, continuous
        self.dummy = nn.Parameter(torch.zeros(()))

    def _coeffs(self, label, like):
        if not self.continuous:
            idx = label.round().long()
            if isinstance(self.sde, VESDE):  # test-side decoding of NCSN's descending index
                idx = self.sde.N - 1 - idx
            return self.sde.discrete_marginal(idx, like)
        t = self.sde.inverse_log_snr(-2 * torch.log(label)) if isinstance(self.sde, VESDE) else label * self.sde.T / 999.0
        alpha, sigma = self.sde.marginal_coeffs(t)
        return alpha.to(like.dtype), sigma.to(like.dtype)

    def forward(self, x, label, cond=None):
        alpha, sigma = self._coeffs(label, x)
        a, s = append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)
        v = a ** 2 * S ** 2 + s ** 2
        score = -(x - a * MU) / v
        if self.output == "eps":
            return -s * score
        if self.output == "x0":
            return (x + s ** 2 * score) / a
        if self.output == "scaled_score":
            return s * score
        return score


def exact_score(sde, x, t, continuous=True):
    if continuous:
        alpha, sigma = sde.marginal_coeffs(t)
        alpha, sigma = alpha.to(x.dtype), sigma.to(x.dtype)
    else:
        alpha, sigma = sde.discrete_marginal(sde.timestep_index(t), x)
    a, s = append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)
    return -(x - a * MU) / (a ** 2 * S ** 2 + s ** 2)


@pytest.mark.parametrize("sde,output,kwargs", [
    (VPSDE(), "eps", {}),
    (subVPSDE(), "eps", {}),
    (CosineVPSDE(), "eps", {}),
    (VPSDE(), "x0", {"parameterization": "x0"}),
    (VESDE(), "score", {}),
    (VESDE(), "scaled_score", {"scale_by_sigma": True}),
    (VESDE(), "eps", {"parameterization": "eps"}),
])
@pytest.mark.parametrize("shape", [(8, D), (8, 2, 3, 3)])
def test_get_score_fn_turns_exact_predictions_into_the_exact_score(sde, output, kwargs, shape):
    x = torch.randn(shape, dtype=torch.float64)
    t = torch.rand(shape[0], dtype=torch.float64) * (sde.T - 0.02) + 0.01
    score_fn = get_score_fn(sde, ExactGaussianNet(sde, output), **kwargs)
    assert torch.allclose(score_fn(x, t), exact_score(sde, x, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde", [VPSDE(N=100), VESDE(N=100)])
def test_discrete_models_get_ddpm_timesteps_and_smld_indices(sde):
    seen = []

    class Recorder(ExactGaussianNet):
        def forward(self, x, label, cond=None):
            seen.append(label.clone())
            return super().forward(x, label, cond)

    t = torch.tensor([0.0, 1.0, 50 / 99, 1e-3], dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64)
    out = "eps" if isinstance(sde, VPSDE) else "score"
    score = get_score_fn(sde, Recorder(sde, out, continuous=False), continuous=False)(x, t)
    expected = torch.tensor([0.0, 99.0, 50.0, 0.0], dtype=torch.float64)
    if isinstance(sde, VESDE):
        expected = 99.0 - expected  # NCSN counts from the largest sigma
    assert torch.equal(seen[0], expected)
    assert torch.allclose(score, exact_score(sde, x, t, continuous=False), rtol=1e-10)


def test_continuous_labels_follow_score_sde():
    vp, ve = VPSDE(), VESDE()
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(vp.noise_label(t), 999 * t)
    assert torch.allclose(ve.noise_label(t), 0.01 * (50 / 0.01) ** t)


def test_get_score_fn_rejects_unknown_parameterization():
    with pytest.raises(ValueError, match="parameterization"):
        get_score_fn(VPSDE(), ExactGaussianNet(VPSDE(), "eps"), parameterization="v_pred")


# ----- the losses' minima ----------------------------------------------------------------------------
def _data(n, seed):
    return MU + S * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _per_time_minimum(sde, t):
    alpha, sigma = sde.marginal_coeffs(t)
    return alpha ** 2 * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)  # per dimension


def _analytic_dsm_minimum(sde, eps, weighted):
    t = torch.logspace(math.log10(eps), math.log10(sde.T), 400001, dtype=torch.float64)
    w = sde.importance_density(t) if weighted else torch.ones_like(t)
    return torch.trapezoid(w * _per_time_minimum(sde, t), t).item() / (sde.T - eps)


def _check_minimum(losses, expected):
    n = losses.shape[0]
    se = losses.std().item() / math.sqrt(n)
    # 5 standard errors of the Monte-Carlo mean
    assert abs(losses.mean().item() - expected) < 5 * se, (losses.mean().item(), expected, se)


@pytest.mark.parametrize("sde", [VPSDE(), subVPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)])
@pytest.mark.parametrize("weighting", ["none", "likelihood", "importance"])
def test_dsm_exact_score_attains_the_analytic_minimum(sde, weighting):
    eps, n = 1e-5, 60000
    kwargs = {"likelihood_weighting": weighting != "none", "importance_sampling": weighting == "importance"}
    x0 = _data(n, 0)
    score_fn = lambda x, t: exact_score(sde, x, t)
    gen = torch.Generator().manual_seed(1)
    losses = dsm_loss(sde, score_fn, x0, eps=eps, generator=gen, **kwargs)
    assert losses.shape == (n,)
    _check_minimum(losses, _analytic_dsm_minimum(sde, eps, weighted=weighting != "none"))
    # a perturbed score is strictly worse, by exactly E[w sigma^2 ||delta||^2] (common random numbers)
    delta = 0.3
    gen = torch.Generator().manual_seed(1)
    worse = dsm_loss(sde, lambda x, t: score_fn(x, t) + delta, x0, eps=eps, generator=gen, **kwargs)
    diff = worse - losses
    assert diff.mean().item() > 0
    if weighting == "none":
        # reduce="mean": per-dim excess sigma^2 delta^2, t ~ U(eps, T)
        t = torch.linspace(eps, sde.T, 100001, dtype=torch.float64)
        excess = torch.trapezoid(sde.marginal_coeffs(t)[1] ** 2 * delta ** 2, t).item() / (sde.T - eps)
        _check_minimum(diff, excess)


def test_dsm_sum_reduction_is_half_the_sum():
    sde, x0 = VPSDE(), _data(64, 2)
    score_fn = lambda x, t: exact_score(sde, x, t) + 0.1
    a = dsm_loss(sde, score_fn, x0, reduce="mean", generator=torch.Generator().manual_seed(0))
    b = dsm_loss(sde, score_fn, x0, reduce="sum", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(b, 0.5 * D * a, rtol=1e-12)


@pytest.mark.parametrize("sde,loss_fn", [(VPSDE(N=1000), ddpm_loss), (VESDE(N=1000), smld_loss)])
def test_discrete_losses_exact_score_attains_the_minimum(sde, loss_fn):
    n = 60000
    x0 = _data(n, 3)
    score_fn = lambda x, t: exact_score(sde, x, t, continuous=False)
    losses = loss_fn(sde, score_fn, x0, reduce="mean", generator=torch.Generator().manual_seed(4))
    alpha, sigma = sde.discrete_marginal(torch.arange(sde.N), x0)
    expected = (alpha ** 2 * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)).mean().item()
    _check_minimum(losses, expected)
    worse = loss_fn(sde, lambda x, t: score_fn(x, t) * 1.2, x0, reduce="mean",
                    generator=torch.Generator().manual_seed(4))
    assert (worse - losses).mean().item() > 5 * (worse - losses).std().item() / math.sqrt(n)


def test_ddpm_loss_is_l_simple():
    """Check one term by hand: ||eps - eps_theta(sqrt(abar_i) x0 + sqrt(1 - abar_i) eps, i)||^2."""
    sde = VPSDE()
    x0 = _data(5, 5)
    index = torch.tensor([0, 10, 500, 998, 999])
    z = torch.randn(5, D, dtype=torch.float64)
    eps_theta = lambda x: 0.3 * x  # an arbitrary predictor
    score_fn = lambda x, t: -eps_theta(x) / sde.ddpm_64.sqrt_1m_alphas_cumprod[sde.timestep_index(t)][:, None]
    losses = ddpm_loss(sde, score_fn, x0, index=index, z=z, reduce="sum")
    xt = sde.ddpm_64.sqrt_alphas_cumprod[index][:, None] * x0 + sde.ddpm_64.sqrt_1m_alphas_cumprod[index][:, None] * z
    assert torch.allclose(losses, 0.5 * ((z - eps_theta(xt)) ** 2).sum(1), rtol=1e-10)


def test_loss_arguments_are_checked():
    sde, x0 = VPSDE(), _data(4, 0)
    score_fn = lambda x, t: x
    with pytest.raises(ValueError, match="reduce"):
        dsm_loss(sde, score_fn, x0, reduce="max")
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(sde, score_fn, x0, eps=0.0)
    with pytest.raises(ValueError, match="importance_sampling"):
        dsm_loss(sde, score_fn, x0, importance_sampling=True)
    with pytest.raises(ValueError, match="z must have"):
        dsm_loss(sde, score_fn, x0, z=torch.zeros(3, D))
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        get_loss_fn("l1")
    assert {"ddpm", "dsm", "smld"} <= set(LOSSES.names())  # + flow / v / edm (tests/unit/test_flow_edm.py)
