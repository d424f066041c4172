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
