"""Models: the shared ViT backbone and every method, built by name with ``build_model``; what each can do is
declared on its class (read it with ``has(model, name)``).

The package, in import order (each module imports only those above it)::

    backbone.py           BackboneConfig, PRESETS, ViTEncoder: patch embedding, sin-cos positions, timm blocks
    outputs.py            EncoderOutput, ModelOutput; the capability protocol: ImageModel, has, require, ...
    _registry.py          register_model, unregister_model, build_model, make_config, model_names,
                          config_to_dict, build_from_dict
    layers.py             blocks shared between methods: CrossAttention, ConceptBlock, ConceptDecoderBlock,
                          decoder_input, known_hidden, cosine_schedule, ema_update
    losses.py             the frequency-weighted concept loss (MCM, supervised)
    mae.py                MAEConfig, MaskedAutoencoder                   "mae"
    mcm.py                MCMConfig, MultiLayerConceptMap, concept edits "mcm"
    supervised.py         SupervisedConfig, SupervisedConcepts           "supervised"
    micl.py               MiCLConfig, MaskedImageContrastive, its InfoNCE "micl"
    latent_mim_losses.py  Latent MIM's patch InfoNCE, latent MSE, collapse monitors
    latent_mim_layers.py  Latent MIM's patch gaps, visual cue, position embeddings, projector
    latent_mim.py         LatentMIMConfig, LatentMIM (re-exports the two above) "latent_mim"

Each model module registers its class beside it (``@register_model("mae")``).

Public API: ``build_model(name, preset, **overrides)``, ``make_config``, ``model_names``,
``model_class``, ``register_model`` / ``unregister_model``, ``config_to_dict`` / ``build_from_dict``;
``has`` / ``require`` and ``CAPABILITIES``; the configs and model classes; ``ModelOutput``, ``EncoderOutput``,
``ImageModel``.
"""
from mcm_core.models.backbone import PRESETS, BackboneConfig, ViTEncoder
from mcm_core.models.outputs import CAPABILITIES, EncoderOutput, ImageModel, ModelOutput, has, require
from mcm_core.models._registry import (
    build_from_dict, build_model, config_to_dict, make_config, model_class, model_names, register_model,
    unregister_model,
)
from mcm_core.models.mae import MAEConfig, MaskedAutoencoder  # registers "mae"
from mcm_core.models.mcm import MCMConfig, MultiLayerConceptMap  # registers "mcm"
from mcm_core.models.supervised import SupervisedConcepts, SupervisedConfig  # registers "supervised"
from mcm_core.models.micl import MaskedImageContrastive, MiCLConfig  # registers "micl"
from mcm_core.models.latent_mim import LatentMIM, LatentMIMConfig  # registers "latent_mim"

__all__ = [
    "PRESETS", "BackboneConfig", "ViTEncoder", "CAPABILITIES", "ImageModel", "has", "require", "EncoderOutput",
    "MAEConfig", "MaskedAutoencoder", "ModelOutput", "MCMConfig", "MultiLayerConceptMap", "SupervisedConcepts",
    "SupervisedConfig", "MiCLConfig", "MaskedImageContrastive", "LatentMIMConfig", "LatentMIM", "build_model",
    "build_from_dict", "config_to_dict", "make_config", "model_class", "model_names", "register_model",
    "unregister_model",
]
