"""Every config field any mode reads, with its default and a one-line comment (the comment at the end of
the line that sets a field is its ``--config_help`` text). Experiment files start from
``get_default_config()`` and change what they need; ``scoresde/cli/validate.py`` checks that a config has
exactly these fields and validates every value before any work starts, and ``scoresde/cli/factory.py``
maps each field explicitly onto the argument it feeds (the frozen option objects in
``scoresde/run/options.py``).

Names follow score_sde (``training.sde``, ``model.ema_rate``, ``sampling.snr``, ...) where one exists.
The network defaults here are DDPM++'s (Song et al. 2021, App. H) and the MLP's; they live nowhere else.
"""
import ml_collections


def _training() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.batch_size = 128             # GLOBAL batch; each of W ranks takes batch_size / W
    t.n_iters = 1_300_001          # optimizer updates in total (a resumed run continues to this step)
    t.sde = "vpsde"                # the process: vpsde | subvpsde | vesde | cosine_vpsde | rectified_flow | edm
    t.loss = "dsm"                 # continuous: dsm | flow | edm | classifier (noisy classifier); discrete: ddpm | smld | v | hybrid | vlb (learned variance)
    t.continuous = True            # continuous-time noise labels; True for dsm / flow / edm, False for the others
    t.reduce_mean = True           # per-sample mean over dims (else ½ sum, Song et al. 2021 eq. 7)
    t.likelihood_weighting = False  # dsm: lambda(t) = g(t)^2 (Song, Durkan et al. 2021)
    t.importance_sampling = False  # dsm: t ~ g^2 / sigma^2 (needs likelihood_weighting); vlb: levels ~ sqrt(E[L_t^2]) of the last 10 terms each (Nichol & Dhariwal 2021)
    t.vlb_weight = 0.001           # hybrid: lambda of L_simple + lambda L_vlb (Nichol & Dhariwal 2021)
    t.eps = 1e-5                   # dsm / flow / edm: smallest training time
    t.p_mean = -1.2                # edm: mean of ln sigma (Karras et al. 2022, P_mean)
    t.p_std = 1.2                  # edm: std of ln sigma (P_std)
    t.label_dropout = 0.0          # class-conditional: probability of the null label (> 0 for classifier-free guidance)
    t.cond_noise_max = 0.0         # image-conditioned (model.cond_channels): noise-conditioning augmentation, the condition noised to a level s ~ U[0, cond_noise_max] of the process (0 = off)
    t.log_freq = 50                # steps between metrics.jsonl lines
    t.eval_freq = 1000             # steps between held-out loss evaluations (one eval batch)
    t.eval_quality_samples = 0     # images: at every eval also draw this many samples (the config's sampler) and score them against the held-out items (0 = off)
    t.eval_quality_metric = "kid"  # kid (x 1e3, unbiased; key kid@<n>) | fid (the Frechet distance, biased up at small n; key fd@<n>)
    t.checkpoint_freq = 10_000     # steps between preemption checkpoints (the newest keep_last are kept)
    t.snapshot_freq = 50_000       # checkpoints at multiples of this are kept for good
    t.keep_last = 3                # preemption checkpoints kept besides the snapshots
    t.max_nonfinite_steps = 3      # consecutive skipped updates (non-finite loss or gradient) before the run stops
    t.exit_zero_on_signal = False  # after SIGTERM / SIGINT: exit 0 instead of 128 + signal (143 / 130)
    t.snapshot_sampling = True     # write a few samples to <workdir>/snapshots/ at each snapshot
    t.snapshot_num_samples = 64    # how many samples a snapshot draws
    t.threads = 0                  # intra-op CPU threads; 0 = auto: the cores not busy with other work
    t.progress_bar = True          # tqdm bar (also off when stderr is not a terminal)
    t.tensorboard = True           # also log to <workdir>/tensorboard if torch.utils.tensorboard imports
    # GPU-only switches; on CPU they are logged as ignored
    t.bf16 = False                 # bfloat16 autocast of the forward pass
    t.compile = False              # torch.compile the network
    t.channels_last = False        # NHWC memory format for image models
    t.tf32 = True                  # TF32 matmuls and convolutions
    return t


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.dataset = "cifar10"          # gmm | checkerboard | digits | cifar10 | mnist | folder (image files under data.root)
    d.root = ""                    # image files; "" means ./data/<dataset>
    d.num_train = 0                # toy: points drawn for training; images: first N (0 = all)
    d.centered = False             # model space [-1, 1] instead of [0, 1] (images)
    d.uniform_dequantization = False  # (v + u) / K with u ~ U[0, 1) instead of the cell centre
    d.random_flip = False          # horizontal flips during training (images)
    d.image_size = 32              # folder: items are image_size x image_size (smaller images are refused)
    d.channels = 3                 # folder: 1 (grey, luma) | 3 (RGB)
    d.resize = "center_crop"       # folder: center_crop (largest centred square) | resize (squash); LANCZOS
    d.labels_from_folders = False  # folder: each sub-folder is a class (sorted names); saved in checkpoints
    d.heldout_fraction = 0.05      # folder: fraction of the files held out (a fixed seeded permutation)
    d.first_stage = ""             # latent diffusion: a models.save_autoencoder file, or a folder with autoencoder.pt; the images are encoded once (cached beside it) and the model learns the latents ("" = pixel space)
    d.resolution = 0               # images: items average-pooled to resolution x resolution in model space (a cascade's base stage; 0 = native size)
    d.low_res = 0                  # super-resolution (model.cond_channels): the condition is the item average-pooled to low_res x low_res (0 = none)
    return d


