"""sde_lib against closed forms: DDPM / SMLD equivalence, marginals, forward simulation, reverse
drifts, priors, the log-SNR and its inverse, and argument checking."""
import math

import pytest
import torch

from scoresde import sde_lib
from scoresde.sde_lib import VESDE, VPSDE, CosineVPSDE, GaussianMixture, subVPSDE

ALL_SDES = [VPSDE, subVPSDE, VESDE, CosineVPSDE]


def grid_time(sde, i):
    return torch.full((4,), i * sde.T / (sde.N - 1), dtype=torch.float64)


# ----- DDPM and SMLD exactly -------------------------------------------------------------------------
def test_vp_defaults_are_ddpm_tables():
    sde = VPSDE()
    betas = torch.linspace(1e-4, 0.02, 1000)
    assert sde.N == 1000 and sde.T == 1.0
    assert torch.equal(sde.discrete_betas, betas)
    assert torch.equal(sde.ddpm.alphas, 1.0 - betas)
    assert torch.equal(sde.alphas_cumprod, torch.cumprod(1.0 - betas, dim=0))
    # Ho et al. 2020, eq. (7): beta_tilde = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    abar, abar_prev = sde.ddpm_64.alphas_cumprod, sde.ddpm_64.alphas_cumprod_prev
    b = sde.ddpm_64.betas
    assert torch.allclose(sde.ddpm_64.posterior_variance, (1 - abar_prev) / (1 - abar) * b, rtol=0, atol=1e-15)
    assert sde.ddpm_64.posterior_variance[0] == 0.0


@pytest.mark.parametrize("i", [0, 1, 500, 998, 999])
def test_vp_discretize_is_the_ddpm_step(i):
    sde = VPSDE()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    f, G = sde.discretize(x, grid_time(sde, i))
    beta = sde.ddpm_64.betas[i]
    # x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z  (Ho et al. 2020, eq. 2)
    assert torch.allclose(x + f, torch.sqrt(1 - beta) * x, rtol=0, atol=1e-14)
    assert torch.allclose(G, torch.sqrt(beta).expand(4), rtol=0, atol=1e-15)
    assert G.shape == (4,)


@pytest.mark.parametrize("i", [0, 1, 500, 999])
def test_ve_discretize_is_the_smld_step(i):
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    sigmas = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), 1000, dtype=torch.float64))
    assert torch.allclose(sde.discrete_sigmas_64, sigmas, rtol=1e-15, atol=0)
    assert torch.allclose(sde.discrete_sigmas, sigmas.float())
    x = torch.randn(4, 2, dtype=torch.float64)
    f, G = sde.discretize(x, grid_time(sde, i))
    prev = sigmas[i - 1] if i > 0 else torch.tensor(0.0, dtype=torch.float64)
    assert torch.equal(f, torch.zeros_like(x))
    # SMLD: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z
    assert torch.allclose(G, torch.sqrt(sigmas[i] ** 2 - prev ** 2).expand(4), rtol=1e-12, atol=0)


def test_pc_time_grid_maps_one_to_one_onto_levels():
    for sde in (VPSDE(N=1000), VESDE(N=1000), VPSDE(N=37)):
        for dtype in (torch.float32, torch.float64):
            t = torch.linspace(sde.T, 1e-3, sde.N, dtype=dtype)
            idx = sde.timestep_index(t)
            assert torch.equal(idx, torch.arange(sde.N - 1, -1, -1)), (sde, dtype)


