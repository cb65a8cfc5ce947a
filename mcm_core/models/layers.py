"""The building blocks shared between methods (timm's ``layers``, for this package).

- Attention blocks (MCM's, built on :class:`CrossAttention`): :class:`ConceptBlock` updates MCM's
  concept tokens from one encoder layer's patch tokens; :class:`ConceptDecoderBlock` is the decoder
  layer of MCM's concept map and of Latent MIM's cross decoder.
- :func:`decoder_input`: MAE's decoder input, mask tokens un-shuffled among the visible tokens
  (MAE, MCM, and Latent MIM's ``decoder="mae"``).
- :func:`known_hidden`: patches hidden per image, when known without reading the mask back (MAE,
  MCM, Latent MIM).
- :func:`cosine_schedule` and :func:`ema_update`, written once for the trainer and the models:
  the cosine is the learning-rate decay after warm-up (``mcm_core.optim.lr_lambda``), Latent MIM's
  EMA momentum (``ema_momentum``, ``LatentMIM.scheduled_momentum``) and its similarity target
  (``similarity_target``); the EMA update moves the hierarchical masker's EMA encoder (the trainer)
  and Latent MIM's EMA target encoder and projector (``LatentMIM.after_step``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.attention import Attention

from mcm_core.masking import num_hidden
from mcm_core.models.backbone import gather_tokens


# ---------------------------------------------------------------------- attention blocks
class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` (B, Nq, D) over a separate set ``context`` (B, Nk, Dc).

    Fused (``F.scaled_dot_product_attention``) unless the probabilities are asked for or
    ``fused_attn`` is False (timm's switch, which ``mcm_core.devices.explicit_attention`` flips).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.fused_attn = True
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (B, Nq, D) and, on request, the probabilities (B, heads, Nq, Nk)."""
        b, nq, d = x.shape
        q = self.q(x).reshape(b, nq, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        probs = None
        if return_attention or not self.fused_attn:
            weights = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
            out, probs = weights @ v, (weights if return_attention else None)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d)), probs


class ConceptBlock(nn.Module):
    """One encoder layer's concept update: concepts attend to patch tokens (never to each other), then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, concepts: torch.Tensor, patches: torch.Tensor,
                return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """concepts (B, K, D), patches (B, N, D) -> concepts (B, K, D), attention (B, heads, K, N) | None."""
        update, probs = self.attn(self.norm_q(concepts), self.norm_kv(patches), return_attention)
        concepts = concepts + update
        return concepts + self.mlp(self.norm2(concepts)), probs


class ConceptDecoderBlock(nn.Module):
    """Decoder layer of the concept map: patch self-attention, patch -> concept cross-attention, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=True)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, concepts: torch.Tensor,
                return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, D_dec), concepts (B, K', D_dec) -> x (B, N, D_dec), attention (B, heads, N, K') | None."""
        x = x + self.attn(self.norm1(x))
        update, probs = self.cross(self.norm_cross(x), concepts, return_attention)
        x = x + update
        return x + self.mlp(self.norm2(x)), probs


# ---------------------------------------------------------------------- decoder input and masks
def decoder_input(tokens: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor,
                  pos_embed: torch.Tensor) -> torch.Tensor:
    """Decoder tokens in image order: (B, 1 + L, D_dec), mask tokens at hidden positions.

    Args:
        tokens: (B, 1 + N_vis, D_dec) encoded CLS + visible tokens, already at decoder width
            (``decoder_embed(encoded.tokens)``).
        ids_restore: (B, L) permutation that puts [visible, hidden] back in image order.
        mask_token: (1, 1, D_dec); pos_embed: (1, 1 + L, D_dec) decoder position embeddings.
    """
    b, n_vis = tokens.shape[0], tokens.shape[1] - 1
    n_hidden = ids_restore.shape[1] - n_vis
    patches = torch.cat([tokens[:, 1:], mask_token.expand(b, n_hidden, -1)], dim=1)
    patches = gather_tokens(patches, ids_restore)  # un-shuffle: [visible, hidden] -> image order
    return torch.cat([tokens[:, :1], patches], dim=1) + pos_embed


def known_hidden(cfg: Any, images: torch.Tensor, mask_ratio: float | None,
                 mask: torch.Tensor | None) -> int | None:
    """Patches hidden per image when known without reading the mask back, on an accelerator.

    ``cfg``: any model config with ``num_patches`` and a default ``mask_ratio`` (MAE, MCM, Latent MIM).

    Known when the model draws the mask itself (at ``mask_ratio`` or ``cfg.mask_ratio``) or when
    the caller passes the ``mask_ratio`` its ``mask`` was drawn at (as the trainer does); None on
    the CPU, where ``ids_from_mask`` checks the mask's counts at no synchronization cost.
    """
    if images.device.type == "cpu" or (mask is not None and mask_ratio is None):
        return None
    return num_hidden(cfg.num_patches, cfg.mask_ratio if mask_ratio is None else mask_ratio)


# ---------------------------------------------------------------------- schedules
def cosine_schedule(progress: float | torch.Tensor, start: float, end: float) -> float | torch.Tensor:
    """Half a cosine from ``start`` at progress 0 to ``end`` at progress 1: ``end + (start - end) (1 + cos(pi t)) / 2``.

    ``progress`` is clipped to [0, 1]. A float gives a float; a tensor (any shape) gives a tensor
    of its shape, computed on its device without reading anything back.
    """
    if isinstance(progress, torch.Tensor):
        return end + (start - end) * 0.5 * (1 + torch.cos(math.pi * progress.clamp(0, 1)))
    progress = min(max(float(progress), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_update(ema: nn.Module | Sequence[nn.Module], online: nn.Module | Sequence[nn.Module],
               momentum: float) -> None:
    """``ema <- momentum * ema + (1 - momentum) * online`` for every parameter, in place, one fused call.

    Args:
        ema, online: a module each, or matching sequences of modules (their parameters in order).
    """
    def params(modules: nn.Module | Sequence[nn.Module]) -> list[torch.Tensor]:
        modules = [modules] if isinstance(modules, nn.Module) else modules
        return [p for module in modules for p in module.parameters()]

    with torch.no_grad():
        torch._foreach_lerp_(params(ema), params(online), 1 - momentum)


__all__ = ["CrossAttention", "ConceptBlock", "ConceptDecoderBlock", "decoder_input", "known_hidden", "cosine_schedule",
           "ema_update"]
