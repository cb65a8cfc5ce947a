"""Moved to :mod:`mcm_core.models._registry` (the public names are exported from :mod:`mcm_core.models`);
this path re-exports them until the notebooks, tests and benchmarks are moved."""
from mcm_core.models._registry import (
    MODELS, build_from_dict, build_model, check_option_types, config_to_dict, make_config, matches, model_class,
    model_names, register_model, type_text,
)

__all__ = ["MODELS", "register_model", "model_names", "model_class", "make_config", "matches", "type_text",
           "check_option_types", "build_model", "config_to_dict", "build_from_dict"]