def test_vp_marginal_matches_ddpm_within_the_discretisation_gap():
    sde = VPSDE()
    t = torch.arange(1000, dtype=torch.float64) / 999
    alpha, sigma = sde.marginal_coeffs(t)
    # log abar_i = sum_j log(1 - beta_j) versus -int_0^{t_i} beta: the Riemann-sum offset is at most
    # max_j beta_j and log(1 - b) = -b - b^2/2 - ... adds at most ½ sum_j beta_j^2 / (1 - beta_max).
    b = sde.ddpm_64.betas
    gap = float(b.max() + 0.5 * (b ** 2).sum() / (1 - b.max()))
    log_gap = (2 * alpha.log() - sde.ddpm_64.alphas_cumprod.log()).abs()
    assert log_gap.max() <= gap
    assert log_gap.max() > 0.5 * gap  # the bound is not vacuous: the gap is real and of that size
    # the same gap in the std: |d sqrt(1 - a)| <= |d log a| a / (2 sqrt(1 - a)) plus level 0's sqrt(beta_0)
    std_gap = (sigma - sde.ddpm_64.sqrt_1m_alphas_cumprod).abs()
    assert std_gap[0] == pytest.approx(math.sqrt(1e-4), rel=1e-9)
    assert std_gap[1:].max() < 0.01


def test_ve_marginal_equals_smld_levels_exactly():
    sde = VESDE()
    t = torch.arange(1000, dtype=torch.float64) / 999
    alpha, sigma = sde.marginal_coeffs(t)
    assert torch.equal(alpha, torch.ones_like(t))
    assert torch.allclose(sigma, sde.discrete_sigmas_64, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", ALL_SDES)
def test_marginal_solves_the_moment_odes(cls):
    """For dx = f x dt + g dw: d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2 (Särkkä & Solin, eq. 5.51)."""
    sde = cls()
    t = torch.linspace(0.05, sde.T - 0.05, 50, dtype=torch.float64)
    h = 1e-6
    a_p, s_p = sde.marginal_coeffs(t + h)
    a_m, s_m = sde.marginal_coeffs(t - h)
    alpha, sigma = sde.marginal_coeffs(t)
    f, g = sde.drift_coeff(t), sde.diffusion_coeff(t)
    # central differences: truncation O(h^2 f''') and round-off O(1e-16 / h) both << 1e-6 relative
    assert torch.allclose((a_p - a_m) / (2 * h), f * alpha, rtol=1e-6, atol=1e-9)
    assert torch.allclose((s_p ** 2 - s_m ** 2) / (2 * h), 2 * f * sigma ** 2 + g ** 2, rtol=1e-6, atol=1e-8)


def test_closed_form_marginals():
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)
    log_mean = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
    mean, std = subVPSDE().marginal_prob(x, t)
    assert torch.allclose(mean, torch.exp(log_mean)[:, None] * x, rtol=1e-14)
    assert torch.allclose(std, 1 - torch.exp(2 * log_mean), rtol=1e-14)
    mean, std = VPSDE().marginal_prob(x, t)
    assert torch.allclose(std, torch.sqrt(1 - torch.exp(2 * log_mean)), rtol=1e-14)
    mean, std = VESDE(sigma_min=0.01, sigma_max=50.0).marginal_prob(x, t)
    assert torch.equal(mean, x)
    assert torch.allclose(std, 0.01 * (50.0 / 0.01) ** t, rtol=1e-13)


def test_cosine_schedule_matches_improved_ddpm():
    sde = CosineVPSDE(N=1000)
    s = 0.008
    t = torch.linspace(0, sde.T, 11, dtype=torch.float64)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha, _ = sde.marginal_coeffs(t)
    assert torch.allclose(alpha ** 2, f / f[0], rtol=1e-12)
    grid = torch.linspace(0, sde.T, 1001, dtype=torch.float64)
    fg = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    expected = torch.clamp(1 - fg[1:] / fg[:-1], max=0.999)
    assert torch.allclose(sde.ddpm_64.betas, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="T"):
        CosineVPSDE(T=1.0)


@pytest.mark.parametrize("cls", ALL_SDES)
def test_log_snr_inverse_round_trip(cls):
    sde = cls()
    t = torch.linspace(1e-4, sde.T, 200, dtype=torch.float64)
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease in t"
    assert torch.allclose(sde.inverse_log_snr(lam), t, rtol=1e-9, atol=1e-11)


