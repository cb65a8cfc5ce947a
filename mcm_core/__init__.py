"""mcm_core: learning concepts from masked images.

The library behind the MCM workbook: a shared ViT backbone, the MAE baseline,
MCM (Multi-layer Concept Map) concept tokens, masking strategies, the training
loop and the analysis tools. Data flows one way::

    data -> masking -> models -> train -> evaluate -> viz -> widgets -> notebooks
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
