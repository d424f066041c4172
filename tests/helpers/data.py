"""Data files written like the real ones, for tests that read them through the dataset readers."""
import pickle

import numpy as np


def write_cifar(folder, n_per_batch=3, seed=0):
    """CIFAR-10's python batches (5 training, 1 test) of ``n_per_batch`` random images each in ``folder``;
    returns the rows and labels of each batch."""
    folder.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    rows, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.randint(0, 256, size=(n_per_batch, 3072)).astype(np.uint8)
        lab = rng.randint(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": lab,
                         b"filenames": [b"x.png"] * n_per_batch}, f, protocol=2)
        rows.append(data)
        labels.append(lab)
    return rows, labels


def tiny_diffusers_vae(scaling_factor=0.7):
    """A random diffusers ``AutoencoderKL`` for 1x8x8 images: 2 latent channels, f = 2 (seeded)."""
    import diffusers
    import torch
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                                   layers_per_block=1, latent_channels=2, norm_num_groups=4,
                                   sample_size=8, scaling_factor=scaling_factor).eval()
