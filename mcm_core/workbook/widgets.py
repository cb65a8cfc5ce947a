"""Thin ipywidgets views over the pure functions of :mod:`mcm_core.analysis.interpolation`.

A widget here only holds controls and calls pure functions: every number and every
figure it shows comes from :func:`~mcm_core.analysis.interpolation.interpolate` and
:func:`~mcm_core.viz.interpolation.plot_interpolation`, which the notebooks also call
statically and the tests drive over the widget's whole range.

Rendering: the figure is written into an ``ipywidgets.Output`` as one PNG display item
(replacing the previous one), so it renders as a widget in JupyterLab and Notebook 7,
never piles up duplicate figures (the figures are plain ``matplotlib.figure.Figure``
objects, unknown to pyplot), and runs headless under papermill and in tests without a
kernel. An error raised while the controls move is shown in the output area instead of
vanishing into the kernel log.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from mcm_core.analysis.interpolation import KEEP, Interpolation, interpolate
from mcm_core.choices import check_mask_ratio
from mcm_core.evaluate.reconstruction import check_editable
from mcm_core.masking import mask_noise
from mcm_core.viz.interpolation import plot_interpolation

__all__ = ["InterpolationWidget", "figure_png", "show_figure"]

STATE_OPTIONS = (("keep", KEEP), ("0", 0), ("1", 1))  # label shown on the button, concept state


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show_figure(output: widgets.Output, fig: Figure, dpi: int = 100) -> None:
    """Replace what ``output`` shows with ``fig`` (one PNG item; works with or without a kernel)."""
    png = base64.b64encode(figure_png(fig, dpi)).decode("ascii")
    output.outputs = ({"output_type": "display_data", "metadata": {},
                       "data": {"image/png": png, "text/plain": f"<Figure: {fig.get_suptitle()}>"}},)


def show_text(output: widgets.Output, text: str) -> None:
    """Replace what ``output`` shows with plain text."""
    output.outputs = ({"output_type": "stream", "name": "stderr", "text": text},)


class InterpolationWidget:
    """Mask-ratio slider, one keep / 0 / 1 toggle per concept, a resample button and the figure.

    Every change calls :func:`interpolate` and :func:`plot_interpolation` for the images given
    and shows the result: input, visible patches, reconstruction and edited reconstruction.
    The mask is nested (:func:`nested_mask`): the slider changes how many patches are hidden,
    the button draws new noise, i.e. which ones.

    Args:
        model: a trained MCM.
        images: (B, 3, H, W) in [0, 1], the images shown side by side (a few).
        concept_names: K names (default ``model.cfg.concept_names``).
        mask_ratio: the slider's first value, in [0, max_ratio].
        seed: seeds the mask noise; resample number ``i`` uses ``seed + i``.
        titles: optional B column titles.
        max_ratio, ratio_step: the slider's range is ``0 .. max_ratio`` in steps of ``ratio_step``.
        object_masks, colours: the shapes data's object masks (B, H, W) and slot colours (B, M) of
            ``images`` (``ShapesDataset.batch``): with them, ``readout`` shows the measures of
            ``mcm_core.evaluate.measures`` (hidden-pixel PSNR, colour fidelity, colour-edit following) for
            the images on screen at the slider's ratio and the current mask.

    Attributes:
        slider, toggles (K), resample, output: the controls and the output area.
        readout: a line of text with the measures on screen (empty without object masks);
            measures: the last :class:`mcm_core.evaluate.measures.ShapesMeasures` or None.
        widget: the whole view (slider and button, the toggles in two columns, the output).
        view, figure: the last :class:`Interpolation` and its figure; renders: how many so far.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, concept_names: Sequence[str] | None = None,
                 mask_ratio: float = 0.5, seed: int = 0, titles: Sequence[str] | None = None,
                 max_ratio: float = 0.95, ratio_step: float = 0.05, object_masks: torch.Tensor | None = None,
                 colours: torch.Tensor | None = None) -> None:
        check_editable(model)
        if (object_masks is None) != (colours is None):
            raise ValueError("pass object_masks and colours together (ShapesDataset.batch(...).object_masks and "
                             ".factors['colour']), or neither")
        max_ratio = check_mask_ratio(max_ratio, "max_ratio")
        if not check_mask_ratio(mask_ratio) <= max_ratio:
            raise ValueError(f"mask_ratio {mask_ratio} is above the slider's max_ratio {max_ratio}; raise max_ratio")
        k = model.cfg.num_concepts
        names = list(concept_names or model.cfg.concept_names or [f"concept_{i}" for i in range(k)])
        if len(names) != k:
            raise ValueError(f"got {len(names)} concept names but the model has {k} concepts; "
                             "pass one name per concept (or None for the model's own)")
        self.model, self.images, self.names, self.titles = model, images, names, titles
        self.seed, self.resamples = int(seed), 0
        self.noise = self.draw_noise()
        self.slider = widgets.FloatSlider(value=mask_ratio, min=0.0, max=max_ratio, step=ratio_step,
                                          description="mask ratio", continuous_update=False, readout_format=".2f")
        # 60 px: "keep" fits JupyterLab's button padding (44 px cut it to "k..."; tests/browser checks)
        style = {"description_width": "120px", "button_width": "60px"}
        self.toggles = [widgets.ToggleButtons(options=STATE_OPTIONS, value=KEEP, description=name, style=style,
                                              tooltips=[f"keep the image's own {name} token",
                                                        f"write {name} = 0", f"write {name} = 1"])
                        for name in names]
        self.resample = widgets.Button(description="resample mask", icon="refresh")
        self.output = widgets.Output()
        self.object_masks, self.colours = object_masks, colours
        self.readout = widgets.HTML()
        self.measures: Any = None
        self.view: Interpolation | None = None
        self.figure: Figure | None = None
        self.error: str | None = None
        self.renders = 0
        for control in (self.slider, *self.toggles):
            control.observe(self.on_change, names="value")
        self.resample.on_click(self.on_resample)
        grid = widgets.GridBox(self.toggles, layout=widgets.Layout(grid_template_columns="repeat(2, auto)"))
        self.widget = widgets.VBox([widgets.HBox([self.slider, self.resample]), grid, self.readout, self.output])
        self.render()

    @property
    def states(self) -> list[int]:
        """The K concept states the toggles ask for (-1 keep, 0, 1)."""
        return [int(t.value) for t in self.toggles]

    def draw_noise(self) -> torch.Tensor:
        """Mask noise (B, L) of the current resample number."""
        generator = torch.Generator().manual_seed(self.seed + self.resamples)
        return mask_noise(self.images.shape[0], self.model.cfg.num_patches, generator)

    def render(self) -> Figure:
        """Compute the view for the current controls, draw it, show it; -> the figure."""
        self.view = interpolate(self.model, self.images, self.slider.value, self.states, self.noise)
        self.figure = plot_interpolation(self.view, self.model.cfg.patch_size, self.names, self.titles)
        show_figure(self.output, self.figure)
        self.show_measures()
        self.renders += 1
        self.error = None
        return self.figure

    def show_measures(self) -> None:
        """Measure the images on screen under the view's mask and write the readout line."""
        if self.object_masks is None or self.view is None:
            return
        from mcm_core.evaluate import model_device
        from mcm_core.evaluate.measures import measure_shapes

        device = model_device(self.model)
        with torch.no_grad():
            m = measure_shapes(self.model, self.images.to(device), self.object_masks.to(device), self.colours,
                               self.view.mask.to(device), self.view.mask_ratio)
        self.measures = m
        if not m.object_pixels:
            self.readout.value = f"<b>on screen, ratio {m.mask_ratio:.2f}</b>: no object pixel is hidden"
            return
        self.readout.value = (f"<b>on screen, ratio {m.mask_ratio:.2f}</b>: hidden-pixel PSNR {m.psnr:.1f} dB · "
                              f"colour fidelity {m.colour_fidelity:.2f} · colour-edit following "
                              f"{m.edit_following:.2f} (hidden object pixels: {m.object_pixels})")

    def on_change(self, change: dict[str, Any] | None = None) -> None:
        """Observer of the slider and the toggles: re-render, or show the error in the output area."""
        try:
            self.render()
        except Exception as error:  # a callback's exception would otherwise vanish into the kernel log
            self.error = f"{type(error).__name__}: {error}"
            show_text(self.output, self.error)

    def on_resample(self, button: widgets.Button | None = None) -> None:
        """The resample button: new mask noise, then re-render."""
        self.resamples += 1
        self.noise = self.draw_noise()
        self.on_change()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Show as the widget when it is the last value of a notebook cell."""
        return self.widget._repr_mimebundle_(**kwargs)
