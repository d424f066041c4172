"""The edge where the config stops: ``options_from_config(config)`` validates the config completely
(``validate.py``) and maps each field explicitly onto the argument it feeds, in one frozen option object
per concern (``scoresde/run/options.py``). Nothing downstream sees the config.
"""
from __future__ import annotations

from scoresde.cli.schema import leaf_fields, network_kwargs, sde_kwargs
from scoresde.cli.validate import label_classes, parse_cascade, parse_label, requested_bounds, validate_config
from scoresde.configs.default import get_default_config, use_ddpmpp, use_ncsnpp
from scoresde.run.options import (Accel, AutoencoderOptions, BoundOptions, DataOptions, DistillOptions, EvalOptions,
                                  LossOptions, NetworkOptions,
                                  OptimOptions, RunOptions, SamplerOptions, SDEOptions, TrainOptions,
                                  frozen_mapping)


def _data(config) -> DataOptions:
    d = config.data
    return DataOptions(dataset=d.dataset, root=d.root or None, num_train=d.num_train,
                       num_test=config.eval.num_samples, centered=d.centered,
                       uniform_dequantization=d.uniform_dequantization, random_flip=d.random_flip,
                       image_size=d.image_size, channels=d.channels, resize=d.resize,
                       labels_from_folders=d.labels_from_folders, heldout_fraction=d.heldout_fraction,
                       first_stage=d.first_stage, resolution=d.resolution, low_res=d.low_res)


def _sde(config) -> SDEOptions:
    name = config.training.sde
    return SDEOptions(name=name, kwargs=frozen_mapping(sde_kwargs(leaf_fields(config), name)))


def _network(config) -> NetworkOptions:
    m = config.model
    return NetworkOptions(name=m.name, kwargs=frozen_mapping(network_kwargs(leaf_fields(config), m.name)),
                          continuous=config.training.continuous,
                          parameterization=None if m.parameterization == "auto" else m.parameterization,
                          scale_by_sigma=m.scale_by_sigma, sigma_data=m.sigma_data,
                          pretrained=m.pretrained or None, pretrained_config=m.pretrained_config or None)


def _loss(config) -> LossOptions:
    t = config.training
    reduce = "mean" if t.reduce_mean else "sum"
    if t.loss == "dsm":
        kwargs = {"reduce": reduce, "likelihood_weighting": t.likelihood_weighting,
                  "importance_sampling": t.importance_sampling, "eps": t.eps}
        noise = {"importance_sampling": t.importance_sampling, "eps": t.eps}
    elif t.loss == "flow":                      # t ~ U(eps, T), velocity target
        kwargs, noise = {"reduce": reduce, "eps": t.eps}, {"eps": t.eps}
    elif t.loss == "edm":                       # ln sigma ~ N(p_mean, p_std^2), EDM's weight
        kwargs = {"reduce": reduce, "sigma_data": config.model.sigma_data, "p_mean": t.p_mean,
                  "p_std": t.p_std, "eps": t.eps}
        noise = {"p_mean": t.p_mean, "p_std": t.p_std, "eps": t.eps}
    elif t.loss == "classifier":                # cross-entropy at t ~ U(eps, T)
        kwargs, noise = {"eps": t.eps}, {"eps": t.eps}
    elif t.loss == "hybrid":                    # L_simple + lambda L_vlb at uniform levels
        kwargs, noise = {"reduce": reduce, "vlb_weight": t.vlb_weight}, {}
    elif t.loss == "vlb":                       # L_vlb's terms, levels uniform or importance-sampled
        kwargs, noise = {"reduce": reduce}, {}
        return LossOptions(name=t.loss, kwargs=frozen_mapping(kwargs), noise_kwargs=frozen_mapping(noise),
                           level_sampling=t.importance_sampling)
    else:                                       # ddpm / smld / v: uniform levels of the discrete chain
        kwargs, noise = {"reduce": reduce}, {}
    return LossOptions(name=t.loss, kwargs=frozen_mapping(kwargs), noise_kwargs=frozen_mapping(noise))


def _optim(config) -> OptimOptions:
    o = config.optim
    return OptimOptions(optimizer=o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay,
                        warmup=o.warmup, grad_clip=o.grad_clip)


def _sampler(config) -> SamplerOptions:
    s = config.sampling
    return SamplerOptions(method=s.method, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                          n_steps=s.n_steps, probability_flow=s.probability_flow, denoise=s.denoise, eps=s.eps,
                          steps=s.steps, order=s.order, solver=s.solver, eta=s.eta, churn=s.churn,
                          s_noise=s.s_noise, ode_method=s.ode_method, rtol=s.rtol, atol=s.atol,
                          num_samples=s.num_samples, batch_size=s.batch_size,
                          label=parse_label(s.label, label_classes(config)), guidance=s.guidance,
                          guidance_scale=s.guidance_scale, classifier_workdir=s.classifier_workdir or None,
                          threshold=s.threshold or None, mask=s.mask, inpaint_method=s.inpaint_method,
                          resample=s.resample, inpaint_data=s.inpaint_data or None, ddpm_variance=s.ddpm_variance,
                          cond_noise=s.cond_noise, cascade=parse_cascade(s.cascade),
                          low_res_from=s.low_res_from or None)