def _model() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.name = "ddpmpp"              # mlp (vectors) | ddpmpp | ncsnpp (U-Nets) | classifier_mlp | classifier_unet
    m.ema_rate = 0.9999            # decay of the exponential moving average of the weights
    m.parameterization = "auto"    # network output: auto (the SDE's default) | eps | x0 | score | velocity | v | edm
    m.scale_by_sigma = False       # divide a "score" output by sigma(t) (NCSN++)
    m.sigma_data = 0.5             # edm parameterisation and loss: the data's standard deviation
    m.num_classes = 0              # class-conditional network or classifier: number of classes (0 = unconditional)
    m.learn_variance = False       # mlp / U-Nets: also output the reverse variance (2x channels; training.loss hybrid | vlb)
    m.cond_channels = 0            # U-Nets: image-conditioned on a low-resolution image of this many channels (data.low_res; super-resolution), 0 = none
    m.pretrained = ""              # eval / sample / inpaint: a diffusers save_pretrained dir or a score_sde checkpoint
    m.pretrained_config = ""       # a score_sde checkpoint's training config: .json dump, or its .py file (executed)
    # the process (training.sde) reads these
    m.sigma_min = 0.01             # VE / EDM: smallest noise level (EDM's own: 0.002)
    m.sigma_max = 50.0             # VE / EDM: largest noise level (EDM's own: 80)
    m.beta_min = 0.1               # VP / sub-VP: beta(0)
    m.beta_max = 20.0              # VP / sub-VP: beta(1)
    m.num_scales = 1000            # N, the discretisation of the SDE (every process)
    # both networks
    m.embedding_type = "positional"  # noise-label embedding: positional (999 t) | fourier (log sigma)
    m.fourier_scale = 16.0         # std of the random Fourier features (embedding_type = fourier)
    # mlp
    m.hidden = 128                 # mlp: width
    m.n_blocks = 3                 # mlp: residual blocks
    # ddpmpp / ncsnpp (Song et al. 2021, App. H; DDPM++ values)
    m.nf = 128                     # U-Net: base channels
    m.ch_mult = (1, 2, 2, 2)       # U-Net: channel multiplier per resolution level
    m.num_res_blocks = 4           # U-Net: residual blocks per level
    m.attn_resolutions = (16,)     # U-Net: resolutions with self-attention
    m.dropout = 0.1                # U-Net: dropout in residual blocks
    m.resblock_type = "biggan"     # U-Net: biggan | ddpm residual blocks
    m.resamp_with_conv = True      # U-Net: convolutions in up/down-sampling
    m.skip_rescale = True          # U-Net: skip connections scaled by 1/sqrt(2)
    m.init_scale = 0.0             # U-Net: scale of the output layers' initialisation
    m.fir = False                  # U-Net: FIR up/down-sampling (NCSN++)
    m.fir_kernel = (1, 3, 3, 1)    # U-Net: the FIR kernel
    m.progressive = "none"         # U-Net: output pyramid: none | output_skip | residual
    m.progressive_input = "none"   # U-Net: input pyramid: none | input_skip | residual (NCSN++)
    m.progressive_combine = "sum"  # U-Net: how the input pyramid joins the features: sum | cat
    return m


