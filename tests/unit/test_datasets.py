"""Checks of the toy densities, the image readers, dequantisation/scaling and the sharded loader.

Statistical checks state their error bars: a proportion p from n draws has standard error
sqrt(p(1-p)/n); a mean of n draws with standard deviation s has s/sqrt(n). Tolerances are 4-5 of them.
"""
import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from helpers.data import write_cifar
from scoresde.data.loader import ShardedBatchLoader
from scoresde.data.datasets import (
    CONFIGURED_DATASETS, ITEM_SHAPES, Checkerboard, GaussianMixture2D, ImageDataset, data_scaler, dataset_names, dequantize,
    get_image_dataset, get_toy_dataset, inverse_data_scaler, parse_idx, quantize,
    scaler_log_det, item_shape,
)

N_SAMPLES = 80_000


def gen(seed):
    return torch.Generator().manual_seed(seed)


def grid_mass(log_prob, lo=-3.0, hi=3.0, h=0.01):
    """Midpoint-rule ∫ exp(log_prob) over [lo, hi]² with cell size h (float64)."""
    centres = torch.arange(lo + h / 2, hi, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(centres, centres, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    return float(log_prob(pts).exp().sum() * h * h)


# ---------------------------------------------------------------- gmm

def test_gmm_sample_statistics():
    gmm = get_toy_dataset("gmm")
    x = gmm.sample(N_SAMPLES, generator=gen(0), dtype=torch.float64)
    assert x.shape == (N_SAMPLES, 2) and x.dtype == torch.float64
    mu = gmm.means(dtype=torch.float64)
    assert torch.allclose(mu[1], torch.tensor([2 * math.cos(math.pi / 4), 2 * math.sin(math.pi / 4)],
                                              dtype=torch.float64))
    # modes are 1.53 apart (7.6 std from each), so nearest-mean assignment is the true component
    k = torch.cdist(x, mu).argmin(dim=1)
    props = torch.bincount(k, minlength=8).double() / N_SAMPLES
    se = math.sqrt((1 / 8) * (7 / 8) / N_SAMPLES)                  # ≈ 1.17e-3
    assert (props - 1 / 8).abs().max() < 4 * se
    for j in range(8):
        xj = x[k == j]
        n_j = len(xj)
        assert (xj.mean(0) - mu[j]).abs().max() < 5 * 0.1 / math.sqrt(n_j)       # ≈ 5e-3
        assert (xj.std(0) - 0.1).abs().max() < 5 * 0.1 / math.sqrt(2 * n_j)     # ≈ 3.5e-3


def test_gmm_log_prob_matches_torch_distributions():
    gmm = GaussianMixture2D()
    mu = gmm.means(dtype=torch.float64)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(8, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(mu, 0.1 * torch.ones_like(mu)), 1))
    x = torch.cat([3 * torch.randn(500, 2, generator=gen(1), dtype=torch.float64), mu,
                   torch.tensor([[40.0, -25.0], [0.0, 0.0]], dtype=torch.float64)])
    ours = gmm.log_prob(x)
    assert ours.shape == (len(x),)
    torch.testing.assert_close(ours, ref.log_prob(x), rtol=1e-10, atol=1e-10)
    far = gmm.log_prob(torch.tensor([[1e3, -1e3]]))             # float32, 1e6 std from any mode
    assert torch.isfinite(far).all() and far.item() < -1e7


def test_gmm_density_integrates_to_one():
    # h = 0.01 = σ/10; the midpoint rule error is far below 1e-4; mass outside [-3,3]² is ~exp(-50)
    assert abs(grid_mass(GaussianMixture2D().log_prob) - 1.0) < 1e-4


def test_gmm_true_nll_matches_sample_average_and_analytic_value():
    gmm = GaussianMixture2D()
    value, se = gmm.true_nll(n=40_000, generator=gen(2))
    assert 0 < se < 0.01
    x = gmm.sample(40_000, generator=gen(3), dtype=torch.float64)
    lp = gmm.log_prob(x)
    other, other_se = float(-lp.mean()), float(lp.std() / math.sqrt(len(lp)))
    assert abs(value - other) < 5 * math.hypot(se, other_se)
    # well separated modes: H = log 8 + entropy of N(0, σ²I₂) = log 8 + 1 + log(2πσ²) ≈ 0.3121
    analytic = math.log(8) + 1 + math.log(2 * math.pi * 0.01)
    assert abs(value - analytic) < 5 * se
    assert gmm.entropy(n=1000, generator=gen(4))[0] == pytest.approx(value, abs=0.2)


def test_toy_sample_generator_determinism_and_bad_input():
    gmm = get_toy_dataset("gmm")
    assert torch.equal(gmm.sample(10, generator=gen(5)), gmm.sample(10, generator=gen(5)))
    assert not torch.equal(gmm.sample(10, generator=gen(5)), gmm.sample(10, generator=gen(6)))
    with pytest.raises(ValueError, match="n must be"):
        gmm.sample(0)
    with pytest.raises(ValueError, match="shape"):
        gmm.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        gmm.log_prob(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="unknown toy dataset 'moons'"):
        get_toy_dataset("moons")


# ---------------------------------------------------------------- checkerboard

def test_checkerboard_samples_cells_and_uniformity():
    board = get_toy_dataset("checkerboard")
    x = board.sample(N_SAMPLES, generator=gen(7), dtype=torch.float64)
    cell = torch.floor(x).long()
    assert ((x >= -2) & (x < 2)).all()
    assert (cell.sum(1) % 2 == 0).all()                          # all in dark cells
    code = (cell[:, 0] + 2) * 4 + (cell[:, 1] + 2)
    counts = torch.bincount(code, minlength=16).double() / N_SAMPLES
    dark = counts[counts > 0]
    assert len(dark) == 8
    se = math.sqrt((1 / 8) * (7 / 8) / N_SAMPLES)                  # ≈ 1.17e-3
    assert (dark - 1 / 8).abs().max() < 4 * se
    offset = x - cell                                              # U[0,1)²: mean 1/2, var 1/12
    assert (offset.mean(0) - 0.5).abs().max() < 5 * math.sqrt(1 / 12 / N_SAMPLES)      # ≈ 5.1e-3
    assert (offset.var(0) - 1 / 12).abs().max() < 5 * math.sqrt(1 / 180 / N_SAMPLES)   # var of var
    assert abs(float(torch.corrcoef(offset.T)[0, 1])) < 5 / math.sqrt(N_SAMPLES)


def test_checkerboard_log_prob_values():
    board = Checkerboard()
    pts = torch.tensor([[0.5, 0.5], [-1.5, -1.5], [1.9, 1.1], [-0.5, 1.5],     # dark
                        [1.5, 0.5], [-0.5, 0.5], [2.5, 0.0], [0.5, -2.5], [2.0, 0.0]])
    lp = board.log_prob(pts)
    torch.testing.assert_close(lp[:4], torch.full((4,), -math.log(8)))
    assert torch.isneginf(lp[4:]).all()
    assert grid_mass(board.log_prob) == pytest.approx(1.0, abs=1e-9)       # grid aligns with cells
    assert board.true_nll() == (math.log(8), 0.0)


# ---------------------------------------------------------------- digits

def test_digits_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    train, test = get_image_dataset("digits", split="train"), get_image_dataset("digits", split="test")
    assert isinstance(train, ImageDataset) and train.num_levels == 17
    assert train.images.shape == (1497, 1, 8, 8) and test.images.shape == (300, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.shape == (1, 8, 8) and len(test) == 300
    assert int(train.images.min()) == 0 and int(train.images.max()) == 16
    again = get_image_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)

    def rows(images, labels):      # one sortable row per (image, label); sorting compares multisets
        table = np.concatenate([np.asarray(images).reshape(len(images), -1), np.asarray(labels)[:, None]], 1)
        return table[np.lexsort(table.T[::-1])]

    bunch = sklearn_datasets.load_digits()
    ours = rows(torch.cat([train.images, test.images]).numpy(), torch.cat([train.labels, test.labels]))
    np.testing.assert_array_equal(ours, rows(bunch.images.astype(np.uint8), bunch.target))
    with pytest.raises(ValueError, match="split"):
        get_image_dataset("digits", split="valid")


# ---------------------------------------------------------------- cifar10

def test_cifar10_reader_pixel_layout(tmp_path):
    rows, labels = write_cifar(tmp_path / "cifar-10-batches-py")
    train = get_image_dataset("cifar10", root=tmp_path, split="train")
    test = get_image_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="test")
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.num_levels == 256
    assert train.labels.tolist() == sum(labels[:5], []) and test.labels.tolist() == labels[5]
    flat = np.concatenate(rows[:5])
    for n, c, h, w in [(0, 0, 0, 0), (4, 1, 5, 31), (14, 2, 31, 7), (7, 2, 17, 0)]:
        assert int(train.images[n, c, h, w]) == int(flat[n, c * 1024 + h * 32 + w])
    assert int(test.images[2, 1, 3, 4]) == int(rows[5][2, 1024 + 3 * 32 + 4])


