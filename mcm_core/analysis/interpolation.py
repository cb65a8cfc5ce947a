"""The test-time mask ratio, measured: how MCM's output moves from the visible patches to the concepts.

MCM fills the hidden patches from two sources: the visible patches and the concept
tokens. With few patches hidden the output is mostly the input; with many hidden the
concept tokens decide most of it, so an edited concept (a state embedding written into
its token, ``model.edit``) shows up more and more. This module computes that (a model in,
tensors and numbers out; eval mode, no gradients, the model's train/eval mode restored);
:mod:`mcm_core.viz.interpolation` draws it:

- :func:`interpolate`: one view, reconstruction and edited reconstruction under one mask.
- :func:`edit_grid`: mask ratios x concept edits for one image.
- :func:`measure_interpolation`: the measured curve over many images.

Masks are **nested**: each image gets one noise vector ``(L,)`` and a ratio hides its
``num_hidden(L, ratio)`` highest-noise patches, so raising the ratio only adds hidden
patches. Moving a ratio slider then changes how much is hidden, not which patches.

Concept states, one per concept: ``-1`` = keep the image's own token, ``0`` / ``1`` = write
that state's embedding into the token (``MultiLayerConceptMap.edit``'s convention).

Shapes: N or B images ``(B, 3, H, W)`` in ``[0, 1]``, K concepts, L patches, masks bool
``(B, L)`` with ``True`` = hidden (``docs/design.md``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from mcm_core.choices import check_mask_ratio
from mcm_core.evaluate import binary_targets, check_image_batch, eval_mode, model_device
from mcm_core.evaluate.reconstruction import check_editable, decode_edited
from mcm_core.masking import mask_noise, nested_mask
from mcm_core.models.mcm import KEEP, EditsLike, concept_states

__all__ = [
    "KEEP", "check_mask_ratio", "concept_states", "describe_states", "mask_noise", "nested_mask",
    "Interpolation", "interpolate", "EditGrid", "edit_grid", "InterpolationCurve", "measure_interpolation",
]

StatesLike = EditsLike  # K states, {concept_index: state} or a (B, K) tensor; see concept_states


# =========================================================================== validation


def describe_states(states: StatesLike, concept_names: Sequence[str]) -> str:
    """``"red=1, large=0"`` for the edited concepts of one state vector (K,), or ``"no edit"``."""
    row = concept_states(states, len(concept_names), 1)[0]
    edits = [f"{name}={int(s)}" for name, s in zip(concept_names, row.tolist()) if s != KEEP]
    return ", ".join(edits) if edits else "no edit"


# =========================================================================== masks


# =========================================================================== one view
@dataclass
class Interpolation:
    """One view of the interpolation: B images under one mask, without and with concept edits.

    Attributes:
        images: (B, 3, H, W) the inputs.
        mask: bool (B, L), True = hidden.
        reconstruction: (B, 3, H, W) visible patches from the input, hidden ones decoded.
        edited: (B, 3, H, W) the same with the concept ``states`` written into the tokens.
        states: long (B, K) -1 (keep), 0 or 1.
        mask_ratio: the test-time mask ratio.
    """

    images: Tensor
    mask: Tensor
    reconstruction: Tensor
    edited: Tensor
    states: Tensor
    mask_ratio: float


def interpolate(model: nn.Module, images: Tensor, mask_ratio: float, states: StatesLike,
                noise: Tensor) -> Interpolation:
    """Reconstruct ``images`` at ``mask_ratio`` with and without the concept ``states``.

    Args:
        images: (B, 3, H, W) in [0, 1].
        mask_ratio: in [0, 1): the share of patches the decoder must generate.
        states: K states for every image (-1 keep, 0, 1), ``{index: state}``, or a (B, K) tensor.
        noise: (B, L) from :func:`mask_noise`; the mask is ``nested_mask(noise, mask_ratio)``.
    Returns:
        An :class:`Interpolation` on the CPU.
    """
    check_editable(model)
    check_image_batch(images)
    b, num_patches = images.shape[0], model.cfg.num_patches
    if tuple(noise.shape) != (b, num_patches):
        raise ValueError(f"noise must have shape (B, L) = {(b, num_patches)}, got {tuple(noise.shape)}; "
                         "draw it with mask_noise(len(images), model.cfg.num_patches, generator)")
    ratio = check_mask_ratio(mask_ratio)
    states = concept_states(states, model.cfg.num_concepts, b)
    device = model_device(model)
    images, mask = images.to(device), nested_mask(noise, ratio).to(device)
    with eval_mode(model):
        encoded = model.forward_encoder(images, mask=mask)
        reconstruction = model.composite(images, model.forward_decoder(encoded), mask)
        edited = decode_edited(model, images, encoded, states.to(device))
    return Interpolation(images.cpu(), mask.cpu(), reconstruction.cpu(), edited.cpu(), states, ratio)


# =========================================================================== the grid
@dataclass
class EditGrid:
    """One image under several mask ratios (rows) and concept edits (columns).

    Attributes:
        image: (3, H, W) the input.
        ratios: R mask ratios; masks: bool (R, L), nested (one noise for every row).
        labels: E names of the edits (column titles); states: long (E, K).
        outputs: (R, E, 3, H, W) the reconstruction under each (ratio, edit).
    """

    image: Tensor
    ratios: list[float]
    masks: Tensor
    labels: list[str]
    states: Tensor
    outputs: Tensor


def edit_grid(model: nn.Module, image: Tensor, ratios: Sequence[float], edits: Mapping[str, StatesLike],
              noise: Tensor) -> EditGrid:
    """Reconstruct one image for every (mask ratio, concept edit) pair.

    Args:
        image: (3, H, W) or (1, 3, H, W).
        ratios: R mask ratios in [0, 1).
        edits: ``{column name: states}`` (K states or ``{index: state}``), e.g.
            ``{"no edit": {}, "red": {3: 1, 4: 0, 5: 0}}``.
        noise: (1, L) or (L,) from :func:`mask_noise`: every row hides a superset of the row above
            when the ratios grow.
    Returns:
        An :class:`EditGrid` on the CPU.
    """
    image = image[None] if image.ndim == 3 else image
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"edit_grid takes one image (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    if not ratios:
        raise ValueError("ratios is empty; pass at least one mask ratio, e.g. [0.0, 0.5, 0.9]")
    if not isinstance(edits, Mapping) or not edits:
        raise ValueError("edits must be a non-empty dict {column name: concept states}, e.g. {'no edit': {}}")
    k = model.cfg.num_concepts
    states = torch.cat([concept_states(s, k, 1) for s in edits.values()])  # (E, K)
    e = states.shape[0]
    noise = noise.reshape(1, -1).expand(e, -1)  # one mask for the whole row
    views = [interpolate(model, image.expand(e, -1, -1, -1), r, states, noise) for r in ratios]
    return EditGrid(image[0].cpu(), [v.mask_ratio for v in views], torch.stack([v.mask[0] for v in views]),
                    [str(label) for label in edits], states, torch.stack([v.edited for v in views]))


# =========================================================================== the curve
@dataclass
class InterpolationCurve:
    """How the output moves from the input to the concepts as the mask ratio grows (R ratios).

    Attributes:
        ratios: R test-time mask ratios.
        input_distance: (R,) mean |reconstruction - input| per pixel value (0 = the input itself).
        edit_distance: (R,) mean |edited - reconstruction| per pixel value: how much one concept edit
            changes the output, averaged over the edited concepts.
        edit_success: (R,) fraction of (image, concept) edits whose re-encoded prediction
            (``model.predict_concepts(edited)``, nothing hidden) flips as asked.
        edit_success_per_concept: (R, C) the same per edited concept.
        concepts_kept: (R,) fraction of the N x K (image, concept) pairs whose true label the unedited
            reconstruction, re-encoded with nothing hidden, still predicts.
        concept_indices: the C edited concepts; num_images: N.
    """

    ratios: list[float]
    input_distance: np.ndarray
    edit_distance: np.ndarray
    edit_success: np.ndarray
    edit_success_per_concept: np.ndarray
    concepts_kept: np.ndarray
    concept_indices: list[int]
    num_images: int


def check_curve_inputs(model: nn.Module, images: Tensor, labels: Tensor, ratios: Sequence[float],
                       concept_indices: Sequence[int] | None) -> tuple[Tensor, list[float], list[int]]:
    """Validate :func:`measure_interpolation`'s inputs: -> long labels (N, K), ratios, concept indices."""
    check_editable(model)
    check_image_batch(images)
    k = model.cfg.num_concepts
    labels = binary_targets(torch.as_tensor(labels).cpu(), "labels").long()
    if tuple(labels.shape) != (images.shape[0], k):
        raise ValueError(f"labels must have shape (N, K) = {(images.shape[0], k)} (the true 0/1 state of each "
                         f"concept), got {tuple(labels.shape)}")
    if len(ratios) == 0:
        raise ValueError("ratios is empty; pass the mask ratios to measure, e.g. [0.0, 0.25, 0.5, 0.75, 0.9]")
    ratios = [check_mask_ratio(r, "each ratio") for r in ratios]
    indices = list(range(k)) if concept_indices is None else [int(i) for i in concept_indices]
    if not indices or any(not 0 <= i < k for i in indices):
        raise ValueError(f"concept_indices must be a non-empty list of indices in [0, {k}), got {concept_indices!r}")
    return labels, ratios, indices


