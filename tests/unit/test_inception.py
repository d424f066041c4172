"""The plain-torch FID Inception (``scoresde/evaluate/inception.py``), the Fréchet distance at 2048
dimensions, the Inception score and cached reference statistics.

The state-dict keys and shapes are compared with ``tests/fixtures/fid_inception_keys.json``, written by
``bench/inception_check.py --write-keys`` from pytorch-fid 0.3.0's network (torchvision's ``Inception3``
with 1008 classes, no auxiliary head, and pytorch-fid's FIDInceptionA / C / E_1 / E_2 blocks); that
script also compares the features of both networks on one random state dict (max abs diff 0 here)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from scoresde.evaluate.inception import (FID_WEIGHTS_URL, FIDInception, fid_inception_outputs,
                                         load_fid_inception)
from scoresde.evaluate.metrics import (cached_statistics, feature_statistics, fid_from_features, frechet_distance,
                                       inception_features, inception_score, load_statistics)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fid_inception_keys.json"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random state dict of the network saved like pytorch-fid's file (a plain dict of tensors)."""
    torch.manual_seed(0)
    model = FIDInception()
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(dict(model.state_dict()), path)
    return path, model.eval()


def test_state_dict_keys_and_shapes_are_pytorch_fid_s():
    expected = json.loads(FIXTURE.read_text())
    ours = [[key, list(value.shape)] for key, value in FIDInception().state_dict().items()]
    assert ours == expected and len(ours) == 566
    assert any(key == "Mixed_7c.branch3x3dbl_3b.conv.weight" for key, _ in ours)


def test_outputs_and_loading(weights):
    path, model = weights
    loaded = load_fid_inception(path)
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    features, logits = fid_inception_outputs(loaded, images, batch_size=2)
    assert features.shape == (3, 2048) and logits.shape == (3, 1008) and features.dtype == torch.float64
    with torch.no_grad():
        direct, _ = model(images.expand(-1, 3, -1, -1))
    assert torch.allclose(features.float(), direct, atol=1e-5)
    assert torch.allclose(logits, features @ loaded.fc.weight.double().T, atol=1e-4)
    assert torch.equal(inception_features(images, weights_path=path, batch_size=2), features)


def test_preprocess_is_bilinear_299_and_minus_one_to_one():
    x = FIDInception.preprocess(torch.full((1, 3, 8, 8), 0.75))
    assert x.shape == (1, 3, 299, 299) and torch.allclose(x, torch.full_like(x, 0.5))


def test_wrong_or_missing_weights_are_one_line_with_the_url(tmp_path, weights):
    with pytest.raises(FileNotFoundError) as err:
        load_fid_inception(tmp_path / "nope.pth")
    assert "\n" not in str(err.value) and FID_WEIGHTS_URL in str(err.value) and "nope.pth" in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    state = dict(torch.load(weights[0], weights_only=True))
    state["fc.weight"] = torch.zeros(10, 2048)
    reshaped = tmp_path / "reshaped.pth"
    torch.save(state, reshaped)
    for path, message in ((garbage, "not a torch state dict"), (other, "missing keys"),
                          (reshaped, "tensor shapes differ")):
        with pytest.raises(ValueError, match=message) as err:
            load_fid_inception(path)
        assert "\n" not in str(err.value) and FID_WEIGHTS_URL in str(err.value)


# ---------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_at_2048_dimensions():
    """A set against itself is ~0, also with fewer items than dimensions (a singular covariance); on a
    full-rank pair the value is scipy's ``sqrtm`` formula (pytorch-fid's) to 1e-6."""
    g = torch.Generator().manual_seed(0)
    few = torch.randn(600, 2048, generator=g, dtype=torch.float64)
    assert abs(fid_from_features(few, few)) < 1e-6
    a = torch.randn(2400, 2048, generator=g, dtype=torch.float64)
    b = 1.1 * torch.randn(2400, 2048, generator=g, dtype=torch.float64) + 0.05
    (m1, s1), (m2, s2) = feature_statistics(a), feature_statistics(b)
    assert abs(frechet_distance(m1, s1, m1, s1)) < 1e-6
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    reference = float(((m1 - m2) ** 2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(root).real
    assert abs(frechet_distance(m1, s1, m2, s2) - reference) < 1e-6


def test_reference_statistics_are_cached_in_pytorch_fid_format(tmp_path):
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    path = tmp_path / "ref" / "stats.npz"
    mu, sigma = cached_statistics(path, lambda: features)
    with np.load(path) as data:
        assert sorted(data.files) == ["mu", "sigma"] and data["sigma"].shape == (8, 8)
    again = cached_statistics(path, lambda: pytest.fail("statistics were recomputed"))
    assert torch.equal(again[0], mu) and torch.equal(again[1], sigma)
    assert torch.equal(load_statistics(path)[0], mu)


# ---------------------------------------------------------------------------------------- Inception score
def test_inception_score_against_its_definition():
    uniform = torch.zeros(100, 1008)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0))
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0
    assert inception_score(confident)[0] == pytest.approx(10.0, rel=1e-9)
    logits = torch.randn(200, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = torch.softmax(logits, 1).numpy()
    scores = [math.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 1)))
              for part in np.array_split(p, 10)]
    assert inception_score(logits) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits[:5])


def test_bench_comparison_with_pytorch_fid():
    pytest.importorskip("torchvision", reason="bench/inception_check.py needs torchvision (or its inception.py)")
    pytest.importorskip("pytorch_fid")
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "bench.inception_check"], cwd=FIXTURE.parents[2],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout + result.stderr
