"""Rectified flow, EDM and the velocity / v / EDM parameterisations, against closed forms.

Processes: ``RectifiedFlow`` (``alpha = 1 - t``, ``sigma = t``, ``T = 0.999``) and ``EDMSDE`` (``alpha = 1``,
``sigma = t``, ``T = sigma_max``). A Gaussian mixture stays a mixture under both, so marginals, scores,
velocities and ``log p_t`` are exact (``sde_lib.GaussianMixture``); Gaussian data give the exact
probability-flow map and the losses' exact minima.

Error bars. Samples are compared with a fresh 100k reference draw (``tests/gmm_utils.py``): per-mode
weights / means / covariance entries within Z = 4 standard errors of the difference, MMD^2 within 4
permutation standard deviations; with n = 3000 the smallest mode (weight 0.1) has ~300 points, so its
mean carries ~0.017 and its covariance entries ~8% relative standard error. Discretisation biases were
measured against an accurate decode of the same latents (dopri5, rtol = atol = 1e-7); where they exceed
~0.5 standard error an allowance ``tol`` of ~1.5x the measured bias is given (numbers at each test).
Loss minima: Monte-Carlo means within 5 standard errors of the closed form.
"""
import math

import pytest
import torch
from torch import nn

from scoresde import samplers
from scoresde import sde_lib
from gmm_utils import assert_matches_mixture, gen, make_test_mixture, reference_sample, shared_time_score
from scoresde.models import PARAMETERIZATIONS, get_score_fn
from scoresde.samplers import edm_sample, fast_sample, karras_sigmas, log_likelihood, ode_sample, pc_sample
from scoresde.samplers.edm import EDM_SIGMA_MAX
from scoresde.score import CountingScore
from scoresde.sde_lib import EDMSDE, GaussianMixture, RectifiedFlow, VESDE, VPSDE, CosineVPSDE, subVPSDE
from scoresde.sde_lib import predictions
from scoresde.sde_lib.predictions import PREDICTIONS, PathCoeffs
from scoresde.utils import append_dims
from scoresde.train.losses import edm_loss, flow_loss, get_noise_fn, v_loss

