"""Controllable generation against exact answers: classifier guidance, classifier-free guidance, dynamic
thresholding and the noise-conditional classifier, on a labelled Gaussian mixture.

The mixture (``LABELLED``): six 2-D components with full covariances, three classes of two components
each; class 2's components sit between the others, so the classes overlap (Bayes accuracy 0.976 at
t = 0, 0.79 at t = 0.2). Under the VP SDE ``p_t(x | y)``, ``p_t(x)`` and ``p_t(y | x)`` are closed forms
(``sde_lib.LabelledGaussianMixture``), so:

- ``grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y)`` must hold pointwise to float64 round-off
  (the autograd gradient of the exact classifier; measured 2e-15);
- samples at scale 1 are compared with a fresh draw of ``p(x | y)`` by ``tests/gmm_utils`` (mode weights,
  per-mode means and covariances within Z = 4 standard errors of the difference, MMD^2 within 4
  permutation standard deviations), with the discretisation allowance of ``tests/unit/test_fast_sampler.py``
  for the 20-step solver. With exact components CFG and classifier guidance are the same function, so the
  two guided samplers must give the same samples from the same noise (checked to 1e-4, float32 round-off
  over up to 1000 steps);
- class purity (the fraction of samples whose Bayes class under ``p_0`` is the requested one) rises with
  the scale; common random numbers (the same latents) make the comparison between scales exact in sign.
"""
import math

import pytest
import torch

from scoresde import models
from scoresde import samplers
from scoresde import sde_lib
from gmm_utils import assert_matches_mixture, gen
from scoresde.samplers import (classifier_free_guidance, classifier_guidance, classifier_log_prob_fn, ddim_sample,
                      dynamic_threshold, dynamic_thresholding, fast_sample, log_likelihood, ode_sample, pc_sample)
from scoresde.train.losses import dsm_noise