# ----- forward simulation ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [VPSDE, subVPSDE, VESDE])
def test_forward_chain_moments_match_marginal_prob(cls):
    """Simulate sde.discretize from N(mu, s^2 I) and compare with the marginal's closed form."""
    sde = cls(N=100) if cls is not VESDE else cls(sigma_min=0.05, sigma_max=5.0, N=100)
    n, mu, s = 40000, 0.7, 0.5
    gen = torch.Generator().manual_seed(0)
    x = mu + s * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    checks = {10: None, 50: None, 99: None}
    for i in range(sde.N):
        t = torch.full((n,), i * sde.T / (sde.N - 1), dtype=torch.float64)
        f, G = sde.discretize(x, t)
        x = x + f + G[:, None] * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if i in checks:
            checks[i] = (x.mean().item(), x.var().item(), t[:1])
    for i, (m_emp, v_emp, t) in checks.items():
        alpha_i, sigma_i = sde.discrete_marginal(torch.tensor([i]), t)
        m_true = (alpha_i * mu).item()
        v_true = (alpha_i ** 2 * s ** 2 + sigma_i ** 2).item()
        # 2n values (2 dims, independent): SE of the mean sqrt(v / 2n), of the variance v sqrt(2 / 2n); 5 SE
        assert abs(m_emp - m_true) < 5 * math.sqrt(v_true / (2 * n)), (i, m_emp, m_true)
        assert abs(v_emp - v_true) < 5 * v_true * math.sqrt(2 / (2 * n)), (i, v_emp, v_true)
        # and the continuous marginal_prob at the grid time agrees up to the discretisation gap
        alpha_c, sigma_c = sde.marginal_coeffs(t)
        v_cont = (alpha_c ** 2 * s ** 2 + sigma_c ** 2).item()
        assert abs(v_cont - v_true) < 0.05 * v_true + 1e-3


# ----- reverse SDE, prior ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_SDES)
def test_reverse_drifts(cls):
    sde = cls()
    x = torch.randn(6, 3, 4, 4)
    t = torch.rand(6) * 0.9 + 0.05
    score = torch.randn_like(x)
    drift, diffusion = sde.sde(x, t)
    rdrift, rdiff = sde.reverse(lambda x_, t_: score).sde(x, t)
    g2 = (diffusion ** 2)[:, None, None, None]
    assert torch.allclose(rdrift, drift - g2 * score, atol=1e-5)
    assert torch.equal(rdiff, diffusion)
    pdrift, pdiff = sde.reverse(lambda x_, t_: score, probability_flow=True).sde(x, t)
    assert torch.allclose(pdrift, drift - 0.5 * g2 * score, atol=1e-5)
    assert torch.is_tensor(pdiff) and pdiff.shape == (6,) and torch.equal(pdiff, torch.zeros(6))
    # the discretised reverse: f - G^2 s and G; flow: f - ½ G^2 s and 0
    f, G = sde.discretize(x, t)
    rf, rG = sde.reverse(lambda x_, t_: score).discretize(x, t)
    assert torch.allclose(rf, f - (G ** 2)[:, None, None, None] * score, atol=1e-5)
    assert torch.equal(rG, G)


@pytest.mark.parametrize("sde,std", [(VPSDE(), 1.0), (subVPSDE(), 1.0), (VESDE(sigma_max=50.0), 50.0)])
def test_prior_logp_is_the_prior_density(sde, std):
    gen = torch.Generator().manual_seed(3)
    z = sde.prior_sampling((20000, 3, 2, 2), generator=gen)
    assert z.shape == (20000, 3, 2, 2) and z.dtype == torch.float32
    # 240k values: SE of the std estimate std / sqrt(2 n) ~ 1.4e-3 std; 5 SE
    assert abs(z.std().item() / std - 1) < 5 * 1.5e-3
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    ref = normal.log_prob(z[:8].double()).sum(dim=(1, 2, 3))
    assert torch.allclose(sde.prior_logp(z[:8].double()), ref, rtol=1e-12)
    z64 = sde.prior_sampling((3, 2), generator=gen, dtype=torch.float64)
    assert z64.dtype == torch.float64