F64 = torch.float64
MIX = make_test_mixture()
NEW_SDES = {"rf": lambda N=1000: RectifiedFlow(N=N), "edm": lambda N=1000: EDMSDE(N=N)}
ALL_SDES = {**NEW_SDES, "vp": lambda: VPSDE(), "subvp": lambda: subVPSDE(),
            "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0), "cosine": lambda: CosineVPSDE()}


def times(sde, n=50, lo=0.02, hi=0.98):
    return torch.linspace(lo * sde.T, hi * sde.T, n, dtype=F64)


@pytest.fixture(scope="module")
def reference():
    return reference_sample()


# ----- the processes ---------------------------------------------------------------------------------------
def test_paths_and_registry():
    rf, edm = sde_lib.get_sde("rectified_flow", N=100), sde_lib.get_sde("edm", sigma_max=10.0)
    assert isinstance(rf, RectifiedFlow) and rf.N == 100 and rf.T == 0.999 and rf.prior_std == 0.999
    assert isinstance(edm, EDMSDE) and edm.T == 10.0 and edm.prior_std == 10.0 and edm.sigma_min == 0.002
    t = torch.tensor([0.0, 0.25, 0.5, 0.999], dtype=F64)
    assert all(torch.equal(a, b) for a, b in zip(rf.marginal_coeffs(t), (1 - t, t)))
    assert all(torch.equal(a, b) for a, b in zip(edm.marginal_coeffs(t), (torch.ones_like(t), t)))
    x = torch.randn(4, 3, dtype=F64)
    mean, std = rf.marginal_prob(x, t)
    assert torch.equal(mean, (1 - t)[:, None] * x) and torch.equal(std, t)
    # f = alpha'/alpha, g^2 = 2t/(1-t) (RF); f = 0, g^2 = 2t (EDM): derived in sde_lib/paths.py
    assert torch.allclose(rf.drift_coeff(t), -1 / (1 - t)) and torch.allclose(rf.diffusion_coeff(t) ** 2, 2 * t / (1 - t))
    assert torch.equal(edm.drift_coeff(t), torch.zeros_like(t)) and torch.allclose(edm.diffusion_coeff(t) ** 2, 2 * t)
    assert rf.default_parameterization == "velocity" and edm.default_parameterization == "edm"


@pytest.mark.parametrize("name", list(ALL_SDES))
def test_marginals_solve_the_moment_odes(name):
    """``alpha' = f alpha``, ``(sigma^2)' = 2 f sigma^2 + g^2`` (Särkkä & Solin, eq. 5.51) and
    ``marginal_derivatives`` (closed forms for RF / EDM, derived from f and g for the others) equal
    central differences of ``marginal_coeffs``: truncation O(h^2) and round-off O(1e-16/h) << 1e-6."""
    sde = ALL_SDES[name]()
    t = times(sde, lo=0.05, hi=0.95)
    h = 1e-6 * sde.T
    (a_p, s_p), (a_m, s_m) = sde.marginal_coeffs(t + h), sde.marginal_coeffs(t - h)
    alpha, sigma = sde.marginal_coeffs(t)
    f, g = sde.drift_coeff(t), sde.diffusion_coeff(t)
    da, ds = sde.marginal_derivatives(t)
    for exact, fd in ((f * alpha, (a_p - a_m) / (2 * h)), (2 * f * sigma ** 2 + g ** 2, (s_p ** 2 - s_m ** 2) / (2 * h)),
                      (da, (a_p - a_m) / (2 * h)), (ds, (s_p - s_m) / (2 * h))):
        assert torch.allclose(fd, exact, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(NEW_SDES))
def test_log_snr_and_its_inverse(name):
    sde = NEW_SDES[name]()
    t = torch.linspace(1e-4 * sde.T, sde.T, 300, dtype=F64)
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(sde.inverse_log_snr(lam), t, rtol=1e-12, atol=1e-14)
    closed = 2 * torch.log((1 - t) / t) if name == "rf" else -2 * torch.log(t)
    assert torch.allclose(lam, closed, rtol=1e-12)


@pytest.mark.parametrize("name", list(NEW_SDES))
def test_discrete_chain(name):
    """Levels sit inside their index cells; the chain's marginal differs from the continuous one at the
    grid time by at most one level spacing (RF: T/N) or sigma_min (EDM); level 0 is noisy, so the ancestral
    step from it is Tweedie's denoiser with no noise; Langevin's alpha is (alpha_i / alpha_{i-1})^2."""
    sde = NEW_SDES[name](N=100)
    tau = sde.discrete_times
    i = torch.arange(sde.N, dtype=F64)
    assert bool((tau >= i * sde.T / (sde.N - 1)).all() and (tau < (i + 1) * sde.T / (sde.N - 1)).all())
    grid = i * sde.T / (sde.N - 1)
    gap = sde.T / sde.N if name == "rf" else sde.sigma_min
    assert (sde.discrete_sigmas_marginal - sde.marginal_coeffs(grid)[1]).abs().max() <= gap + 1e-12
    x, score = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    t0 = torch.zeros(4, dtype=F64)
    alpha0, sigma0 = sde.discrete_marginal(torch.zeros(4, dtype=torch.long), x)
    mean, std = sde.ancestral_step(x, t0, score)
    assert torch.allclose(mean, (x + sigma0[:, None] ** 2 * score) / alpha0[:, None]) and torch.equal(std, torch.zeros(4, dtype=F64))
    t = torch.full((4,), grid[60].item(), dtype=F64)
    a = sde.discrete_alphas_marginal
    assert torch.allclose(sde.langevin_alpha(t), (a[60] / a[59]).expand(4) ** 2, rtol=1e-12)


@pytest.mark.parametrize("name", list(NEW_SDES))
def test_forward_chain_moments(name):
    """Simulating ``discretize`` from N(mu, s^2) gives the chain's marginal: 5 standard errors."""
    sde = RectifiedFlow(N=100) if name == "rf" else EDMSDE(sigma_max=5.0, N=100)
    n, mu, s = 40000, 0.7, 0.5
    g = gen(0)
    x = mu + s * torch.randn(n, 2, generator=g, dtype=F64)
    for i in range(sde.N):
        t = torch.full((n,), i * sde.T / (sde.N - 1), dtype=F64)
        f, G = sde.discretize(x, t)
        x = x + f + G[:, None] * torch.randn(x.shape, generator=g, dtype=F64)
        if i in (10, 50, 99):
            alpha, sigma = (c.item() for c in sde.discrete_marginal(torch.tensor([i]), t))
            v = alpha ** 2 * s ** 2 + sigma ** 2
            assert abs(x.mean().item() - alpha * mu) < 5 * math.sqrt(v / (2 * n))
            assert abs(x.var().item() - v) < 5 * v * math.sqrt(2 / (2 * n))


@pytest.mark.parametrize("name", list(NEW_SDES))
def test_prior_and_importance_times(name):
    sde = NEW_SDES[name]()
    z = sde.prior_sampling((20000, 3), generator=gen(3), dtype=F64)
    assert abs(z.std().item() / sde.prior_std - 1) < 5 * math.sqrt(1 / (2 * z.numel()))
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(sde.prior_std, dtype=F64))
    assert torch.allclose(sde.prior_logp(z[:8]), normal.log_prob(z[:8]).sum(1), rtol=1e-12)
    # t ~ g^2/sigma^2 = -lambda' exactly by inverting the log-SNR: Z = lambda(eps) - lambda(T)
    eps = 1e-5
    t, total = sde.sample_importance_time(100000, eps, generator=gen(0), dtype=F64)
    assert bool(((t >= eps) & (t <= sde.T)).all())
    grid = torch.logspace(math.log10(eps), math.log10(sde.T), 400001, dtype=F64)
    grid = torch.cat([grid, sde.T - torch.logspace(-8, -3, 2001, dtype=F64).flip(0) * sde.T]).sort().values
    dens = sde.importance_density(grid)
    assert total == pytest.approx(torch.trapezoid(dens, grid).item(), rel=1e-4)
    mean_t = torch.trapezoid(dens * grid, grid).item() / total
    assert abs(t.mean().item() - mean_t) < 5 * t.std().item() / math.sqrt(len(t))