LABELLED = sde_lib.labelled.three_class_mixture()
N_SAMPLES = 3000
Z_MAX = 4.0
SDES = {"vp": lambda: sde_lib.VPSDE(), "subvp": lambda: sde_lib.subVPSDE(),
        "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0)}


def guided_scores(sde, y: int, n: int, scale: float = 1.0):
    """CFG and classifier guidance of the exact unconditional score, for class ``y`` on ``n`` samples."""
    labels = torch.full((n,), y)
    uncond = LABELLED.shared_score_fn(sde)
    cfg = classifier_free_guidance(uncond, LABELLED.conditional_score_fn(sde, labels), scale)
    cg = classifier_guidance(uncond, LABELLED.classifier_log_prob_fn(sde, labels), scale)
    return cfg, cg


def purity(x: torch.Tensor, y: int):
    """Hard purity (Bayes class under p_0 is y) and soft purity (mean p_0(y | x))."""
    log_post = LABELLED.class_log_prob_t(None, x)
    return (log_post.argmax(1) == y).double().mean().item(), log_post[:, y].exp().mean().item()


# ----- exact identities ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
def test_guidance_of_exact_scores_is_the_conditional_score(name):
    """Bayes' rule pointwise: classifier guidance at scale 1 is the exact conditional score; at scale s it
    equals CFG at scale s (both are s_u + s grad log p_t(y|x)). Float64; bound 1e-10 x the score's size."""
    sde = SDES[name]()
    x, y = LABELLED.sample_labelled(200, generator=gen(0), dtype=torch.float64)
    x = x + 0.5 * torch.randn(x.shape, generator=gen(1), dtype=torch.float64)
    t = torch.rand(200, generator=gen(2), dtype=torch.float64) * 0.99 + 0.01
    uncond = LABELLED.score_fn(sde)
    cond = LABELLED.conditional_score_fn(sde, y)
    log_prob = LABELLED.classifier_log_prob_fn(sde, y)
    exact = LABELLED.conditional_score_t(sde, x, t, y)
    size = exact.abs().max().item()
    with torch.no_grad():                                    # as inside a sampler
        assert (classifier_guidance(uncond, log_prob, 1.0)(x, t) - exact).abs().max().item() < 1e-10 * size
        for scale in (0.5, 3.0):
            a = classifier_guidance(uncond, log_prob, scale)(x, t)
            b = classifier_free_guidance(uncond, cond, scale)(x, t)
            assert (a - b).abs().max().item() < 1e-10 * size
        assert torch.equal(classifier_free_guidance(uncond, cond, 1.0)(x, t), cond(x, t))


def test_scale_zero_and_one_evaluate_one_score():
    calls = []

    def counted(name):
        def score(x, t):
            calls.append(name)
            return torch.zeros_like(x)
        return score

    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    classifier_free_guidance(counted("u"), counted("c"), 0.0)(x, t)
    classifier_free_guidance(counted("u"), counted("c"), 1.0)(x, t)
    assert calls == ["u", "c"]
    classifier_guidance(counted("s"), lambda x, t: 1 / 0, 0.0)(x, t)   # scale 0 never calls the classifier
    classifier_free_guidance(counted("u"), counted("c"), 2.5)(x, t)
    assert calls == ["u", "c", "s", "u", "c"]


def test_classifier_guidance_under_inference_mode_and_grad_mode():
    """The gradient is taken however the sampler runs: no_grad, inference_mode, or with grad enabled."""
    sde = sde_lib.VPSDE()
    x, y = LABELLED.sample_labelled(50, generator=gen(3))
    t = torch.full((50,), 0.3)
    score = classifier_guidance(LABELLED.score_fn(sde), LABELLED.classifier_log_prob_fn(sde, y), 1.0)
    exact = LABELLED.conditional_score_t(sde, x, t, y)
    with torch.inference_mode():
        got = score(x.clone(), t.clone())
    assert (got - exact).abs().max().item() < 1e-5            # float32 x, float64 mixture algebra
    got = score(x, t)
    assert not got.requires_grad and (got - exact).abs().max().item() < 1e-5


# ----- every sampler family reproduces p(x | y) at scale 1 ----------------------------------------------
VP_PC = sde_lib.VPSDE(N=500)
VP = sde_lib.VPSDE()
SAMPLERS = {
    # discretisation bias at these settings is below one standard error: tests/unit/test_pc_sampler.py and
    # tests/unit/test_fast_sampler.py (the 20-step solver's allowance is theirs)
    "pc": (lambda score, n, seed: pc_sample(VP_PC, score, (n, 2), generator=gen(seed)), 0.0),
    "ode": (lambda score, n, seed: ode_sample(VP, score, (n, 2), generator=gen(seed)), 0.0),
    "fast": (lambda score, n, seed: fast_sample(VP, score, (n, 2), steps=20, generator=gen(seed)),
             {"weights": 0.005, "means": 0.02, "covs": 0.03}),
    "ddim": (lambda score, n, seed: ddim_sample(VP, score, (n, 2), steps=100, eta=1.0, generator=gen(seed)), 0.0),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_guided_samplers_reproduce_the_class_conditional(sampler):
    """CFG with the pure conditional weight (scale 1) matches p(x | y) for the most overlapping class;
    classifier guidance at scale 1 gives the same samples from the same noise (on 300 samples)."""
    run, tol = SAMPLERS[sampler]
    sde = VP_PC if sampler == "pc" else VP
    y = 2
    cfg, _ = guided_scores(sde, y, N_SAMPLES)
    x, _ = run(cfg, N_SAMPLES, 1)
    reference = LABELLED.class_mixture(y).sample(N_SAMPLES, generator=gen(11))
    assert_matches_mixture(LABELLED.class_mixture(y), x, reference, z_max=Z_MAX, tol=tol, generator=gen(12),
                           label=f"{sampler} cfg")
    cfg, cg = guided_scores(sde, y, 300)
    (a, nfe_a), (b, nfe_b) = run(cfg, 300, 2), run(cg, 300, 2)
    assert nfe_a == nfe_b and (a - b).abs().max().item() < 1e-4


def test_every_class_and_scale_zero_with_the_fast_solver():
    """Each class at scale 1, and scale 0 (the unconditional model) against the whole mixture."""
    tol = SAMPLERS["fast"][1]
    for y in range(LABELLED.num_classes):
        cfg, _ = guided_scores(VP, y, N_SAMPLES)
        x, _ = fast_sample(VP, cfg, (N_SAMPLES, 2), steps=20, generator=gen(20 + y))
        mixture = LABELLED.class_mixture(y)
        assert_matches_mixture(mixture, x, mixture.sample(N_SAMPLES, generator=gen(30 + y)), z_max=Z_MAX, tol=tol,
                               generator=gen(40 + y), label=f"class {y}")
    cfg, cg = guided_scores(VP, 0, N_SAMPLES, scale=0.0)
    assert cfg is cg                                  # both are the unconditional score itself
    x, _ = fast_sample(VP, cfg, (N_SAMPLES, 2), steps=20, generator=gen(5))
    assert_matches_mixture(LABELLED, x, LABELLED.sample(N_SAMPLES, generator=gen(6)), z_max=Z_MAX, tol=tol,
                           generator=gen(7), label="scale 0")


def test_class_purity_rises_with_scale():
    """Same latents, growing scale: soft purity strictly increases and hard purity never falls, for CFG
    and every class, and for classifier guidance on class 2 (with exact components the two are the same
    function, see above). At scale 0 the hard purity is that of p(x) (a 100k reference,
    within 4 standard errors sqrt(p(1-p)/n) = 0.007-0.008 at n = 4000); at scale 1 that of p(x | y)."""
    n, scales = 4000, (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    z = VP.prior_sampling((n, 2), generator=gen(8))
    data = LABELLED.sample(100_000, generator=gen(9))
    for y in range(LABELLED.num_classes):
        conditional = LABELLED.class_mixture(y).sample(100_000, generator=gen(10))
        for kind in ((0, 1) if y == 2 else (0,)):           # 0: CFG, 1: classifier guidance
            hard, soft = zip(*(purity(fast_sample(VP, guided_scores(VP, y, n, s)[kind], (n, 2), steps=20, z=z)[0], y)
                               for s in scales))
            assert all(b > a for a, b in zip(soft, soft[1:])), (y, kind, soft)
            assert all(b >= a for a, b in zip(hard, hard[1:])), (y, kind, hard)
            se = math.sqrt(hard[0] * (1 - hard[0]) / n)
            assert abs(hard[0] - purity(data, y)[0]) < 4 * se, (y, kind, hard)
            p1 = purity(conditional, y)[0]
            assert abs(hard[3] - p1) < 4 * math.sqrt(p1 * (1 - p1) / n) + 0.005, (y, kind, hard)  # 20-step bias
            assert hard[-1] > 0.999


def test_guided_log_likelihood_is_the_conditional_log_density():
    """``log_likelihood`` takes a guided score unchanged: with CFG or classifier guidance at scale 1 (the
    latter differentiated twice: the divergence of an autograd gradient) it returns log p_eps(x | y),
    computed exactly from the conditional mixture. Error bar: dopri5 at rtol = atol = 1e-7 in float64;
    measured <= 3e-5 nats, bound 1e-3 (at 1e-5 the two points of lowest density err by 2e-3)."""
    sde, y = sde_lib.VPSDE(), 1
    x = LABELLED.class_mixture(y).sample(16, generator=gen(13), dtype=torch.float64)
    labels = torch.full((16,), y)
    mixture = LABELLED.class_mixture(y)
    eps = 1e-5
    exact = mixture.log_prob_t(sde, x, torch.full((16,), eps, dtype=torch.float64))
    cfg, cg = (classifier_free_guidance(LABELLED.shared_score_fn(sde), LABELLED.conditional_score_fn(sde, labels), 1.0),
               classifier_guidance(LABELLED.shared_score_fn(sde), LABELLED.classifier_log_prob_fn(sde, labels), 1.0))
    for score in (cfg, cg):
        logp, _, _ = log_likelihood(sde, score, x, eps=eps, rtol=1e-7, atol=1e-7,
                                    prior_logp=mixture.prior_logp_fn(sde))
        assert (logp - exact).abs().max().item() < 1e-3


# ----- classifier networks and their loss -----------------------------------------------------------
def test_noise_conditional_classifier_reaches_bayes_accuracy():
    """The MLP classifier trained 300 Adam steps (batch 256) with ``classifier_loss`` on the labelled
    mixture classifies fresh x_t ~ p_t as well as the exact p_t(y | x) to within 0.02 at t = 0.01, 0.1,
    0.2, 0.4 (Bayes accuracy 0.97 / 0.93 / 0.79 / 0.54). Measured gap <= 0.004; the standard error of the
    paired difference on 8000 points is sqrt(disagreement / n) <= 0.003, so 0.02 is the measured gap plus
    5 standard errors."""
    sde = sde_lib.VPSDE()
    torch.manual_seed(0)
    net = models.get_model("classifier_mlp", dim=2, hidden=64, n_blocks=2, embedding_type="positional",
                           fourier_scale=16.0, num_classes=3)
    steps = 300
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    logits_train, g = models.get_logits_fn(sde, net, train=True), gen(0)
    for _ in range(steps):
        x, y = LABELLED.sample_labelled(256, generator=g)
        loss = models.classifier_loss(sde, logits_train, x, y, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    logits = models.get_logits_fn(sde, net)
    x, y = LABELLED.sample_labelled(8000, generator=gen(1))
    for t_value in (0.01, 0.1, 0.2, 0.4):
        t = torch.full((8000,), t_value)
        mean, std = sde.marginal_prob(x, t)
        xt = mean + std[:, None] * torch.randn(x.shape, generator=gen(2))
        with torch.no_grad():
            acc = (logits(xt, t).argmax(1) == y).double().mean().item()
        bayes = (LABELLED.class_log_prob_t(sde, xt, t[:1]).argmax(1) == y).double().mean().item()
        assert acc > bayes - 0.02, (t_value, acc, bayes)
    # the trained classifier steers: guidance toward class 2 at scale 2 gives > 90% class-2 samples
    labels = torch.full((2000,), 2)
    guided = classifier_guidance(LABELLED.shared_score_fn(sde), classifier_log_prob_fn(logits, labels), 2.0)
    x, _ = fast_sample(sde, guided, (2000, 2), steps=20, generator=gen(3))
    assert purity(x, 2)[0] > 0.9


def test_classifier_loss_is_cross_entropy_on_perturbed_data():
    sde = sde_lib.VPSDE()
    net = models.get_model("classifier_mlp", dim=2, hidden=16, n_blocks=1, embedding_type="positional",
                           fourier_scale=16.0, num_classes=3)
    logits = models.get_logits_fn(sde, net)
    x0, y = LABELLED.sample_labelled(8, generator=gen(0))
    noise = dsm_noise(sde, x0.shape, eps=1e-5, generator=gen(1))      # what the trainer draws
    loss = models.classifier_loss(sde, logits, x0, y, generator=gen(1))  # draws t then z, in that order
    mean, std = sde.marginal_prob(x0, noise["t"])
    manual = torch.nn.functional.cross_entropy(logits(mean + std[:, None] * noise["z"], noise["t"]), y,
                                               reduction="none")
    assert loss.shape == (8,) and torch.allclose(loss, manual)
    assert torch.equal(models.classifier_loss(sde, logits, x0, y, t=noise["t"], z=noise["z"]), loss)
    with pytest.raises(ValueError, match="labels must hold class labels in \\[0, 3\\)"):
        models.classifier_loss(sde, logits, x0, torch.full((8,), 3), generator=gen(1))
    with pytest.raises(ValueError, match="labels must have shape"):
        models.classifier_loss(sde, logits, x0, y[:4])
    with pytest.raises(ValueError, match="eps"):
        models.classifier_loss(sde, logits, x0, y, eps=0.0)


# ----- dynamic thresholding ---------------------------------------------------------------------------
def test_dynamic_threshold_values():
    """Imagen: s = max(quantile_p |x0|, 1), x0 <- clip(x0, -s, s) / s, per sample."""
    x0 = torch.stack([torch.linspace(-3, 3, 101), torch.linspace(-0.5, 0.9, 101)])
    out = dynamic_threshold(x0, 0.9)
    s = torch.quantile(x0[0].abs(), 0.9)
    assert torch.allclose(out[0], x0[0].clamp(-s, s) / s)
    assert torch.equal(out[1], x0[1])                      # within [-1, 1]: unchanged
    assert out.abs().max() <= 1.0
    for bad in (0.0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="thresholding"):
            dynamic_threshold(x0, bad)


def test_thresholded_solvers_keep_data_in_range():
    """Guidance at scale 16 on data in [-1, 1] (the mixture shrunk 3x: 0.2% of its coordinates fall
    outside) puts 25% of the coordinates outside [-1, 1]; with
    ``thresholding=0.995`` every data prediction, the returned one included, is in range. The score
    transform's data prediction equals the thresholded one (Tweedie inverted, float32 round-off)."""
    small = sde_lib.LabelledGaussianMixture(LABELLED.weights, LABELLED.means / 3, LABELLED.covs / 9,
                                            LABELLED.labels)
    sde, n = sde_lib.VPSDE(), 500
    labels = torch.full((n,), 0)
    guided = classifier_guidance(small.shared_score_fn(sde), small.classifier_log_prob_fn(sde, labels), 16.0)
    z = sde.prior_sampling((n, 2), generator=gen(0))
    plain, _ = fast_sample(sde, guided, (n, 2), steps=10, z=z)
    assert (plain.abs() > 1.0).double().mean() > 0.1
    for sample in (lambda **kw: fast_sample(sde, guided, (n, 2), steps=10, z=z, **kw),
                   lambda **kw: ddim_sample(sde, guided, (n, 2), steps=10, z=z, **kw)):
        x, nfe = sample(thresholding=0.995)
        assert nfe == 11 and x.abs().max() <= 1.0 + 1e-6
    x, t = plain, torch.full((n,), 0.3)
    alpha, sigma = sde.marginal_coeffs(t)
    s = dynamic_thresholding(sde, guided, 0.995)(x, t)
    x0 = (x + sigma[:, None] ** 2 * s) / alpha[:, None]
    target = dynamic_threshold((x + sigma[:, None] ** 2 * guided(x, t)) / alpha[:, None], 0.995)
    assert (x0 - target).abs().max() < 1e-5
    with pytest.raises(ValueError, match="thresholding"):
        fast_sample(sde, guided, (n, 2), thresholding=2.0)


# ----- argument checks ------------------------------------------------------------------------------
def test_bad_guidance_arguments():
    score = LABELLED.score_fn(VP)
    x, t = torch.zeros(4, 2), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="score_cond must be callable"):
        classifier_free_guidance(score, None, 1.0)
    with pytest.raises(ValueError, match="scale must be a number"):
        classifier_free_guidance(score, score, float("nan"))
    with pytest.raises(ValueError, match="log_prob_fn must be callable"):
        classifier_guidance(score, 3, 1.0)
    with pytest.raises(ValueError, match=r"log_prob_fn must return shape \(4,\)"):
        classifier_guidance(score, lambda x, t: x, 1.0)(x, t)
    with pytest.raises(ValueError, match="differentiable"):
        classifier_guidance(score, lambda x, t: x.detach().sum(1), 1.0)(x, t)
    logits = lambda x, t: torch.zeros(x.shape[0], 3, requires_grad=True)  # noqa: E731
    with pytest.raises(ValueError, match=r"labels must hold classes in \[0, 3\)"):
        classifier_log_prob_fn(logits, torch.tensor([0, 1, 2, 3]))(x, t)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        classifier_log_prob_fn(logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="len\\(labels\\)"):
        classifier_log_prob_fn(logits, torch.tensor([0, 1]))(x, t)
    assert samplers.classifier_guidance is classifier_guidance


def test_batched_cfg_equals_two_evaluations():
    """One call on the doubled batch ([x; x] with labels [y; null]) gives CFG's values; here the
    "network" is the exact mixture, whose null label is the unconditional score."""
    sde, n = sde_lib.VPSDE(), 64
    labels = torch.full((n,), 1)
    uncond, cond = LABELLED.score_fn(sde), LABELLED.conditional_score_fn(sde, labels)

    def pair(x2, t2):
        assert x2.shape == (2 * n, 2) and t2.shape == (2 * n,)
        return torch.cat([cond(x2[:n], t2[:n]), uncond(x2[n:], t2[n:])])

    x, t = LABELLED.sample(n, generator=gen(0)), torch.full((n,), 0.4)
    for scale in (0.0, 1.0, 3.0):
        batched = samplers.classifier_free_guidance_batched(pair, scale)(x, t)
        assert torch.allclose(batched, classifier_free_guidance(uncond, cond, scale)(x, t), atol=1e-6)
    with pytest.raises(ValueError, match="doubled batch"):
        samplers.classifier_free_guidance_batched(lambda x2, t2: x2[:n], 2.0)(x, t)
