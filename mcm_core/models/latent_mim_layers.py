"""The pieces Latent MIM builds on, outside the model class (:mod:`mcm_core.models.latent_mim`).

- What the encoders see: :func:`gap_patches` and :func:`hidden_ids` (the hidden patches the target
  encoder reads). **Patch gaps** (our choice, off by default at this scale): with ``patch_gap=g`` the
  image is resized to ``grid x (p + g)`` pixels and each ``p x p`` patch is cropped at a random offset
  inside its ``(p + g)``-pixel cell, so neighbouring patches do not share borders.
- What the decoder's queries start from: :func:`visual_cue` (ours: Gaussian weights of the grid
  distance) and :func:`reference_cue_weights` (the reference code's: a softmax of position-embedding
  products), with :func:`patch_coords`.
- Position embeddings: :func:`grid_pos_embed` (the backbone's, or the reference code's scaled positions).
- The projector MLP: :func:`build_projector` (timm's ``Mlp``, or the reference code's head).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from mcm_core.models.backbone import sincos_pos_embed
from mcm_core.models.latent_mim_losses import at_least_float32

if TYPE_CHECKING:  # for the annotation only: latent_mim imports this module
    from mcm_core.models.latent_mim import LatentMIMConfig


def gap_patches(images: torch.Tensor, patch_size: int, gap: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Patches cropped with gaps between them, tiled back into an image: (B, C, H, W) -> (B, C, H, W).

    The image is resized to ``grid x (patch_size + gap)`` pixels; each patch is the
    ``patch_size``-pixel square at a random offset in ``[0, gap]`` (rows and columns drawn
    separately, per image and patch) inside its cell. ``gap=0`` returns ``images`` unchanged.
    """
    if gap == 0:
        return images
    b, c, h, w = images.shape
    gh, gw, cell = h // patch_size, w // patch_size, patch_size + gap
    big = F.interpolate(images, size=(gh * cell, gw * cell), mode="bilinear", align_corners=False)
    draw_on = generator.device if generator is not None else images.device
    offsets = torch.randint(0, gap + 1, (2, b, gh, gw), generator=generator, device=draw_on).to(images.device)
    within = torch.arange(patch_size, device=images.device)
    # Pixel rows/cols of every patch: (B, gh, gw, p) each; cell start + random offset + position in the patch.
    rows = (torch.arange(gh, device=images.device)[:, None] * cell)[None, :, None] + offsets[0, ..., None] + within
    cols = (torch.arange(gw, device=images.device)[:, None] * cell)[None, None] + offsets[1, ..., None] + within
    flat = rows[..., :, None] * (gw * cell) + cols[..., None, :]  # (B, gh, gw, p, p) indices into the big image
    flat = flat.permute(0, 1, 3, 2, 4).reshape(b, 1, h * w)  # row-major (gh, p, gw, p) = the output's pixel order
    return torch.gather(big.flatten(2), 2, flat.expand(-1, c, -1)).view(b, c, h, w)


def patch_coords(ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Row/column of patch indices: long (B, N) -> float (B, N, 2)."""
    return torch.stack([ids // grid[1], ids % grid[1]], dim=-1).float()


def visual_cue(context: torch.Tensor, ids_keep: torch.Tensor, ids_hidden: torch.Tensor,
               grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Position-weighted average of the visible latents at every hidden position.

    Args:
        context: (B, N_v, D) visible latents; ids_keep: (B, N_v); ids_hidden: (B, N_h).
    Returns:
        (B, N_h, D): for each hidden patch, the visible latents weighted by
        ``softmax(-d^2 / (2 sigma^2))`` of their grid distance ``d``.
    """
    dist2 = torch.cdist(patch_coords(ids_hidden, grid), patch_coords(ids_keep, grid)).pow(2)  # (B, N_h, N_v)
    weights = torch.softmax(-dist2 / (2 * sigma ** 2), dim=-1).to(context.dtype)
    return weights @ context


def reference_cue_weights(pos_hidden: torch.Tensor, pos_visible: torch.Tensor) -> torch.Tensor:
    """The reference code's visual-cue weights: ``softmax(pe_h . pe_v / sqrt(D))`` over the visible patches.

    Args:
        pos_hidden: (B, N_h, D) position embeddings of the hidden patches; pos_visible: (B, N_v, D).
    Returns:
        (B, N_h, N_v) weights, each row summing to 1 (float32, or float64 for float64 inputs).
    """
    with torch.autocast(pos_hidden.device.type, enabled=False):
        q, k = at_least_float32(pos_hidden), at_least_float32(pos_visible)
        return torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)


def grid_pos_embed(dim: int, grid: tuple[int, int], scaled: bool = False) -> torch.Tensor:
    """2-D sin-cos position embeddings with a zero CLS row, (1 + L, dim): columns in the first half, rows in the second.

    ``scaled=False`` gives the backbone's (integer positions ``0 .. g - 1``, MAE's convention);
    ``scaled=True`` the reference code's: the ``g`` positions spread evenly over ``[0, g]``, that is
    ``i * g / (g - 1)`` (computed here in float64, then rounded to float32).
    """
    if not scaled:
        return sincos_pos_embed(dim, grid)
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need dim divisible by 4, got {dim}")
    if min(grid) < 2:
        raise ValueError(f"scaled positions i * g / (g - 1) need a grid of at least 2 x 2 patches, got {grid}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(index: torch.Tensor, g: int) -> torch.Tensor:  # (L,) patch row or column -> (L, dim / 2)
        angles = (index * g / (g - 1))[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    emb = torch.cat([encode(cols.flatten(), grid[1]), encode(rows.flatten(), grid[0])], dim=1).float()
    return torch.cat([torch.zeros(1, dim), emb], dim=0)


def build_projector(cfg: LatentMIMConfig) -> nn.Module:
    """The projector MLP, (..., D) -> (..., D).

    ``projector_depth=2, projector_dim=0`` (the default): timm's ``Mlp`` (D -> mlp_ratio x D -> D,
    GELU). Otherwise ``projector_depth`` bias-free linear layers of width ``projector_dim`` (0:
    mlp_ratio x D), each followed by a LayerNorm (eps 1e-6; 1e-5, torch's default, with
    ``reference``), GELU between them: the reference code's head.
    """
    d = cfg.embed_dim
    hidden = cfg.projector_dim or int(d * cfg.mlp_ratio)
    if (cfg.projector_depth, cfg.projector_dim) == (2, 0):
        return Mlp(in_features=d, hidden_features=hidden, out_features=d)
    layers: list[nn.Module] = []
    for i in range(cfg.projector_depth):
        d_in, d_out = (d if i == 0 else hidden), (d if i == cfg.projector_depth - 1 else hidden)
        layers += [nn.Linear(d_in, d_out, bias=False), nn.LayerNorm(d_out, eps=1e-5 if cfg.reference else 1e-6)]
        if i < cfg.projector_depth - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def hidden_ids(mask: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Indices of the hidden patches in ascending order: bool (B, L) -> long (B, N_h)."""
    # Why: a stable sort of 0 (visible) / 1 (hidden) keys lists the hidden patches last, in image order.
    return torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices[:, num_visible:]


__all__ = ["gap_patches", "patch_coords", "visual_cue", "reference_cue_weights", "grid_pos_embed", "build_projector",
           "hidden_ids"]