def test_cifar10_missing_and_corrupt_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as info:
        get_image_dataset("cifar10", root=tmp_path, split="train")
    assert "data_batch_1" in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)
    assert len(get_image_dataset("cifar10", root=tmp_path, split="test")) == 3
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="3072"):
        get_image_dataset("cifar10", root=tmp_path, split="test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": ImageDataset}, f)                    # a class, not an array
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        get_image_dataset("cifar10", root=tmp_path, split="test")


# ---------------------------------------------------------------- mnist

def idx_bytes(array, magic):
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder, gz, n_train=5, n_test=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = (rng.randint(0, 256, (n, 28, 28)), 2051)
        arrays[f"{prefix}-labels-idx1-ubyte"] = (rng.randint(0, 10, n), 2049)
    for name, (array, magic) in arrays.items():
        raw = idx_bytes(array, magic)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return {name: array for name, (array, _) in arrays.items()}


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader_pixel_layout(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz)
    train = get_image_dataset("mnist", root=tmp_path, split="train")
    test = get_image_dataset("mnist", root=tmp_path, split="test")
    assert train.images.shape == (5, 1, 28, 28) and test.images.shape == (2, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.num_levels == 256
    raw = arrays["train-images-idx3-ubyte"].reshape(-1)
    for n, h, w in [(0, 0, 0), (3, 27, 1), (4, 13, 27)]:
        assert int(train.images[n, 0, h, w]) == int(raw[n * 784 + h * 28 + w])
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    np.testing.assert_array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])


