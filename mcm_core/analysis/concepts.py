"""What MCM's concept tokens learned, as numbers: read them out of a model, then measure them.

- **Reading** (no training, gradients off): :func:`read_concepts` runs the encoder of a
  trained MCM over a batch of images and keeps, per encoder layer, the concept -> patch
  attention, the concept-token snapshots and the concept logits (:class:`ConceptReadout`).
- **Numbers**: :func:`patch_coverage`, :func:`attention_on_objects`, :func:`cosine_similarity_matrix`,
  :func:`pca_2d` and :func:`conditional_rates` compute what the figures of
  :mod:`mcm_core.viz.concepts` show (notebook 02).

Shapes: N images, K concepts, L patches (row-major on the ``(H // p, W // p)`` grid),
D token width, ``depth`` encoder layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from mcm_core.analysis.arrays import check_binary, to_numpy

__all__ = [
    "ConceptReadout", "read_concepts", "attention_to_patches", "patch_coverage", "attention_on_objects",
    "cosine_similarity_matrix", "pca_2d", "conditional_rates",
]


# =========================================================================== reading the model
@dataclass
class ConceptReadout:
    """Per-layer concept read-out of N images.

    Attributes:
        attention: float (depth, N, K, L): concept -> patch attention averaged over heads;
            each (layer, image, concept) row sums to 1 over the visible patches, hidden ones are nan.
        snapshots: float (depth, N, K, D): the normalized concept tokens after each encoder layer.
        layer_logits: float (depth, N, K): concept logits of every snapshot (the last one predicts).
        mask: bool (N, L), True = hidden from the encoder.
    """

    attention: torch.Tensor
    snapshots: torch.Tensor
    layer_logits: torch.Tensor
    mask: torch.Tensor


def attention_to_patches(attention: torch.Tensor, ids_keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Head-averaged attention over the visible patches, put back on the full patch grid.

    Args:
        attention: (B, heads, K, N_vis) probabilities over the visible patches.
        ids_keep: long (B, N_vis), the patch index of each visible token.
        num_patches: L.
    Returns:
        float (B, K, L): attention in image order, nan at hidden patches.
    """
    if attention.ndim != 4 or ids_keep.ndim != 2 or attention.shape[0] != ids_keep.shape[0] \
            or attention.shape[-1] != ids_keep.shape[1]:
        raise ValueError(f"attention must be (B, heads, K, N_vis) and ids_keep (B, N_vis) with matching B and "
                         f"N_vis, got {tuple(attention.shape)} and {tuple(ids_keep.shape)}")
    mean = attention.float().mean(dim=1)  # (B, heads, K, N_vis) -> (B, K, N_vis)
    full = mean.new_full((mean.shape[0], mean.shape[1], num_patches), float("nan"))
    index = ids_keep[:, None, :].expand(-1, mean.shape[1], -1)  # (B, K, N_vis)
    return full.scatter(2, index, mean)


def read_concepts(model: nn.Module, images: torch.Tensor, mask_ratio: float = 0.0,
                  generator: torch.Generator | None = None, batch_size: int = 256) -> ConceptReadout:
    """Run an MCM encoder over ``images`` and keep what its concept tokens did at every layer.

    Args:
        model: a ``MultiLayerConceptMap`` (``build_model("mcm")`` or a loaded checkpoint).
        images: float (N, 3, H, W) in [0, 1].
        mask_ratio: fraction of patches hidden from the encoder (0 = full images).
        generator: random source of the masks when ``mask_ratio > 0``.
        batch_size: images per forward pass.
    Returns:
        A :class:`ConceptReadout` on the CPU. Memory: ``depth * N * K * (L + D)`` floats.
    """
    from mcm_core.evaluate import check_image_batch, eval_mode, model_device
    from mcm_core.models.outputs import require

    require(model, "can_edit", "concept read-outs need an MCM model (build_model('mcm'))")
    check_image_batch(images)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device, parts = model_device(model), []
    with eval_mode(model):
        for start in range(0, images.shape[0], int(batch_size)):
            batch = images[start:start + int(batch_size)].to(device)
            encoded = model.forward_encoder(batch, mask_ratio, generator, return_attention=True)
            attention = torch.stack([attention_to_patches(a, encoded.ids_keep, model.cfg.num_patches)
                                     for a in encoded.attention])  # (depth, B, K, L)
            parts.append((attention.cpu(), torch.stack(encoded.concepts).float().cpu(),
                          model.layer_logits(encoded.concepts).float().cpu(), encoded.mask.cpu()))
    attention, snapshots, logits, masks = zip(*parts)
    return ConceptReadout(torch.cat(attention, 1), torch.cat(snapshots, 1), torch.cat(logits, 1), torch.cat(masks))


