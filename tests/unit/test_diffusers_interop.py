"""Checks of the diffusers adapter (``models.from_diffusers``) against diffusers' own schedulers.

A tiny randomly initialised ``UNet2DModel`` (8x8, channels (8, 16), one layer per block) on the CPU.
Exactness is checked in two parts:
- the tables: the adapter's process has the scheduler's ``betas`` and ``alphas_cumprod`` bit for bit;
- the algorithms: with diffusers' tables recomputed in float64 from those same betas (``_float64``), one
  ``DDPMScheduler.step``, a whole ``DDIMScheduler`` loop and a whole 20-level DDPM loop equal the toolkit's
  ancestral step, ``ddim_sample`` and ``pc_sample`` to float64 round-off. ``DPMSolverMultistepScheduler``
  computes in float32 whatever its input, so it is compared in float32.
"""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the diffusers extra is not installed (pip install -e '.[diffusers]')")

from scoresde import models  # noqa: E402
from scoresde import samplers  # noqa: E402
from scoresde import sde_lib  # noqa: E402
from scoresde.samplers.predictors import AncestralSamplingPredictor  # noqa: E402
from scoresde.cli.factory import network_defaults  # noqa: E402
from scoresde.models.unet import UNet  # noqa: E402

# Both sides evaluate the same float64 formulas from the same float64 tables; they differ only in the order
# of a few multiplications and additions (e.g. the posterior mean as c1 x0 + c2 x vs. Tweedie then c1, c2),
# i.e. by a few ulps (2e-16 relative) of intermediate values, which the UNet's large random outputs (up to
# ~1e3 for x0 at high noise) scale up: 1e-10 relative leaves a 1e5 margin and still catches any wrong
# coefficient, whose effect is at least 1e-5 (one DDPM level's change of alpha_bar).
RTOL64 = 1e-10
# diffusers' own code under numpy 2 (DPMSolverMultistepScheduler.set_timesteps), not the adapter's
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def tiny_unet(in_channels=3, num_class_embeds=None, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=in_channels, out_channels=in_channels,
                                 block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds)
    return (unet.double() if dtype == torch.float64 else unet).eval()


