"""Pure figure functions: numbers and tensors in, a matplotlib ``Figure`` out.

Nothing here trains, loads data or touches pyplot's global state: every function
builds a fresh :class:`matplotlib.figure.Figure` (shown by Jupyter when it is the
last value of a cell, written by :func:`save_figure`), so figures never pile up in
memory and the functions run the same under the Agg backend in tests. The numbers
the figures show come from :mod:`mcm_core.analysis` (the layer below).

Conventions (``docs/design.md``): images float ``(N, 3, H, W)`` in ``[0, 1]``
(torch tensors or numpy arrays; 1 channel is repeated to 3), masks bool ``(N, L)``
with ``True`` = hidden, patches in row-major order on an ``(H // p, W // p)`` grid.

Contents (the common helpers are re-exported here: ``from mcm_core import viz; viz.show_images(...)``)
--------
- Images (:mod:`~mcm_core.viz.images`): :func:`show_images`, :func:`mask_overlay`, :func:`show_masked`,
  :func:`compare_masks`.
- Curves (:mod:`~mcm_core.viz.curves`): :func:`plot_history`, :func:`plot_concept_metrics`,
  :func:`plot_measures_curve`.
- Files (:mod:`~mcm_core.viz.files`): :func:`figures_dir`, :func:`save_figure`.

One module per notebook topic, in dependency order: :mod:`~mcm_core.viz.concepts` (02),
:mod:`~mcm_core.viz.interpolation` (03), :mod:`~mcm_core.viz.hierarchy` (04),
:mod:`~mcm_core.viz.contrastive` (05), :mod:`~mcm_core.viz.latent` (06), :mod:`~mcm_core.viz.compare` (07),
:mod:`~mcm_core.viz.labs` (lab summaries).
"""
from __future__ import annotations

# The helpers outside __all__ (viz.ema, viz.to_numpy, viz.CELL_INCHES, ...) stay importable from here.
from mcm_core.viz.images import (  # noqa: F401
    CELL_INCHES, as_images, as_mask, compare_masks, image_axes, image_rows, mask_overlay, show_images, show_masked,
    to_numpy,
)
from mcm_core.viz.curves import concept_rows, ema, plot_concept_metrics, plot_history, plot_measures_curve  # noqa: F401
from mcm_core.viz.files import FIGURES_DEFAULT, FIGURES_ENV, figures_dir, save_figure  # noqa: F401
from mcm_core.viz import concepts, interpolation, hierarchy, contrastive, latent, compare, labs  # noqa: F401

__all__ = [
    "show_images", "mask_overlay", "show_masked", "compare_masks", "plot_history",
    "plot_concept_metrics", "figures_dir", "save_figure",
]
