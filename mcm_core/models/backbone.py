"""The shared ViT backbone every method wraps.

Patch embedding, fixed 2-D sin-cos position embeddings (MAE convention, added
*before* masking), a CLS token and timm transformer blocks (keyword arguments
only; timm routes attention through ``F.scaled_dot_product_attention``, so the
GPU path gets flash attention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from mcm_core.choices import AFFINITIES
from mcm_core.masking import ids_from_mask


@dataclass
class BackboneConfig:
    """Sizes shared by every method. Method configs subclass this.

    Args:
        img_size: input height and width in pixels (square images).
        patch_size: side of a square patch; must divide ``img_size``.
        in_chans: image channels (3; grey data is repeated to 3 channels).
        embed_dim, depth, num_heads, mlp_ratio: the encoder's width, layers, heads, MLP ratio.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the light decoder's sizes.
    """

    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 64
    decoder_depth: int = 3
    decoder_num_heads: int = 2

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}; "
                f"pick an image size that is a multiple of the patch size (e.g. {self.img_size // self.patch_size * self.patch_size})"
            )
        for name in ("embed_dim", "decoder_embed_dim"):
            dim, heads = getattr(self, name), getattr(self, name.replace("embed_dim", "num_heads"))
            if dim % heads:
                raise ValueError(f"{name}={dim} must be divisible by its number of heads ({heads})")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        side = self.img_size // self.patch_size
        return (side, side)

    @property
    def num_patches(self) -> int:
        """L, the number of patches per image."""
        return self.grid[0] * self.grid[1]


# Presets: "tiny" trains on a laptop CPU; "base" is ViT-B/16 and "large" ViT-L/16 at the papers' scale.
PRESETS: dict[str, dict] = {
    # tiny's decoder is half the encoder's width (MAE-B: 512 vs 768): it cuts a CPU step by a third.
    "tiny": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4,
                 decoder_embed_dim=64, decoder_depth=3, decoder_num_heads=2),
    "small": dict(img_size=64, patch_size=8, embed_dim=256, depth=8, num_heads=8,
                  decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=6),
    "base": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    # ViT-L/16 with MAE-L's decoder (8 blocks of width 512): for GPU benchmarks at the papers' scale.
    "large": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings.

    Half of the channels encode the row, half the column (MAE convention).

    Returns:
        (1 + L, dim) if ``cls_token`` (the CLS row is zeros) else (L, dim).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, dim/2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(cols), encode(rows)], dim=1).float()  # (L, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


def make_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
    """``depth`` timm ViT blocks (pre-norm, fused attention), built with keyword arguments only."""
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList(
        Block(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
        for _ in range(depth)
    )


def block_with_attention(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a timm block on ``x`` (B, N, D) and also return its attention probabilities (B, heads, N, N).

    The attention is computed once with an explicit softmax (the fused kernel never
    materializes it) and reused for the block's output, so this costs one forward.
    """
    attn = block.attn
    b, n, d = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, d // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)
    out = attn.proj(attn.norm((probs @ v).transpose(1, 2).reshape(b, n, d)))
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, probs


