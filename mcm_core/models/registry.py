"""Models and presets registered by name, so notebooks and the CLI pick them by string."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch.nn as nn

from mcm_core.models.backbone import PRESETS

MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model buildable as ``build_model(name, ...)``."""
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        cls.method_name = name
        return cls
    return add


def model_names() -> list[str]:
    """Names accepted by ``build_model``."""
    return sorted(MODELS)


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names are {model_names()}")
    return MODELS[name]


def make_config(name: str, preset: str = "tiny", **overrides: Any):
    """The config dataclass of model ``name`` with preset sizes and ``overrides`` applied."""
    cls = model_class(name)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets are {sorted(PRESETS)}")
    config_class = cls.config_class
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for model {name!r}; valid options are {sorted(valid)}")
    derived = getattr(config_class, "derived_fields", ())
    values = {k: v for k, v in PRESETS[preset].items() if k not in derived}
    values.update(overrides)
    if "decoder_depth" in derived and "decoder_depth" not in overrides:
        values["decoder_depth"] = values["depth"] // 2
    return config_class(**values)


def build_model(name: str, preset: str = "tiny", **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: ``"mae"``, ``"mcm"``, ``"micl"``, ``"latent_mim"`` or ``"supervised"`` (see ``model_names()``).
        preset: ``"tiny"`` (CPU, 32 px, patch 4), ``"small"``, ``"base"`` (ViT-B/16, 224 px) or ``"large"`` (ViT-L/16).
        overrides: any field of the model's config dataclass (e.g. ``mask_ratio=0.5``).
    """
    return model_class(name)(make_config(name, preset, **overrides))


def config_to_dict(model: nn.Module) -> dict[str, Any]:
    """JSON-ready description of a model: ``{"method": name, "config": {...}}``."""
    return {"method": model.method_name, "config": dataclasses.asdict(model.cfg)}


def build_from_dict(description: dict[str, Any]) -> nn.Module:
    """Inverse of ``config_to_dict``."""
    cls = model_class(description["method"])
    config_class = cls.config_class
    valid = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(description["config"]) - valid)
    if unknown:
        raise ValueError(f"config has unknown key(s) {unknown} for model {description['method']!r}")
    return cls(config_class(**description["config"]))
