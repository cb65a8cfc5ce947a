"""What every model hands back and what it declares it can do: the shared output types and the
capability protocol.

- :class:`EncoderOutput` (what ``forward_encoder`` hands to ``forward_decoder``) and
  :class:`ModelOutput` (what ``model(images, ...)`` returns), for every method.
- The capability protocol: :class:`ImageModel` (the base class of every model), ``has``,
  ``require``, ``pixel_problem``, ``declared_capabilities`` (checked by ``register_model``).

What a model can do is declared once on each model class. Code that depends on it reads these
class attributes -- never a model name, a method name or ``hasattr``: ``has(model, "can_edit")``,
``require(model, "uses_concepts", hint)``.
Code that runs before a model exists (the trainer's data set-up) asks the registered class:
``has("mcm", "uses_concepts")`` is ``has(model_class("mcm"), "uses_concepts")``.

The capabilities (bool class attributes, all False on :class:`ImageModel`):

- ``uses_concepts``: trained on 0/1 concept labels ``(B, K)``: the trainer passes them as
  ``model(images, concepts=...)`` and sizes the model with ``num_concepts``, ``concept_names`` and
  ``concept_freq``; gives concept logits ``predict_concepts(images, mask_ratio=0.0, generator=None)``
  ``-> (B, K)``. MCM and the supervised reference.
- ``reconstructs_pixels``: MAE's stages: ``make_mask(images, mask_ratio, generator) -> (B, L)``,
  ``forward_encoder(images, mask_ratio, generator, mask)``, ``forward_decoder(encoded) -> (B, L, p*p*3)``,
  ``patchify`` / ``unpatchify``, ``composite``, ``reconstruct``. The predictions are pixels only with
  ``norm_pix_loss=False`` (:func:`pixel_problem`). MAE and MCM.
- ``can_edit``: per-layer concept tokens that can be read and written: ``layer_logits``,
  ``edit_states``, ``apply_edits``, ``edit(images, edits, mask_ratio, generator, mask) -> (B, 3, H, W)``.
  Implies both capabilities above. MCM.

Every model also has ``features(images, pool) -> (B, D)`` and ``after_step(progress)``;
:class:`ImageModel` gives both, and ``register_model`` refuses a class that lacks any of this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from mcm_core.choices import check_pool, one_of
from mcm_core.models.backbone import check_images

CAPABILITIES = ("uses_concepts", "reconstructs_pixels", "can_edit")
LACKING = {"uses_concepts": "gives no concept logits", "reconstructs_pixels": "has no pixel decoder",
           "can_edit": "has no editable concept tokens"}  # what a model without the capability is missing
IMPLIED = {"can_edit": ("uses_concepts", "reconstructs_pixels")}  # capability -> the ones it needs
METHODS = ("features", "after_step")  # what every model has, whatever it can do

NORM_PIX_PROBLEM = ("the model predicts per-patch normalized pixels (norm_pix_loss=True), which cannot be "
                    "scored or shown as images; use a model trained with norm_pix_loss=False")


@dataclass
class EncoderOutput:
    """What ``forward_encoder`` hands to ``forward_decoder``.

    Attributes:
        tokens: (B, 1 + N_vis, D) encoded CLS + visible patch tokens.
        mask: bool (B, L), True = hidden.
        ids_keep: (B, N_vis) indices of the visible patches, ascending.
        ids_restore: (B, L) permutation that puts [visible, hidden] back in image order.
        concepts: MCM only: one (B, K, D) concept-token snapshot per encoder layer.
        attention: MCM only, on request: per layer, concept -> visible patch attention (B, heads, K, N_vis).
        visible_pixels: only for a pixel head that reads them (``pixel_head_context``): the image's patches
            (B, L, p*p*3) with every hidden patch set to zero.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    concepts: list[torch.Tensor] | None = None
    attention: list[torch.Tensor] | None = None
    visible_pixels: torch.Tensor | None = None


