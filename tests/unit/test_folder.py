"""Image folders (``scoresde/data/folder.py``): listing and labels, mode conversion, cropping, the
held-out split, the cache, and a one-line ``ValueError`` naming the file for each kind of bad input."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.cli.factory import options_from_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.data import folder
from scoresde.data.datasets import dataset_classes, get_image_dataset, item_shape
from scoresde.data.folder import FolderSettings, cached_images, list_folder, read_folder, read_image, to_standard_mode


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "user_cache"))
    return tmp_path / "user_cache"


def save(path, array, mode=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode=mode).save(path, **kwargs)
    return path


def rgb(seed, size=8):
    return np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8)


def labelled_folder(root, per_class=10, size=8):
    for label, name in enumerate(("b_class", "a_class")):
        for i in range(per_class):
            save(root / name / f"{i}.png", np.full((size, size, 3), 40 + 150 * label, np.uint8))
    return root


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------- listing
def test_labels_are_sorted_subfolder_names_and_files_sorted(tmp_path):
    root = labelled_folder(tmp_path / "data")
    save(root / "a_class" / "nested" / "x.PNG", rgb(0))
    (root / "a_class" / "notes.txt").write_text("not read")
    (root / ".hidden").mkdir()
    files, labels, names = list_folder(root, labels_from_folders=True)
    assert names == ["a_class", "b_class"]
    assert len(files) == 21 and labels.tolist() == [0] * 11 + [1] * 10
    assert files[0].name == "0.png" and files[10].name == "x.PNG"
    files, labels, names = list_folder(root, labels_from_folders=False)
    assert len(files) == 21 and labels is None and names == []
    assert dataset_classes("folder", root, labels_from_folders=True) == 2
    assert dataset_classes("folder", root, labels_from_folders=False) == 0
    assert item_shape("folder", image_size=16, channels=1) == (1, 16, 16) and item_shape("digits") == (1, 8, 8)


def test_every_suffix_is_read(tmp_path):
    image = np.full((8, 8, 3), 100, np.uint8)
    for suffix in ("png", "jpg", "jpeg", "webp", "bmp"):
        save(tmp_path / f"x.{suffix}", image, **({"quality": 100} if suffix in ("jpg", "jpeg") else {}))
        out = read_image(tmp_path / f"x.{suffix}", FolderSettings(image_size=8))
        assert out.shape == (3, 8, 8) and out.dtype == np.uint8 and np.abs(out.astype(int) - 100).max() <= 2


# ---------------------------------------------------------------------------------------- conversion
def test_alpha_is_composited_on_white_and_modes_convert():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)            # opaque: kept
    rgba[0, 1] = (10, 20, 30, 0)              # transparent: white
    rgba[1, 0] = (0, 0, 0, 128)               # half: 127 or 128
    out = np.asarray(to_standard_mode(Image.fromarray(rgba, "RGBA")))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]
    assert abs(int(out[1, 0, 0]) - 127) <= 1
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    assert np.asarray(to_standard_mode(la)).tolist() == [[255, 50]]
    palette = Image.fromarray(rgba[..., :3]).convert("P")
    assert to_standard_mode(palette).mode == "RGB"
    palette.info["transparency"] = int(np.asarray(palette)[0, 1])
    assert np.asarray(to_standard_mode(palette))[0, 1].tolist() == [255, 255, 255]
    assert to_standard_mode(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.array([[0, 65535], [256, 511]], np.uint16))
    assert sixteen.mode == "I;16"
    assert np.asarray(to_standard_mode(sixteen)).tolist() == [[0, 255], [1, 1]]


@pytest.mark.parametrize("mode", ["F", "HSV"])
def test_unknown_mode_is_refused(mode):
    with pytest.raises(ValueError, match=f"img.png: image mode '{mode}' is not supported") as err:
        to_standard_mode(Image.new(mode, (4, 4)), "img.png")
    one_line(err)


def test_center_crop_takes_the_middle_square_and_resize_squashes(tmp_path):
    wide = np.zeros((8, 12, 3), np.uint8)
    wide[:, 2:10] = rgb(1)
    path = save(tmp_path / "wide.png", wide)
    assert np.array_equal(read_image(path, FolderSettings(image_size=8)), rgb(1).transpose(2, 0, 1))
    squashed = read_image(path, FolderSettings(image_size=8, resize="resize"))
    assert squashed.shape == (3, 8, 8) and not np.array_equal(squashed, rgb(1).transpose(2, 0, 1))
    grey = read_image(path, FolderSettings(image_size=4, channels=1))
    assert grey.shape == (1, 4, 4)
    luma = read_image(save(tmp_path / "red.png", np.full((4, 4, 3), (255, 0, 0), np.uint8)),
                      FolderSettings(image_size=4, channels=1))
    assert (luma == 76).all()                 # 0.299 * 255
    colour = read_image(save(tmp_path / "grey.png", np.full((4, 4), 9, np.uint8)), FolderSettings(image_size=4))
    assert colour.shape == (3, 4, 4) and (colour == 9).all()


# ---------------------------------------------------------------------------------------- bad input
def assert_nothing_cached(root, user_cache):
    for where in (root / ".scoresde_cache", user_cache / "folders"):
        assert not where.exists() or not any(where.iterdir()), list(where.iterdir())


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files") as err:
        read_folder(tmp_path / "empty", "train", FolderSettings())
    one_line(err)
    with pytest.raises(ValueError, match="has no sub-folders"):
        read_folder(tmp_path / "empty", "train", FolderSettings(labels_from_folders=True))
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(ValueError, match="cats.*holds no image files"):
        read_folder(tmp_path / "empty", "train", FolderSettings(labels_from_folders=True))
    with pytest.raises(ValueError, match="is not a folder"):
        read_folder(tmp_path / "missing", "train", FolderSettings())


def test_stray_image_beside_class_folders(tmp_path):
    root = labelled_folder(tmp_path / "data")
    save(root / "stray.png", rgb(0))
    with pytest.raises(ValueError, match="stray.png: with data.labels_from_folders=True"):
        read_folder(root, "train", FolderSettings(image_size=8, labels_from_folders=True))


@pytest.mark.parametrize("case", ["not_an_image", "truncated_png", "truncated_jpeg", "too_small"])
def test_bad_file_is_one_line_naming_it_and_nothing_is_written(case, tmp_path, user_cache):
    root = tmp_path / "data"
    for i in range(5):
        save(root / f"good{i}.png", rgb(i, 16))
    bad = root / ("bad.jpg" if case == "truncated_jpeg" else "bad.png")
    if case == "not_an_image":
        bad.write_text("this is text, not a PNG")
    elif case == "too_small":
        save(bad, rgb(0, 16)[:12])
    else:
        save(bad, rgb(7, 16), **({"quality": 95} if case == "truncated_jpeg" else {}))
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    expected = {"not_an_image": "not a readable image", "truncated_png": "not a readable image",
                "truncated_jpeg": "not a readable image", "too_small": r"16x12 is smaller than data.image_size=16"}
    with pytest.raises(ValueError, match=expected[case]) as err:
        read_folder(root, "train", FolderSettings(image_size=16))
    assert str(bad) in one_line(err)
    assert_nothing_cached(root, user_cache)


# ---------------------------------------------------------------------------------------- split and cache
def test_split_is_fixed_disjoint_and_labels_stay_aligned(tmp_path):
    root = labelled_folder(tmp_path / "data", per_class=20)
    settings = FolderSettings(image_size=8, labels_from_folders=True)
    train_x, train_y, names = read_folder(root, "train", settings, heldout_fraction=0.1)
    test_x, test_y, _ = read_folder(root, "test", settings, heldout_fraction=0.1)
    assert len(train_x) == 36 and len(test_x) == 4 and names == ["a_class", "b_class"]
    # a_class (label 0) was written with value 190, b_class (label 1) with 40
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert np.array_equal(x[:, 0, 0, 0], np.where(y == 0, 190, 40))
    assert 0 < train_y.sum() < 36                  # both classes in training: the order is shuffled
    again, _, _ = read_folder(root, "test", settings, heldout_fraction=0.1)
    assert np.array_equal(again, test_x)


def test_cache_is_memory_mapped_keyed_and_written_once(tmp_path):
    root = labelled_folder(tmp_path / "data")
    settings = FolderSettings(image_size=8)
    images, _, _, path = cached_images(root, settings)
    assert path.parent == root / ".scoresde_cache" and path.name.startswith("folder-")
    stamp = path.stat().st_mtime_ns
    images, _, _, again = cached_images(root, settings)
    assert again == path and path.stat().st_mtime_ns == stamp and isinstance(images, np.memmap)
    _, _, _, grey = cached_images(root, FolderSettings(image_size=8, channels=1))
    assert grey != path                           # other settings: another cache
    changed = root / "a_class" / "0.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    _, _, _, touched = cached_images(root, settings)
    assert touched != path                        # a changed file: another key
    assert not list((root / ".scoresde_cache").glob("*.tmp.npy"))


def test_cache_falls_back_to_the_user_cache_when_the_folder_is_read_only(tmp_path, user_cache, monkeypatch):
    root = labelled_folder(tmp_path / "data")

    def refuse(self, *args, **kwargs):
        raise PermissionError(f"read-only: {self}")
    monkeypatch.setattr(folder.Path, "mkdir", lambda self, *a, **k: (refuse(self) if self.name == ".scoresde_cache"
                                                                     else os.makedirs(self, exist_ok=True)))
    images, _, _, path = cached_images(root, FolderSettings(image_size=8))
    assert path.parent == user_cache / "folders" and not (root / ".scoresde_cache").exists()
    assert len(images) == 20


def test_registry_and_config(tmp_path):
    root = labelled_folder(tmp_path / "data")
    data = get_image_dataset("folder", root, "test", image_size=8, labels_from_folders=True)
    assert data.class_names == ("a_class", "b_class") and data.num_levels == 256 and data.shape == (3, 8, 8)
    assert data.images.dtype == torch.uint8 and len(data) == 1
    config = digits_config()
    config.data.dataset, config.data.root, config.data.image_size = "folder", str(root), 8
    config.model.nf, config.model.ch_mult, config.model.attn_resolutions = 8, (1,), ()
    assert options_from_config(config).data.loader_kwargs["image_size"] == 8
    config.data.labels_from_folders, config.model.num_classes = True, 3
    with pytest.raises(ValueError, match="num_classes must be 2"):
        options_from_config(config)
    for field, value, message in (("resize", "stretch", "data.resize must be one of"),
                                  ("channels", 2, "data.channels must be one of"),
                                  ("heldout_fraction", 1.0, "data.heldout_fraction"),
                                  ("image_size", 0, "data.image_size must be an integer >= 1")):
        bad = digits_config()
        bad.data[field] = value
        with pytest.raises(ValueError, match=message):
            options_from_config(bad)
