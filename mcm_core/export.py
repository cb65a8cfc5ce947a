"""Export a trained encoder as a plain timm ``VisionTransformer``.

The exported model is what downstream code (fine-tuning, timm tooling) expects: a
standard ViT with a class token, the encoder's weights, no classifier head
(``num_classes=0``) and CLS-token pooling, so ``vit(images)`` gives the same (B, D)
feature as ``model.features(images)``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from mcm_core.models.backbone import ViTEncoder

__all__ = ["export_timm", "encoder_of", "timm_state_dict"]


def encoder_of(model: nn.Module) -> ViTEncoder:
    """The :class:`ViTEncoder` of an MAE / MCM model (or the encoder itself)."""
    if isinstance(model, ViTEncoder):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"cannot export {type(model).__name__}: it has no ViTEncoder at .encoder; "
                        "pass a model built with build_model('mae' or 'mcm') or its .encoder")
    return encoder


def empty_vit(encoder: ViTEncoder) -> VisionTransformer:
    """A timm ViT with the encoder's sizes: class token, no head, CLS pooling, LayerNorm eps 1e-6."""
    cfg = encoder.cfg
    return VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0,
        global_pool="token", embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio, qkv_bias=True, class_token=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )


def timm_state_dict(encoder: ViTEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm's names.

    Our blocks, patch embedding and final norm are timm modules already, so their keys
    match; the only addition is the fixed sin-cos position embedding, a non-persistent
    buffer ``pos_embed`` (1, 1 + L, D) with a zero CLS row, which timm keeps as a parameter.
    """
    state = {name: tensor.detach() for name, tensor in encoder.state_dict().items()}
    state["pos_embed"] = encoder.pos_embed.detach()
    return state


def check_keys(vit: VisionTransformer, state: dict[str, torch.Tensor]) -> None:
    """Raise listing every timm key that would stay unfilled, every unexpected key, and shape mismatches."""
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k}: ours {tuple(state[k].shape)} vs timm {tuple(expected[k].shape)}"
                        for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"cannot map the encoder onto timm's VisionTransformer: missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {mismatched}; the timm version or the "
            "encoder layout changed, update mcm_core.export.timm_state_dict to match")


def export_timm(model: nn.Module) -> VisionTransformer:
    """A timm ``VisionTransformer`` carrying a copy of the model's trained encoder.

    Same ``img_size``, ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
    ``qkv_bias=True``, a class token, ``num_classes=0`` and ``global_pool="token"``. Copied:
    patch embedding, CLS token, blocks, final norm, and the fixed sin-cos position embeddings
    into timm's (trainable) ``pos_embed`` parameter. Every timm parameter is filled (strict).

    Works for MAE and MCM. Only the patch encoder is exported: the decoder and, for MCM, the
    concept tokens, concept blocks and concept head are **not** part of a timm ViT and are left out.

    Args:
        model: an MAE / MCM model, or its ``ViTEncoder``.
    Returns:
        A new ``VisionTransformer`` on the encoder's device and dtype, in the encoder's
        train/eval mode. ``vit.forward_features(x)`` (B, 1 + L, D) equals
        ``model.encoder.forward_features(x)``; ``vit(x)`` (B, D) equals ``model.features(x)``.
    """
    encoder = encoder_of(model)
    vit = empty_vit(encoder)
    state = timm_state_dict(encoder)
    check_keys(vit, state)
    vit.load_state_dict(state, strict=True)
    reference = encoder.cls_token
    return vit.to(device=reference.device, dtype=reference.dtype).train(encoder.training)