# =========================================================================== attention
def patch_coverage(object_masks: Any, patch_size: int) -> torch.Tensor:
    """Fraction of each patch covered by an object.

    Args:
        object_masks: integer (N, H, W), 0 = background (``ShapesBatch.object_masks``).
        patch_size: side of a patch in pixels.
    Returns:
        float (N, L) in [0, 1], patches in row-major order.
    """
    masks = torch.as_tensor(to_numpy(object_masks))
    if masks.ndim != 3:
        raise ValueError(f"object_masks must have shape (N, H, W), got {tuple(masks.shape)}")
    n, h, w = masks.shape
    if int(patch_size) != patch_size or patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"patch_size={patch_size!r} must be a positive int dividing the mask size {h}x{w}")
    p = int(patch_size)
    covered = (masks > 0).float().reshape(n, h // p, p, w // p, p)  # (N, gh, p, gw, p)
    return covered.mean(dim=(2, 4)).reshape(n, -1)  # (N, gh, gw) -> (N, L)


def attention_on_objects(attention: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """How much more attention lands on objects than a uniform spread would put there.

    Args:
        attention: (depth, N, K, L) from :class:`ConceptReadout` (nan = hidden patch).
        coverage: (N, L) object fraction per patch (:func:`patch_coverage`).
    Returns:
        float (depth, K): mean over images of (attention mass on object pixels) / (object share of
        the visible patches); 1 = no preference, > 1 = looks at the objects, < 1 = at the background.
        Images whose visible patches hold no object are left out (nan if none is left).
    """
    if attention.ndim != 4 or coverage.ndim != 2 or tuple(attention.shape[1:4:2]) != tuple(coverage.shape):
        raise ValueError(f"attention must be (depth, N, K, L) and coverage (N, L) with the same N and L, "
                         f"got {tuple(attention.shape)} and {tuple(coverage.shape)}")
    visible = ~torch.isnan(attention[0, :, 0])  # (N, L)
    cov = coverage.float()
    share = (cov * visible).sum(1) / visible.sum(1).clamp(min=1)  # (N,) object share of what is visible
    mass = torch.nan_to_num(attention.float()).mul(cov[None, :, None]).sum(-1)  # (depth, N, K)
    ratio = mass / share[None, :, None]
    keep = share > 0
    return ratio[:, keep].mean(dim=1) if keep.any() else ratio.new_full(ratio[:, 0].shape, float("nan"))


# =========================================================================== tokens
def cosine_similarity_matrix(vectors: Any) -> torch.Tensor:
    """Cosine similarity between the K vectors of each set.

    Args:
        vectors: (..., K, D), e.g. the learned concept tokens (K, D) or per-layer tokens (depth, K, D).
    Returns:
        float (..., K, K) in [-1, 1], ones on the diagonal (zero vectors give 0).
    """
    x = torch.as_tensor(to_numpy(vectors)).float()
    if x.ndim < 2 or x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"vectors must have shape (..., K, D) with K, D >= 1, got {tuple(x.shape)}")
    unit = torch.nn.functional.normalize(x, dim=-1)
    return (unit @ unit.transpose(-2, -1)).clamp(-1.0, 1.0)


def pca_2d(x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Project points on their first two principal components (exact SVD, no randomness).

    Args:
        x: (N, D) points, N >= 2.
    Returns:
        coordinates float (N, 2), and the fraction of the variance each component explains (2,).
        Signs are fixed so that each component's largest loading is positive (deterministic).
    """
    data = torch.as_tensor(to_numpy(x)).double()
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 1:
        raise ValueError(f"x must have shape (N, D) with N >= 2 points, got {tuple(data.shape)}")
    centred = data - data.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, D), D) components
    comps = torch.zeros(2, data.shape[1], dtype=data.dtype)
    comps[:min(2, vh.shape[0])] = vh[:2]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(sign == 0, 1.0, sign)
    var = s.pow(2)
    explained = torch.zeros(2, dtype=data.dtype)
    explained[:min(2, len(s))] = (var / var.sum().clamp(min=1e-12))[:2]
    return (centred @ comps.T).float(), explained.float()


# =========================================================================== metrics
def conditional_rates(given: Any, outcome: Any) -> torch.Tensor:
    """How often each concept j is on (in ``outcome``) among the images where concept i is on (in ``given``).

    Args:
        given: 0/1 (N, K), e.g. the true labels; outcome: 0/1 (N, K), e.g. the predictions.
    Returns:
        float (K, K): entry (i, j) = P(outcome_j = 1 | given_i = 1); a row is nan when concept i is
        never on in ``given``.
    """
    g = torch.as_tensor(to_numpy(given)).float()
    o = torch.as_tensor(to_numpy(outcome)).float()
    if g.ndim != 2 or g.shape != o.shape:
        raise ValueError(f"given and outcome must both be (N, K), got {tuple(g.shape)} and {tuple(o.shape)}")
    check_binary(g, tuple(g.shape), "given")
    check_binary(o, tuple(o.shape), "outcome")
    support = g.sum(dim=0)  # (K,) images where concept i is on
    rates = (g.T @ o) / support[:, None]  # (K, N) @ (N, K) -> (K, K) joint counts, per row of given
    return torch.where(support[:, None] > 0, rates, torch.full_like(rates, float("nan")))
