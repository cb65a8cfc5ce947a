"""The model registry (private infrastructure): models and presets registered by name, so notebooks
and the CLI pick them by string.

Each model module registers its class beside it (``@register_model("mae")``); importing
:mod:`mcm_core.models` imports every model module, so every name is registered. The public
names (``build_model``, ``model_names``, ``make_config``, ``build_from_dict``, ...) are exported
from :mod:`mcm_core.models`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

import torch.nn as nn

from mcm_core.models.backbone import PRESETS
from mcm_core.models.outputs import declared_capabilities

MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model buildable as ``build_model(name, ...)``.

    The class must declare its capabilities (``mcm_core.models.outputs``; subclass ``ImageModel``):
    a TypeError names what it lacks.
    """
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        declared_capabilities(cls)
        MODELS[name] = cls
        cls.method_name = name
        return cls
    return add


def unregister_model(name: str) -> None:
    """Undo ``register_model(name)``: ``build_model(name, ...)`` fails again (e.g. a model registered for one test).

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
    """
    model_class(name)
    del MODELS[name]


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
    check_option_types(name, config_class, overrides)
    derived = getattr(config_class, "derived_fields", ())
    values = {k: v for k, v in PRESETS[preset].items() if k not in derived}
    values.update(overrides)
    if "decoder_depth" in derived and "decoder_depth" not in overrides:
        values["decoder_depth"] = values["depth"] // 2
    return config_class(**values)


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the annotated type ``tp`` (int, float, bool, str, list[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, option) for option in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(matches(v, item) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:  # an int is a fine float; a bool is neither
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def type_text(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_option_types(name: str, config_class: type, options: dict[str, Any]) -> None:
    """Raise a TypeError naming the option, the type it takes, the value given and an example."""
    hints = typing.get_type_hints(config_class)
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    for key, value in options.items():
        if not matches(value, hints[key]):
            example = defaults[key] if defaults[key] is not dataclasses.MISSING else None
            raise TypeError(f"model option {key!r} of {name!r} must be {type_text(hints[key])}, got {value!r} "
                            f"({type(value).__name__}); e.g. model.{key}={example!r}")


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


__all__ = ["MODELS", "register_model", "model_names", "model_class", "make_config", "matches", "type_text",
           "check_option_types", "build_model", "config_to_dict", "build_from_dict"]