def test_prior_sampling_is_reproducible():
    sde = VPSDE()
    a = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(1))
    b = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(1))
    c = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----- ancestral steps ------------------------------------------------------------------------------
def test_ancestral_step_is_ddpm_and_smld():
    x = torch.randn(4, 2, dtype=torch.float64)
    score = torch.randn_like(x)
    vp = VPSDE()
    i = 600
    t = grid_time(vp, i)
    beta = vp.ddpm_64.betas[i]
    mean, std = vp.ancestral_step(x, t, score, variance="forward")
    # Ho et al. 2020, eq. (11) with eps = -sqrt(1 - abar) score
    assert torch.allclose(mean, (x + beta * score) / torch.sqrt(1 - beta), atol=1e-12)
    assert torch.allclose(std, torch.sqrt(beta).expand(4), atol=1e-14)
    _, std_post = vp.ancestral_step(x, t, score, variance="posterior")
    assert torch.allclose(std_post, vp.ddpm_64.posterior_variance[i].sqrt().expand(4), rtol=1e-10)
    # the posterior mean at Tweedie's x0 is DDPM's mu_tilde(x_t, x0)
    x0 = (x + (1 - vp.ddpm_64.alphas_cumprod[i]) * score) / vp.ddpm_64.sqrt_alphas_cumprod[i]
    mu, var = vp.q_posterior(x0, x, torch.full((4,), i))
    assert torch.allclose(mu, mean, atol=1e-12) and torch.allclose(var, std_post ** 2, rtol=1e-10)
    # the step to x_0 adds no noise with either variance (Ho et al. 2020, Alg. 2: z = 0 at t = 1)
    for variance in ("forward", "posterior"):
        assert torch.equal(vp.ancestral_step(x, grid_time(vp, 0), score, variance=variance)[1], torch.zeros(4,
                           dtype=torch.float64))

    ve = VESDE()
    t = grid_time(ve, i)
    s_i, s_prev = ve.discrete_sigmas_64[i], ve.discrete_sigmas_64[i - 1]
    mean, std = ve.ancestral_step(x, t, score)
    assert torch.allclose(mean, x + (s_i ** 2 - s_prev ** 2) * score, rtol=1e-12)
    assert torch.allclose(std, torch.sqrt(s_prev ** 2 * (s_i ** 2 - s_prev ** 2) / s_i ** 2).expand(4), rtol=1e-12)


def test_langevin_alpha():
    vp, ve = VPSDE(), VESDE()
    assert torch.allclose(vp.langevin_alpha(grid_time(vp, 300)), vp.ddpm_64.alphas[300].expand(4), rtol=1e-12)
    assert torch.equal(ve.langevin_alpha(grid_time(ve, 300)), torch.ones(4, dtype=torch.float64))


# ----- importance sampling of t ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", [VPSDE, subVPSDE, VESDE])
def test_importance_time_follows_g2_over_sigma2(cls):
    sde, eps = cls(), 1e-5
    t, total = sde.sample_importance_time(100000, eps, generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64)
    assert bool(((t >= eps) & (t <= sde.T)).all())
    grid = torch.logspace(math.log10(eps), 0, 200001, dtype=torch.float64)
    dens = sde.importance_density(grid)
    assert total == pytest.approx(torch.trapezoid(dens, grid).item(), rel=1e-4)
    # E_p[t] by quadrature versus the sample mean; 5 standard errors
    mean_t = torch.trapezoid(dens * grid, grid).item() / total
    assert abs(t.mean().item() - mean_t) < 5 * t.std().item() / math.sqrt(len(t))


