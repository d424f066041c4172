"""EDM's published unconditional CIFAR-10 setting on a GPU (Karras et al. 2022, Table 7 / App. F.2, "DDPM++
cont. (VP)" column with EDM's preconditioning, loss and sampler; FID 1.97 at 35 NFE in the paper):
sigma in [0.002, 80], sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2), Adam lr 1e-3 with a 10 M-image
warm-up (here 10 M / 512 steps), batch 512, dropout 0.13, EMA, Heun with 18 steps. EDM trains on 200 M
images (390 k steps) with an EMA half-life of 0.5 M images, here the per-step decay that gives it.
Not reproduced here: EDM's non-leaking augmentation (its FID 1.97 uses it) and its FP16 setting."""
from scoresde.configs.cifar10.base import get_cifar10_config
from scoresde.configs.default import use_ddpmpp, use_edm


def get_config():
    config = get_cifar10_config("edm")
    config.data.centered = True
    use_ddpmpp(config.model)
    use_edm(config, sigma_data=0.5)
    m = config.model
    m.embedding_type = "fourier"
    m.dropout = 0.13
    m.ema_rate = 0.99929                      # half-life 0.5 M images at batch 512: 0.5 ** (512 / 0.5e6)
    t = config.training
    t.batch_size = 512
    t.n_iters = 390_625                       # 200 M images
    t.reduce_mean = True
    o = config.optim
    o.lr, o.warmup, o.grad_clip = 1e-3, 19_531, 0.0
    return config
