"""Every config field, with defaults. Experiment files start from ``get_default_config()`` and change
what they need; ``training/factory.py`` validates the result and turns it into plain arguments.

Names follow score_sde (``training.sde``, ``model.ema_rate``, ``sampling.snr``, ...) where one exists.
"""
import ml_collections


def _training() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.batch_size = 128             # GLOBAL batch; each of W ranks takes batch_size / W
    t.n_iters = 1_300_001
    t.sde = "vpsde"                # any name in sde_lib.SDES: vpsde | subvpsde | vesde | cosine_vpsde
    t.loss = "dsm"                 # dsm (continuous) | ddpm (discrete VP) | smld (discrete VE)
    t.continuous = True            # must be True for dsm and False for ddpm / smld
    t.reduce_mean = True           # per-sample mean over dims (else ½ sum, Song et al. 2021 eq. 7)
    t.likelihood_weighting = False  # lambda(t) = g(t)^2 (Song, Durkan et al. 2021)
    t.importance_sampling = False  # t ~ g^2 / sigma^2 (needs likelihood_weighting)
    t.eps = 1e-5                   # smallest training time
    t.log_freq = 50                # steps between metrics.jsonl lines
    t.eval_freq = 1000             # steps between held-out loss evaluations (one eval batch)
    t.checkpoint_freq = 10_000     # steps between preemption checkpoints (the newest keep_last are kept)
    t.snapshot_freq = 50_000       # checkpoints at multiples of this are kept for good
    t.keep_last = 3
    t.snapshot_sampling = True     # write a few samples to <workdir>/snapshots/ at each snapshot
    t.snapshot_num_samples = 64
    t.progress_bar = True          # tqdm bar (also off when stderr is not a terminal)
    t.tensorboard = True           # only if torch.utils.tensorboard imports
    # GPU-only switches; on CPU they are logged as ignored
    t.bf16 = False                 # bfloat16 autocast of the forward pass
    t.compile = False              # torch.compile the network
    t.channels_last = False        # NHWC memory format for image models
    t.tf32 = True                  # TF32 matmuls and convolutions
    return t


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.dataset = "cifar10"          # gmm | checkerboard | digits | cifar10 | mnist
    d.root = ""                    # image files; "" means ./data/<dataset>
    d.num_train = 0                # toy: points drawn for training; images: first N (0 = all)
    d.centered = False             # model space [-1, 1] instead of [0, 1] (images)
    d.uniform_dequantization = False  # (v + u) / K with u ~ U[0, 1) instead of the cell centre
    d.random_flip = False          # horizontal flips during training (images)
    return d


def _model() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.name = "ddpmpp"              # any name in models.MODELS: mlp | ddpmpp | ncsnpp
    m.ema_rate = 0.9999
    m.parameterization = "auto"    # auto (the SDE's default) | eps | x0 | score
    m.scale_by_sigma = False       # divide a "score" output by sigma(t) (NCSN++)
    m.sigma_min = 0.01             # VE
    m.sigma_max = 50.0
    m.beta_min = 0.1               # VP / sub-VP
    m.beta_max = 20.0
    m.num_scales = 1000            # N, the discretisation of the SDE
    return m


def _optim() -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.optimizer = "adam"
    o.lr = 2e-4
    o.beta1 = 0.9
    o.eps = 1e-8
    o.weight_decay = 0.0
    o.warmup = 5000                # linear warm-up: lr * min(k / warmup, 1) at update k = 1, 2, ...
    o.grad_clip = 1.0              # max global grad norm; 0 disables clipping
    return o


def _sampling() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.method = "pc"                # pc | ode | fast
    s.predictor = "euler_maruyama"
    s.corrector = "none"
    s.snr = 0.16
    s.n_steps = 1                  # corrector steps per predictor step
    s.probability_flow = False
    s.denoise = True               # Tweedie denoising at the last step
    s.eps = 1e-3
    s.steps = 10                   # fast sampler: number of steps
    s.order = 2                    # fast sampler: solver order
    s.ode_method = "dopri5"        # ode sampler: torchdiffeq method
    s.rtol = 1e-5
    s.atol = 1e-5
    s.num_samples = 64
    s.batch_size = 64
    return s


def _eval() -> ml_collections.ConfigDict:
    e = ml_collections.ConfigDict()
    e.batch_size = 256
    e.num_samples = 1000           # held-out points for the loss and the likelihood
    e.likelihood = True
    e.trace = "rademacher"         # exact | gaussian | rademacher (Hutchinson)
    e.rtol = 1e-5
    e.atol = 1e-5
    e.likelihood_eps = 1e-5
    e.true_nll_samples = 100_000   # Monte Carlo size for the data's own entropy (toy data)
    return e


def get_default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.device = "auto"         # auto | cpu | cuda
    config.training = _training()
    config.data = _data()
    config.model = _model()
    config.optim = _optim()
    config.sampling = _sampling()
    config.eval = _eval()
    return config


# ---------------------------------------------------------------------------------------- helpers
def add_unet(model: ml_collections.ConfigDict, *, nf: int, ch_mult: tuple, num_res_blocks: int,
             attn_resolutions: tuple, dropout: float) -> None:
    """The U-Net fields DDPM++ and NCSN++ share (Song et al. 2021, App. H: BigGAN residual blocks,
    skip rescaling, no output pyramid); ``use_ddpmpp`` / ``use_ncsnpp`` add the rest."""
    model.nf = nf
    model.ch_mult = ch_mult
    model.num_res_blocks = num_res_blocks
    model.attn_resolutions = attn_resolutions
    model.dropout = dropout
    model.resblock_type = "biggan"
    model.resamp_with_conv = True
    model.skip_rescale = True
    model.init_scale = 0.0
    model.fourier_scale = 16.0
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive = "none"
    model.progressive_combine = "sum"


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


def use_ve_pc_sampling(sampling: ml_collections.ConfigDict) -> None:
    """Reverse-diffusion predictor + Langevin corrector at snr 0.16 (Song et al. 2021, PC for VE)."""
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.snr = 0.16


def get_config() -> ml_collections.ConfigDict:
    """So that ``--config configs/default.py`` works too."""
    return get_default_config()
