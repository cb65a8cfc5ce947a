"""Loaders for real images: Fashion-MNIST, scikit-learn digits, CelebA, a folder of images.

Every loader returns a torch Dataset of ``(image float (3, S, S) in [0, 1], target)``;
grey images are repeated to 3 channels. Nothing is ever downloaded: a missing file
raises an error that names the path and says how to get the data.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mcm_core.data.celeba import CELEBA_ATTRIBUTES_DEFAULT, CelebA
from mcm_core.data.idx import read_idx
from mcm_core.data.imageops import check_readable_dir, check_size, grey_to_rgb, load_rgb, resize

__all__ = [
    "FashionMNIST", "Digits", "CelebA", "ImageFolder", "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOTS", "CELEBA_ATTRIBUTES_DEFAULT", "IMAGE_EXTENSIONS",
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
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


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


class ImageFolder(Dataset):
    """The user's own images: every png/jpg/jpeg/bmp/webp under ``root`` (recursive,
    sorted by relative path). Centre-cropped to a square and resized to S.

    Items: ``(float (3, S, S), -1)`` (no labels). ``.paths`` lists the files.
    """

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 image_size: int = 32) -> None:
        _check_split(split, ["train", "all"], "folder (a folder has no splits)")
        if root is None:
            raise ValueError("the folder dataset needs root=<folder with your images>, "
                             "e.g. load_dataset('folder', root='~/pictures')")
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {self.root} does not exist; "
                                    "pass root= an existing folder of png/jpg/bmp/webp images")
        check_readable_dir(self.root, "image folder")
        self.paths = sorted((p for p in self.root.rglob("*")
                             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                            key=lambda p: p.relative_to(self.root).as_posix())
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                                    f"{self.root}; put image files there or pass another root=")
        self.image_size = check_size(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return load_rgb(self.paths[idx], self.image_size), -1