def measure_batch(model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor,
                  indices: list[int]) -> dict[str, Tensor]:
    """Summed measurements of one batch at one mask (see :class:`InterpolationCurve`).

    Args:
        images: (B, 3, H, W); labels: long (B, K); mask: bool (B, L).
    Returns:
        float sums: ``input`` and ``edit`` (absolute pixel differences), ``kept`` (correct concepts),
        ``wins`` (C,) successful edits per concept.
    """
    encoded = model.forward_encoder(images, mask=mask)
    reconstruction = model.composite(images, model.forward_decoder(encoded), mask)
    kept = ((model.predict_concepts(reconstruction) > 0).long() == labels).sum()
    wins, edit = [], torch.zeros(())
    for k in indices:
        states = torch.full_like(labels, KEEP)
        states[:, k] = 1 - labels[:, k]  # ask for the opposite of the true state, as evaluate.edit_success_rate
        edited = decode_edited(model, images, encoded, states)
        wins.append(((model.predict_concepts(edited)[:, k] > 0).long() == states[:, k]).sum())
        edit = edit + (edited - reconstruction).abs().sum().cpu()
    return {"input": (reconstruction - images).abs().sum().cpu(), "edit": edit, "kept": kept.cpu(),
            "wins": torch.stack(wins).cpu()}


