"""Where a run's training batches come from, and the checks on them.

- :func:`training_data` / :class:`OneHotTargets`: the data set of a ``TrainConfig`` (class
  labels become one-hot concepts for models that use concepts), and :func:`model_for_data`,
  the model sized to it (image size, number of concepts and their frequencies).
- :func:`step_seed` / :class:`StepBatchSampler`: every random choice is a pure function of
  ``(seed, step)``, so the batch of a step is the same in a resumed run as in an uninterrupted one.
- :func:`device_split` / :func:`step_batches`: batches on the device, indexed from data rendered
  there once (the built-in shapes data on a GPU) or through a DataLoader.
- :func:`check_batch` / :func:`bad_images`: the value checks of the first batch, and the report
  naming the images of a batch that hold NaN/inf, values outside [0, 1] or non-0/1 concepts.

Used by :class:`mcm_core.train.Trainer`, which holds the state these functions are given.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mcm_core.config import TrainConfig
from mcm_core.data import load_dataset
from mcm_core.data.shapes_render import u8_to_float
from mcm_core.models import build_model, has
from mcm_core.models.backbone import check_image_values
from mcm_core.models.mcm import check_binary_concepts


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct 63-bit seed per (run seed, step, stream) (stream 0: data order, 1: masks)."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729 + 12_345) % (2 ** 63 - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for steps ``start .. steps - 1``; epoch ``e`` uses permutation ``seed(e)``.

    The batch of a step depends only on (seed, step), which makes resume exact.
    ``rank``/``world_size`` shard each global batch between processes.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size > size:
            raise ValueError(f"batch_size={batch_size} is larger than the data set ({size} images); "
                             "lower batch_size or use a larger split")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.steps, self.rank, self.world_size = start, steps, rank, world_size
        self.per_epoch = size // batch_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)  # the permutation of one epoch, cached

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.ids(step)

    def ids(self, step: int) -> list[int]:
        """This process's indices of the batch of ``step`` (a pure function of seed and step)."""
        epoch = step // self.per_epoch
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(self.size, generator=torch.Generator().manual_seed(step_seed(self.seed, epoch, 0)))
        first = (step % self.per_epoch) * self.batch_size
        return self._order[first:first + self.batch_size][self.rank::self.world_size].tolist()


class OneHotTargets(Dataset):
    """Wrap a class-labelled data set so targets are one-hot concept vectors (B, K) (MCM on class data)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.concept_names = dataset, list(dataset.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        return image, nn.functional.one_hot(torch.as_tensor(label), len(self.concept_names)).float()


def training_data(cfg: TrainConfig, split: str = "train") -> Dataset:
    """The data set of ``cfg``; class labels become one-hot concepts for models that use concepts."""
    dataset = load_dataset(cfg.dataset, split=split, **cfg.data)
    if has(cfg.method, "uses_concepts") and not hasattr(dataset, "concept_names"):
        if not hasattr(dataset, "classes"):
            raise ValueError(f"{cfg.method} needs concept labels, and data set {cfg.dataset!r} has none; "
                             "use shapes, celeba, or a class-labelled set (classes become one-hot concepts)")
        dataset = OneHotTargets(dataset)
    return dataset


def model_for_data(cfg: TrainConfig, dataset: Dataset) -> nn.Module:
    """Build ``cfg.method`` sized to the data (image size, number of concepts and their frequencies)."""
    overrides = dict(cfg.model)
    image = dataset[0][0]
    overrides.setdefault("img_size", int(image.shape[-1]))
    if has(cfg.method, "uses_concepts"):
        names = list(dataset.concept_names)
        overrides.setdefault("num_concepts", len(names))
        overrides.setdefault("concept_names", names)
        if hasattr(dataset, "concept_frequencies"):
            overrides.setdefault("concept_freq", [round(float(f), 6) for f in dataset.concept_frequencies()])
        else:  # one-hot classes: each class is as frequent as 1/K on balanced data
            overrides.setdefault("concept_freq", [1.0 / len(names)] * len(names))
    overrides.setdefault("mask_ratio", cfg.mask_ratio)
    if overrides.get("pixel_loss") == "palette" and overrides.get("pixel_palette") is None:
        if not hasattr(dataset, "pixel_palette"):
            raise ValueError(f"model.pixel_loss='palette' needs the colours pixels take; data set {cfg.dataset!r} "
                             "does not name them, so give model.pixel_palette (a list of [r, g, b] in [0, 1]) "
                             "or use model.pixel_loss='mse'")
        overrides["pixel_palette"] = [list(colour) for colour in dataset.pixel_palette]
    torch.manual_seed(cfg.seed)
    return build_model(cfg.method, cfg.preset, **overrides)


def check_batch(images: torch.Tensor, concepts: torch.Tensor | None = None) -> None:
    """Value checks, done once on the first batch (they synchronize): images (B, 3, H, W) in [0, 1]
    (no NaN), concept targets (B, K) all 0 or 1."""
    low, high = float(images.min()), float(images.max())
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise ValueError(f"images must be floats in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                         "divide uint8 images by 255, do not normalize by mean/std, and drop NaN images")
    if concepts is not None:
        check_binary_concepts(concepts)


def bad_images(dataset: Dataset, ids: list[int], uses_concepts: bool) -> str | None:
    """Which images of a batch (its indices ``ids`` into ``dataset``) are NaN, infinite or outside
    [0, 1], or whose concept targets are not 0/1; None when all are fine."""
    source = getattr(dataset, "dataset", dataset)  # OneHotTargets wraps the real data set
    paths = getattr(source, "paths", None)
    bad = []
    for index in ids:
        image, target = dataset[index]
        try:  # the model's own value checks, on one image
            check_image_values(image[None])
            if uses_concepts:
                check_binary_concepts(torch.as_tensor(target)[None])
        except ValueError:
            bad.append(f"{paths[index]}" if paths is not None else f"index {index}")
    if not bad:
        return None
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return f"{len(bad)} image(s) with NaN/inf, values outside [0, 1] or non-0/1 concepts ({shown})"


def device_split(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The whole split on ``device``, ``(uint8 images (N, 3, S, S), targets (N, K))``, or None.

    Only data sets that can render themselves on a device (the built-in shapes data), and on a
    GPU only when the pixels take at most a quarter of its memory.
    """
    make = getattr(dataset, "device_tensors", None)
    if make is None:
        return None
    if device.type == "cuda":
        pixels = len(dataset) * 3 * dataset.image_size ** 2
        if pixels > torch.cuda.get_device_properties(device).total_memory // 4:
            return None
    return make(device)


def step_batches(dataset: Dataset, sampler: StepBatchSampler, device: torch.device, num_workers: int,
                 device_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images (B, 3, S, S) float in [0, 1], targets)`` on ``device``, one batch per step of ``sampler``.

    With ``device_data`` (:func:`device_split`) each batch is an index into it (no DataLoader, no
    pixels copied from the host; the values equal the DataLoader's bit for bit). Otherwise a
    DataLoader with pinned memory (on a GPU) and non-blocking copies.
    """
    if device_data is not None:
        images_u8, targets = device_data
        for ids in sampler:
            index = torch.tensor(ids)
            if images_u8.device != index.device:  # a pinned, non-blocking copy never stalls the host
                index = index.pin_memory().to(images_u8.device, non_blocking=True)
            yield u8_to_float(images_u8[index]), targets[index]
        return
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    for images, targets in loader:
        yield images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
