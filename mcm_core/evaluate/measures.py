"""What a student should see MCM do, as numbers: sharp reconstructions, the right colours, edits that take.

Four measures on the built-in shapes data, whose object masks and colours are known exactly.
Every one is taken on **hidden** pixels only (visible patches are copied from the input and
would only flatter the score), under one mask per image:

- **hidden-pixel PSNR**: ``10 log10(1 / MSE)`` of the pooled squared error over every hidden
  pixel value, predictions clipped to [0, 1] (as :func:`mcm_core.evaluate.reconstruction_metrics`);
- **colour fidelity**: the share of hidden *object* pixels whose nearest palette colour (the
  four object colours and the two background greys) is the object's own colour;
- **colour-edit following**: the same share for the *target* colour after an edit that sets the
  target's concept (one of red / green / blue other than the object's own) to 1 and the object's
  own colour concept to 0 (yellow has no concept of its own: it is the absence of the three).
  Every possible target is scored, decoded from the same encoder pass and mask as the
  unedited reconstruction, so only the concept tokens differ;
- **the curve** of the three against the test-time mask ratio, with nested masks (one noise
  vector per image, :func:`mcm_core.masking.nested_mask`): raising the ratio only hides
  more patches.

Shapes: N images ``(N, 3, S, S)`` in [0, 1]; object masks long ``(N, S, S)`` with 0 = background
and ``i`` = object slot ``i - 1``; slot colours long ``(N, M)`` indexing
:data:`mcm_core.data.shapes_factors.COLOUR_NAMES`; L patches, masks bool ``(N, L)``, True = hidden.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch import Tensor

from mcm_core.choices import check_mask_ratio
from mcm_core.devices import explicit_attention
from mcm_core.evaluate.reconstruction import check_editable, decode_edited
from mcm_core.masking import mask_noise, nested_mask
from mcm_core.data.shapes_factors import COLOUR_NAMES, CONCEPT_NAMES, PIXEL_COLOURS_U8
from mcm_core.evaluate.inputs import check_image_batch, eval_mode, model_device

__all__ = ["CURVE_RATIOS", "PALETTE", "ShapesMeasures", "colour_edit_states", "nearest_palette",
           "measure_shapes", "measure_shapes_curve", "measure_dataset", "summary"]

CURVE_RATIOS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
# Rows 0-3: the object colours (COLOUR_NAMES order); rows 4-5: the light and dark background greys.
PALETTE: Tensor = torch.tensor(PIXEL_COLOURS_U8, dtype=torch.float32) / 255
EDITABLE = ("red", "green", "blue")  # colours with a concept of their own; yellow is "none of them"


@dataclass
class ShapesMeasures:
    """The measures at one test-time mask ratio (sums kept so batches and images can be pooled).

    Attributes:
        mask_ratio: the test-time mask ratio.
        squared_error, values: summed squared error and count of hidden pixel values (for PSNR).
        object_pixels, own_colour: hidden object pixels, and those whose nearest palette colour is
            the object's own (colour fidelity).
        edit_pixels, target_colour: hidden object pixels over every colour edit, and those whose
            nearest palette colour is the edit's target (colour-edit following).
    """

    mask_ratio: float
    squared_error: float = 0.0
    values: int = 0
    object_pixels: int = 0
    own_colour: int = 0
    edit_pixels: int = 0
    target_colour: int = 0

    @property
    def psnr(self) -> float:
        """Hidden-pixel PSNR in dB (inf when nothing was wrong, nan when nothing was hidden)."""
        if not self.values:
            return math.nan
        mse = self.squared_error / self.values
        return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf

    @property
    def colour_fidelity(self) -> float:
        """Share of hidden object pixels reconstructed in the object's own colour (nan if none hidden)."""
        return self.own_colour / self.object_pixels if self.object_pixels else math.nan

    @property
    def edit_following(self) -> float:
        """Share of hidden object pixels in the target colour after a colour edit (nan if none hidden)."""
        return self.target_colour / self.edit_pixels if self.edit_pixels else math.nan

    def __add__(self, other: "ShapesMeasures") -> "ShapesMeasures":
        if other.mask_ratio != self.mask_ratio:
            raise ValueError(f"cannot pool measures of mask ratios {self.mask_ratio} and {other.mask_ratio}")
        return replace(self, **{k: getattr(self, k) + getattr(other, k) for k in
                                ("squared_error", "values", "object_pixels", "own_colour", "edit_pixels",
                                 "target_colour")})

    def to_dict(self) -> dict[str, float]:
        return {"mask_ratio": self.mask_ratio, "psnr": self.psnr, "colour_fidelity": self.colour_fidelity,
                "edit_following": self.edit_following}


