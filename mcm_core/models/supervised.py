"""The supervised reference: the same encoder on full images with a per-concept head.

Not a masked-image method: it is the yardstick MCM is measured against (METHODS.md
section 6). The head is one learned vector per concept on the CLS feature, with its
bias starting at the prior's log-odds; a single head shared across concepts stalls
at the label prior for hundreds of steps on small data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from mcm_core.models._registry import register_model
from mcm_core.models.backbone import BackboneConfig, ViTEncoder
from mcm_core.models.losses import concept_prior, register_concept_weights, weighted_concept_bce
from mcm_core.models.outputs import ImageModel, ModelOutput


@dataclass
class SupervisedConfig(BackboneConfig):
    """Encoder sizes plus the concept head.

    Args:
        num_concepts, concept_names, concept_freq: as in MCM (frequency-weighted loss).
        mask_ratio: kept for a uniform interface; the supervised model always sees full images.
    """

    num_concepts: int = 13
    concept_names: list[str] | None = None
    concept_freq: list[float] | None = None
    mask_ratio: float = 0.0


@register_model("supervised")
class SupervisedConcepts(ImageModel):
    """ViT encoder on full images -> per-concept logits (B, K)."""

    config_class = SupervisedConfig
    uses_concepts = True

    def __init__(self, cfg: SupervisedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTEncoder(cfg)
        k = cfg.num_concepts
        prior = concept_prior(cfg.concept_freq, k)
        self.head_weight = nn.Parameter(torch.randn(k, cfg.embed_dim) * 0.02)  # one vector per concept
        self.head_bias = nn.Parameter(torch.logit(prior))
        register_concept_weights(self, prior)

    def predict_concepts(self, images: torch.Tensor, mask_ratio: float = 0.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Concept logits (B, K) from full images (``mask_ratio`` is ignored)."""
        return self.features(images) @ self.head_weight.T + self.head_bias

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None, concepts: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> ModelOutput:
        """Frequency-weighted logistic loss on ``concepts`` (B, K); ``mask`` is ignored (full images)."""
        if concepts is None:
            raise ValueError("the supervised model needs concept labels: call model(images, concepts=targets)")
        logits = self.predict_concepts(images)
        loss = weighted_concept_bce(logits, concepts, self.pos_weight, self.neg_weight)
        return ModelOutput(loss=loss, losses={"concept": loss.detach()}, concept_logits=logits)