def test_labels_and_bad_arguments():
    rf, edm = RectifiedFlow(), EDMSDE()
    t = torch.tensor([0.0, 0.5, 0.999])
    assert torch.allclose(rf.noise_label(t), 999 * t / 0.999)
    assert torch.equal(edm.noise_label(t), t)
    assert torch.equal(rf.noise_label(t, continuous=False), torch.tensor([0.0, 500.0, 999.0]))
    for factory, arg in [(lambda: RectifiedFlow(T=1.0), "T"), (lambda: RectifiedFlow(T=0.0), "T"),
                         (lambda: RectifiedFlow(N=0), "N"), (lambda: EDMSDE(sigma_min=0.0), "sigma_min"),
                         (lambda: EDMSDE(sigma_min=5.0, sigma_max=1.0), "sigma_max")]:
        with pytest.raises(ValueError, match=arg):
            factory()
    with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
        rf.sde(torch.zeros(1, 2), torch.tensor([0.9995]))


# ----- the mixture under the new processes -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(NEW_SDES))
def test_mixture_marginal_density_score_and_velocity(name):
    """p_t is the mixture of N(alpha mu_k, alpha^2 S_k + sigma^2 I): its log-density against
    torch.distributions, the score against autograd, and the velocity (a closed form by components)
    against the continuity equation d/dt log p + div v + v . grad log p = 0, checked with a central
    difference in t (h = 1e-5 T: truncation ~1e-10) and autograd for the divergence; and against the
    probability-flow drift f x - ½ g^2 s, an independent formula."""
    sde = NEW_SDES[name]()
    x = (2 * torch.randn(32, 2, generator=gen(0), dtype=F64)).requires_grad_(True)
    t = torch.rand(32, generator=gen(1), dtype=F64) * 0.9 * sde.T + 0.05 * sde.T
    logp = MIX.log_prob_t(sde, x, t)
    means, covs = MIX.marginal_params(sde, t)
    comps = torch.distributions.MultivariateNormal(means, covs).log_prob(x.detach()[:, None, :])
    assert torch.allclose(logp.detach(), torch.logsumexp(comps + MIX.weights.log(), 1), atol=1e-12)
    grad, = torch.autograd.grad(logp.sum(), x)
    xd = x.detach()
    assert torch.allclose(MIX.score_t(sde, xd, t), grad, atol=1e-10)
    h = 1e-5 * sde.T
    dlogp_dt = (MIX.log_prob_t(sde, xd, t + h) - MIX.log_prob_t(sde, xd, t - h)) / (2 * h)
    xg = xd.clone().requires_grad_(True)
    v = MIX.velocity_t(sde, xg, t)
    div = sum(torch.autograd.grad(v[:, d].sum(), xg, retain_graph=True)[0][:, d] for d in range(2))
    residual = dlogp_dt + div + (v * grad).sum(1)
    assert residual.abs().max().item() < 1e-6 * (1 + dlogp_dt.abs().max().item())
    drift = sde.reverse(MIX.score_fn(sde), probability_flow=True).sde(xd, t)[0]
    assert torch.allclose(v.detach(), drift, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(NEW_SDES))
def test_forward_samples_are_the_marginal_mixture(name):
    """alpha x_0 + sigma z with x_0 from the mixture matches draws of the marginal mixture (MMD test)."""
    sde = NEW_SDES[name]()
    t = torch.tensor([0.3 * sde.T if name == "rf" else 0.4], dtype=F64)
    (alpha, sigma), (means, covs) = sde.marginal_coeffs(t), MIX.marginal_params(sde, t)
    xt = alpha * MIX.sample(2000, generator=gen(0), dtype=F64) + sigma * torch.randn(2000, 2, generator=gen(1), dtype=F64)
    marginal = GaussianMixture(MIX.weights, means[0], covs[0]).sample(2000, generator=gen(2), dtype=F64)
    from gmm_utils import mmd_permutation_test
    assert mmd_permutation_test(xt, marginal, generator=gen(3)).z < 4


# ----- parameterisations: exact predictions in, exact score out ---------------------------------------------
def exact_predictions(sde, x, t):
    """Every prediction kind at (x, t) for the mixture: score and velocity from their closed forms, eps and
    x0 by their definitions (posterior means of z and of x_0 = (x - sigma z) / alpha), v by its definition."""
    c = PathCoeffs.at(sde, t, x, derivatives=True)
    score = MIX.score_t(sde, x, t)
    eps = -c.sigma * score
    x0 = (x - c.sigma * eps) / c.alpha
    v = (c.alpha * eps - c.sigma * x0) / (c.alpha ** 2 + c.sigma ** 2).sqrt()
    return {"score": score, "eps": eps, "x0": x0, "velocity": MIX.velocity_t(sde, x, t), "v": v}, c


@pytest.mark.parametrize("name", list(ALL_SDES))
def test_every_pair_of_predictions_maps_exactly(name):
    sde = ALL_SDES[name]()
    x = 2 * torch.randn(16, 2, generator=gen(0), dtype=F64)
    t = torch.rand(16, generator=gen(1), dtype=F64) * 0.9 * sde.T + 0.05 * sde.T
    exact, c = exact_predictions(sde, x, t)
    for a in PREDICTIONS:
        for b in PREDICTIONS:
            got = predictions.convert(x, exact[a], a, b, c)
            assert torch.allclose(got, exact[b], rtol=1e-9, atol=1e-9), (name, a, b)