def _float64(scheduler):
    """diffusers' DDPM/DDIM tables recomputed in float64 from its float32 betas, as the toolkit's samplers use
    them (``sde.ddpm_64``): the schedulers' formulas then run in float64 (their float32 tables round
    ``1 - alpha_bar`` near t = 0 to ~1e-3 relative)."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    return scheduler


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _times(sde, timestep, batch, dtype=torch.float64):
    return models.diffusers_times(torch.full((batch,), timestep), sde).to(dtype)


def assert_close64(actual, expected):
    scale = float(expected.abs().max()) + 1.0
    assert float((actual - expected).abs().max()) <= RTOL64 * scale


# ----- the process: the scheduler's tables -----------------------------------------------------------
SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_process_has_the_schedulers_betas_bit_for_bit(schedule):
    scheduler = diffusers.DDPMScheduler(clip_sample=False, **SCHEDULES[schedule])
    sde, _ = models.from_diffusers(tiny_unet(), scheduler)
    assert isinstance(sde, sde_lib.TabulatedVPSDE) and sde.N == 1000
    assert torch.equal(sde.discrete_betas, scheduler.betas)
    assert torch.equal(sde.alphas_cumprod, scheduler.alphas_cumprod)
    # the continuous process passes through every level at t_i = i / (N - 1)
    alpha, sigma = sde.marginal_coeffs(models.diffusers_times(torch.arange(1000), sde))
    assert torch.allclose(alpha, sde.ddpm_64.sqrt_alphas_cumprod, rtol=1e-13, atol=0)  # log then exp: a few ulps of L ~ 10
    assert torch.allclose(sigma, sde.ddpm_64.sqrt_1m_alphas_cumprod, rtol=1e-13, atol=0)  # log then exp: a few ulps of L ~ 10
    # a config dict gives the same process as the scheduler object
    from_dict, _ = models.from_diffusers(tiny_unet(), dict(scheduler.config))
    assert torch.equal(from_dict.discrete_betas, scheduler.betas)


# ----- the score: each prediction type ---------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_data_and_noise_predictions_are_the_schedulers(prediction_type):
    unet = tiny_unet(dtype=torch.float64)
    scheduler = _float64(diffusers.DDPMScheduler(clip_sample=False, prediction_type=prediction_type))
    sde, score_fn = models.from_diffusers(unet, scheduler)
    _, score_continuous = models.from_diffusers(unet, scheduler, continuous=True)
    x = torch.randn(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    for timestep in (999, 500, 3):
        t = _times(sde, timestep, 2)
        with torch.no_grad():
            out = unet(x, timestep).sample
            x0_ref = scheduler.step(out, timestep, x).pred_original_sample
            score, score_c = score_fn(x, t), score_continuous(x, t)
        abar = scheduler.alphas_cumprod[timestep]
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        # diffusers' noise prediction for each type (DDIMScheduler.step's pred_epsilon)
        eps_ref = {"epsilon": out, "v_prediction": alpha * out + sigma * x,
                   "sample": (x - alpha * out) / sigma}[prediction_type]
        assert_close64((x + sigma ** 2 * score) / alpha, x0_ref)
        assert_close64(-sigma * score, eps_ref)
        assert_close64(score_c, score)  # fractional labels and interpolated coefficients agree on the levels


def test_class_conditional_unet_takes_cond():
    unet = tiny_unet(num_class_embeds=3)
    sde, score_fn = models.from_diffusers(unet, diffusers.DDPMScheduler(clip_sample=False))
    x, labels = torch.randn(2, 3, 8, 8, generator=_gen(0)), torch.tensor([0, 2])
    with torch.no_grad():
        eps = unet(x, 700, class_labels=labels).sample
        score = score_fn(x, _times(sde, 700, 2, torch.float32), cond=labels)
    assert torch.allclose(score, -eps / sde.discrete_sigmas_marginal[700].float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class-conditional"):
        score_fn(x, _times(sde, 700, 2, torch.float32))


# ----- samplers against diffusers' loops ---------------------------------------------------------------------
@pytest.mark.parametrize("variance_type,variance", [("fixed_small", "posterior"), ("fixed_large", "forward")])
def test_ddpm_step_is_the_ancestral_step(variance_type, variance):
    unet = tiny_unet(dtype=torch.float64)
    scheduler = _float64(diffusers.DDPMScheduler(clip_sample=False, variance_type=variance_type))
    sde, score_fn = models.from_diffusers(unet, scheduler)
    predictor = AncestralSamplingPredictor(sde, score_fn, variance=variance)
    x = torch.randn(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    for timestep in (999, 400, 1):
        with torch.no_grad():  # the same noise: both draw one randn of x's shape from the generator
            expected = scheduler.step(unet(x, timestep).sample, timestep, x, generator=_gen(1)).prev_sample
            actual, _ = predictor.update(x, _times(sde, timestep, 2), -1.0 / 999, generator=_gen(1))
        assert_close64(actual, expected)


def test_ddpm_loop_is_pc_sample_with_ancestral_sampling():
    """The whole chain on a 20-level schedule: ``pc_sample`` steps level i to i - 1 on linspace(T, eps, N),
    as DDPMScheduler's loop does; ``denoise=False``, since DDPM's last step already returns the mean at level 0
    (Ho et al. 2020, Alg. 2: no noise at t = 1)."""
    unet = tiny_unet(dtype=torch.float64)
    scheduler = _float64(diffusers.DDPMScheduler(num_train_timesteps=20, beta_end=0.2, clip_sample=False))
    sde, score_fn = models.from_diffusers(unet, scheduler)
    z = torch.randn(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    x, generator = z, _gen(1)
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            x = scheduler.step(unet(x, timestep).sample, timestep, x, generator=generator).prev_sample
    y, nfe = samplers.pc_sample(sde, score_fn, z.shape, predictor="ancestral_sampling", corrector="none",
                                denoise=False, z=z, generator=_gen(1))
    assert nfe == 20
    assert_close64(y, x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_is_ddim_sample(eta):
    """DDIMScheduler (``set_alpha_to_one``) ends with the step from its last timestep to alpha_bar = 1, i.e.
    its data prediction there: the toolkit's ``ddim_sample`` on the same times with ``denoise=True`` (one DDIM
    step fewer, then Tweedie's x0 at the last time). Same NFE (10)."""
    unet = tiny_unet(dtype=torch.float64)
    scheduler = _float64(diffusers.DDIMScheduler(clip_sample=False))
    scheduler.set_timesteps(10)  # "leading" spacing: 900, 800, ..., 0
    sde, score_fn = models.from_diffusers(unet, scheduler)
    z = torch.randn(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    x, generator = z, _gen(1)
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            x = scheduler.step(unet(x, timestep).sample, timestep, x, eta=eta, generator=generator).prev_sample
    y, nfe = samplers.ddim_sample(sde, score_fn, z.shape, eta=eta, z=z, generator=_gen(1),
                                  times=models.diffusers_times(scheduler.timesteps, sde))
    assert nfe == 10
    assert_close64(y, x)


def _dpm_solver_loop(unet, scheduler, z):
    x = z
    with torch.no_grad():
        for timestep in scheduler.timesteps:
            x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample
    return x


def test_dpm_solver_multistep_is_fast_sample_order_2():
    """DPMSolverMultistepScheduler(solver_order=2, "dpmsolver++") with its defaults (timestep_spacing
    "linspace": 999, 899, ..., 100; final_sigmas_type "zero"; lower_order_final) against ``fast_sample(order=2)``.

    Conventions, each diffusers' unless said: its last step goes to sigma = 0, which is the data prediction at
    its last timestep: the toolkit's ``denoise=True`` on the same times (steps = 10 - 1 solver steps + 1
    denoise = the same 10 evaluations). Its ``lower_order_final`` lowers only that final (denoise) step at
    order 2, where the toolkit's also lowers its last ODE step: ``lower_order_final=False`` here matches.
    It computes the update in float32 (``step`` casts the sample to float32; its sigma table is float32);
    the toolkit's coefficients are float64. v-prediction keeps x0 (and the samples) of order 1, so the
    float32 round-off over 10 steps is ~1e-6: tolerance 2e-5, while a convention mismatch (the toolkit's
    own lower_order_final) changes the result by ~0.1."""
    unet = tiny_unet()
    scheduler = diffusers.DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++",
                                                      prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    sde, score_fn = models.from_diffusers(unet, scheduler)
    z = torch.randn(2, 3, 8, 8, generator=_gen(0))
    expected = _dpm_solver_loop(unet, scheduler, z)
    times = models.diffusers_times(scheduler.timesteps, sde)
    actual, nfe = samplers.fast_sample(sde, score_fn, z.shape, order=2, z=z, times=times, lower_order_final=False)
    assert nfe == 10
    assert float((actual - expected).abs().max()) < 2e-5
    lowered, _ = samplers.fast_sample(sde, score_fn, z.shape, order=2, z=z, times=times, lower_order_final=True)
    assert float((lowered - expected).abs().max()) > 1e-2


# ----- likelihood ---------------------------------------------------------------------------------------
def test_log_likelihood_runs_and_matches_an_independent_score():
    """``log_likelihood`` on the adapted model (dopri5; loose tolerances: a random UNet's ODE is stiff) runs end to end;
    on a fixed Euler grid it equals the same integral with a score written from the UNet and diffusers'
    betas alone (``-eps(x, floor(999 t)) / sqrt(1 - alpha_bar)``, alpha_bar their float64 cumulative
    product), with the same Hutchinson probes: the same computation, so float32 round-off only."""
    unet = tiny_unet(in_channels=1)
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    sde, score_fn = models.from_diffusers(unet, scheduler)
    x = torch.rand(2, 1, 8, 8, generator=_gen(0)) * 2 - 1
    logp, z, nfe = samplers.log_likelihood(sde, score_fn, x, trace="gaussian", rtol=1e-2, atol=1e-2,
                                           generator=_gen(1))
    bpd = samplers.bits_per_dim(logp, dim=64, num_levels=256, centered=True)
    assert torch.isfinite(logp).all() and torch.isfinite(bpd).all() and z.shape == x.shape and nfe > 0

    alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)

    def independent_score(x, t):
        timestep = torch.floor(t.double() * 999 + 1e-4).long().clamp(0, 999)
        sigma = (1.0 - alphas_cumprod[timestep]).sqrt().to(x.dtype)
        return -unet(x, timestep).sample / sigma[:, None, None, None]

    euler = dict(trace="gaussian", method="euler", steps=30)
    ours, _, _ = samplers.log_likelihood(sde, score_fn, x, generator=_gen(1), **euler)
    theirs, _, _ = samplers.log_likelihood(sde, independent_score, x, generator=_gen(1), **euler)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=0)


