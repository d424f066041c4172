"""A folder of image files as a data set (``data.dataset = "folder"``, ``data.root = DIR``).

Files: every ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` and ``.bmp`` under the folder (searched
recursively, in sorted order; hidden names, those starting with ``.``, are skipped, and files of other
suffixes are not read, as torchvision's ``ImageFolder``). With ``labels_from_folders`` each direct
sub-folder is a class, numbered in sorted name order as ``ImageFolder`` numbers them; an image lying
directly in the folder is then an error.

Each image becomes uint8 grey levels (K = 256) of shape ``(channels, image_size, image_size)``:

1. Mode: RGB and L are kept; RGBA, LA and PA are composited on a white background
   (``c' = a c + (1 - a) 255``); P becomes RGB (RGBA, then white, when it has a transparent colour);
   CMYK and YCbCr become RGB; 1 (bilevel) becomes L; I;16 and I (16-bit grey, values 0..65535)
   become L as ``v >> 8``. Any other mode is an error.
2. Size: ``center_crop`` crops the largest centred square and resizes it with Pillow's LANCZOS filter
   (as EDM's ``dataset_tool.py``); ``resize`` squashes the whole image to the square with LANCZOS. An
   image already of the target size is not resampled; an image smaller than ``image_size`` (its short
   side for ``center_crop``, either side for ``resize``) is refused, never upscaled.
3. Channels: 1 takes Pillow's luma ``L = 0.299 R + 0.587 G + 0.114 B`` of colour images; 3 repeats a
   grey image to RGB.

Held-out split: the cache stores the items in the order of ``numpy.random.RandomState(0).permutation(N)`` (fixed, independent of
the run's seed); the last ``max(1, round(heldout_fraction N))`` rows are the held-out split and the
rest the training split, so both are contiguous slices of one memory map.

Cache: the first load writes ``folder-<key>.npy`` (uint8, ``(N, C, H, W)``) to ``<root>/.scoresde_cache``,
or, when the folder cannot be written, to ``<user cache>/folders`` (``default_cache_dir()``:
``$SCORESDE_CACHE``, ``$XDG_CACHE_HOME/scoresde`` or ``~/.cache/scoresde``). ``<key>`` hashes every
file's relative path, size and modification time and the conversion settings, so any change to the
folder or the settings writes a new cache. It is filled through a temporary file that is renamed when
complete (with a tqdm progress bar); later loads memory-map it (copy-on-write, the file is never changed).

Bad input (an empty folder, a file Pillow cannot read, a truncated file, an image smaller than
``image_size``, an unknown mode) is a one-line ``ValueError`` naming the file, and no cache is left behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_MODES = ("center_crop", "resize")
CHANNELS = (1, 3)
FOLDER_LEVELS = 256
SPLIT_SEED = 0                 # the held-out permutation's seed: the split never depends on the run
CACHE_FOLDER = ".scoresde_cache"
CACHE_VERSION = 1              # part of the cache key: bump when the conversion changes
WHITE = 255


@dataclass(frozen=True)
class FolderSettings:
    """How files become items; every field is part of the cache key."""

    image_size: int = 32           # items are image_size x image_size
    channels: int = 3              # 1 (grey) | 3 (RGB)
    resize: str = "center_crop"    # center_crop (largest centred square) | resize (squash)
    labels_from_folders: bool = False  # sub-folders are classes (sorted names)

    def __post_init__(self):
        if not (isinstance(self.image_size, int) and self.image_size >= 1):
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")


# ---------------------------------------------------------------------------------------- listing
def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted by relative path; hidden names skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _check_folder(root) -> Path:
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"data.root={str(root)!r} is not a folder (data.dataset='folder' reads the image "
                         f"files {', '.join(IMAGE_SUFFIXES)} under it)")
    return folder


def class_names(root) -> list[str]:
    """The class names of an image folder: its direct visible sub-folders, sorted (``ImageFolder``'s order)."""
    folder = _check_folder(root)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))