def test_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte") as info:
        get_image_dataset("mnist", root=tmp_path, split="test")
    assert "t10k-labels-idx1-ubyte" in str(info.value) and str(tmp_path) in str(info.value)
    write_mnist(tmp_path, gz=False)
    bad = bytearray((tmp_path / "train-images-idx3-ubyte").read_bytes())
    bad[3] = 0x01                                                  # magic 2049: a label file's
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        get_image_dataset("mnist", root=tmp_path, split="train")
    with pytest.raises(ValueError, match="header says"):
        parse_idx(idx_bytes(np.zeros((2, 28, 28)), 2051)[:-1], 3)
    with pytest.raises(ValueError, match="too short"):
        parse_idx(b"\x00\x00", 1)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3), 2049))   # 2 images
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        get_image_dataset("mnist", root=tmp_path, split="test")


def test_dataset_names_and_item_shapes():
    with pytest.raises(ValueError, match=r"unknown image dataset 'svhn'; available: .*cifar10"):
        get_image_dataset("svhn")
    # an image folder's item shape comes from the config (data.channels, data.image_size)
    assert set(dataset_names()) == {"gmm", "checkerboard", "digits", "cifar10", "mnist", "folder"} == \
        set(ITEM_SHAPES) | set(CONFIGURED_DATASETS)
    assert item_shape("folder", image_size=16, channels=1) == (1, 16, 16)
    assert get_image_dataset("digits", split="test").shape == ITEM_SHAPES["digits"]
    assert get_toy_dataset("gmm").dim == ITEM_SHAPES["gmm"][0]


# ---------------------------------------------------------------- dequantisation and scaling

@pytest.mark.parametrize("num_levels", [17, 256])
def test_dequantize_range_and_exact_requantisation(num_levels):
    v = torch.randint(num_levels, (4000,), generator=gen(8)).to(torch.uint8)
    y = dequantize(v, num_levels, generator=gen(9))
    assert y.dtype == torch.float32 and y.min() >= 0 and y.max() < 1
    assert torch.equal(torch.floor(y * num_levels), v.float())
    assert torch.equal(quantize(y, num_levels), v)
    every = torch.arange(num_levels)                      # cell edges: naive float32 rounding fails here
    for u in (0.0, 1 - 2 ** -24):
        y_edge = dequantize(every, num_levels, noise=torch.full((num_levels,), u))
        assert torch.equal(torch.floor(y_edge * num_levels).long(), every)
    centre = dequantize(every, num_levels, uniform=False, dtype=torch.float64)
    torch.testing.assert_close(centre, (every + 0.5).double() / num_levels)


def test_dequantize_mean_and_determinism():
    n, K = 50_000, 256
    v = torch.full((n,), 100, dtype=torch.uint8)
    y = dequantize(v, K, generator=gen(10), dtype=torch.float64)
    # y = (v + u)/K with u ~ U[0,1): mean (v + 1/2)/K, standard error 1/(K sqrt(12 n)) ≈ 5.1e-6
    assert abs(float(y.mean()) - 100.5 / K) < 5 / (K * math.sqrt(12 * n))
    assert torch.equal(dequantize(v[:10], K, generator=gen(1)), dequantize(v[:10], K, generator=gen(1)))
    with pytest.raises(ValueError, match="0..16"):
        dequantize(torch.tensor([17]), 17)
    with pytest.raises(ValueError, match="integer tensor"):
        dequantize(torch.tensor([0.5]), 17)


