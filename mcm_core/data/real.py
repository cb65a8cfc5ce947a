"""Loaders for real images: Fashion-MNIST, scikit-learn digits, CelebA, a folder of images.

Every loader returns a torch Dataset of ``(image float (3, S, S) in [0, 1], target)``;
grey images are repeated to 3 channels. Nothing is ever downloaded: a missing file
raises an error that names the path and says how to get the data.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mcm_core.data.celeba import CELEBA_ATTRIBUTES_DEFAULT, CelebA
from mcm_core.data.idx import read_idx
from mcm_core.data.imageops import (
    ALPHA_BACKGROUND, check_readable_dir, check_size, describe_error, grey_to_rgb, image_extensions,
    load_rgb, probe_image, resize,
)

__all__ = [
    "FashionMNIST", "Digits", "CelebA", "ImageFolder", "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOTS", "CELEBA_ATTRIBUTES_DEFAULT", "IMAGE_EXTENSIONS", "ALPHA_BACKGROUND",
    "UnreadableImagesError",
]

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Where Debian's package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_ROOTS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS: tuple[str, ...] = image_extensions()
"""Every extension (lower case) of a format the installed Pillow decodes: png, jpg, tif, gif, webp, ..."""
# Image formats that this Pillow cannot decode: the folder loader names such files instead of
# skipping them silently. Other extensions (.txt, .csv, ...) are skipped without a word.
FOREIGN_IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".heic", ".heif", ".avif", ".jxl", ".svg", ".eps", ".ps", ".exr", ".hdr", ".raw", ".dng",
    ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw",
}) - set(IMAGE_EXTENSIONS)
SCAN_PROGRESS_MIN = 500  # folders with more images than this show a progress bar while checked
SMALL_IMAGE_FRACTION = 0.5  # images whose shorter side is under this x image_size get a warning
LIST_AT_MOST = 20  # files named in one error or warning; the rest are counted


def _check_split(split: str, valid: list[str], dataset: str) -> str:
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for {dataset}; use one of {valid}")
    return split


class _ClassDataset(Dataset):
    """Grey uint8 images ``(N, H, W)`` with int labels; items are ``((3, S, S), int)``."""

    classes: list[str]

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, image_size: int) -> None:
        self.images, self.targets = images, labels.long()
        self.image_size = check_size(image_size)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        grey = self.images[idx].float().div_(255.0)[None]  # (1, H, W)
        return grey_to_rgb(resize(grey, self.image_size)), int(self.targets[idx])


def _find_file(roots: list[Path], name: str, tried: list[Path]) -> Path | None:
    """The first existing ``root/name`` or ``root/name.gz``; appends every candidate to tried."""
    for root in roots:
        for candidate in (root / name, root / f"{name}.gz"):
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    return None


class FashionMNIST(_ClassDataset):
    """Fashion-MNIST from its IDX files (raw or .gz); 28 x 28 grey, 10 classes.

    ``root`` defaults to :data:`FASHION_MNIST_ROOTS` (Debian's ``dataset-fashion-mnist``).
    Splits: ``train`` (60000) and ``test`` (10000). Items: ``(float (3, S, S), int)``.
    """

    def __init__(self, split: str = "train", root: str | Path | None = None,
                 image_size: int = 28) -> None:
        _check_split(split, list(_FASHION_FILES), "fashion_mnist")
        if root is not None and Path(root).exists():
            check_readable_dir(Path(root), "Fashion-MNIST folder")
        roots = [Path(root)] if root is not None else [Path(r) for r in FASHION_MNIST_ROOTS]
        tried: list[Path] = []
        paths = [_find_file(roots, name, tried) for name in _FASHION_FILES[split]]
        if None in paths:
            raise FileNotFoundError(
                f"Fashion-MNIST {split} files not found; tried: {', '.join(map(str, tried))}. "
                "Install them with `sudo apt-get install dataset-fashion-mnist` or pass "
                "root=<folder with the IDX files (train-images-idx3-ubyte[.gz], ...)>")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{paths[0]} and {paths[1]} do not match (images {images.shape}, "
                             f"labels {labels.shape}); re-install or re-download both files")
        super().__init__(torch.from_numpy(images.astype(np.uint8)),
                         torch.from_numpy(labels.astype(np.int64)), image_size)
        self.split, self.root = split, paths[0].parent
        self.classes = list(FASHION_MNIST_CLASSES)


class Digits(Dataset):
    """scikit-learn's bundled 8 x 8 digits (1797 images, no download), resized to S.

    Pixel values 0..16 are scaled to [0, 1]; a stratified 80/20 train/test split with
    seed 0. Items: ``(float (3, S, S), int)``; ``.classes`` = ``"0".."9"``.
    """

    def __init__(self, split: str = "train", image_size: int = 32) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        _check_split(split, ["train", "test"], "digits")
        check_size(image_size)
        digits = load_digits()
        index = np.arange(len(digits.target))
        train, test = train_test_split(index, test_size=0.2, random_state=0,
                                       stratify=digits.target)
        keep = np.sort(train if split == "train" else test)
        grey = torch.from_numpy(digits.images[keep] / 16.0).float()[:, None]  # (N, 1, 8, 8)
        self.images = resize(grey, image_size)  # (N, 1, S, S)
        self.targets = torch.from_numpy(digits.target[keep]).long()
        self.split, self.image_size = split, image_size
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return grey_to_rgb(self.images[idx]), int(self.targets[idx])


class UnreadableImagesError(ValueError):
    """Files under an image folder that do not decode; ``.bad`` lists ``(path, reason)``."""

    def __init__(self, message: str, bad: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.bad = bad


def _list_files(root: Path) -> list[Path]:
    """Every file under ``root`` (recursive), sorted by relative path, except hidden ones:
    names starting with "." (``.DS_Store``, macOS ``._*`` files) and everything in hidden
    folders (``.git/``, ``.ipynb_checkpoints/``)."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found.extend(Path(folder) / f for f in files if not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _listing(root: Path, items: list[tuple[Path, str]]) -> str:
    """Indented ``relative path: detail`` lines, at most :data:`LIST_AT_MOST`, then a count."""
    lines = [f"  {path.relative_to(root).as_posix()}: {detail}" for path, detail in items[:LIST_AT_MOST]]
    if len(items) > LIST_AT_MOST:
        lines.append(f"  ... and {len(items) - LIST_AT_MOST} more")
    return "\n".join(lines)


# (path, size in bytes, mtime in ns) -> (width, height) or the reason it failed: a folder is
# decoded once per process even when the train and evaluation loaders are both built.
_PROBED: dict[tuple[str, int, int], tuple[int, int] | str] = {}


def _probe(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` when ``path`` decodes, else a short reason."""
    try:
        stat = path.stat()
    except OSError as error:
        return describe_error(error)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _PROBED:
        if stat.st_size == 0:
            _PROBED[key] = "empty file (0 bytes)"
        else:
            try:
                _PROBED[key] = probe_image(path)
            except Exception as error:  # any decoder failure makes the file unusable
                _PROBED[key] = describe_error(error)
    return _PROBED[key]


def scan_images(paths: list[Path], progress: bool | None = None) -> list[tuple[int, int] | str]:
    """Decode every file (JPEGs at 1/8 scale) and return, in order, ``(width, height)`` or the
    reason it cannot be read. Uses a few threads (Pillow decodes outside the GIL) and a tqdm
    progress bar when ``progress`` (default: more than :data:`SCAN_PROGRESS_MIN` files)."""
    from tqdm.auto import tqdm

    show = len(paths) > SCAN_PROGRESS_MIN if progress is None else progress
    workers = min(8, os.cpu_count() or 1) if len(paths) > 64 else 1
    results: list[tuple[int, int] | str] = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc="checking images",
                                                    unit="file", disable=not show,
                                                    dynamic_ncols=True) as bar:
        for result in pool.map(_probe, paths) if workers > 1 else map(_probe, paths):
            results.append(result)
            bar.update()
    return results


class ImageFolder(Dataset):
    """The user's own images: every file under ``root`` (recursive, sorted by relative
    path) whose extension is a format Pillow decodes (:data:`IMAGE_EXTENSIONS`: png, jpg,
    tif, gif, webp, bmp, ...). Hidden files and folders (``.DS_Store``, macOS ``._*``
    files, ``.git/``) are ignored. Decoding (:func:`~mcm_core.data.imageops.read_image`)
    applies EXIF orientation, scales every bit depth to [0, 1] and composites transparency
    on :data:`ALPHA_BACKGROUND` (white); the image is centre-cropped to a square and
    resized to S.

    Every file is decoded once when the dataset is built, before any training: files that
    do not decode raise one :class:`UnreadableImagesError` listing all of them, or, with
    ``skip_unreadable=True``, are left out with one warning (``.skipped`` lists
    ``(path, reason)``). Images whose shorter side is under half of ``image_size`` get a
    warning (they are upscaled, hence blurry); image files in formats this Pillow cannot
    decode (HEIC, RAW, ...) are named in a warning.

    Items: ``(float (3, S, S), -1)`` (no labels). ``.paths`` lists the files used.
    """

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 image_size: int = 32, skip_unreadable: bool = False) -> None:
        _check_split(split, ["train", "all"], "folder (a folder has no splits)")
        if root is None:
            raise ValueError("the folder dataset needs root=<folder with your images>, "
                             "e.g. load_dataset('folder', root='~/pictures')")
        if not isinstance(skip_unreadable, bool):
            raise TypeError(f"skip_unreadable must be True or False, got {skip_unreadable!r}")
        self.image_size = check_size(image_size)
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {self.root} does not exist; "
                                    "pass root= an existing folder of images (png, jpg, tif, ...)")
        check_readable_dir(self.root, "image folder")
        files = _list_files(self.root)
        candidates = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        foreign = [p for p in files if p.suffix.lower() in FOREIGN_IMAGE_EXTENSIONS]
        if foreign:
            warnings.warn(
                f"image folder {self.root}: {len(foreign)} image file(s) in formats this Pillow cannot "
                f"decode are left out:\n{_listing(self.root, [(p, p.suffix.lower()) for p in foreign])}\n"
                "Convert them to PNG or JPEG (HEIC/HEIF: install the pillow-heif plugin; camera RAW: "
                "export from a RAW converter).", UserWarning, stacklevel=2)
        if not candidates:
            raise FileNotFoundError(f"no images (png, jpg, tif, gif, webp, ...; see IMAGE_EXTENSIONS) "
                                    f"found under {self.root}; put image files there or pass another root=")
        results = scan_images(candidates)
        bad = [(p, r) for p, r in zip(candidates, results) if isinstance(r, str)]
        sizes = [(p, r) for p, r in zip(candidates, results) if not isinstance(r, str)]
        if bad and not skip_unreadable:
            raise UnreadableImagesError(
                f"{len(bad)} of {len(candidates)} image files under {self.root} cannot be read:\n"
                f"{_listing(self.root, bad)}\n"
                "Delete or re-export (convert) these files, or leave them out with "
                "skip_unreadable=True (load_dataset('folder', root=..., skip_unreadable=True); "
                "in a config or --data: {skip_unreadable: true}).", bad)
        self.skipped: list[tuple[Path, str]] = bad
        if bad:
            warnings.warn(f"image folder {self.root}: skipping {len(bad)} of {len(candidates)} image "
                          f"files that cannot be read (skip_unreadable=True):\n{_listing(self.root, bad)}",
                          UserWarning, stacklevel=2)
        if not sizes:
            raise FileNotFoundError(f"none of the {len(candidates)} image files under {self.root} can "
                                    "be read; replace them with readable images or pass another root=")
        self.paths = [p for p, _ in sizes]
        limit = SMALL_IMAGE_FRACTION * self.image_size
        small = [(p, wh) for p, wh in sizes if min(wh) < limit]
        if small:
            path, (w, h) = small[0]
            warnings.warn(
                f"image folder {self.root}: {len(small)} of {len(sizes)} images are much smaller than "
                f"image_size={self.image_size} (shorter side under {limit:g} px), e.g. "
                f"{path.relative_to(self.root).as_posix()} ({w} x {h}); they are upscaled and will look "
                "blurry: pass a smaller image_size or use larger images.", UserWarning, stacklevel=2)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return load_rgb(self.paths[idx], self.image_size), -1