def nearest_palette(images: Tensor) -> Tensor:
    """Index of the nearest palette colour of every pixel: (B, 3, H, W) -> long (B, H, W) (rows of PALETTE)."""
    palette = PALETTE.to(images.device)
    best = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.long, device=images.device)
    nearest = torch.full(best.shape, math.inf, device=images.device)
    for index, colour in enumerate(palette):  # one (B, H, W) distance at a time: bounded memory at 224 px
        distance = ((images - colour[None, :, None, None]) ** 2).sum(dim=1)
        closer = distance < nearest
        best, nearest = torch.where(closer, index, best), torch.where(closer, distance, nearest)
    return best


def colour_edit_states(colours: Tensor, num_concepts: int,
                       concept_names: Sequence[str] = CONCEPT_NAMES) -> list[tuple[Tensor, Tensor]]:
    """Every colour edit of a batch of one-object images: a list of (states long (B, K), target long (B,)).

    Edit ``j`` asks each image for the ``j``-th colour of red / green / blue other than its own
    (yellow objects have three such targets, the others two; rows without a ``j``-th target get
    target -1 and states that change nothing). The target's concept is set to 1 and the object's
    own colour concept (if it has one) to 0; every other concept is kept (-1).

    Args:
        colours: long (B,) each image's object colour, an index into COLOUR_NAMES.
    """
    index = {name: concept_names.index(name) for name in EDITABLE}
    rows = []
    for j in range(len(EDITABLE)):
        states = torch.full((colours.shape[0], num_concepts), -1, dtype=torch.long)
        target = torch.full((colours.shape[0],), -1, dtype=torch.long)
        for i, own in enumerate(colours.tolist()):
            choices = [c for c in EDITABLE if c != COLOUR_NAMES[own]]
            if j >= len(choices):
                continue
            colour = choices[j]
            states[i, index[colour]] = 1
            if COLOUR_NAMES[own] in index:
                states[i, index[COLOUR_NAMES[own]]] = 0
            target[i] = COLOUR_NAMES.index(colour)
        rows.append((states, target))
    return rows


def pixel_mask(mask: Tensor, patch_size: int) -> Tensor:
    """Patch mask bool (B, L) on a square grid -> pixel mask bool (B, H, W)."""
    side = int(round(mask.shape[1] ** 0.5))
    grid = mask.reshape(mask.shape[0], side, side)
    return grid.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)


def check_shapes_inputs(model: nn.Module, images: Tensor, object_masks: Tensor, colours: Tensor) -> None:
    """Clear errors for what :func:`measure_shapes` cannot score."""
    check_editable(model)
    check_image_batch(images)
    n, s = images.shape[0], images.shape[-1]
    if tuple(object_masks.shape) != (n, s, s):
        raise ValueError(f"object_masks must have shape (N, S, S) = {(n, s, s)} (0 = background, i = object "
                         f"slot i - 1), got {tuple(object_masks.shape)}; take them from ShapesDataset.batch")
    if colours.ndim != 2 or colours.shape[0] != n:
        raise ValueError(f"colours must have shape (N, M) (each object slot's colour index), got "
                         f"{tuple(colours.shape)}; take them from ShapesDataset.batch(...).factors['colour']")
    if int(object_masks.max()) > 1:
        raise ValueError("colour measures need one object per image (min_objects = max_objects = 1); "
                         "an edit of one colour concept is ambiguous with several objects")
    names = getattr(model.cfg, "concept_names", None) or []
    missing = [c for c in EDITABLE if c not in names]
    if missing:
        raise ValueError(f"the model has no concept named {missing}; the colour measures need an MCM trained "
                         "on the shapes data (concepts red, green, blue)")