# ----- export, errors, loading, toolkit networks ------------------------------------------------------------
@pytest.mark.parametrize("make_sde", [
    lambda: sde_lib.VPSDE(),
    lambda: sde_lib.VPSDE(beta_min=0.05, beta_max=10.0, N=200),
    lambda: sde_lib.CosineVPSDE(N=100),
    lambda: sde_lib.TabulatedVPSDE(diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas),
], ids=["vp", "vp_n200", "cosine", "tabulated_cos"])
def test_export_round_trip_reproduces_the_betas(make_sde, tmp_path):
    sde = make_sde()
    config = models.to_diffusers_scheduler_config(sde, parameterization="v", save_dir=tmp_path)
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler, diffusers.DPMSolverMultistepScheduler):
        scheduler = cls.from_config(config)
        assert torch.equal(scheduler.betas, sde.discrete_betas), cls.__name__
        assert scheduler.config.prediction_type == "v_prediction"
    saved = diffusers.DDPMScheduler.from_pretrained(tmp_path, local_files_only=True)
    assert torch.equal(saved.betas, sde.discrete_betas)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["num_train_timesteps"] == sde.N
    # and back: the adapter's process has the same chain
    back, _ = models.from_diffusers(tiny_unet(), saved)
    assert torch.equal(back.alphas_cumprod, sde.alphas_cumprod)


