"""``evaluate/features.py``: streamed feature statistics, strict reference files, the feature network
chosen by the data, and how samples are read (as the real items are)."""
import numpy as np
import pytest
import torch

from scoresde.data.pipeline import DataSpec
from scoresde.evaluate.features import (FeatureSpace, RunningStatistics, feature_space, items_at_centres,
                                        items_from_samples, load_reference, reference_subset)
from scoresde.evaluate.metrics import feature_statistics

SPACE = FeatureSpace("test", 3, lambda images: images.flatten(1)[:, :3], "first three pixels")


def test_running_statistics_equal_those_of_all_rows():
    # a large mean (1e6) and unit spread: raw sums of squares (~1e12 a row) in float64 leave errors ~1e-4 in the
    # covariance, the shifted sums ~1e-12 (rounding of 1000 rows)
    f = 1e6 + torch.randn(1000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = RunningStatistics()
    for part in f.split(97):
        stats.add(part)
    mu, sigma = stats.statistics()
    expected_mu, expected_sigma = feature_statistics(f)
    assert torch.allclose(mu, expected_mu, rtol=1e-12) and torch.allclose(sigma, expected_sigma, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        RunningStatistics().statistics()


def test_load_reference_is_strict(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, mu=np.arange(3.0), sigma=np.eye(3))
    mu, sigma = load_reference(good, SPACE)
    assert mu.dtype == torch.float64 and torch.equal(mu, torch.arange(3.0, dtype=torch.float64))
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.array([0.0, np.nan, 0.0]), sigma=np.eye(3))
    with pytest.raises(ValueError, match=r"bad.npz: expected .* mu \(3,\) and sigma \(3, 3\).*NaN"):
        load_reference(bad, SPACE)
    with pytest.raises(ValueError, match="not an .npz file"):
        load_reference(tmp_path / "missing.npz", SPACE)


def test_feature_network_by_data():
    toy = DataSpec(name="gmm", train=None, test=None, shape=(2,))
    with pytest.raises(ValueError, match="FID applies to image data sets.*'gmm' is 2-D points"):
        feature_space(toy)
    rgb = DataSpec(name="cifar10", train=None, test=None, shape=(3, 8, 8), num_levels=256)
    with pytest.raises(FileNotFoundError, match="nope.pth") as err:
        feature_space(rgb, "/nonexistent/nope.pth")
    assert "\n" not in str(err.value)


def test_samples_are_read_at_the_cell_centres_like_the_items():
    spec = DataSpec(name="digits", train=None, test=None, shape=(1, 2, 2), num_levels=17, centered=True)
    levels = torch.tensor([[[[0, 5], [16, 8]]]], dtype=torch.uint8)
    centres = items_at_centres(levels, spec)
    assert torch.allclose(centres.double(), (levels.double() + 0.5) / 17)
    # a model-space sample at a cell centre is read back as that very item
    assert torch.allclose(items_from_samples(2 * centres - 1, spec).double(), centres.double(), atol=1e-6)


def test_reference_subset_is_seeded_sorted_and_bounded():
    assert torch.equal(reference_subset(5, 10, 0), torch.arange(5))
    a, b = reference_subset(100, 10, 1), reference_subset(100, 10, 1)
    assert torch.equal(a, b) and len(a.unique()) == 10 and torch.equal(a, a.sort().values)
