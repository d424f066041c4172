"""Checks of ``scoresde.distill`` (consistency models, progressive distillation) against exact answers.

- Point-mass data ``x_0 = mu``: ``p_t = N(alpha_t mu, sigma_t^2 I)``, the probability-flow ODE is affine in
  ``sigma^`` and its exact consistency map is ``f*(x, t) = alpha_eps (mu + (sigma^_eps / sigma^_t)(x / alpha_t -
  mu))``. One DDIM or Heun step of the exact score is exact, so the CD and CT losses of ``f*`` vanish,
  and multistep sampling with ``f*`` returns exact draws of ``p_eps``.
- Gaussian mixture with its exact score as the teacher (``tests/gmm_utils``): a small MLP student
  trained for seconds must reach the sampler tests' quality. "Excess MMD^2" is the unbiased MMD^2
  (Gaussian kernel, median bandwidth) of 2000 samples against 2000 fresh data points minus its
  permutation-null mean; its error bar is the permutation standard deviation (~4e-4 here, measured), and
  fresh data from the mixture sits at 0 +- that.
"""
import copy
import math

import pytest
import torch

from gmm_utils import gen, make_test_mixture, mmd_permutation_test, reference_sample
from scoresde import sde_lib
from scoresde.distill import (ConsistencyFunction, cd_loss, consistency_grid, consistency_sample, ct_loss,
                              ct_steps, make_target, ode_step, progressive_loss, pseudo_huber, student_times)
from scoresde.distill.consistency import default_levels, lognormal_indices, scaled_noise
from scoresde.models.mlp import MLP
from scoresde.models.utils import get_score_fn
from scoresde.samplers import ddim_sample, get_time_steps
from scoresde.utils import append_dims

SDES = {
    "vp": lambda: (sde_lib.VPSDE(), 1e-3),
    "subvp": lambda: (sde_lib.subVPSDE(), 1e-3),
    "ve": lambda: (sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), 1e-3),
    "cosine": lambda: (sde_lib.CosineVPSDE(), 1e-3),
    "edm": lambda: (sde_lib.EDMSDE(), 0.002),
    "flow": lambda: (sde_lib.RectifiedFlow(), 1e-3),
}
MU = torch.tensor([0.7, -1.2], dtype=torch.float64)
# The bound on the excess MMD^2 of a few-step sampler (10x the permutation error bar).
MMD_BOUND = 4e-3


def mlp(hidden=32):
    return MLP(dim=2, hidden=hidden, n_blocks=2, embedding_type="positional", fourier_scale=16.0)


def point_score(sde):
    """Exact score of ``p_t = N(alpha_t mu, sigma_t^2 I)``."""
    def score(x, t):
        alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t.to(torch.float64)))
        return -(x - alpha * MU.to(x.dtype)) / sigma ** 2
    return score


class ExactMap:
    """``f*`` for point-mass data, with the attributes the losses and the sampler read."""

    def __init__(self, sde, eps):
        self.sde, self.eps, self.sigma_data = sde, eps, 0.5
        alpha_eps, self.sigma_min = (float(c) for c in scaled_noise(sde, torch.tensor([eps], dtype=torch.float64)))
        self.alpha_eps = alpha_eps

    def __call__(self, x, t):
        alpha, s = (append_dims(c, x.ndim) for c in scaled_noise(self.sde, t))
        return self.alpha_eps * (MU + self.sigma_min / s * (x / alpha - MU))


# ----- the consistency function ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
def test_boundary_condition_is_exact(name):
    """``f(x, eps) = x`` bit for bit on every process, for any network (here a random one), in float32 and
    float64; away from ``eps`` the network does contribute."""
    sde, eps = SDES[name]()
    f = ConsistencyFunction(mlp(), sde, eps=eps, sigma_data=0.5)
    for dtype in (torch.float32, torch.float64):
        f = f.to(dtype)
        x = torch.randn(64, 2, generator=gen(0), dtype=dtype)
        assert torch.equal(f(x, torch.full((64,), eps, dtype=dtype)), x)
        assert not torch.allclose(f(x, torch.full((64,), 2 * eps, dtype=dtype)), x)