@pytest.mark.parametrize("sde", [sde_lib.subVPSDE(), sde_lib.VESDE()], ids=["subvp", "ve"])
def test_export_of_a_non_vp_process_is_an_error(sde):
    with pytest.raises(ValueError, match=type(sde).__name__):
        models.to_diffusers_scheduler_config(sde)


@pytest.mark.parametrize("scheduler,match", [
    ({"_class_name": "ScoreSdeVeScheduler"}, "ScoreSdeVeScheduler"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "FlowMatchEulerDiscreteScheduler"),
    ({"beta_schedule": "sigmoid"}, "sigmoid"),
    ({"prediction_type": "flow_prediction"}, "flow_prediction"),
    ({"thresholding": True}, "thresholding"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"variance_type": "learned"}, "'learned' is not supported"),
    ({"clip_sample": True}, "clip_sample"),
    (diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), "flow"),
])
def test_unsupported_scheduler_is_a_value_error_naming_it(scheduler, match):
    with pytest.raises(ValueError, match=match) as info:
        models.from_diffusers(tiny_unet(), scheduler)
    assert "\n" not in str(info.value)


def test_unet_with_learned_variance_channels_is_an_error():
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match="out_channels"):
        models.from_diffusers(unet, diffusers.DDPMScheduler(clip_sample=False))