def _optim() -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.optimizer = "adam"           # adam (the only one)
    o.lr = 2e-4                    # peak learning rate
    o.beta1 = 0.9                  # Adam beta1 (beta2 = 0.999)
    o.eps = 1e-8                   # Adam epsilon
    o.weight_decay = 0.0           # Adam's L2 term
    o.warmup = 5000                # linear warm-up: lr * min(k / warmup, 1) at update k = 1, 2, ...
    o.grad_clip = 1.0              # max global grad norm; 0 disables clipping
    return o


def _sampling() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.method = "pc"                # pc | ode | fast (DPM-Solver++) | ddim | edm (Heun, with churn) | ddpm (ancestral, chain respaced to steps levels)
    s.predictor = "euler_maruyama"  # pc: predictor
    s.corrector = "none"           # pc: corrector
    s.snr = 0.16                   # pc: corrector signal-to-noise ratio
    s.n_steps = 1                  # pc: corrector steps per predictor step
    s.probability_flow = False     # pc: predict along the probability-flow ODE
    s.denoise = True               # Tweedie denoising at the last step (every method)
    s.eps = 1e-3                   # smallest time of every method
    s.steps = 10                   # fast / ddim / edm / ddpm: number of steps (ddpm: kept levels of the N-level chain)
    s.ddpm_variance = "posterior"  # ddpm: the reverse variance when the model learns none: posterior (beta_tilde) | forward (beta)
    s.order = 2                    # fast: solver order 1 | 2 | 3
    s.solver = "dpmsolver++"       # fast: dpmsolver++ (ODE) | sde-dpmsolver++ (stochastic, orders 1-2)
    s.churn = 0.0                  # edm: S_churn (0 = deterministic Heun, Karras et al. 2022 Alg. 2)
    s.s_noise = 1.0                # edm: S_noise
    s.eta = 0.0                    # ddim: 0 deterministic, 1 DDPM-like noise
    s.ode_method = "dopri5"        # ode: torchdiffeq method (or rk45 through SciPy)
    s.rtol = 1e-5                  # ode: relative tolerance
    s.atol = 1e-5                  # ode: absolute tolerance
    s.label = ""                   # class-conditional: "" (none), a class index, or "all" (one row per class)
    s.guidance = "none"            # none | cfg (classifier-free; needs training.label_dropout > 0) | classifier
    s.guidance_scale = 1.0         # w: cfg s_u + w (s_c - s_u) (Ho & Salimans' w + 1); classifier s + w grad log p(y|x)
    s.classifier_workdir = ""      # guidance = classifier: work directory of a trained noise-conditional classifier
    s.cond_noise = 0.0             # image-conditioned: the augmentation level s of the condition at sampling (in [0, training.cond_noise_max])
    s.cascade = ""                 # sample: "BASE_WORKDIR,SR_WORKDIR": draw from the base, super-resolve its samples with the SR model (this config is the SR model's)
    s.low_res_from = ""            # sample, image-conditioned: heldout (super-resolve the held-out items' low-res views and score against the originals)
    s.threshold = 0.0              # fast / ddim: dynamic thresholding quantile of |x0| (Imagen: 0.995); 0 = off
    s.mask = "lower_half"          # inpaint: lower_half | right_half | centre | random:<missing fraction> | mask.npy (1 = known)
    s.inpaint_method = "replacement"  # inpaint / colorize: replacement (Song et al. 2021) | repaint (Lugmayr et al.)
    s.resample = 1                 # inpaint / colorize with repaint: U, reverse steps per level
    s.inpaint_data = ""            # inpaint / colorize: .npz of data-space items (array "samples", images in [0, 1]); "" = held-out
    s.num_samples = 64             # samples written by --mode sample (items by inpaint / colorize)
    s.batch_size = 64              # samples drawn per batch
    return s