class ExactNet(nn.Module):
    """A 'network' with score_sde's two-argument signature ``forward(x, labels)`` returning the exact
    ``kind`` prediction for the mixture at the time the test sets (the labels are checked to be the SDE's)."""

    def __init__(self, sde, kind, sigma_data=0.5, shift=0.0):
        super().__init__()
        self.sde, self.kind, self.sigma_data, self.shift, self.t = sde, kind, sigma_data, shift, None

    def forward(self, x_in, labels):
        assert torch.equal(labels, self.sde.noise_label(self.t))
        c = PathCoeffs.at(self.sde, self.t, x_in, derivatives=True)
        if self.kind == "edm":
            e = predictions.edm_coefficients(c, self.sigma_data)
            x = c.alpha * x_in / e.c_in              # the network sees c_in x / alpha
            x0 = exact_predictions(self.sde, x, self.t)[0]["x0"]
            return (x0 - e.c_skip * x / c.alpha) / e.c_out + self.shift
        return exact_predictions(self.sde, x_in, self.t)[0][self.kind] + self.shift


@pytest.mark.parametrize("name", list(ALL_SDES))
@pytest.mark.parametrize("kind", PARAMETERIZATIONS)
def test_get_score_fn_turns_every_exact_prediction_into_the_exact_score(name, kind):
    sde = ALL_SDES[name]()
    x = 2 * torch.randn(16, 2, generator=gen(0), dtype=F64)
    t = torch.rand(16, generator=gen(1), dtype=F64) * 0.9 * sde.T + 0.05 * sde.T
    net = ExactNet(sde, kind)
    net.t = t
    score = get_score_fn(sde, net, parameterization=kind)(x, t)
    assert torch.allclose(score, MIX.score_t(sde, x, t), rtol=1e-9, atol=1e-9)


def test_cond_reaches_the_network_only_when_given():
    seen = []

    class ThreeArgs(nn.Module):
        def forward(self, x, labels, cond=None):
            seen.append(cond)
            return torch.zeros_like(x)

    sde, x, t = RectifiedFlow(), torch.randn(3, 2), torch.full((3,), 0.5)
    get_score_fn(sde, ThreeArgs(), parameterization="eps")(x, t)
    get_score_fn(sde, ThreeArgs(), parameterization="edm", cond=torch.tensor([1, 2, 3]))(x, t)
    assert seen[0] is None and torch.equal(seen[1], torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="continuous=True"):
        get_score_fn(sde, ThreeArgs(), parameterization="velocity", continuous=False)
    with pytest.raises(ValueError, match="sigma_data"):
        get_score_fn(sde, ThreeArgs(), parameterization="edm", sigma_data=0.0)


# ----- losses: analytic minima for Gaussian data N(MU, S^2 I) -------------------------------------------------
MU, S, D = 0.6, 0.5, 3
GAUSS = GaussianMixture([1.0], [[MU] * D], S ** 2)


def _check_mc_mean(values, expected):
    se = values.std().item() / math.sqrt(values.shape[0])
    assert abs(values.mean().item() - expected) < 5 * se, (values.mean().item(), expected, se)


class GaussNet(ExactNet):
    """``ExactNet`` for GAUSS, evaluated at the time the losses pass (read back from the labels is not
    needed: the score function is called with t and passes it on)."""

    def __init__(self, sde, kind, shift=0.0, continuous=True):
        super().__init__(sde, kind, shift=shift)
        self.continuous = continuous

    def forward(self, x_in, labels):
        if self.continuous:
            c = PathCoeffs.at(self.sde, self.t, x_in, derivatives=self.kind == "velocity")
        else:
            c = PathCoeffs(*self.sde.discrete_marginal(self.sde.timestep_index(self.t), x_in)).broadcast(x_in)
        x = x_in
        if self.kind == "edm":
            e = predictions.edm_coefficients(c, self.sigma_data)
            x = c.alpha * x_in / e.c_in
        var = c.alpha ** 2 * S ** 2 + c.sigma ** 2
        eps = c.sigma * (x - c.alpha * MU) / var           # E[z | x]
        x0 = MU + c.alpha * S ** 2 * (x - c.alpha * MU) / var  # E[x_0 | x]
        if self.kind == "velocity":
            out = c.d_alpha * x0 + c.d_sigma * eps
        elif self.kind == "v":
            out = (c.alpha * eps - c.sigma * x0) / (c.alpha ** 2 + c.sigma ** 2).sqrt()
        else:  # edm: F with D = c_skip x^ + c_out F
            out = (x0 - e.c_skip * x / c.alpha) / e.c_out
        return out + self.shift


def _score_fn(sde, kind, shift=0.0, continuous=True):
    net = GaussNet(sde, kind, shift, continuous)
    inner = get_score_fn(sde, net, parameterization=kind, continuous=continuous)

    def score(x, t):
        net.t = t
        return inner(x, t)
    return score


def _data(n, seed):
    return GAUSS.sample(n, generator=gen(seed), dtype=F64)


