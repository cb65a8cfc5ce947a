"""What a model draws: pixel MSE / PSNR of the hidden patches, and the success rate of MCM's edits.

:func:`reconstruction_metrics` scores the reconstructed hidden patches of an MAE-style model
(predictions clipped to [0, 1], PSNR of the pooled MSE); :func:`edit_success_rate` asks an MCM
for the opposite of each true concept label, re-encodes the edited image and counts the flips
(METHODS.md section 2, the metric no paper reports). Images ``(N, 3, H, W)`` in ``[0, 1]``,
masks bool ``(N, L)`` with ``True`` = hidden, one ``generator`` for every random mask.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from mcm_core.evaluate.inputs import binary_targets, check_image_batch, eval_mode, model_device
from mcm_core.models.outputs import pixel_problem, require


# =========================================================================== reconstruction
def check_editable(model: nn.Module) -> None:
    """Raise unless ``model`` can edit its concept tokens and decodes pixels (it can be edited and shown)."""
    require(model, "can_edit", "concept edits need a model with editable concept tokens (build_model('mcm') or "
            "load_checkpoint of an MCM run)")
    if (why := pixel_problem(model)) is not None:
        raise ValueError(why)


def decode_edited(model: nn.Module, images: Tensor, encoded: Any, states: Tensor) -> Tensor:
    """``model.edit`` from an encoder output that is already there: -> (B, 3, H, W).

    Args:
        images: (B, 3, H, W); encoded: ``model.forward_encoder(images, mask=...)``; states: long (B, K).
    """
    edited = replace(encoded, concepts=model.apply_edits(encoded.concepts, states))  # tokens, mask: shared
    return model.composite(images, model.forward_decoder(edited), encoded.mask)


def check_pixel_model(model: nn.Module) -> None:
    """Raise unless the model predicts raw pixels (``reconstructs_pixels`` and ``norm_pix_loss=False``)."""
    require(model, "reconstructs_pixels", "reconstruction metrics need an MAE-style model (mae or mcm)")
    if (why := pixel_problem(model)) is not None:
        raise ValueError(f"reconstruction_metrics scores pixels, but {why}")


def reconstruction_metrics(model: nn.Module, images: Tensor, mask_ratio: float,
                           generator: torch.Generator | None = None, batch_size: int = 256) -> dict[str, float]:
    """Pixel MSE and PSNR of the reconstructed hidden patches.

    The mask is drawn per image with ``generator`` (MAE random masking). Predictions are
    clipped to [0, 1], as in the images ``model.reconstruct`` shows. Only hidden patches
    are scored; at ``mask_ratio`` 0 nothing is hidden and every patch is scored (as the
    training loss does).

    Args:
        images: (N, 3, H, W) in [0, 1].
    Returns:
        ``{"mse": mean squared error per pixel value over hidden patches,
        "psnr": 10 log10(1 / mse) in dB (inf when mse is 0)}``; PSNR of the pooled MSE,
        not a mean of per-image PSNRs.
    """
    check_pixel_model(model)
    check_image_batch(images)
    device = model_device(model)
    total_error, total_values = 0.0, 0
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            encoded = model.forward_encoder(batch, mask_ratio, generator)
            pred = model.forward_decoder(encoded).clamp(0, 1)  # (B, L, p*p*3)
            error = ((pred - model.patchify(batch)) ** 2).sum(dim=-1)  # (B, L)
            scored = encoded.mask if bool(encoded.mask.any()) else torch.ones_like(encoded.mask)
            total_error += float(error[scored].sum())
            total_values += int(scored.sum()) * pred.shape[-1]
    mse = total_error / total_values
    return {"mse": mse, "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")}


# =========================================================================== editing
def check_edit_inputs(model: nn.Module, images: Tensor, concepts: Tensor,
                      concept_indices: list[int] | None) -> tuple[Tensor, list[int]]:
    """Validate the inputs of :func:`edit_success_rate`: -> long (N, K) labels, the concept indices."""
    require(model, "can_edit", "edit success needs an MCM model (build_model('mcm'))")
    check_image_batch(images)
    labels = binary_targets(torch.as_tensor(concepts).cpu(), "concepts").long()
    k = model.cfg.num_concepts
    if tuple(labels.shape) != (images.shape[0], k):
        raise ValueError(f"concepts must have shape (N, K) = {(images.shape[0], k)}, got {tuple(labels.shape)}")
    indices = list(range(k)) if concept_indices is None else [int(i) for i in concept_indices]
    if not indices or any(not 0 <= i < k for i in indices):
        raise ValueError(f"concept_indices must be a non-empty list of indices in [0, {k}), got {concept_indices!r}")
    return labels, indices


def edit_successes(model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor, indices: list[int]) -> Tensor:
    """Successful flips of one batch: images (B, 3, H, W), labels long (B, K), mask (B, L) -> long (len(indices),)."""
    wins = []
    for k in indices:
        states = torch.full_like(labels, -1)
        states[:, k] = 1 - labels[:, k]  # ask for the opposite of the true state
        edited = model.edit(images, states, mask=mask)  # (B, 3, H, W)
        now_on = model.predict_concepts(edited, 0.0)[:, k] > 0  # re-encoded on the full image
        wins.append((now_on == states[:, k].bool()).sum())
    return torch.stack(wins).cpu()


def edit_success_rate(model: nn.Module, images: Tensor, concepts: Tensor, mask_ratio: float = 0.75,
                      generator: torch.Generator | None = None, concept_indices: list[int] | None = None,
                      batch_size: int = 256) -> dict[str, Any]:
    """Fraction of edited reconstructions whose re-encoded concept prediction flips as asked.

    For every image and every requested concept k: ask ``model.edit`` for the opposite of
    the image's true label of k (all other concepts unchanged), decode, re-encode the edited
    image with nothing hidden (``model.predict_concepts(edited, 0.0)``), and count a success
    when concept k's logit is > 0 exactly when the asked state is 1.

    Each image gets **one** mask, drawn once with ``generator`` and shared by all its edits,
    so the per-concept rates differ only by the concept, not by the mask. Only hidden patches
    can change: at ``mask_ratio`` 0 an edit leaves the image as it is, and the rate is just
    the model's error rate on those concepts.

    Args:
        images: (N, 3, H, W) in [0, 1]; concepts: (N, K) 0/1 true labels.
        mask_ratio: test-time mask ratio (higher lets the concepts dominate the hidden patches).
        concept_indices: which concepts to edit (default: all K).
    Returns:
        ``{"rate": successes / (N x len(concept_indices)), "per_concept": [rate of each requested
        concept, in the order given], "concept_indices": [...]}``.
    """
    labels, indices = check_edit_inputs(model, images, concepts, concept_indices)
    device = model_device(model)
    wins = torch.zeros(len(indices), dtype=torch.long)
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            mask = model.make_mask(batch, mask_ratio, generator)  # bool (B, L), shared by every edit
            wins += edit_successes(model, batch, labels[start:start + batch_size].to(device), mask, indices)
    n = images.shape[0]
    return {"rate": float(wins.sum()) / (n * len(indices)), "per_concept": (wins.double() / n).tolist(),
            "concept_indices": indices}
