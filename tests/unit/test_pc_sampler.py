"""Predictor-corrector sampling with exact mixture scores: every predictor x corrector pair must
reproduce a 2-D Gaussian mixture under VP, sub-VP and VE; NFE, reproducibility, validation, registry.

Error bars (see tests/gmm_utils.py): samples are compared with a fresh 100k reference draw, per-mode
weights / means / covariance entries within Z = 4 standard errors of the difference, MMD^2 within 4
permutation standard deviations. With n = 3000 samples the smallest mode (weight 0.1) has ~300 points:
its covariance entries carry ~8% relative standard error, weights ~0.5-0.9 percentage points.

Discretisation bias with N = 500 steps, computed exactly for a Gaussian mode (variance 0.08-0.25) by
propagating its variance through the linear reverse chain: ancestral sampling with the posterior
variance shrinks the variance by 3-5.4% (VP), 2.8-3.6% (sub-VP), 1% (VE); euler_maruyama /
reverse_diffusion / ancestral with the forward variance inflate it by <= 2%; Langevin correction at
snr = 0.16 inflates it by about snr^2 = 2.6% at equilibrium. All are below one standard error, so the
Z = 4 thresholds hold with margin; ``test_discretisation_bias_shrinks_with_n`` checks the 1/N decay.
"""
import math

import pytest
import torch

from scoresde import samplers
from gmm_utils import (
    assert_matches_mixture, gen, make_test_mixture, reference_sample, shared_time_score,
)
from scoresde.samplers import PREDICTORS, Predictor, pc_sample, register_predictor
from scoresde.score import CountingScore
from scoresde.sde_lib import VESDE, VPSDE, subVPSDE

N_SAMPLES = 3000
N_STEPS = 500
MIX = make_test_mixture()


@pytest.fixture(scope="module")
def reference():
    return reference_sample()


