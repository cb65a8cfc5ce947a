"""CelebA (aligned faces, 40 binary attributes) from its standard directory layout::

    root/img_align_celeba/000001.jpg ...
    root/list_attr_celeba.txt      line 1: count; line 2: the 40 names; then "000001.jpg -1 1 ..."
    root/list_eval_partition.txt   "000001.jpg 0"  (0 train, 1 val, 2 test)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mcm_core.data.imageops import check_readable_dir, check_size, load_rgb

CELEBA_ATTRIBUTES_DEFAULT: tuple[str, ...] = (
    "Smiling", "Male", "Young", "Eyeglasses", "Wearing_Hat", "Bangs", "Blond_Hair",
    "Black_Hair", "Mustache", "Heavy_Makeup", "Pale_Skin",
)
CELEBA_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
CELEBA_CROP = 178  # the aligned images are 178 x 218; the centred square keeps the face
_HOW_TO_GET = ("CelebA cannot be downloaded automatically: get img_align_celeba.zip, "
               "list_attr_celeba.txt and list_eval_partition.txt from the official CelebA "
               "page (mmlab.ie.cuhk.edu.hk/projects/CelebA.html), unzip the images into "
               "<root>/img_align_celeba/, and pass root=<root> (or set MCM_CELEBA_ROOT)")


def default_root() -> Path:
    """``$MCM_CELEBA_ROOT`` if set, else ``~/data/celeba``."""
    return Path(os.path.expanduser(os.environ.get("MCM_CELEBA_ROOT", "~/data/celeba")))


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"CelebA: {path} is missing. {_HOW_TO_GET}")
    return path


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Parse ``list_attr_celeba.txt``: (attribute names, {file name: list of -1/1})."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a names line; the file is "
                         "truncated, re-download list_attr_celeba.txt")
    names = lines[1].split()
    rows: dict[str, list[int]] = {}
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise ValueError(f"{path}, line {number}: expected a file name and {len(names)} "
                             f"values, found {len(parts)} fields; re-download the file")
        rows[parts[0]] = [int(v) for v in parts[1:]]
    if int(lines[0].split()[0]) != len(rows):
        raise ValueError(f"{path}: header says {lines[0].split()[0]} images but lists "
                         f"{len(rows)}; the file is truncated, re-download it")
    return names, rows


def read_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt``: {file name: 0 train / 1 val / 2 test}."""
    partition: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            partition[parts[0]] = int(parts[1])
    return partition


def _select_columns(names: list[str], attributes: Sequence[str]) -> list[int]:
    if isinstance(attributes, str):
        attributes = [attributes]
    unknown = [a for a in attributes if a not in names]
    if unknown:
        raise ValueError(f"unknown CelebA attribute(s) {unknown}; valid names: {names}")
    return [names.index(a) for a in attributes]


class CelebA(Dataset):
    """CelebA faces with binary attribute targets.

    Items: ``(image float (3, S, S) in [0, 1], target float (K,) in {0, 1})`` where K =
    ``len(attributes)`` (default :data:`CELEBA_ATTRIBUTES_DEFAULT`, 11 attributes) and the
    file's -1/1 become 0/1. Images: centre crop 178 x 178, then resize to S (default 64).
    """

    def __init__(self, split: str = "train", root: str | Path | None = None,
                 attributes: Sequence[str] | None = None, image_size: int = 64) -> None:
        if split not in CELEBA_SPLITS:
            raise ValueError(f"unknown split {split!r} for celeba; "
                             f"use one of {list(CELEBA_SPLITS)}")
        self.root = Path(os.path.expanduser(str(root))) if root is not None else default_root()
        check_readable_dir(_require(self.root), "CelebA folder")
        self.image_dir = _require(self.root / "img_align_celeba")
        names, rows = read_attributes(_require(self.root / "list_attr_celeba.txt"))
        partition = read_partition(_require(self.root / "list_eval_partition.txt"))
        columns = _select_columns(names, attributes or CELEBA_ATTRIBUTES_DEFAULT)
        self.concept_names = [names[c] for c in columns]
        wanted = CELEBA_SPLITS[split]
        self.files = sorted(f for f, p in partition.items() if p == wanted)
        missing = [f for f in self.files if f not in rows]
        if missing:
            raise ValueError(f"{len(missing)} files of the partition list (e.g. {missing[0]}) "
                             "have no row in list_attr_celeba.txt; re-download both lists")
        values = torch.tensor([[rows[f][c] for c in columns] for f in self.files],
                              dtype=torch.float32).reshape(len(self.files), len(columns))
        self.targets = (values > 0).float()  # (N, K)
        self.split, self.image_size = split, check_size(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.image_dir / self.files[idx]
        if not path.is_file():
            raise FileNotFoundError(f"CelebA image {path} is missing; unzip img_align_celeba.zip "
                                    f"into {self.image_dir}")
        return load_rgb(path, self.image_size, crop=CELEBA_CROP), self.targets[idx]
