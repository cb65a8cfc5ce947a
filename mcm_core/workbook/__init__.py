"""The course tooling: what the notebooks call, and the commands that run, grade and hand them out.

The last layer of mcm_core (data -> masking -> models -> train -> evaluate -> analysis -> viz ->
workbook): it imports the others, nothing imports it::

    mcm_core/workbook/
      folders.py      where notebooks/ and labs/ are: given, else ./notebooks, else shipped/
      params.py       a notebook's parameters cell: parameters(), Range, smoke mode, setup()
      metrics.py      record_metrics(): what a notebook reports to a lab
      checkpoints.py  checkpoint_matches(), workbook_checkpoint(), SHIPPED_CHECKPOINT
      training.py     train_or_load(): train a config, or load its finished run
      widgets.py      InterpolationWidget (notebook 03)
      lab_spec.py     a lab file read and checked           \\
      lab_runs.py     its runs, papermill in parallel        > python -m mcm_core.workbook.labs run|summary|check
      lab_summary.py  summary.csv and summary.png           /
      labs.py         the labs' command line
      handouts.py     student copies without the solutions:  python -m mcm_core.workbook.handouts build|check
      shipped/        notebooks/ and labs/ shipped with the package (links in the repository)

A notebook's first cells, for example::

    from mcm_core.workbook import Range, parameters, setup, train_or_load

    params = parameters(globals(), {"steps": Range(1, 10**7), "lr": Range(1e-6, 1.0), "checkpoint_path": str},
                        smoke_caps={"steps": 6}, smoke_folder="checkpoint_path")
    generator = setup(seed)

This package exports the folder functions and the notebook helpers; the widgets, labs and
handouts are imported from their modules (``from mcm_core.workbook.widgets import ...``), so
``import mcm_core.workbook`` stays light and ``python -m`` runs the command modules cleanly.
"""
from __future__ import annotations

from mcm_core.workbook.folders import LABS, NOTEBOOKS, SHIPPED, input_folder, is_shipped, package_dirs, shipped_folder
from mcm_core.workbook.params import (
    STANDARD, Range, injected_parameters, notebook_params, parameters, resolve_params, setup, smoke_from_env,
    spec_entry,
)
from mcm_core.workbook.metrics import METRICS_ENV, record_metrics
from mcm_core.workbook.checkpoints import SHIPPED_CHECKPOINT, checkpoint_matches, workbook_checkpoint
from mcm_core.workbook.training import TrainedRun, train_or_load

__all__ = ["NOTEBOOKS", "LABS", "SHIPPED", "shipped_folder", "package_dirs", "is_shipped", "input_folder",
           "Range", "STANDARD", "parameters", "spec_entry", "resolve_params", "notebook_params", "injected_parameters",
           "smoke_from_env", "setup", "METRICS_ENV", "record_metrics", "SHIPPED_CHECKPOINT", "checkpoint_matches",
           "workbook_checkpoint", "TrainedRun", "train_or_load"]