@pytest.mark.parametrize("name", ["rf", "edm", "vp"])
def test_flow_loss_minimum_and_perturbation(name):
    """Exact velocity: per dimension E[(sigma' - alpha' sigma/alpha)^2 alpha^2 S^2 / (alpha^2 S^2 + sigma^2)] over
    t ~ U(eps, T) (the noise-prediction minimum, rescaled); a velocity off by delta costs delta^2 more."""
    sde, eps, n = {"rf": RectifiedFlow(), "edm": EDMSDE(sigma_max=10.0), "vp": VPSDE()}[name], 1e-3, 60000
    x0 = _data(n, 0)
    losses = flow_loss(sde, _score_fn(sde, "velocity"), x0, eps=eps, generator=gen(1))
    assert losses.shape == (n,)
    t = torch.linspace(eps, sde.T, 200001, dtype=F64)
    (alpha, sigma), (da, ds) = sde.marginal_coeffs(t), sde.marginal_derivatives(t)
    per_t = (ds - da * sigma / alpha) ** 2 * alpha ** 2 * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)
    _check_mc_mean(losses, torch.trapezoid(per_t, t).item() / (sde.T - eps))
    worse = flow_loss(sde, _score_fn(sde, "velocity", shift=0.2), x0, eps=eps, generator=gen(1))
    _check_mc_mean(worse - losses, 0.2 ** 2)


@pytest.mark.parametrize("name", ["vp", "cosine", "rf"])
def test_v_loss_minimum_and_perturbation(name):
    """DDPM-style v loss at the chain's levels: minimum per dimension
    mean_i r_i^2 S^2 / (alpha_i^2 S^2 + sigma_i^2), r^2 = alpha^2 + sigma^2; a v off by delta costs delta^2."""
    sde, n = {"vp": VPSDE(), "cosine": CosineVPSDE(), "rf": RectifiedFlow()}[name], 60000
    x0 = _data(n, 2)
    losses = v_loss(sde, _score_fn(sde, "v", continuous=False), x0, generator=gen(3))
    alpha, sigma = sde.discrete_marginal(torch.arange(sde.N), x0)
    _check_mc_mean(losses, ((alpha ** 2 + sigma ** 2) * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)).mean().item())
    worse = v_loss(sde, _score_fn(sde, "v", shift=0.2, continuous=False), x0, generator=gen(3))
    _check_mc_mean(worse - losses, 0.2 ** 2)
    # on a variance-preserving chain the target is Salimans & Ho's alpha eps - sigma x0 exactly
    index, z = torch.tensor([0, 500, 999]), torch.randn(3, D, dtype=F64)
    seen = []
    v_loss(sde, lambda x, t: seen.append(x) or torch.zeros_like(x), x0[:3], index=index, z=z)
    a, s = (c[:, None] for c in sde.discrete_marginal(index, x0))
    assert torch.allclose(seen[0], a * x0[:3] + s * z)


@pytest.mark.parametrize("name", ["edm", "rf", "vp"])
def test_edm_loss_minimum_is_one_and_the_network_output_is_unit_weighted(name):
    """With sigma_data = S the weighted posterior variance is S^2 (sigma^2 + S^2) / (S^2 (S^2 + sigma^2)) = 1 per
    dimension at every noise level. EDM's weight is 1/c_out^2, so a network output F off by delta costs
    exactly delta^2 (+ a zero-mean cross term): the preconditioned loss is unit-weighted in F."""
    sde, n = {"edm": EDMSDE(), "rf": RectifiedFlow(), "vp": VPSDE()}[name], 60000
    x0 = _data(n, 4)
    losses = edm_loss(sde, _score_fn(sde, "edm"), x0, sigma_data=S, generator=gen(5))
    _check_mc_mean(losses, 1.0)
    worse = edm_loss(sde, _score_fn(sde, "edm", shift=0.2), x0, sigma_data=S, generator=gen(5))
    _check_mc_mean(worse - losses, 0.2 ** 2)


def test_edm_times_follow_the_log_normal_sigma():
    """ln(sigma_t / alpha_t) of the drawn times is N(-1.2, 1.2^2) on any process: mean and std within 5 SE."""
    for sde in (EDMSDE(), RectifiedFlow(), VPSDE()):
        noise = get_noise_fn("edm")(sde, (40000, 2), generator=gen(0), dtype=F64)
        alpha, sigma = sde.marginal_coeffs(noise["t"])
        log_sigma = (sigma / alpha).log()
        assert abs(log_sigma.mean().item() + 1.2) < 5 * 1.2 / math.sqrt(40000)
        assert abs(log_sigma.std().item() - 1.2) < 5 * 1.2 / math.sqrt(2 * 40000)
        assert set(noise) == {"t", "z"}
    assert set(get_noise_fn("flow")(RectifiedFlow(), (4, 2))) == {"t", "z"}
    assert set(get_noise_fn("v")(RectifiedFlow(), (4, 2))) == {"index", "z"}


def test_given_noise_reproduces_the_drawn_loss():
    sde, x0 = RectifiedFlow(), _data(16, 6)
    score = _score_fn(sde, "velocity", shift=0.1)
    for name, fn in (("flow", flow_loss), ("edm", edm_loss)):
        noise = get_noise_fn(name)(sde, x0.shape, generator=gen(7), dtype=F64)
        assert torch.allclose(fn(sde, score, x0, generator=gen(7)), fn(sde, score, x0, **noise))


# ----- samplers on the new processes: the mixture is reproduced ---------------------------------------------
N_SAMPLES = 3000


def _match(x, reference, seed, label, tol=0.0):
    return assert_matches_mixture(MIX, x, reference, generator=gen(seed), label=label, tol=tol)