def _eval() -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    e.batch_size = 256             # items per held-out loss / likelihood batch
    e.num_samples = 1000           # held-out points for the loss and the likelihood
    e.likelihood = True            # compute the likelihood (bits/dim or nll) in --mode eval
    e.trace = "rademacher"         # exact | gaussian | rademacher (Hutchinson)
    e.method = "adams"             # ODE solver of the likelihood: adams (one score per step) | dopri5 | ...
    e.rtol = 1e-3                  # likelihood ODE relative tolerance
    e.atol = 1e-3                  # likelihood ODE absolute tolerance
    e.likelihood_eps = 1e-5        # the likelihood is that of p_eps
    e.true_nll_samples = 100_000   # Monte Carlo size for the data's own entropy (toy data)
    e.sample_quality = False       # images: FD, KID, precision / recall of eval.quality_samples samples (the config's sampler)
    e.quality_samples = 300        # sample quality: samples drawn (the held-out items are the reference)
    e.inception_weights = ""       # sample quality, --mode fid, non-digit images: pytorch-fid's Inception weights file ("" = the torch hub cache's; nothing is downloaded)
    # --mode fid (the paper protocol): FID of fid_samples samples against the TRAINING set's statistics
    e.fid_samples = 50_000         # fid: samples per seed (small n biases the Frechet distance upwards, ~1/n)
    e.fid_seeds = 1                # fid: sample sets with seeds seed .. seed + fid_seeds - 1; reports each, min and mean (EDM: 3)
    e.fid_reference = ""           # fid: reference statistics .npz (pytorch-fid: arrays mu, sigma); "" = <workdir>/fid_reference_<dataset>_<features>.npz, computed once
    e.fid_reference_items = 0      # fid: training items the reference statistics are computed from (0 = all)
    # likelihood bounds (scoresde/likelihood/), each with its standard error, NFE and time, in bpd / nll units
    e.bounds = ""                  # comma-separated: elbo (continuous-time models) | vlb | iw (the N-level chain) | all (every one that applies); "" = none
    e.bound_items = 100            # bounds: held-out items used, the first n of eval.num_samples (0 = all)
    e.bound_rows = 2048            # bounds: most rows (items x draws or paths) per score call
    e.elbo_samples = 64            # elbo: draws of (t, +-z) per item, 2 score evaluations each
    e.vlb_levels = 0               # vlb: levels drawn per item, an unbiased estimate (0 = the exact sum over all N levels)
    e.iw_k = (1, 10, 100)          # iw: the K of each importance-weighted bound IW_K (each must divide the largest)
    e.iw_repeats = 1               # iw: independent IW_K estimates per item at the largest K (max(iw_k) x iw_repeats paths of N levels)
    e.chain_variance = "forward"   # vlb / iw: the reverse step's variance: forward (beta_i) | posterior (beta_tilde_i) (Ho et al. 2020); a model's learned variance replaces it
    e.chain_steps = 0              # vlb / iw: the chain respaced to this many of its N levels (Nichol & Dhariwal 2021, Sec. 4); 0 = all N
    e.latent_draws = 8             # latent models (data.first_stage): K draws z ~ q(z|x) per item of the latent bound, on eval.bound_items items
    e.latent_prior = "ode"         # latent models: log p_theta(z) by the probability-flow ODE (eval.method, trace, tolerances) | elbo (eval.elbo_samples draws; a further bound)
    e.chain_decoder = "density"    # vlb / iw: density (Gaussian at dequantised x, bits/dim as bpd) | discretized (images: Ho et al. eq. 13 at the cell centres)
    return e


def _distill() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.method = "cd"                # --mode distill: cd (consistency distillation) | ct (consistency training, no teacher) | progressive (halving DDIM steps)
    d.teacher_workdir = ""         # cd / progressive: work directory of the trained teacher, or a shipped model (digits); same process and data (and network, to initialise from it)
    d.init_from_teacher = True     # start the student from the teacher's EMA weights (progressive: always)
    d.grid_size = 18               # cd: N, Karras levels the teacher steps between (Song et al. 2023: 18 on CIFAR-10)
    d.solver = "heun"              # cd: the teacher's ODE step: heun (2 evaluations) | ddim (1)
    d.distance = "l2"              # cd: l2 | pseudo_huber
    d.target_decay = 0.95          # cd: EMA decay mu of the target network theta^- (ct: the student itself, iCT)
    d.ct_s0 = 10                   # ct: the grid starts with s0 + 1 levels (Song & Dhariwal 2023) ...
    d.ct_s1 = 1280                 # ct: ... and doubles over training.n_iters up to s1 + 1
    d.sigma_data = 0.5             # cd / ct: the data's standard deviation in c_skip, c_out, c_in
    d.eps = 1e-3                   # cd / ct: the boundary time, f(x, eps) = x
    d.pd_start_steps = 16          # progressive: the teacher's DDIM steps (sampling.eps, DDIM's grid) in the first round
    d.pd_rounds = 2                # progressive: halvings, training.n_iters split evenly; the student samples with ddim, steps = pd_start_steps / 2^pd_rounds
    return d