def make_sde(name, N=N_STEPS):
    # VE with sigma_max = 10 (5x the data's radius) keeps N small; prior std 10 still covers the data.
    return {"vp": lambda: VPSDE(N=N), "subvp": lambda: subVPSDE(N=N),
            "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0, N=N)}[name]()


def sample(sde, seed=0, n=N_SAMPLES, **kwargs):
    x, nfe = pc_sample(sde, shared_time_score(MIX, sde), (n, 2), generator=gen(seed), **kwargs)
    return x, nfe


# ------------------------------------------------------------------ distributional checks

PAIRS_WITH_PREDICTOR = [(p, c) for p in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling")
                        for c in ("none", "langevin", "ald")]


@pytest.mark.parametrize("predictor,corrector", PAIRS_WITH_PREDICTOR)
def test_vp_pairs_reproduce_mixture(reference, predictor, corrector):
    sde = make_sde("vp")
    x, nfe = sample(sde, seed=1, predictor=predictor, corrector=corrector)
    assert nfe == sde.N * (int(predictor != "none") + int(corrector != "none")) + 1
    assert_matches_mixture(MIX, x, reference, generator=gen(2), label=f"VP {predictor}+{corrector}")


@pytest.mark.parametrize("sde_name,corrector", [("ve", "ald"), ("vp", "langevin")])
def test_corrector_only_reproduces_mixture(reference, sde_name, corrector):
    # Corrector-only sampling is NCSN's annealed Langevin dynamics; with one step per level it lags
    # behind p_t, so 5 steps on each of 300 levels (Song & Ermon 2019: 100 on 10). Under VP, "ald"
    # (step ∝ sigma_t^2) cannot carry the modes' moving means alpha_t mu_k at small sigma_t (measured:
    # per-mode mean z-scores 3-7 at this cost), so its corrector-only check runs on VE, its home.
    sde = make_sde(sde_name, N=300)
    x, nfe = sample(sde, seed=3, predictor="none", corrector=corrector, n_steps=5)
    assert nfe == 5 * sde.N + 1
    assert_matches_mixture(MIX, x, reference, generator=gen(4), label=f"{sde_name} none+{corrector}")


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_probability_flow_euler_reproduces_mixture(reference, sde_name):
    sde = make_sde(sde_name)
    x, nfe = sample(sde, seed=5, predictor="euler_maruyama", corrector="none", probability_flow=True)
    assert nfe == sde.N + 1
    assert_matches_mixture(MIX, x, reference, generator=gen(6), label=f"{sde_name} EM flow")


@pytest.mark.parametrize("sde_name", ["subvp", "ve"])
@pytest.mark.parametrize("predictor,corrector", [("reverse_diffusion", "langevin"),
                                                 ("ancestral_sampling", "none")])
def test_other_sdes_reproduce_mixture(reference, sde_name, predictor, corrector):
    sde = make_sde(sde_name)
    x, _ = sample(sde, seed=7, predictor=predictor, corrector=corrector)
    assert_matches_mixture(MIX, x, reference, generator=gen(8), label=f"{sde_name} {predictor}+{corrector}")


def test_ancestral_forward_variance_reproduces_mixture(reference):
    sde = make_sde("vp")
    x, _ = sample(sde, seed=9, predictor="ancestral_sampling", corrector="none",
                  predictor_kwargs={"variance": "forward"})
    assert_matches_mixture(MIX, x, reference, generator=gen(10), label="VP ancestral forward variance")


@pytest.mark.parametrize("norm", ["batch", "sample"])
def test_langevin_step_size_formula(norm):
    # Song et al. 2021, Alg. 4: eps = 2 alpha (snr ||z|| / ||s||)^2, norms per sample or batch-averaged
    sde = VPSDE(N=50)
    corr = samplers.CORRECTORS.get("langevin")(sde, MIX.score_fn(sde), 0.2, 1, norm=norm)
    x, z = torch.randn(6, 2, generator=gen(0)), torch.randn(6, 2, generator=gen(1))
    t = torch.full((6,), 0.5)
    score = MIX.score_fn(sde)(x, t)
    alpha = sde.langevin_alpha(t)
    step = corr.step_size(x, t, score, z, alpha)
    zn, sn = z.norm(dim=1), score.norm(dim=1)
    if norm == "batch":
        zn, sn = zn.mean(), sn.mean()
    torch.testing.assert_close(step, 2 * alpha * (0.2 * zn / sn) ** 2)
    torch.testing.assert_close(alpha, 1 - sde.ddpm_64.betas[sde.timestep_index(t)].float())


def test_per_sample_langevin_in_high_dimension():
    # Per-sample norms concentrate in high dimension: N(0, v I) in D = 64 comes out with the right
    # variance (pooled over 500 x 64 values: s.e. sqrt(2/32000) = 0.8%; bias <= 5% as above).
    v, sde = 0.3, VPSDE(N=200)

    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return -x / (alpha ** 2 * v + sigma ** 2)[:, None]

    x, _ = pc_sample(sde, score, (500, 64), corrector_kwargs={"norm": "sample"}, generator=gen(0))
    assert abs(float(x.pow(2).mean()) / v - 1) < 4 * math.sqrt(2 / 32000) + 0.05


def _gaussian_variance_bias(sde, var0=0.08, n=50_000, seed=0):
    """Relative error of the sample variance when sampling N(0, var0) in 1-D with its exact score."""
    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return -x / (alpha ** 2 * var0 + sigma ** 2)[:, None]
    x, _ = pc_sample(sde, score, (n, 1), predictor="ancestral_sampling", corrector="none",
                     generator=gen(seed), dtype=torch.float64)
    return float(x.var() / var0 - 1)


def test_discretisation_bias_shrinks_with_n():
    # Ancestral sampling with the posterior variance under-disperses by O(1/N): exactly (variance
    # recursion) -42% at N = 50 and -5.4% at N = 500 for var0 = 0.08. The sample variance of 50k draws
    # has relative standard error sqrt(2/n) = 0.63%, so the two are told apart with wide margin.
    bias_50 = _gaussian_variance_bias(VPSDE(N=50))
    bias_500 = _gaussian_variance_bias(VPSDE(N=500))
    se = math.sqrt(2 / 50_000)
    assert bias_50 < -0.2
    assert abs(bias_500) < abs(bias_50) / 4
    assert abs(bias_500 + 0.054) < 4 * se


# ------------------------------------------------------------------ NFE, shapes, reproducibility

@pytest.mark.parametrize("predictor,corrector,n_steps,denoise,expected", [
    ("reverse_diffusion", "langevin", 1, True, lambda N: 2 * N + 1),
    ("euler_maruyama", "ald", 2, False, lambda N: 3 * N),
    ("ancestral_sampling", "none", 3, True, lambda N: N + 1),
    ("none", "langevin", 3, True, lambda N: 3 * N + 1),
    ("reverse_diffusion", "langevin", 0, False, lambda N: N),
])
def test_nfe_is_exact(predictor, corrector, n_steps, denoise, expected):
    sde = VPSDE(N=27)
    counter = CountingScore(MIX.score_fn(sde))
    _, nfe = pc_sample(sde, counter, (8, 2), predictor=predictor, corrector=corrector, n_steps=n_steps,
                       denoise=denoise, generator=gen(0))
    assert nfe == counter.nfe == expected(27)


def test_same_generator_same_samples_different_seed_different():
    sde = VPSDE(N=30)
    a, _ = sample(sde, seed=0, n=64)
    b, _ = sample(sde, seed=0, n=64)
    c, _ = sample(sde, seed=1, n=64)
    assert torch.equal(a, b)
    assert (a - c).abs().min() > 0


def test_given_noise_and_probability_flow_is_deterministic():
    sde = VPSDE(N=30)
    z = sde.prior_sampling((32, 2), generator=gen(0))
    a, _ = pc_sample(sde, MIX.score_fn(sde), (32, 2), predictor="euler_maruyama", corrector="none",
                     probability_flow=True, z=z, generator=gen(1))
    b, _ = pc_sample(sde, MIX.score_fn(sde), (32, 2), predictor="euler_maruyama", corrector="none",
                     probability_flow=True, z=z, generator=gen(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_probability_flow_has_zero_diffusion(sde_name):
    sde = make_sde(sde_name, N=50)
    x = torch.randn(5, 2, generator=gen(0))
    t = torch.full((5,), 0.3)
    score = MIX.score_fn(sde)
    drift, diffusion = sde.reverse(score, probability_flow=True).sde(x, t)
    f, g = sde.sde(x, t)
    assert torch.equal(diffusion, torch.zeros(5))
    torch.testing.assert_close(drift, f - 0.5 * g[:, None] ** 2 * score(x, t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_shapes_and_dtype(dtype):
    # (B, C, H, W) = (B, 1, 2, 2) data from one Gaussian N(m, v I): the sampler must return its mean
    # and variance. 2000 samples x 4 pixels: pooled variance s.e. ~ v sqrt(2/8000) = 1.6% of v.
    m, v = torch.tensor([0.5, -0.5, 1.0, 0.0]).reshape(1, 1, 2, 2), 0.2
    sde = VPSDE(N=200)

    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        a, s = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
        return -(x - a * m.to(x.dtype)) / (a ** 2 * v + s ** 2)

    x, nfe = pc_sample(sde, score, (2000, 1, 2, 2), generator=gen(0), dtype=dtype)
    assert x.shape == (2000, 1, 2, 2) and x.dtype == dtype and nfe == 2 * 200 + 1
    assert (x.mean(0) - m[0]).abs().max() < 4 * math.sqrt(v / 2000)
    assert abs(float((x - m).pow(2).mean()) / v - 1) < 4 * math.sqrt(2 / 8000) + 0.03  # + <= 3% bias


# ------------------------------------------------------------------ validation and registry

@pytest.mark.parametrize("kwargs,needle", [
    ({"predictor": "heun"}, "predictor"),
    ({"corrector": "hmc"}, "corrector"),
    ({"predictor": "none", "corrector": "none"}, "both be 'none'"),
    ({"snr": 0.0}, "snr"),
    ({"snr": -0.1}, "snr"),
    ({"snr": float("nan")}, "snr"),
    ({"n_steps": -1}, "n_steps"),
    ({"n_steps": 1.5}, "n_steps"),
    ({"eps": 0.0}, "eps"),
    ({"eps": 1.0}, "eps"),
    ({"eps": 2.0}, "eps"),
    ({"predictor": "ancestral_sampling", "probability_flow": True}, "probability_flow"),
    ({"predictor_kwargs": {"variance": "big"}}, "variance"),
    ({"corrector_kwargs": {"norm": "max"}}, "norm"),
    ({"z": torch.zeros(3, 2)}, "z"),
])
def test_bad_arguments_raise(kwargs, needle):
    sde = VPSDE(N=30)
    kwargs = dict(kwargs)
    if "predictor_kwargs" in kwargs:
        kwargs["predictor"] = "ancestral_sampling"
    with pytest.raises(ValueError, match=needle):
        pc_sample(sde, MIX.score_fn(sde), (4, 2), **kwargs)


def test_bad_shape_raises():
    sde = VPSDE(N=30)
    with pytest.raises(ValueError, match="shape"):
        pc_sample(sde, MIX.score_fn(sde), (4,))


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="available: .*euler_maruyama.*reverse_diffusion"):
        PREDICTORS.get("heun")


class HalfStepEuler(Predictor):
    """A user's predictor: Euler-Maruyama split into two half steps (two score evaluations)."""

    def update(self, x, t, dt, generator=None):
        for _ in range(2):
            drift, g = self.rsde.sde(x, t)
            x_mean = x + drift * dt / 2
            x = x_mean + g[:, None] * math.sqrt(abs(dt) / 2) * torch.randn(
                x.shape, generator=generator, dtype=x.dtype)
        return x, x_mean


@pytest.fixture
def restore_registries():
    """Unregister whatever predictors / correctors the test registered, so that no test leaves names
    behind for the others (a config validator lists the registries' names)."""
    before = {registry: set(registry.names()) for registry in (samplers.PREDICTORS, samplers.CORRECTORS)}
    yield
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)


def test_register_custom_predictor_and_use_it(reference, restore_registries):
    register_predictor("half_step_euler")(HalfStepEuler)
    assert "half_step_euler" in samplers.PREDICTORS
    sde = make_sde("vp", N=250)
    x, nfe = sample(sde, seed=13, predictor="half_step_euler", corrector="none")
    assert nfe == 2 * 250 + 1
    assert_matches_mixture(MIX, x, reference, generator=gen(14), label="custom predictor")


def test_unregister(restore_registries):
    register_predictor("test_tmp")(HalfStepEuler)
    assert PREDICTORS.unregister("test_tmp") is HalfStepEuler
    assert "test_tmp" not in PREDICTORS
    with pytest.raises(ValueError, match="unknown predictor 'test_tmp'; available"):
        PREDICTORS.unregister("test_tmp")


class CountingNoop(samplers.Corrector):
    """A user's corrector: no MCMC, just counts its calls (checks registration and dispatch)."""
    calls = 0

    def update(self, x, t, generator=None):
        CountingNoop.calls += 1
        return x, x


def test_register_custom_corrector_by_name(restore_registries):
    samplers.register_corrector("test_counting_noop")(CountingNoop)
    sde = VPSDE(N=30)
    CountingNoop.calls = 0
    _, nfe = pc_sample(sde, MIX.score_fn(sde), (16, 2), corrector="test_counting_noop", generator=gen(1))
    assert CountingNoop.calls == 30 and nfe == 31
