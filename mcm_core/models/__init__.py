"""Models: the shared ViT backbone and every method, built by name with ``build_model``; what each can do is
declared on its class (``capabilities``: read it with ``has(model, name)``)."""
from mcm_core.models.backbone import PRESETS, BackboneConfig, ViTEncoder
from mcm_core.models.capabilities import CAPABILITIES, ImageModel, has, require
from mcm_core.models.mae import EncoderOutput, MAEConfig, MaskedAutoencoder, ModelOutput
from mcm_core.models.mcm import MCMConfig, MultiLayerConceptMap
from mcm_core.models.supervised import SupervisedConcepts, SupervisedConfig
from mcm_core.models.registry import (
    build_from_dict, build_model, config_to_dict, make_config, model_class, model_names, register_model,
)

register_model("mae")(MaskedAutoencoder)
register_model("mcm")(MultiLayerConceptMap)
register_model("supervised")(SupervisedConcepts)
from mcm_core.models import micl  # noqa: E402,F401  registers "micl"
from mcm_core.models import latent_mim  # noqa: E402,F401  registers "latent_mim"

__all__ = [
    "PRESETS", "BackboneConfig", "ViTEncoder", "CAPABILITIES", "ImageModel", "has", "require", "EncoderOutput",
    "MAEConfig", "MaskedAutoencoder", "ModelOutput", "MCMConfig", "MultiLayerConceptMap", "SupervisedConcepts",
    "SupervisedConfig", "build_model", "build_from_dict", "config_to_dict", "make_config", "model_class",
    "model_names", "register_model",
]