# ----- dtype, device, shapes, errors ----------------------------------------------------------------
@pytest.mark.parametrize("cls", ALL_SDES)
def test_dtypes_and_shapes_follow_the_input(cls):
    sde = cls()
    for dtype in (torch.float32, torch.float64):
        for shape in ((3, 2), (3, 1, 4, 4)):
            x = torch.randn(shape, dtype=dtype)
            t = torch.full((3,), 0.5, dtype=dtype)
            for out in (*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t)):
                assert out.dtype == dtype and out.device == x.device
            assert sde.marginal_prob(x, t)[0].shape == x.shape


@pytest.mark.parametrize("factory,arg", [
    (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "beta_max"),
    (lambda: VPSDE(beta_min=-1.0), "beta_min"),
    (lambda: VPSDE(N=0), "N"),
    (lambda: VPSDE(N=2.5), "N"),
    (lambda: VPSDE(beta_max=2000.0, N=1000), "beta_max"),
    (lambda: subVPSDE(beta_min=1.0, beta_max=1.0), "beta_max"),
    (lambda: VESDE(sigma_min=0.0), "sigma_min"),
    (lambda: VESDE(sigma_min=-0.1), "sigma_min"),
    (lambda: VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_max"),
    (lambda: VESDE(N=0), "N"),
    (lambda: sde_lib.get_sde("nope"), "sde"),
])
def test_bad_constructor_arguments(factory, arg):
    with pytest.raises(ValueError, match=arg):
        factory()


@pytest.mark.parametrize("cls", ALL_SDES)
def test_t_outside_range_is_rejected(cls):
    sde = cls()
    x = torch.randn(2, 2)
    for bad in (torch.tensor([-0.1, 0.5]), torch.tensor([0.5, sde.T + 0.1]), torch.tensor([0.5, float("nan")])):
        for method in (sde.sde, sde.marginal_prob, sde.discretize):
            with pytest.raises(ValueError, match=r"t must lie in \[0, T\]"):
                method(x, bad)
    with pytest.raises(ValueError, match="t must be a 1-D"):
        sde.sde(x, torch.tensor(0.5))
    with pytest.raises(ValueError, match="batch size"):
        sde.sde(x, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="variance"):
        sde.ancestral_step(x, torch.tensor([0.5, 0.5]), x, variance="beta")


def test_registry_builds_by_name():
    sde = sde_lib.get_sde("vesde", sigma_min=0.02, sigma_max=10.0, N=50)
    assert isinstance(sde, VESDE) and sde.N == 50 and sde.sigma_max == 10.0
    assert sde_lib.SDES.names() == ["cosine_vpsde", "edm", "rectified_flow", "subvpsde", "vesde", "vpsde"]


def test_gaussian_mixture_density_and_score():
    mix = GaussianMixture([0.3, 0.7], [[1.0, 0.0], [-1.0, 0.5]], [[[0.2, 0.05], [0.05, 0.1]], [[0.1, 0.0], [0.0, 0.3]]])
    sde = VPSDE()
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    t = torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    logp = mix.log_prob_t(sde, x, t)
    grad, = torch.autograd.grad(logp.sum(), x)
    assert torch.allclose(mix.score_t(sde, x.detach(), t), grad, atol=1e-10)
    # p_t is the mixture of N(alpha mu_k, alpha^2 S_k + sigma^2 I): compare with torch.distributions
    alpha, sigma = sde.marginal_coeffs(t)
    k0 = torch.distributions.MultivariateNormal(alpha[:, None] * mix.means[0],
                                                alpha[:, None, None] ** 2 * mix.covs[0] + sigma[:, None, None] ** 2 * torch.eye(2))
    k1 = torch.distributions.MultivariateNormal(alpha[:, None] * mix.means[1],
                                                alpha[:, None, None] ** 2 * mix.covs[1] + sigma[:, None, None] ** 2 * torch.eye(2))
    ref = torch.logaddexp(math.log(0.3) + k0.log_prob(x.detach()), math.log(0.7) + k1.log_prob(x.detach()))
    assert torch.allclose(logp.detach(), ref, atol=1e-12)