def measure_interpolation(model: nn.Module, images: Tensor, labels: Tensor, ratios: Sequence[float],
                          concept_indices: Sequence[int] | None = None, generator: torch.Generator | None = None,
                          batch_size: int = 64) -> InterpolationCurve:
    """Measure, at every mask ratio, how far the output is from the input and how well edits take.

    Each image gets one noise vector (from ``generator``) for all ratios, so the masks are
    nested and the curve changes only through the ratio. At each ratio and for each concept
    k in ``concept_indices``, every image is edited to the opposite of its true state of k
    (the others kept) under that one mask; an edit succeeds when the edited image, re-encoded
    with nothing hidden, predicts the asked state (``evaluate.edit_success_rate``'s definition:
    for a single ratio, with all N images in one batch of each, the two give the same numbers).

    Args:
        images: (N, 3, H, W) in [0, 1]; labels: (N, K) true 0/1 concepts.
        ratios: R mask ratios in [0, 1).
        concept_indices: the concepts to edit (default all K); choose ones the model reads
            reliably, or the success rate measures its reading errors too.
        batch_size: images per forward pass (64 ran fastest on a CPU: larger batches spend time
            in the memory allocator).
    Returns:
        An :class:`InterpolationCurve`.
    """
    labels, ratios, indices = check_curve_inputs(model, images, labels, ratios, concept_indices)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n, k = labels.shape
    noise = mask_noise(n, model.cfg.num_patches, generator)  # (N, L): one per image, shared by every ratio
    device = model_device(model)
    rows = []
    with eval_mode(model):
        for ratio in ratios:
            sums: dict[str, Tensor] = {}
            for start in range(0, n, batch_size):
                part = slice(start, start + batch_size)
                batch = measure_batch(model, images[part].to(device), labels[part].to(device),
                                      nested_mask(noise[part], ratio).to(device), indices)
                sums = {key: sums.get(key, 0) + value for key, value in batch.items()}
            rows.append(sums)
    pixels = float(images[0].numel()) * n
    per_concept = np.stack([r["wins"].double().numpy() / n for r in rows])  # (R, C)
    return InterpolationCurve(
        ratios=ratios,
        input_distance=np.array([float(r["input"]) / pixels for r in rows]),
        edit_distance=np.array([float(r["edit"]) / (pixels * len(indices)) for r in rows]),
        edit_success=per_concept.mean(axis=1),
        edit_success_per_concept=per_concept,
        concepts_kept=np.array([float(r["kept"]) / (n * k) for r in rows]),
        concept_indices=indices,
        num_images=n,
    )