PC_CASES = [("rf", "reverse_diffusion", "langevin", False), ("rf", "euler_maruyama", "none", False),
            ("rf", "ancestral_sampling", "none", False), ("rf", "euler_maruyama", "none", True),
            ("edm10", "euler_maruyama", "langevin", False), ("edm10", "euler_maruyama", "none", True)]


@pytest.mark.parametrize("name,predictor,corrector,flow", PC_CASES)
def test_pc_sample(reference, name, predictor, corrector, flow):
    """N = 300. RF: the variance bias of sampling N(0, 0.08) exactly (50k draws) measured -2.5% (ancestral),
    +1.4% (reverse diffusion), +1.1% (EM) at N = 300-500: below the 8% standard error. EDM's PC grid is
    uniform in sigma, so it runs with sigma_max = 10 (5x the data radius, as the VE tests) and Euler-Maruyama
    (bias +0.8% at N = 300); its chain-based predictors take big steps in log sigma near the data (bias
    -19% ancestral, +10% reverse diffusion at N = 300; -8% / +2% at N = 1000), and at sigma_max = 80 with
    N = 500 every predictor is off by 5-9 standard errors (see EDMSDE's docstring)."""
    sde = RectifiedFlow(N=300) if name == "rf" else EDMSDE(sigma_max=10.0, N=300)
    x, nfe = pc_sample(sde, shared_time_score(MIX, sde), (N_SAMPLES, 2), predictor=predictor, corrector=corrector,
                       probability_flow=flow, generator=gen(10))
    assert nfe == sde.N * (1 + int(corrector != "none")) + 1
    _match(x, reference, 11, f"{name} {predictor}+{corrector} flow={flow}")


@pytest.fixture(scope="module")
def decodes():
    """Per new process: 3000 float64 latents and their accurate decode (dopri5, rtol = atol = 1e-7)."""
    out = {}
    for name, make in NEW_SDES.items():
        sde = make()
        z = sde.prior_sampling((N_SAMPLES, 2), generator=gen(20), dtype=F64)
        x, _ = ode_sample(sde, shared_time_score(MIX, sde), z.shape, rtol=1e-7, atol=1e-7, z=z)
        out[name] = (sde, z, x)
    return out


@pytest.mark.parametrize("name", list(NEW_SDES))
def test_ode_sample_reproduces_mixture(reference, decodes, name):
    _, _, x = decodes[name]
    _match(x, reference, 21, f"{name} ode dopri5")


# Per sampler: (run, NFE, bound on the mean distance to the accurate decode, allowance per kind). Measured
# on these 3000 latents, mean distance / largest per-mode bias of (weights, means, covs) against the decode:
# fast_sample 30 steps (2M, default grid): RF 0.025 / (0.0037, 0.0087, 0.026), EDM 0.022 / (0.003, 0.0097,
# 0.028); edm_sample 18 steps on EDMSDE from sigma 0.002 (EDM's setting, 35 NFE): 0.048 / (0.001, 0.048,
# 0.018); on RF 30 steps (its scaled noise runs from 999, not 80): 0.041 / (0.002, 0.038, 0.024).
# Bounds and allowances are ~1.5x these.
def _edm_steps(sde):
    return 18 if isinstance(sde, EDMSDE) else 30


DETERMINISTIC = {
    "fast 30": (lambda sde, z: fast_sample(sde, shared_time_score(MIX, sde), z.shape, steps=30, z=z),
                lambda sde: 31, 0.037, {"weights": 0.006, "means": 0.015, "covs": 0.042}),
    "edm heun": (lambda sde, z: edm_sample(sde, shared_time_score(MIX, sde), z.shape, z=z, steps=_edm_steps(sde),
                                           sigma_min=0.002 if isinstance(sde, EDMSDE) else None),
                 lambda sde: 2 * _edm_steps(sde) - 1, 0.072, {"weights": 0.003, "means": 0.072, "covs": 0.036}),
}


@pytest.mark.parametrize("name", list(NEW_SDES))
@pytest.mark.parametrize("sampler", list(DETERMINISTIC))
def test_deterministic_few_step_samplers(reference, decodes, name, sampler):
    """Close to the accurate decode of the same latents, and a match to the mixture after the allowance."""
    run, nfe_expected, bound, tol = DETERMINISTIC[sampler]
    sde, z, exact = decodes[name]
    x, nfe = run(sde, z)
    assert nfe == nfe_expected(sde)
    assert (x - exact).norm(dim=1).mean().item() < bound
    _match(x, reference, 22, f"{name} {sampler}", tol=tol)


# DDIM with eta = 1 per process: DDIM's default grid (uniform in sqrt(t)) suits RF; on EDM's process it is
# uniform in sqrt(sigma), too coarse near the data (per-mode mean / cov z-scores 4.9 / 6.8 at 100 steps), so
# EDM runs on the log-SNR grid, with 200 steps (at 100 the covariance z-scores are 3.0-3.4 over 3 seeds).
DDIM_SETTINGS = {"rf": (100, "time_quadratic"), "edm": (200, "logSNR")}
STOCHASTIC = {
    # 40 steps with S_churn = 10 (gamma = 0.25 at every level), 79 NFE: measured z-scores <= 3.0 (RF), 3.4 (EDM)
    "edm churn": lambda name, sde, g: edm_sample(sde, shared_time_score(MIX, sde), (N_SAMPLES, 2), steps=40,
                                                 churn=10.0, generator=g),
    # 50 steps of SDE-DPM-Solver++(2M): measured z-scores <= 2.75 (RF), 2.54 (EDM)
    "sde-dpm++ 2M": lambda name, sde, g: fast_sample(sde, shared_time_score(MIX, sde), (N_SAMPLES, 2), steps=50,
                                                     solver="sde-dpmsolver++", generator=g),
    # measured z-scores <= 2.6 (RF, 3 seeds), 2.45 (EDM, 3 seeds)
    "ddim eta=1": lambda name, sde, g: samplers.ddim_sample(sde, shared_time_score(MIX, sde), (N_SAMPLES, 2),
                                                            steps=DDIM_SETTINGS[name][0], eta=1.0, generator=g,
                                                            skip_type=DDIM_SETTINGS[name][1]),
}