def test_a_class_conditional_network_gets_the_given_label():
    """``cond=k``: every sample's network call carries label ``k`` (the boundary still exact); a different
    label gives a different function, so the label is not dropped."""
    sde, eps = SDES["vp"]()
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=32, n_blocks=2, embedding_type="positional", fourier_scale=16.0, num_classes=3)
    x, t = torch.randn(8, 2, generator=gen(1)), torch.full((8,), 0.5)
    f = ConsistencyFunction(net, sde, eps=eps, cond=3)
    c_x, c_f, c_in = (append_dims(c.float(), 2) for c in f.coefficients(t))
    expected = c_x * x + c_f * net(c_in * x, sde.noise_label(t), torch.full((8,), 3))
    assert torch.equal(f(x, t), expected)
    assert not torch.allclose(f(x, t), ConsistencyFunction(net, sde, eps=eps, cond=0)(x, t))
    assert torch.equal(f(x, torch.full((8,), eps)), x)


def test_coefficients_on_edm_are_song_et_al_appendix_c():
    """On EDM's process (``alpha = 1``, ``sigma^ = t``) the factors are Song et al. 2023, App. C verbatim."""
    sde = sde_lib.EDMSDE()
    f = ConsistencyFunction(mlp(), sde, eps=0.002, sigma_data=0.5)
    t = torch.tensor([0.002, 0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    c_x, c_f, c_in = f.coefficients(t)
    sd, e = 0.5, 0.002
    torch.testing.assert_close(c_x, sd ** 2 / ((t - e) ** 2 + sd ** 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_f, (t - e) * sd / (sd ** 2 + t ** 2).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_in, 1 / (t ** 2 + sd ** 2).sqrt(), rtol=1e-12, atol=0)


class LabelFree(torch.nn.Module):
    """A network that ignores its noise label, so two processes can share it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2).double()

    def forward(self, x, label):
        return torch.tanh(self.lin(x))


@pytest.mark.parametrize("name", ["vp", "subvp", "cosine", "flow"])
def test_consistency_function_acts_on_the_scaled_variable(name):
    """``f_sde(alpha_t x^, t) / alpha_eps = f_EDM(x^, sigma^_t)`` with EDM's ``eps = sigma^(eps)``: the
    parameterisation depends on the process only through ``x^ = x / alpha`` and ``sigma^`` (mutations:
    ``c_skip`` on ``x`` instead of ``x^``, ``sigma`` for ``sigma^``, a missing ``alpha_eps``)."""
    sde, eps = SDES[name]()
    net = LabelFree()
    f = ConsistencyFunction(net, sde, eps=eps, sigma_data=0.7)
    edm = sde_lib.EDMSDE(sigma_min=f.sigma_min / 2, sigma_max=200.0)
    g = ConsistencyFunction(net, edm, eps=f.sigma_min, sigma_data=0.7)
    t = torch.tensor([0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
    alpha, s = scaled_noise(sde, t)
    x_hat = torch.randn(4, 2, generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(f(alpha[:, None] * x_hat, t) / f.alpha_eps, g(x_hat, s), rtol=1e-10, atol=1e-12)


# ----- grids, steps, distances -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_grid_is_karras_in_scaled_noise(name):
    """Ends ``eps`` and ``T``; ``sigma^_i^(1/7)`` equally spaced (Karras et al. 2022, eq. 5)."""
    sde, eps = SDES[name]()
    grid = consistency_grid(sde, 18, eps=eps)
    assert grid.t[0].item() == eps and grid.t[-1].item() == sde.T
    root = grid.sigma_hat ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff().mean().expand(17), rtol=1e-8, atol=0)


@pytest.mark.parametrize("solver", ["ddim", "heun"])
@pytest.mark.parametrize("name", ["vp", "ve", "edm", "flow"])
def test_ode_step_is_exact_for_point_mass_data(name, solver):
    """For ``x_0 = mu`` the flow is ``x^ - mu ∝ sigma^``: DDIM and Heun steps are exact (to round-off)."""
    sde, eps = SDES[name]()
    f = ExactMap(sde, eps)
    t_from = torch.tensor([sde.T, 0.5 * sde.T, 0.1 * sde.T], dtype=torch.float64)
    t_to = torch.tensor([0.3 * sde.T, 0.2 * sde.T, eps], dtype=torch.float64)
    x = torch.randn(3, 2, generator=gen(2), dtype=torch.float64)
    stepped = ode_step(sde, point_score(sde), x, t_from, t_to, solver)
    torch.testing.assert_close(f(stepped, t_to), f(x, t_from), rtol=1e-9, atol=1e-9)


def test_pseudo_huber():
    """``sqrt(|a-b|^2 + c^2) - c``, ``c = 0.00054 sqrt(d)``: quadratic ``|a-b|^2 / 2c`` near 0, ``|a-b|`` far away."""
    a = torch.zeros(3, 4, dtype=torch.float64)
    b = torch.tensor([[0.0] * 4, [3.0, 4.0, 0.0, 0.0], [1e-5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    c = 0.00054 * 2
    torch.testing.assert_close(pseudo_huber(a, b), torch.tensor([0.0, math.sqrt(25 + c * c) - c,
                                                                  math.sqrt(1e-10 + c * c) - c], dtype=torch.float64))


# ----- losses ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "heun"])
@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_cd_loss_vanishes_at_the_exact_map(name, solver):
    """With the exact teacher and ``f = f_target = f*``, every per-sample CD term is 0 (round-off); with a
    teacher whose score is 10% too small the step leaves the trajectory and the terms are not."""
    sde, eps = SDES[name]()
    f, grid = ExactMap(sde, eps), consistency_grid(sde, 18, eps=eps)
    x0 = MU.expand(256, 2).clone()
    loss = cd_loss(f, f, point_score(sde), x0, grid, generator=gen(3), solver=solver)
    assert loss.shape == (256,) and loss.max().item() < 1e-16
    wrong = cd_loss(f, f, lambda x, t: 0.9 * point_score(sde)(x, t), x0, grid, generator=gen(3), solver=solver)
    assert wrong.mean().item() > 1e-8


@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_ct_loss_vanishes_at_the_exact_map(name):
    """The same noise at both levels: ``f*`` maps both to the same ``x_eps``, so every CT term is 0."""
    sde, eps = SDES[name]()
    f, grid = ExactMap(sde, eps), consistency_grid(sde, ct_steps(0, 1000), eps=eps)
    loss = ct_loss(f, MU.expand(256, 2).clone(), grid, generator=gen(4))
    assert loss.shape == (256,) and loss.max().item() < 1e-12


def test_ct_schedule_doubles_from_s0_to_s1():
    """``N(k) = min(10 * 2^floor(k / K'), 1280) + 1`` with ``K' = floor(K / 8)`` (Song & Dhariwal 2023, Sec. 3.4)."""
    K = 8000
    assert [ct_steps(k, K) for k in (0, 999, 1000, 2000, 6999, 7000, 7999)] == [11, 11, 21, 41, 641, 1281, 1281]


def test_lognormal_level_sampling():
    """Frequencies of the sampled intervals match ``erf`` masses of ``ln sigma^ ~ N(-1.1, 2^2)`` within 5
    standard errors (``sqrt(p (1 - p) / n)``)."""
    sde = sde_lib.EDMSDE()
    grid = consistency_grid(sde, 11, eps=0.002)
    n = 40000
    idx = lognormal_indices(grid, n, generator=gen(5))
    freq = torch.bincount(idx, minlength=10).double() / n
    cdf = torch.erf((grid.sigma_hat.log() + 1.1) / (math.sqrt(2) * 2.0))
    p = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (freq, p)


# ----- sampling ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("near", [False, True], ids=["default_levels", "levels_near_sigma_min"])
@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("name", ["vp", "edm"])
def test_multistep_sampling_with_the_exact_map_draws_p_eps(name, steps, near):
    """With ``f*`` every step returns ``alpha_eps (mu + sigma^_eps w)``, ``w ~ N(0, I)``: the exact ``p_eps``.
    Mean within 5 SE, std within 5% (SE of a std from 8000 values: 0.8%). The noise re-injected at level
    ``sigma^_n`` must be ``sqrt(sigma^_n^2 - sigma_min^2)``: at levels 2-8 ``sigma_min`` adding ``sigma^_n``
    instead gives a std of ``sqrt(1.25) = 1.12`` at the last level 2 ``sigma_min``."""
    sde, eps = SDES[name]()
    f = ExactMap(sde, eps)
    levels = [2.0 ** k * f.sigma_min for k in range(steps - 1, 0, -1)] if near else None
    x, nfe = consistency_sample(sde, f, (4000, 2), steps=steps, levels=levels, generator=gen(6), dtype=torch.float64)
    assert nfe == steps and x.shape == (4000, 2)
    w = (x / f.alpha_eps - MU) / f.sigma_min
    assert w.mean(0).abs().max().item() < 5 / math.sqrt(4000)
    assert (w.std() - 1).abs().item() < 0.05


def test_sampling_levels_are_checked():
    sde, eps = SDES["vp"]()
    f = ConsistencyFunction(mlp(), sde, eps=eps)
    assert len(default_levels(f, 4)) == 3 and default_levels(f, 2) == [2 * f.sigma_data]
    for levels in ([1.0], [0.5, 1.0], [1e-9, 1e-10]):
        with pytest.raises(ValueError, match="levels must be steps - 1 = 2 decreasing"):
            consistency_sample(sde, f, (4, 2), steps=3, levels=levels)


def test_target_network_is_an_ema_without_warmup():
    net = mlp()
    target = make_target(net, 0.9)
    before = copy.deepcopy(list(target.module.parameters()))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    target.update(net)
    for old, new, cur in zip(before, target.module.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * cur)


# ----- trained students against the exact teacher --------------------------------------------------------
def excess_mmd(x):
    """``(MMD^2 - null mean, null std)`` of ``x`` against 2000 fresh mixture points."""
    r = mmd_permutation_test(x, reference_sample()[:2000], generator=gen(3))
    return r.stat - r.null_mean, r.null_std


@pytest.fixture(scope="module")
def cd_student():
    """A 64-wide MLP distilled for 1200 Adam steps (batch 256, lr 2e-3) from the exact mixture score on VP,
    one DDIM step per pair on a 40-level grid, EMA target with ``mu = 0.95``; 8-15 s on a loaded 2-core CPU.
    At 600 steps the 1-NFE excess MMD^2 still varied from 0.002 to 0.05 with the seed (measured)."""
    torch.manual_seed(0)
    sde, mix = sde_lib.VPSDE(), make_test_mixture()
    f = ConsistencyFunction(mlp(64), sde, eps=1e-3, sigma_data=1.0)
    target = make_target(f, 0.95)
    grid = consistency_grid(sde, 40)
    opt = torch.optim.Adam(f.parameters(), lr=2e-3)
    g = gen(1)
    for _ in range(1200):
        loss = cd_loss(f, target.module, mix.score_fn(sde), mix.sample(256, generator=g), grid, generator=g,
                       solver="ddim").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        target.update(f)
    return sde, f


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_distillation_reaches_the_floor(cd_student, steps):
    """Excess MMD^2 below 4e-3 at 1, 2 and 4 NFE (the permutation error bar is 4e-4; measured over four
    seeds / settings: |excess| <= 3.2e-4 at every NFE, i.e. at the floor of fresh data)."""
    sde, f = cd_student
    x, nfe = consistency_sample(sde, f, (2000, 2), steps=steps, generator=gen(7))
    mmd, err = excess_mmd(x)
    assert nfe == steps and mmd < MMD_BOUND, (mmd, err)


def test_progressive_distillation_halves_the_teachers_error():
    """Exact mixture score, DDIM on the uniform log-SNR grid of 16 steps; two rounds (16 -> 8 -> 4) of 300
    Adam steps with a v-prediction MLP. The 4-step student's excess MMD^2 is at most half of the teacher's
    own 4-step DDIM on the same grid (measured: 0.0022 vs 0.071)."""
    torch.manual_seed(0)
    sde, mix = sde_lib.VPSDE(), make_test_mixture()
    exact = mix.score_fn(sde)
    times, teacher, net, g = get_time_steps(sde, 16, 1e-3, "logSNR"), exact, mlp(64), gen(1)
    while len(times) - 1 > 4:
        student = get_score_fn(sde, net, train=True, parameterization="v")
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(300):
            loss = progressive_loss(sde, student, teacher, mix.sample(256, generator=g), times, generator=g).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        times = student_times(times)
        teacher = get_score_fn(sde, copy.deepcopy(net).eval().requires_grad_(False), parameterization="v")
    x, nfe = ddim_sample(sde, teacher, (2000, 2), steps=4, times=times, denoise=False, generator=gen(7))
    base, _ = ddim_sample(sde, exact, (2000, 2), steps=4, times=times, denoise=False, generator=gen(7))
    (mmd, err), (mmd_teacher, _) = excess_mmd(x), excess_mmd(base)
    assert nfe == 4 and mmd <= mmd_teacher / 2, (mmd, mmd_teacher, err)


def test_progressive_loss_vanishes_for_the_exact_teacher_as_student():
    """For point-mass data one DDIM step of the exact score is exact, so the exact score as student meets
    the two-step target (round-off); ``student_times`` keeps every other time."""
    sde, _ = SDES["vp"]()
    times = get_time_steps(sde, 8, 1e-3, "logSNR")
    loss = progressive_loss(sde, point_score(sde), point_score(sde), MU.expand(128, 2).clone(), times, generator=gen(8))
    assert loss.shape == (128,) and loss.max().item() < 1e-12
    assert torch.equal(student_times(times), times[::2])
    with pytest.raises(ValueError, match="even number"):
        student_times(times[:4])