def test_scalers_and_log_det():
    y = torch.rand(3, 1, 8, 8, generator=gen(11))
    for centered in (True, False):
        x = data_scaler(centered)(y)
        torch.testing.assert_close(inverse_data_scaler(centered)(x), y)
    torch.testing.assert_close(data_scaler(True)(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert scaler_log_det(True, 3072) == pytest.approx(3072 * math.log(2))
    assert scaler_log_det(False, 64) == 0.0
    assert torch.equal(quantize(torch.tensor([-0.1, 0.0, 0.999, 1.0, 1.5]), 256),
                       torch.tensor([0, 0, 255, 255, 255], dtype=torch.uint8))


# ---------------------------------------------------------------- sharded loader

def local_batch(loader):
    """This rank's indices of the next global batch (the data in these tests are 0..N-1)."""
    return loader.next_global_indices()[loader.local_rows]


def collect(loader, steps):
    return [local_batch(loader) for _ in range(steps)]


def test_loader_epoch_covers_each_index_once_and_is_seeded():
    data = torch.arange(103)
    loader = ShardedBatchLoader(len(data), global_batch_size=10, seed=3)
    assert loader.batches_per_epoch == 10
    epoch0 = torch.cat(collect(loader, 10))
    assert len(epoch0) == 100 and len(set(epoch0.tolist())) == 100          # 3 dropped, no repeats
    assert torch.equal(epoch0, loader.permutation(0)[:100])
    first_of_epoch1 = local_batch(loader)
    assert loader.epoch == 1 and torch.equal(first_of_epoch1, loader.permutation(1)[:10])
    assert not torch.equal(loader.permutation(0), loader.permutation(1))
    same = ShardedBatchLoader(len(data), 10, seed=3)
    assert torch.equal(torch.cat(collect(same, 10)), epoch0)
    other = ShardedBatchLoader(len(data), 10, seed=4)
    assert not torch.equal(torch.cat(collect(other, 10)), epoch0)


def test_loader_without_drop_last_wraps_into_next_epoch():
    loader = ShardedBatchLoader(25, global_batch_size=10, seed=0, drop_last=False)
    stream = torch.cat(collect(loader, 5))                       # 50 items = exactly 2 epochs
    assert sorted(stream[:25].tolist()) == list(range(25)) == sorted(stream[25:].tolist())
    assert torch.equal(stream[20:30], torch.cat([loader.permutation(0)[20:], loader.permutation(1)[:5]]))


def test_loader_ranks_concatenate_to_global_batch():
    single = ShardedBatchLoader(64, 16, seed=5)
    ranks = [ShardedBatchLoader(64, 16, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(9):                                           # crosses the epoch boundary
        expected = local_batch(single)
        parts = [local_batch(r) for r in ranks]
        assert parts[0].shape == (8,)
        assert torch.equal(torch.cat(parts), expected)


def test_loader_resume_mid_epoch_is_identical():
    data = torch.arange(50)
    loader = ShardedBatchLoader(len(data), 8, seed=1)
    collect(loader, 4)
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["position"] == 32
    reference = collect(loader, 10)
    resumed = ShardedBatchLoader(len(data), 8, seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(collect(resumed, 10), reference))


@pytest.mark.parametrize("new_world", [1, 4])
def test_loader_state_is_world_size_independent(new_world):
    data = torch.arange(70)
    two = [ShardedBatchLoader(len(data), 8, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(11):                                          # 1 epoch = 8 batches; into epoch 1
        for r in two:
            local_batch(r)
    state = two[0].state_dict()
    assert state == two[1].state_dict() and state["epoch"] == 1
    single = ShardedBatchLoader(len(data), 8, seed=2)
    single.load_state_dict(state)
    expected = collect(single, 12)
    resumed = [ShardedBatchLoader(len(data), 8, seed=2, rank=r, world_size=new_world) for r in range(new_world)]
    for r in resumed:
        r.load_state_dict(state)
    for step in range(12):
        assert torch.equal(torch.cat([local_batch(r) for r in resumed]), expected[step])


def test_loader_bad_arguments():
    data = torch.arange(20)
    with pytest.raises(ValueError, match="not divisible by world_size=4"):
        ShardedBatchLoader(len(data), 10, seed=0, world_size=4)
    with pytest.raises(ValueError, match="larger than the data set"):
        ShardedBatchLoader(len(data), 32, seed=0)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchLoader(len(data), 10, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        ShardedBatchLoader(len(data), 0, seed=0)
    with pytest.raises(ValueError, match="num_items"):
        ShardedBatchLoader(0, 10, seed=0)
    loader = ShardedBatchLoader(len(data), 10, seed=0)
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict({"epoch": 0, "position": 0, "seed": 1})
    with pytest.raises(ValueError, match="position"):
        loader.load_state_dict({"epoch": 0, "position": 21})
    with pytest.raises(ValueError, match="missing 'epoch'"):
        loader.load_state_dict({"position": 0})