@torch.no_grad()
def measure_shapes(model: nn.Module, images: Tensor, object_masks: Tensor, colours: Tensor, mask: Tensor,
                   mask_ratio: float) -> ShapesMeasures:
    """The four measures of one batch under one mask (see the module docstring).

    Args:
        images: (B, 3, S, S); object_masks: long (B, S, S); colours: long (B, M); mask: bool (B, L).
        mask_ratio: the ratio ``mask`` was drawn at (recorded, not used to draw).
    """
    device = images.device
    names = list(model.cfg.concept_names)
    encoded = model.forward_encoder(images, mask=mask)
    pred = model.forward_decoder(encoded).clamp(0, 1)  # (B, L, p*p*3)
    hidden = mask[..., None]
    error = ((pred - model.patchify(images)) ** 2 * hidden).sum()
    out = ShapesMeasures(mask_ratio, float(error), int(mask.sum()) * pred.shape[-1])
    scored = pixel_mask(mask, model.cfg.patch_size) & (object_masks > 0)  # hidden object pixels (B, S, S)
    own = colours[:, 0].to(device)  # one object: slot 0
    nearest = nearest_palette(model.composite(images, pred, mask))
    out.object_pixels = int(scored.sum())
    out.own_colour = int((scored & (nearest == own[:, None, None])).sum())
    for states, target in colour_edit_states(colours[:, 0].cpu(), model.cfg.num_concepts, names):
        states, target = states.to(device), target.to(device)
        colour = nearest_palette(decode_edited(model, images, encoded, states))
        counted = scored & (target >= 0)[:, None, None]
        out.edit_pixels += int(counted.sum())
        out.target_colour += int((counted & (colour == target[:, None, None])).sum())
    return out


def measure_shapes_curve(model: nn.Module, images: Tensor, object_masks: Tensor, colours: Tensor,
                         ratios: Sequence[float] = CURVE_RATIOS, generator: torch.Generator | None = None,
                         batch_size: int = 200) -> list[ShapesMeasures]:
    """The measures at every test-time mask ratio, with nested masks (one noise vector per image).

    Args:
        images: (N, 3, S, S) in [0, 1]; object_masks: long (N, S, S); colours: long (N, M).
        ratios: test-time mask ratios in [0, 1).
        generator: source of the per-image noise (CPU); same generator state, same masks.
    Returns:
        One pooled :class:`ShapesMeasures` per ratio, in the order given.
    """
    check_shapes_inputs(model, images, object_masks, colours)
    ratios = [check_mask_ratio(r, "each ratio") for r in ratios]
    noise = mask_noise(images.shape[0], model.cfg.num_patches, generator)  # (N, L)
    device = model_device(model)
    pooled = [ShapesMeasures(r) for r in ratios]
    # On a CPU explicit attention is 1.3x faster here too (docs/benchmarks.md) and equal to the fused kernel.
    with eval_mode(model), explicit_attention(model, device.type == "cpu"):
        for start in range(0, images.shape[0], batch_size):
            part = slice(start, start + batch_size)
            batch = images[part].to(device)
            for i, ratio in enumerate(ratios):
                mask = nested_mask(noise[part], ratio).to(device)
                pooled[i] = pooled[i] + measure_shapes(model, batch, object_masks[part].to(device),
                                                       colours[part], mask, ratio)
    return pooled


def measure_dataset(model: nn.Module, dataset, ratios: Sequence[float] = CURVE_RATIOS, num_images: int = 600,
                    seed: int = 0) -> list[ShapesMeasures]:
    """:func:`measure_shapes_curve` on the first ``num_images`` images of a :class:`ShapesDataset`.

    Use a split the model was not trained on (``load_dataset("shapes", split="test")``).
    """
    if not hasattr(dataset, "batch") or not hasattr(dataset, "factors"):
        raise TypeError(f"the colour measures need the built-in shapes data (a ShapesDataset), got "
                        f"{type(dataset).__name__}; load it with load_dataset('shapes', split='test')")
    batch = dataset.batch(range(min(num_images, len(dataset))))
    return measure_shapes_curve(model, batch.images, batch.object_masks, batch.factors["colour"], ratios,
                                torch.Generator().manual_seed(seed))


def summary(measures: Sequence[ShapesMeasures]) -> str:
    """One line per ratio: ``ratio 0.50  PSNR 24.1 dB  colour 0.93  edit 0.91``."""
    return "\n".join(f"ratio {m.mask_ratio:.2f}  PSNR {m.psnr:5.2f} dB  colour fidelity {m.colour_fidelity:.3f}  "
                     f"edit following {m.edit_following:.3f}" for m in measures)