def attention_probs(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Self-attention probabilities of a timm block at its input ``x`` (B, N, D) -> (B, heads, N, N)."""
    return block_with_attention(block, x)[1]


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """Patch embedding + position embedding + CLS + timm blocks + final norm.

    Methods wrap this module; they differ only in what they do around it.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(img_size=cfg.img_size, patch_size=cfg.patch_size,
                                      in_chans=cfg.in_chans, embed_dim=cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # Fixed, so not saved in checkpoints: rebuilt from the config.
        self.register_buffer("pos_embed", sincos_pos_embed(cfg.embed_dim, cfg.grid)[None], persistent=False)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.apply(init_weights)
        # Like MAE: the patch projection is initialised as a linear layer.
        nn.init.xavier_uniform_(self.patch_embed.proj.weight.view(cfg.embed_dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings: (B, 3, H, W) -> (B, L, D)."""
        return self.patch_embed(images) + self.pos_embed[:, 1:]

    def prepend_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, 1 + N, D) with the CLS token (plus its zero position) in front."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run CLS + ``tokens`` (B, N, D) through every block and the final norm -> (B, 1 + N, D)."""
        x = self.prepend_cls(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Full images, nothing hidden: (B, 3, H, W) -> (B, 1 + L, D) normalized tokens."""
        return self.forward_tokens(self.embed(images))

    @torch.no_grad()
    def patch_affinity(self, images: torch.Tensor, kind: str = "tokens") -> torch.Tensor:
        """Patch-to-patch similarity on full images (CLS dropped): (B, 3, H, W) -> (B, L, L).

        The evolved hierarchical masker builds its trees from this (run on the EMA encoder).

        Args:
            kind: ``"tokens"`` (our choice, the default): cosine similarity of the final
                normalized patch tokens, in [-1, 1]. ``"attention"``: patch-to-patch attention
                summed over layers and heads, the predecessor's (Evolved Part Masking)
                affinity. Measured on the tiny shapes data (notebook 04), average-linkage
                trees of summed attention are chains (one giant node plus single patches at
                a cut of 4 nodes), because patches that every query attends to are similar
                to everything; token cosine gives trees whose nodes follow the objects.
        """
        if kind == "tokens":
            tokens = F.normalize(self.forward_features(images)[:, 1:], dim=-1)  # (B, L, D), unit length
            return tokens @ tokens.mT
        if kind != "attention":
            raise ValueError(f"unknown affinity kind {kind!r}; choose one of {', '.join(AFFINITIES)}")
        x = self.prepend_cls(self.embed(images))
        affinity = x.new_zeros(x.shape[0], x.shape[1] - 1, x.shape[1] - 1)
        for block in self.blocks:
            x, probs = block_with_attention(block, x)
            affinity += probs[:, :, 1:, 1:].sum(dim=1)
        return affinity


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens by index per image: (B, L, D), (B, N) -> (B, N, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def mask_ids(mask: torch.Tensor, hidden: int | None = None,
             check: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids_keep`` (B, N_vis) and ``ids_restore`` (B, L) of a bool mask (B, L): ``ids_from_mask``,
    told the hidden count on an accelerator so that it reads nothing back.

    Args:
        hidden: patches hidden per image, or None (unknown: counted and checked).
        check: count and check anyway; default: only for CPU masks, where it costs no
            synchronization.
    """
    check = mask.device.type == "cpu" if check is None else check
    return ids_from_mask(mask, None if check else hidden)


# How far outside [0, 1] pixel values may stray (float rounding of a user's own un-normalisation);
# our loaders clamp, and bilinear resizing cannot overshoot.
IMAGE_RANGE_TOLERANCE = 1e-3


def check_images(images: torch.Tensor, cfg: BackboneConfig) -> None:
    """Raise a clear error for images the model cannot take (shape, channels, size, dtype, values).

    Values (finite, in [0, 1]) are checked on CPU tensors only, as concept values are: on a
    GPU reading the min/max back would synchronize every step, so there the trainer checks
    the first batch instead (``mcm_core.batches.check_batch``).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, {cfg.in_chans}, H, W), got {tuple(images.shape)}; "
                         "add a batch dimension with images.unsqueeze(0) for a single image")
    if images.shape[1] != cfg.in_chans:
        raise ValueError(f"images must have {cfg.in_chans} channels, got {images.shape[1]}; "
                         "repeat grey images to 3 channels with images.expand(-1, 3, -1, -1)")
    if tuple(images.shape[-2:]) != (cfg.img_size, cfg.img_size):
        raise ValueError(f"this model takes {cfg.img_size}x{cfg.img_size} images, got "
                         f"{images.shape[-2]}x{images.shape[-1]}; resize the data (image_size={cfg.img_size}) "
                         "or build the model with img_size=... matching the data")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}; "
                        "convert uint8 images with images.float() / 255")
    if images.device.type == "cpu":
        check_image_values(images)


def check_image_values(images: torch.Tensor) -> None:
    """Raise unless every value of float ``images`` is finite and in [0, 1] (reads the values back).

    Allows :data:`IMAGE_RANGE_TOLERANCE` of rounding either side; names the range found and the fix.
    """
    if images.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int((~torch.isfinite(images.detach())).sum())
        raise ValueError(f"images hold {bad} NaN or infinite values; repair or drop those images "
                         "(e.g. images.nan_to_num(0.0).clamp(0, 1)) before calling the model")
    if low < -IMAGE_RANGE_TOLERANCE or high > 1 + IMAGE_RANGE_TOLERANCE:
        if low >= 0 and 2 < high <= 255:
            hint = "they look like 0..255 pixel values: convert them with images.float() / 255"
        elif low >= 0:
            hint = "scale them into [0, 1] (e.g. images / images.max()) or clamp them with images.clamp(0, 1)"
        else:
            hint = ("they look normalised by a mean / std: undo it with images * std + mean "
                    "(the model takes [0, 1] pixels, with no normalisation)")
        raise ValueError(f"images must be in [0, 1], got values in [{low:.4g}, {high:.4g}]; {hint}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, L) over ``mask`` (B, L) True positions; over all when none is True.

    Written without a data-dependent branch so that it never synchronizes the GPU.
    """
    weights = mask.to(values.dtype)
    weights = torch.where(weights.sum() > 0, weights, torch.ones_like(weights))
    return (values * weights).sum() / weights.sum()


__all__ = [
    "AFFINITIES", "BackboneConfig", "PRESETS", "ViTEncoder", "sincos_pos_embed", "make_blocks",
    "attention_probs", "block_with_attention", "gather_tokens", "mask_ids", "check_images", "check_image_values",
    "IMAGE_RANGE_TOLERANCE", "masked_mean",
    "init_weights"
]