@dataclass
class ModelOutput:
    """What ``model(images, ...)`` returns.

    Attributes:
        loss: scalar total loss.
        losses: named terms of the loss (e.g. ``{"recon": ..., "concept": ...}``).
        pred: (B, L, p*p*3) per-patch predictions.
        mask: bool (B, L), True = hidden.
        concept_logits: MCM only: (B, K).
    """

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    pred: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    concept_logits: torch.Tensor | None = None


class ImageModel(nn.Module):
    """Base class of every model: the capabilities (none by default), ``features`` and ``after_step``.

    A subclass sets ``self.cfg`` (a ``BackboneConfig``) and ``self.encoder`` (a ``ViTEncoder``)
    and declares what it can do as class attributes (see the module docstring).
    """

    uses_concepts: ClassVar[bool] = False
    reconstructs_pixels: ClassVar[bool] = False
    can_edit: ClassVar[bool] = False

    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen features of the encoder on full images (nothing hidden): (B, 3, H, W) -> (B, D).

        Args:
            pool: ``"cls"`` (the CLS token) or ``"mean"`` (the mean of the patch tokens).
        """
        check_pool(pool)
        check_images(images, self.cfg)
        tokens = self.encoder.forward_features(images)  # (B, 1 + L, D)
        return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)

    def after_step(self, progress: float) -> None:
        """Called by the trainer after every optimizer step with ``progress`` = step / steps in (0, 1].

        Nothing by default; a model with state that follows training (an EMA target) overrides it.
        """


def declared_capabilities(cls: type) -> dict[str, bool]:
    """The capabilities a model class declares, ``{name: bool}``; raise a TypeError naming what is missing.

    Checked once, when the class is registered (``register_model``).
    """
    missing = [name for name in CAPABILITIES if not isinstance(getattr(cls, name, None), bool)]
    missing += [f"{name}()" for name in METHODS if not callable(getattr(cls, name, None))]
    if missing:
        raise TypeError(f"model class {cls.__name__} must declare {one_of(missing, 'and')}; subclass "
                        "mcm_core.models.ImageModel (every capability False, features and after_step given) "
                        "and set the capabilities it has as class attributes")
    declared = {name: getattr(cls, name) for name in CAPABILITIES}
    for name, needed in IMPLIED.items():
        lacking = [n for n in needed if declared[name] and not declared[n]]
        if lacking:
            raise TypeError(f"model class {cls.__name__} declares {name} = True, which needs "
                            f"{one_of(lacking, 'and')} = True as well")
    return declared


def has(model: Any, capability: str) -> bool:
    """Whether ``model`` (a model, a model class or a registered name) has ``capability`` (see CAPABILITIES)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; valid names: {', '.join(CAPABILITIES)}")
    if isinstance(model, str):
        from mcm_core.models._registry import model_class  # the registry imports this module

        model = model_class(model)
    return getattr(model, capability, False) is True


def is_model(model: Any) -> bool:
    """Whether ``model`` follows the model protocol (every capability declared, ``features``, ``after_step``)."""
    try:
        declared_capabilities(type(model))
    except TypeError:
        return False
    return True


def require(model: Any, capability: str, hint: str) -> None:
    """Raise a TypeError unless ``model`` has ``capability``; ``hint`` says what to use instead."""
    if not has(model, capability):
        raise TypeError(f"{type(model).__name__} {LACKING[capability]} ({capability} = False); {hint}")


def pixel_problem(model: Any) -> str | None:
    """Why ``model``'s predictions cannot be scored or shown as pixels, or None when they can."""
    if not has(model, "reconstructs_pixels"):
        return f"{type(model).__name__} {LACKING['reconstructs_pixels']}"
    if getattr(model.cfg, "norm_pix_loss", False):  # a pixel model's option (MAEConfig)
        return NORM_PIX_PROBLEM
    return None


__all__ = ["EncoderOutput", "ModelOutput", "CAPABILITIES", "ImageModel", "declared_capabilities", "has", "is_model",
           "require", "pixel_problem", "NORM_PIX_PROBLEM"]