@pytest.mark.parametrize("name", list(NEW_SDES))
@pytest.mark.parametrize("sampler", list(STOCHASTIC))
def test_stochastic_samplers_reproduce_mixture(reference, name, sampler):
    sde = NEW_SDES[name]()
    x, _ = STOCHASTIC[sampler](name, sde, gen(30))
    _match(x, reference, 31, f"{name} {sampler}")


def test_edm_sampler_on_vp_matches_its_flow(decodes):
    """EDM's general formulation on VP: 40 Heun steps land within 0.02 of the accurate VP decode (measured
    0.008): the same map as the probability-flow ODE, integrated in x / alpha."""
    sde = VPSDE()
    z = sde.prior_sampling((1000, 2), generator=gen(40), dtype=F64)
    exact, _ = ode_sample(sde, shared_time_score(MIX, sde), z.shape, rtol=1e-7, atol=1e-7, z=z)
    x, nfe = edm_sample(sde, shared_time_score(MIX, sde), z.shape, steps=40, z=z)
    assert nfe == 79 and (x - exact).norm(dim=1).mean().item() < 0.02


def test_edm_sample_starts_at_edms_80_on_rectified_flow(decodes):
    """Rectified flow's scaled noise reaches 999 at T; the default grid starts at 80 as EDM's does. At 18
    steps the capped start lands closer to the accurate decode of the same latents than the start at 999
    (the rho-grid there spends about a third of its levels above 80)."""
    sde, z, exact = decodes["rf"]
    score = shared_time_score(MIX, sde)
    top = sde.marginal_coeffs(torch.tensor([sde.T], dtype=F64))
    top = (top[1] / top[0]).item()
    capped, _ = edm_sample(sde, score, z.shape, steps=18, z=z)
    full, _ = edm_sample(sde, score, z.shape, steps=18, z=z, sigma_max=top)
    err_capped = (capped - exact).norm(dim=1).mean().item()
    err_full = (full - exact).norm(dim=1).mean().item()
    assert top > 900 and err_capped < 0.5 * err_full, (err_capped, err_full)   # measured 0.052 vs 0.141


# ----- EDM's Heun sampler: order 2 on the closed-form flow of Gaussian data -----------------------------------
def _gaussian_score(sde, mu, s):
    def score(x, t):
        alpha, sigma = (append_dims(c, x.ndim) for c in sde.marginal_coeffs(t))
        return -(x - alpha * mu) / (alpha ** 2 * s ** 2 + sigma ** 2)
    return score


def _heun_error(sde, steps, sigma_min):
    """In x^ = x / alpha the flow of N(mu, s^2) is x^(sigma) = mu + (x^_0 - mu) sqrt((s^2 + sigma^2)/(s^2 + sigma_max^2));
    the last (Euler) step to sigma = 0 is the exact denoiser D, so the reference is D(x^(sigma_min))."""
    mu, s, shape = 0.3, 0.5, (64, 2)
    z = sde.prior_sampling(shape, generator=gen(0), dtype=F64)
    x, nfe = edm_sample(sde, _gaussian_score(sde, mu, s), shape, steps=steps, z=z, sigma_min=sigma_min)
    assert nfe == 2 * steps - 1
    alpha_T, sigma_T = (c.item() for c in sde.marginal_coeffs(torch.tensor([sde.T], dtype=F64)))
    s_max = min(EDM_SIGMA_MAX, sigma_T / alpha_T)         # the default start, capped at EDM's 80
    x_hat0 = s_max * z / sde.prior_std
    at_min = mu + (x_hat0 - mu) * math.sqrt((s ** 2 + sigma_min ** 2) / (s ** 2 + s_max ** 2))
    exact = mu + s ** 2 / (s ** 2 + sigma_min ** 2) * (at_min - mu)
    return (x - exact).abs().mean().item()


@pytest.mark.parametrize("name", ["edm", "rf", "vp"])
def test_heun_converges_at_order_two(name):
    """Doubling the steps divides the error by 4: observed rates log2(e_n / e_2n) within 0.3 of 2."""
    sde = {"edm": EDMSDE(), "rf": RectifiedFlow(), "vp": VPSDE()}[name]
    errs = [_heun_error(sde, n, 0.002) for n in (20, 40, 80)]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(r - 2) < 0.3 for r in rates), (errs, rates)


# ----- likelihoods on the linear path --------------------------------------------------------------------
@pytest.fixture(scope="module")
def points():
    return MIX.sample(200, generator=gen(50), dtype=F64)