def _bounds(config) -> BoundOptions:
    e = config.eval
    return BoundOptions(names=requested_bounds(config), items=e.bound_items, rows=e.bound_rows,
                        elbo_samples=e.elbo_samples, vlb_levels=e.vlb_levels, iw_k=tuple(e.iw_k),
                        iw_repeats=e.iw_repeats, variance=e.chain_variance, decoder=e.chain_decoder,
                        chain_steps=e.chain_steps,
                        score_times="log_snr" if config.training.continuous else "grid", eps=e.likelihood_eps)


def _eval(config) -> EvalOptions:
    e = config.eval
    return EvalOptions(batch_size=e.batch_size, num_samples=e.num_samples, likelihood=e.likelihood,
                       trace=e.trace, method=e.method, rtol=e.rtol, atol=e.atol, eps=e.likelihood_eps,
                       true_nll_samples=e.true_nll_samples, bounds=_bounds(config),
                       sample_quality=e.sample_quality, quality_samples=e.quality_samples,
                       inception_weights=e.inception_weights or None, fid_samples=e.fid_samples,
                       fid_seeds=e.fid_seeds, fid_reference=e.fid_reference or None,
                       fid_reference_items=e.fid_reference_items, latent_draws=e.latent_draws,
                       latent_prior=e.latent_prior)


def _train(config) -> TrainOptions:
    t = config.training
    return TrainOptions(
        batch_size=t.batch_size, n_iters=t.n_iters, ema_rate=config.model.ema_rate, log_freq=t.log_freq,
        eval_freq=t.eval_freq, checkpoint_freq=t.checkpoint_freq, snapshot_freq=t.snapshot_freq,
        keep_last=t.keep_last, max_nonfinite_steps=t.max_nonfinite_steps,
        exit_zero_on_signal=t.exit_zero_on_signal, snapshot_sampling=t.snapshot_sampling,
        snapshot_num_samples=t.snapshot_num_samples, threads=t.threads, progress_bar=t.progress_bar,
        tensorboard=t.tensorboard, label_dropout=t.label_dropout, eval_quality_samples=t.eval_quality_samples,
        eval_quality_metric=t.eval_quality_metric, cond_noise_max=t.cond_noise_max,
        accel=Accel(bf16=t.bf16, compile=t.compile, channels_last=t.channels_last, tf32=t.tf32))


def distill_options(config) -> DistillOptions:
    """``--mode distill``'s options (the modes other than distill leave ``RunOptions.distill`` None)."""
    d = config.distill
    return DistillOptions(method=d.method, teacher_workdir=d.teacher_workdir or None,
                          init_from_teacher=d.init_from_teacher, grid_size=d.grid_size, solver=d.solver,
                          distance=d.distance, target_decay=d.target_decay, ct_s0=d.ct_s0, ct_s1=d.ct_s1,
                          sigma_data=d.sigma_data, eps=d.eps, pd_start_steps=d.pd_start_steps,
                          pd_rounds=d.pd_rounds)


def _autoencoder(config) -> AutoencoderOptions:
    a = config.autoencoder
    return AutoencoderOptions(latent_channels=a.latent_channels, downsampling=a.downsampling, channels=a.channels,
                              beta=a.beta, decoder_std=a.decoder_std, learn_decoder_std=a.learn_decoder_std)


def options_from_config(config, distill: bool = False) -> RunOptions:
    """Validate ``config`` completely (``ValueError`` naming the first bad field, its value and what is
    allowed) and return its plain options; ``distill``: with ``distill_options`` (``--mode distill``)."""
    validate_config(config)
    return RunOptions(seed=config.seed, device=config.device, data=_data(config), sde=_sde(config),
                      network=_network(config), loss=_loss(config), optim=_optim(config),
                      sampler=_sampler(config), eval=_eval(config), train=_train(config),
                      distill=distill_options(config) if distill else None,
                      autoencoder=_autoencoder(config),
                      config_json=config.to_json(indent=2, sort_keys=True))


def network_defaults(name: str) -> dict:
    """The constructor arguments of network ``name`` (data shape excluded) as ``configs/default.py``
    sets them, with the DDPM++ / NCSN++ preset applied: the one source of network defaults."""
    config = get_default_config()
    config.model.name = name
    {"ddpmpp": use_ddpmpp, "ncsnpp": use_ncsnpp}.get(name, lambda model: None)(config.model)
    return dict(_network(config).kwargs)
