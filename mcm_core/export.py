"""Export a trained encoder as a plain timm ``VisionTransformer``.

The exported model is what downstream code (fine-tuning, timm tooling) expects: a
standard ViT with a class token, the encoder's weights, no classifier head
(``num_classes=0``) and CLS-token pooling, so ``vit(images)`` gives the same (B, D)
feature as ``model.features(images)``. It carries a ``pretrained_cfg`` (input size,
bilinear resizing, mean 0 and std 1 for [0, 1] inputs), so timm's
``resolve_model_data_config`` and ``create_transform`` reproduce the training input.

:func:`save_timm` (``mcm export``) writes the weights as a file that
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=FILE, ...), **kwargs)``
loads without a network, and that exact call next to it as JSON.
"""
from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from mcm_core.models.backbone import BackboneConfig, ViTEncoder

__all__ = ["export_timm", "encoder_of", "timm_state_dict", "pretrained_cfg", "timm_spec", "create_model_call",
           "load_timm", "save_timm"]


def encoder_of(model: nn.Module) -> ViTEncoder:
    """The :class:`ViTEncoder` of a model (every registered method has one at ``.encoder``) or the encoder itself."""
    if isinstance(model, ViTEncoder):
        return model
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"cannot export {type(model).__name__}: it has no ViTEncoder at .encoder; "
                        "pass a model built with mcm_core.models.build_model(...) or its .encoder")
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
    ``vit.pretrained_cfg`` (also ``default_cfg``) is :func:`pretrained_cfg`: timm's
    ``resolve_model_data_config(vit)`` gives S px, bilinear, ``crop_pct`` 1.0, mean 0, std 1.

    Works for every method (``model.features`` is the encoder's CLS token). Only the patch encoder
    is exported: decoders, projection heads, EMA targets and, for MCM, the concept tokens, concept
    blocks and concept head are **not** part of a timm ViT and are left out.

    Args:
        model: a model of any registered method, or its ``ViTEncoder``.
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
    vit.pretrained_cfg = pretrained_cfg(encoder.cfg)
    vit.default_cfg = vit.pretrained_cfg  # timm's older name, the same dict
    reference = encoder.cls_token
    return vit.to(device=reference.device, dtype=reference.dtype).train(encoder.training)


# =========================================================================== hand-off to timm.create_model
# Our data path resizes with bilinear interpolation (mcm_core.data.imageops.resize, antialiased when
# shrinking, which load_rgb uses for image files); images are fed in [0, 1], never normalised by a
# mean / std.
INTERPOLATION = "bilinear"
# timm's reference ViT widths; the exported kwargs set every size, so the name only picks timm's
# defaults for what the kwargs do not name (all of which the export checks).
TIMM_WIDTHS = {192: "tiny", 384: "small", 768: "base", 1024: "large"}
SPEC_SUFFIX = ".json"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


def timm_model_name(cfg: BackboneConfig) -> str:
    """The closest registered timm ViT name: ``vit_<width>_patch<P>_<S>`` when timm has it, else patch16_224."""
    import timm

    width = TIMM_WIDTHS[min(TIMM_WIDTHS, key=lambda dim: (abs(dim - cfg.embed_dim), dim))]
    exact = f"vit_{width}_patch{cfg.patch_size}_{cfg.img_size}"
    return exact if timm.is_model(exact) else f"vit_{width}_patch16_224"


def data_config(cfg: BackboneConfig) -> dict[str, Any]:
    """What ``timm.data.resolve_model_data_config`` needs to reproduce our input.

    The model takes (3, S, S) images in [0, 1], resized bilinearly from the largest centred
    square: ``crop_pct`` 1.0 with a centre crop, mean 0 and std 1 (no normalisation).
    """
    return {"input_size": (cfg.in_chans, cfg.img_size, cfg.img_size), "interpolation": INTERPOLATION,
            "crop_pct": 1.0, "crop_mode": "center", "mean": (0.0,) * cfg.in_chans, "std": (1.0,) * cfg.in_chans,
            "num_classes": 0}


def pretrained_cfg(cfg: BackboneConfig) -> dict[str, Any]:
    """The ``pretrained_cfg`` an exported ViT carries: the data config plus timm's layout keys."""
    return {"architecture": timm_model_name(cfg), **data_config(cfg), "fixed_input_size": True,
            "first_conv": "patch_embed.proj", "classifier": "head"}


def create_model_kwargs(cfg: BackboneConfig) -> dict[str, Any]:
    """Keyword arguments that make ``timm.create_model`` build exactly the exported ViT."""
    kwargs: dict[str, Any] = {"img_size": cfg.img_size, "patch_size": cfg.patch_size}
    if cfg.in_chans != 3:
        kwargs["in_chans"] = cfg.in_chans
    return {**kwargs, "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads,
            "mlp_ratio": cfg.mlp_ratio, "num_classes": 0, "global_pool": "token"}


def timm_spec(model: nn.Module, file: str | Path) -> dict[str, Any]:
    """The ``timm.create_model`` arguments that load weights saved at ``file`` into our encoder's ViT.

    ``timm.create_model(spec["model_name"], pretrained=True,
    pretrained_cfg_overlay=spec["pretrained_cfg_overlay"], **spec["kwargs"])``: the overlay holds
    the weight ``file`` (absolute; timm reads it instead of downloading) and the data config, and
    its ``num_classes=0`` keeps timm's load strict.
    """
    cfg = encoder_of(model).cfg
    overlay = {"file": str(Path(file).resolve()), **data_config(cfg)}
    return {"model_name": timm_model_name(cfg), "kwargs": create_model_kwargs(cfg),
            "pretrained_cfg_overlay": overlay}


def create_model_call(spec: dict[str, Any]) -> str:
    """``spec`` as one line of Python: the ``timm.create_model(...)`` call."""
    def text(value: Any) -> str:
        return repr(tuple(value)) if isinstance(value, (list, tuple)) else repr(value)

    overlay = ", ".join(f"{key}={text(value)}" for key, value in spec["pretrained_cfg_overlay"].items())
    kwargs = ", ".join(f"{key}={text(value)}" for key, value in spec["kwargs"].items())
    return (f"timm.create_model({spec['model_name']!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict({overlay}), {kwargs})")


def load_timm(spec: dict[str, Any]) -> VisionTransformer:
    """``timm.create_model`` as ``spec`` says (the weights come from the spec's local file)."""
    import timm

    return timm.create_model(spec["model_name"], pretrained=True,
                             pretrained_cfg_overlay=dict(spec["pretrained_cfg_overlay"]), **spec["kwargs"])


def save_timm(model: nn.Module, path: str | Path, source: dict[str, Any] | None = None,
              check: bool = True) -> dict[str, Any]:
    """Write the encoder as timm weights at ``path`` and the ``timm.create_model`` call next to it.

    ``path`` ends in ``.safetensors`` (or ``.pth`` / ``.pt``, a ``torch.save`` file); the call is
    written as JSON to ``path`` with the suffix ``.json`` (keys ``model_name``, ``kwargs``,
    ``pretrained_cfg_overlay``, ``create_model``, plus ``source`` when given). With ``check``, the
    files are read back through ``timm.create_model`` (no network) and its features on random
    images must equal the encoder's.

    Returns:
        The spec written to the JSON file.
    """
    from safetensors.torch import save_file

    from mcm_core.checkpoint import atomic_write_bytes, atomic_write_text

    path = Path(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"timm weights must be written to a {' or '.join(WEIGHT_SUFFIXES)} file, got {path}")
    vit = export_timm(model)
    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in vit.state_dict().items()}
    spec = timm_spec(model, path)
    spec["create_model"] = create_model_call(spec)
    if source:
        spec["source"] = source
    if path.suffix.lower() == ".safetensors":
        atomic_write_bytes(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    else:
        atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))
    atomic_write_text(path.with_suffix(SPEC_SUFFIX), json.dumps(spec, indent=2) + "\n")
    if check:
        try:
            check_round_trip(vit, spec)
        except BaseException:  # files that do not load as the encoder would mislead: remove them
            path.unlink(missing_ok=True)
            path.with_suffix(SPEC_SUFFIX).unlink(missing_ok=True)
            raise
    return spec


def check_round_trip(vit: VisionTransformer, spec: dict[str, Any]) -> None:
    """Raise unless ``timm.create_model`` on ``spec`` gives ``vit``'s features on random images."""
    fix = "the timm version's ViT differs from ours: update mcm_core.export.create_model_kwargs"
    try:
        loaded = load_timm(spec).eval()
    except RuntimeError as error:  # timm's strict load: missing / unexpected keys or shapes
        reason = " ".join(str(error).split())
        raise RuntimeError(f"timm.create_model({spec['model_name']!r}, ...) does not reproduce the encoder "
                           f"(it cannot load the exported weights: {reason}); {fix}") from error
    reference = copy.deepcopy(vit).float().cpu().eval()
    images = torch.rand(2, *spec["pretrained_cfg_overlay"]["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = (loaded(images) - reference(images)).abs().max().item()
    if not error <= 1e-4:  # the same weights and layers: equal up to float rounding
        raise RuntimeError(f"timm.create_model({spec['model_name']!r}, ...) does not reproduce the encoder "
                           f"(features differ by {error:.2e}); {fix}")