def test_log_likelihood_on_the_linear_path(points):
    """float64, dopri5 at 1e-7: with the exact log p_T the error against the exact log p_eps is measured
    2.6e-5 nats (bound 1e-3). With the default prior N(0, T^2 I) the result differs by exactly
    prior_logp(z) - log p_T(z) (same ODE), measured up to 1.2e-3 nats at T = 0.999 (alpha_T = 1e-3)."""
    sde = RectifiedFlow()
    counter = CountingScore(MIX.score_fn(sde))
    kwargs = dict(rtol=1e-7, atol=1e-7, dtype=F64)
    logp, z, nfe = log_likelihood(sde, counter, points, prior_logp=MIX.prior_logp_fn(sde), **kwargs)
    exact = MIX.log_prob_t(sde, points, torch.full((200,), 1e-5, dtype=F64))
    assert nfe == counter.nfe and (logp - exact).abs().max().item() < 1e-3
    logp_default, z2, _ = log_likelihood(sde, MIX.score_fn(sde), points, **kwargs)
    mismatch = sde.prior_logp(z) - MIX.prior_logp_fn(sde)(z)
    assert torch.equal(z, z2)
    torch.testing.assert_close(logp_default - logp, mismatch, rtol=0, atol=1e-10)
    assert mismatch.abs().max().item() < 3e-3


# ----- arguments, reproducibility, NFE ----------------------------------------------------------------------
def test_karras_sigmas():
    s = karras_sigmas(18, 0.002, 80.0)
    ramp = torch.linspace(0, 1, 18, dtype=F64)
    expected = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert len(s) == 19 and s[-1] == 0.0 and s[0] == 80.0 and s[17] == 0.002
    assert torch.allclose(torch.tensor(s[:-1], dtype=F64), expected, rtol=1e-12)


def test_edm_sample_reproducibility_and_nfe():
    sde = EDMSDE()
    score = MIX.score_fn(sde)
    a, nfe = edm_sample(sde, score, (32, 2), steps=5, churn=5.0, generator=gen(0))
    b, _ = edm_sample(sde, score, (32, 2), steps=5, churn=5.0, generator=gen(0))
    c, _ = edm_sample(sde, score, (32, 2), steps=5, churn=5.0, generator=gen(1))
    assert nfe == 9 and torch.equal(a, b) and not torch.allclose(a, c)
    one, nfe_one = edm_sample(sde, score, (32, 2), steps=1, generator=gen(0))
    assert nfe_one == 1 and torch.isfinite(one).all()
    # churn limited to [s_tmin, s_tmax] outside the grid is the deterministic sampler
    d, _ = edm_sample(sde, score, (32, 2), steps=5, generator=gen(0))
    e, _ = edm_sample(sde, score, (32, 2), steps=5, churn=5.0, s_tmin=100.0, s_tmax=200.0, generator=gen(0))
    assert torch.equal(d, e)


@pytest.mark.parametrize("kwargs,needle", [
    ({"steps": 0}, "steps"), ({"churn": -1.0}, "churn"), ({"rho": 0.0}, "rho"), ({"s_noise": -1.0}, "s_noise"),
    ({"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax"), ({"sigma_max": 100.0}, "sigma_max"),
    ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min"), ({"eps": 0.0}, "eps"), ({"eps": 80.0}, "eps"),
    ({"z": torch.zeros(3, 2)}, "z"),
])
def test_edm_sample_rejects_bad_arguments(kwargs, needle):
    sde = EDMSDE()
    with pytest.raises(ValueError, match=needle):
        edm_sample(sde, MIX.score_fn(sde), (4, 2), **kwargs)


def test_edm_sample_checks_the_score():
    sde = EDMSDE()
    with pytest.raises(ValueError, match="edm_sample: score_fn returned NaN"):
        edm_sample(sde, lambda x, t: torch.full_like(x, float("nan")), (4, 2), steps=3)
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        edm_sample(sde, lambda x, t: x[:, :1], (4, 2), steps=3)
    with pytest.raises(ValueError, match="sigma_min"):  # VE's smallest noise is sigma_min = 0.01
        edm_sample(VESDE(), MIX.score_fn(VESDE()), (4, 2), sigma_min=0.001)


def test_sde_dpm_solver_first_order_is_ddim_eta_one():
    sde = RectifiedFlow()
    score = MIX.score_fn(sde)
    a, nfe = fast_sample(sde, score, (64, 2), steps=12, order=1, solver="sde-dpmsolver++", generator=gen(0),
                         skip_type="time_quadratic", dtype=F64)
    b, _ = samplers.ddim_sample(sde, score, (64, 2), steps=12, eta=1.0, generator=gen(0), dtype=F64)
    assert nfe == 13 and torch.allclose(a, b, rtol=1e-10, atol=1e-10)
    c, _ = fast_sample(sde, score, (64, 2), steps=12, order=2, solver="sde-dpmsolver++", generator=gen(0))
    d, _ = fast_sample(sde, score, (64, 2), steps=12, order=2, solver="sde-dpmsolver++", generator=gen(0))
    assert torch.equal(c, d)
    with pytest.raises(ValueError, match="order must be one of"):
        fast_sample(sde, score, (4, 2), order=3, solver="sde-dpmsolver++")
    with pytest.raises(ValueError, match="solver must be one of"):
        fast_sample(sde, score, (4, 2), solver="heun")