def _autoencoder() -> ml_collections.ConfigDict:
    a = ml_collections.ConfigDict()
    # --mode train_autoencoder: the first stage of latent diffusion (models.KLAutoencoder), trained with the
    # training.* / optim.* loop settings and written to <workdir>/autoencoder.pt for data.first_stage
    a.latent_channels = 4          # train_autoencoder: latent channels c
    a.downsampling = 2             # train_autoencoder: f, latents of shape (c, H/f, W/f); a power of 2 (1 = none)
    a.channels = 32                # train_autoencoder: width of the first level, doubled per downsampling
    a.beta = 1.0                   # train_autoencoder: loss -log p(x|z) + beta KL(q(z|x) || N(0, I)); 1 = the VAE's ELBO
    a.decoder_std = 0.1            # train_autoencoder: s of p(x|z) = N(decode(z), s^2 I); its start value when learned
    a.learn_decoder_std = True     # train_autoencoder: learn s with the weights
    return a


def get_default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42               # every random stream of a run derives from it (scoresde/data/streams.py)
    config.device = "auto"         # auto | cpu | cuda
    config.training = _training()
    config.data = _data()
    config.model = _model()
    config.optim = _optim()
    config.sampling = _sampling()
    config.eval = _eval()
    config.distill = _distill()
    config.autoencoder = _autoencoder()
    return config


# ---------------------------------------------------------------------------------------- presets
def set_unet(model: ml_collections.ConfigDict, *, nf: int, ch_mult: tuple, num_res_blocks: int,
             attn_resolutions: tuple, dropout: float) -> None:
    """The U-Net size: channels, levels, blocks, attention and dropout."""
    model.nf = nf
    model.ch_mult = ch_mult
    model.num_res_blocks = num_res_blocks
    model.attn_resolutions = attn_resolutions
    model.dropout = dropout


def use_ddpmpp(model: ml_collections.ConfigDict) -> None:
    """DDPM++: positional embedding of the time label, no FIR, no input pyramid, eps output."""
    model.name = "ddpmpp"
    model.embedding_type = "positional"
    model.fir = False
    model.progressive_input = "none"
    model.scale_by_sigma = False


def use_ncsnpp(model: ml_collections.ConfigDict) -> None:
    """NCSN++: Fourier embedding of log sigma, FIR resampling, residual input pyramid, 1/sigma output."""
    model.name = "ncsnpp"
    model.embedding_type = "fourier"
    model.fir = True
    model.progressive_input = "residual"
    model.scale_by_sigma = True


def use_edm(config: ml_collections.ConfigDict, sigma_data: float) -> None:
    """EDM (Karras et al. 2022): sigma(t) = t in [0.002, 80], its preconditioning with ``sigma_data``,
    its loss (ln sigma ~ N(-1.2, 1.2^2)) and its Heun sampler with 18 steps; times are noise levels, so
    the smallest training, sampling and likelihood time is sigma_min."""
    config.training.sde, config.training.loss, config.training.eps = "edm", "edm", 0.002
    m = config.model
    m.sigma_min, m.sigma_max, m.sigma_data, m.parameterization = 0.002, 80.0, sigma_data, "edm"
    s = config.sampling
    s.method, s.steps, s.eps = "edm", 18, 0.002
    config.eval.likelihood_eps = 0.002


def use_ve_pc_sampling(sampling: ml_collections.ConfigDict) -> None:
    """Reverse-diffusion predictor + Langevin corrector at snr 0.16 (Song et al. 2021, PC for VE)."""
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.snr = 0.16


def get_config() -> ml_collections.ConfigDict:
    """So that ``--config configs/default.py`` works too."""
    return get_default_config()
