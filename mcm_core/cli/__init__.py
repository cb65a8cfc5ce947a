"""Command line: ``mcm train|eval|edit|export`` (also ``python -m mcm_core ...``).

``train``
    One ``--<field>`` flag per :class:`~mcm_core.config.TrainConfig` field, generated from the
    dataclass (help texts from its metadata), on top of an optional ``--config`` YAML file;
    ``--set key=value`` (repeatable, ``model.depth=4`` style) is applied last. Values are typed
    and validated by :func:`~mcm_core.config.load_config`. After training, the model is
    evaluated on the validation split and ``metrics.json`` is written into ``out_dir``. A folder
    that holds a run is never trained over unless ``--resume``, ``--extend N`` or ``--overwrite``
    says what to do with it (:mod:`mcm_core.runs`); SIGINT / SIGTERM save a checkpoint at the
    current step; ``--nproc-per-node N`` starts torchrun itself (:mod:`mcm_core.launch`).
``eval``
    Metrics of a checkpoint on the data it was trained on (or another data set): concept
    metrics for MCM, reconstruction MSE/PSNR, optionally kNN / linear-probe accuracy and
    MCM's edit success rate; printed and written as JSON.
``edit``
    A PNG grid: input, masked input, reconstruction, reconstruction with one concept forced.
    ``eval`` and ``edit`` take the data options of ``train`` (``--dataset``, ``--data``).
``export``
    The encoder as timm weights, and the ``timm.create_model`` call that loads them.

Mistakes in the input (unknown keys, wrong types, missing files, bad checkpoints) end with
a one-line message on stderr and exit code 2, not a traceback; set ``MCM_DEBUG=1`` to get
the traceback. Torch is imported only when a command runs, so ``--help`` is instant.

Modules: :mod:`~mcm_core.cli.common` (usage error, JSON output, checkpoint and data loading),
:mod:`~mcm_core.cli.flags` (TrainConfig flags, checkpoint options), one per command
(:mod:`~mcm_core.cli.train`, :mod:`~mcm_core.cli.eval`, :mod:`~mcm_core.cli.edit`,
:mod:`~mcm_core.cli.export`), and here the parser, ``main`` and the error handling. The numbers
come from :mod:`mcm_core.evaluate.pipeline`; its names are re-exported here on first use.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Sequence

from mcm_core.cli.common import (  # noqa: F401 (re-exported)
    UsageError, checkpoint_data, checkpoint_file, device_of, fmt, jsonable, load_model, stage, write_json,
)
from mcm_core.cli.flags import (  # noqa: F401 (re-exported)
    DICT_EXAMPLES, add_checkpoint_options, add_config_flags, escape, field_default, flag_name,
)
from mcm_core.cli.train import (  # noqa: F401 (re-exported)
    TRAIN_EPILOG, add_train, extended_config, resumed_config, run_train, summary_line, train_config,
)
from mcm_core.cli.eval import add_eval, as_concepts, print_features, print_measures, run_eval  # noqa: F401
from mcm_core.cli.edit import add_edit, resolve_concept, run_edit, save_grid  # noqa: F401
from mcm_core.cli.export import add_export, run_export  # noqa: F401

# Names of mcm_core.evaluate.pipeline that this module held before; loaded on first use, since
# importing them imports torch and `mcm --help` must not.
PIPELINE_NAMES = (
    "EVAL_BATCH", "FeatureMetrics", "RunEvaluator", "concept_metrics_dict", "concept_names", "concept_report",
    "features_metrics", "first_batch", "has_capability", "labelled", "limit", "no_reconstruction",
    "reconstruction_over", "shapes_measures",
)


def __getattr__(name: str) -> Any:
    if name in PIPELINE_NAMES:
        from mcm_core.evaluate import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


EPILOG = """\
Errors in the input end with a one-line message and exit code 2 (MCM_DEBUG=1 shows the traceback).
Run 'mcm COMMAND --help' for the options of a command."""


def build_parser(prog: str = "mcm") -> argparse.ArgumentParser:
    from mcm_core import __version__

    parser = argparse.ArgumentParser(
        prog=prog, description="Learning concepts from masked images: train, evaluate and edit MAE / MCM models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"mcm_core {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train(sub)
    add_eval(sub)
    add_edit(sub)
    add_export(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'fix the input', shown as one line (the library modules are loaded lazily)."""
    errors: list[type[BaseException]] = [ValueError, TypeError, KeyError, OSError]
    if "mcm_core.checkpoint" in sys.modules:
        errors.append(sys.modules["mcm_core.checkpoint"].CheckpointError)
    if "mcm_core.train" in sys.modules:
        errors.append(sys.modules["mcm_core.train"].TrainingDiverged)
    return tuple(errors)


def message(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def launch_processes(args: argparse.Namespace, argv: list[str], prog: str) -> int:
    """``train --nproc-per-node N``: the same command in N torchrun workers (mcm_core.launch)."""
    from mcm_core.launch import launch, split_nproc

    if args.nproc_per_node < 1:
        print(f"{prog} train: error: --nproc-per-node must be at least 1, got {args.nproc_per_node}", file=sys.stderr)
        return 2
    if os.environ.get("RANK") is not None:
        print(f"{prog} train: error: --nproc-per-node starts torchrun itself; run the command without torchrun, "
              "or drop --nproc-per-node under torchrun", file=sys.stderr)
        return 2
    return launch(args.nproc_per_node, split_nproc(argv)[1], prog)


def main(argv: Sequence[str] | None = None, prog: str = "mcm") -> int:
    """Run ``mcm COMMAND ...``; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or argparse's own usage error (code 2)
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    started = time.perf_counter()
    if getattr(args, "nproc_per_node", None) is not None:
        return launch_processes(args, list(sys.argv[1:] if argv is None else argv), parser.prog)
    try:
        return handler(args)
    except KeyboardInterrupt as stop:
        from mcm_core.runs import TrainingInterrupted

        if isinstance(stop, TrainingInterrupted):
            from mcm_core.launch import record_error

            line = f"{parser.prog} {args.command}: {stop}"
            print(line, file=sys.stderr)
            record_error(line, 128 + stop.signal_number)
            return 128 + stop.signal_number
        print(f"\n{parser.prog} {args.command}: interrupted after {time.perf_counter() - started:.0f} s"
              + ("; no checkpoint was saved at this point (the last saved one, if any, is intact)"
                 if args.command == "train" else ""), file=sys.stderr)
        return 130
    except Exception as error:
        if not isinstance(error, user_errors()) or os.environ.get("MCM_DEBUG"):
            raise
        line = f"{parser.prog} {args.command}: error: {message(error)}"
        print(line, file=sys.stderr)
        from mcm_core.launch import record_error

        record_error(line, 2)  # for `train --nproc-per-node`, which prints it after torchrun's report
        return 2