def list_folder(root, labels_from_folders: bool) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """The image files of ``root`` (sorted), their class labels ``(N,)`` (None without
    ``labels_from_folders``) and the class names; ``ValueError`` for an empty folder or class."""
    folder = _check_folder(root)
    if not labels_from_folders:
        files = _image_files(folder)
        if not files:
            raise ValueError(f"data.root={str(root)!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
        return files, None, []
    names = class_names(folder)
    if not names:
        raise ValueError(f"data.root={str(root)!r} has no sub-folders; data.labels_from_folders=True takes "
                         f"each sub-folder as a class")
    stray = [p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES]
    if stray:
        raise ValueError(f"{stray[0]}: with data.labels_from_folders=True every image must lie in a class "
                         f"sub-folder of {folder}")
    files, labels = [], []
    for label, name in enumerate(names):
        members = _image_files(folder / name)
        if not members:
            raise ValueError(f"{folder / name}: class folder {name!r} holds no image files")
        files += members
        labels += [label] * len(members)
    return files, np.asarray(labels, dtype=np.int64), names


# ---------------------------------------------------------------------------------------- one image
def _composite_on_white(image, colour_mode: str):
    """Alpha-composite an image with alpha on a white background: c' = a c + (1 - a) 255."""
    from PIL import Image
    rgba = image.convert("RGBA" if colour_mode == "RGB" else "LA")
    background = Image.new(rgba.mode, rgba.size, (WHITE,) * len(rgba.mode))
    return Image.alpha_composite(background.convert("RGBA"), rgba.convert("RGBA")).convert(colour_mode)


def _sixteen_bit(image, path) -> "object":
    """I;16 / I grey (0..65535) -> L by the top byte, v >> 8."""
    from PIL import Image
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{path}: mode {image.mode} with values outside 0..65535; only 16-bit grey is read")
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def to_standard_mode(image, path=""):
    """A Pillow image in mode RGB or L (the rules of step 1 in the module docstring); ``ValueError``
    naming ``path`` and the mode for any other mode."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "RGBA" or mode == "PA" or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image.convert("RGBA"), "RGB")
    if mode == "LA":
        return _composite_on_white(image, "L")
    if mode in ("P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        return _sixteen_bit(image, path)
    raise ValueError(f"{path}: image mode {mode!r} is not supported (RGB, L, RGBA, LA, P, PA, CMYK, YCbCr, 1, "
                     f"I;16 are)")


def _square(image, settings: FolderSettings, path):
    """Crop / squash to the ``image_size`` square with LANCZOS; refuse images smaller than it."""
    from PIL import Image
    size, (w, h) = settings.image_size, image.size
    small = min(w, h) < size
    if small:
        raise ValueError(f"{path}: {w}x{h} is smaller than data.image_size={size} (images are not upscaled)")
    if settings.resize == "center_crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return image


def read_image(path, settings: FolderSettings) -> np.ndarray:
    """One file as uint8 ``(channels, image_size, image_size)``; ``ValueError`` naming the file if
    Pillow cannot read it (not an image, truncated), it is too small or its mode is unknown."""
    from PIL import Image
    try:
        with Image.open(path) as opened:
            opened.load()                      # decodes every byte: a truncated file fails here
            image = to_standard_mode(opened, path)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    image = _square(image, settings, path)
    if settings.channels == 1:
        image = image.convert("L")             # ITU-R 601 luma
    array = np.asarray(image.convert("RGB") if settings.channels == 3 else image, dtype=np.uint8)
    return array.reshape(settings.image_size, settings.image_size, -1).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$SCORESDE_CACHE``, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``."""
    if os.environ.get("SCORESDE_CACHE"):
        return Path(os.environ["SCORESDE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scoresde"


def cache_key(folder: Path, files: list[Path], settings: FolderSettings) -> str:
    """Hash of every file's relative path, size and modification time and of the settings."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **asdict(settings)}, sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def split_permutation(n: int) -> np.ndarray:
    """The fixed order of the cache's rows: row j holds file ``perm[j]``."""
    return np.random.RandomState(SPLIT_SEED).permutation(n)


def _writable_cache_dir(folder: Path) -> Path:
    """``<folder>/.scoresde_cache`` if it can be created and written, else ``<user cache>/folders``."""
    candidate = folder / CACHE_FOLDER
    try:
        candidate.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=candidate):
            pass
        return candidate
    except OSError:
        fallback = default_cache_dir() / "folders"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _find_cache(folder: Path, name: str) -> Path | None:
    for candidate in (folder / CACHE_FOLDER / name, default_cache_dir() / "folders" / name):
        if candidate.is_file():
            return candidate
    return None


def _write_cache(path: Path, files: list[Path], order: np.ndarray, settings: FolderSettings) -> None:
    """Read ``files`` in ``order`` into a temporary ``.npy`` next to ``path``, then rename it there."""
    from tqdm.auto import tqdm
    shape = (len(files), settings.channels, settings.image_size, settings.image_size)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npy")
    os.close(handle)
    try:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        for row, index in enumerate(tqdm(order, desc=f"caching {path.parent.parent.name or 'images'}",
                                         unit="img", leave=False)):
            out[row] = read_image(files[index], settings)
        out.flush()
        del out
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cached_images(root, settings: FolderSettings) -> tuple[np.ndarray, np.ndarray | None, list[str], Path]:
    """Every item of the folder in the split order (a memory map of the cache, built on first use),
    their labels in the same order (or None), the class names and the cache file."""
    folder = _check_folder(root)
    files, labels, names = list_folder(folder, settings.labels_from_folders)
    name = f"folder-{cache_key(folder, files, settings)}.npy"
    order = split_permutation(len(files))
    path = _find_cache(folder, name)
    if path is None:
        path = _writable_cache_dir(folder) / name
        _write_cache(path, files, order, settings)
    images = np.load(path, mmap_mode="c")
    expected = (len(files), settings.channels, settings.image_size, settings.image_size)
    if images.shape != expected or images.dtype != np.uint8:
        raise ValueError(f"{path}: cache holds {images.dtype} {images.shape}, expected uint8 {expected}; delete it")
    return images, None if labels is None else labels[order], names, path


def heldout_count(n: int, heldout_fraction: float) -> int:
    """Held-out items of ``n``: ``max(1, round(heldout_fraction n))``, leaving at least one training item."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction!r}")
    if n < 2:
        raise ValueError(f"an image folder needs at least 2 images (one training, one held-out), got {n}")
    return min(max(1, round(heldout_fraction * n)), n - 1)


def read_folder(root, split: str, settings: FolderSettings, heldout_fraction: float = 0.05):
    """``(images (n, C, H, W) uint8, labels (n,) or None, class names)`` of ``split`` ("train": the
    first rows of the cache, "test": its last ``heldout_count`` rows)."""
    images, labels, names, _ = cached_images(root, settings)
    cut = len(images) - heldout_count(len(images), heldout_fraction)
    rows = slice(0, cut) if split == "train" else slice(cut, None)
    return images[rows], None if labels is None else labels[rows], names