def test_clip_sample_true_clamps_x0_as_ddpm_step_does():
    unet = tiny_unet(dtype=torch.float64)
    scheduler = _float64(diffusers.DDPMScheduler(clip_sample=True))
    sde, score_fn = models.from_diffusers(unet, scheduler, clip_sample=True)
    x = torch.randn(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    with torch.no_grad():
        expected = scheduler.step(unet(x, 600).sample, 600, x, generator=_gen(1)).prev_sample
        actual, _ = AncestralSamplingPredictor(sde, score_fn).update(x, _times(sde, 600, 2), -1.0 / 999, _gen(1))
    assert_close64(actual, expected)


def test_load_diffusers_dir_pipeline_and_bare_unet(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    unet, scheduler = tiny_unet(), diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    x, t = torch.randn(2, 3, 8, 8, generator=_gen(0)), torch.full((2,), 0.5)
    _, reference = models.from_diffusers(unet, scheduler)
    sde, score_fn, loaded_unet, loaded_scheduler = models.load_diffusers_dir(tmp_path / "pipe", device="cpu")
    assert isinstance(loaded_scheduler, diffusers.DDIMScheduler) and not loaded_unet.training
    with torch.no_grad():
        assert torch.equal(score_fn(x, t), reference(x, t))
    # a bare UNet directory with its scheduler elsewhere
    sde2, score_fn2, _, _ = models.load_diffusers_dir(tmp_path / "pipe" / "unet",
                                                      scheduler_path=tmp_path / "pipe" / "scheduler")
    with torch.no_grad():
        assert torch.equal(score_fn2(x, t), reference(x, t))
    with pytest.raises(ValueError, match="no such directory"):
        models.load_diffusers_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="scheduler_config.json"):
        models.load_diffusers_dir(tmp_path / "empty")
    (tmp_path / "pipe" / "unet" / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        models.load_diffusers_dir(tmp_path / "pipe")


def test_toolkit_ddpmpp_network_runs_on_a_diffusers_schedule():
    """A toolkit DDPM++ (``forward(x, labels)`` as score_sde's) trained on a diffusers schedule: the process
    from the scheduler, the score from ``get_score_fn`` on the discrete chain; samplers run, and the schedule
    exports back to the same betas."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    sde, _ = models.from_diffusers(tiny_unet(), scheduler)
    torch.manual_seed(0)
    net = UNet(**{**network_defaults("ddpmpp"), "in_channels": 1, "image_size": 8, "nf": 16, "ch_mult": (1, 2),
                  "num_res_blocks": 1, "attn_resolutions": (4,)}).eval()

    class ScoreSdeSignature(torch.nn.Module):  # exactly score_sde's forward(x, labels)
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, labels):
            return self.net(x, labels)

    score_fn = models.get_score_fn(sde, ScoreSdeSignature(), continuous=False)
    x, nfe = samplers.fast_sample(sde, score_fn, (2, 1, 8, 8), steps=4, generator=_gen(0))
    assert torch.isfinite(x).all() and nfe == 5
    x, nfe = samplers.pc_sample(sde, score_fn, (2, 1, 8, 8), predictor="ancestral_sampling", corrector="none",
                                generator=_gen(0))
    assert torch.isfinite(x).all() and nfe == 51
    exported = diffusers.DDPMScheduler.from_config(models.to_diffusers_scheduler_config(sde))
    assert torch.equal(exported.betas, scheduler.betas)


# ----- variance_type="learned_range" (Improved DDPM, Nichol & Dhariwal 2021) ------------------------------
def learned_unet(in_channels=3, seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=in_channels, out_channels=2 * in_channels,
                                 block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).double().eval()


def test_learned_range_unet_saved_loaded_and_stepped_as_ddpm_scheduler(tmp_path):
    """A saved 6-channel UNet with a ``learned_range`` scheduler: the score is the eps half, the variance
    diffusers' ``exp(_get_variance)`` (levels >= 1; at level 0 diffusers clamps beta_tilde_0 = 0 to 1e-20
    where Nichol & Dhariwal, and the adapter, use beta_tilde_1), and one ``DDPMScheduler.step`` is the
    ancestral step with it (same noise: one randn of x's shape each)."""
    learned_unet().save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False).save_pretrained(tmp_path / "scheduler")
    sde, score_fn, unet, scheduler = models.load_diffusers_dir(tmp_path)
    unet, scheduler = unet.double(), _float64(scheduler)
    x = torch.randn(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64)
    for timestep in (999, 400, 1):
        t = _times(sde, timestep, 2)
        with torch.no_grad():
            out = unet(x, timestep).sample
            score, var = score_fn(x, t), score_fn.variance_fn(x, t)
            expected = scheduler.step(out, timestep, x, generator=_gen(1)).prev_sample
        sigma = sde.discrete_sigmas_marginal[timestep]
        assert_close64(score, -out[:, :3] / sigma)
        assert_close64(var, torch.exp(scheduler._get_variance(timestep, predicted_variance=out[:, 3:])))
        mean, std = sde.ancestral_step(x, t, score, variance=var)
        assert_close64(mean + std * torch.randn(x.shape, generator=_gen(1), dtype=torch.float64), expected)


def test_learned_range_variance_is_used_in_the_bound_and_the_sampler():
    """``ddpm_vlb`` and ``ddpm_sample`` pick up the learned variance the score function carries: the same
    numbers as with it passed explicitly, others than with either fixed variance."""
    scheduler = _float64(diffusers.DDPMScheduler(num_train_timesteps=20, beta_end=0.2, clip_sample=False,
                                                 variance_type="learned_range"))
    sde, score_fn = models.from_diffusers(learned_unet(), scheduler)
    x = torch.rand(2, 3, 8, 8, generator=_gen(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        auto = samplers.ddpm_vlb(sde, score_fn, x, generator=_gen(1))[0]
        explicit = samplers.ddpm_vlb(sde, score_fn, x, generator=_gen(1), variance_fn=score_fn.variance_fn)[0]
        fixed = samplers.ddpm_vlb(sde, lambda x, t: score_fn(x, t), x, generator=_gen(1))[0]
        assert torch.equal(auto, explicit) and not torch.allclose(auto, fixed)
        y = samplers.ddpm_sample(sde, score_fn, (2, 3, 8, 8), steps=5, generator=_gen(2), dtype=torch.float64)[0]
        z = samplers.ddpm_sample(sde, score_fn, (2, 3, 8, 8), steps=5, generator=_gen(2), dtype=torch.float64,
                                 variance_fn=score_fn.variance_fn)[0]
    assert torch.equal(y, z) and bool(torch.isfinite(y).all())
