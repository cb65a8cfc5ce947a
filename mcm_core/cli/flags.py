"""Parser pieces shared by the commands: one flag per TrainConfig field, and the checkpoint options.

:func:`add_config_flags` generates ``mcm train``'s training options from the
:class:`~mcm_core.config.TrainConfig` dataclass (help texts from its metadata); values stay
text and :func:`~mcm_core.config.load_config` types and validates them.
:func:`add_checkpoint_options` gives ``mcm eval`` and ``mcm edit`` their ``--checkpoint``,
``--dataset``, ``--data`` and ``--device``.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mcm_core.choices import DATASET_NAMES
from mcm_core.config import TrainConfig, field_types, type_name

DICT_EXAMPLES = {"model": "'{depth: 4}'", "data": "'{size: 512}'"}


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def escape(text: str) -> str:
    """argparse formats help texts with %; keep literal percent signs."""
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Values stay text; ``load_config`` types and validates them."""
    group = parser.add_argument_group(
        "training options", "one per TrainConfig field; each overrides the --config file")
    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        tp, default, flag = types[f.name], field_default(f), flag_name(f.name)
        text = escape(f.metadata.get("help", f.name))
        if tp is bool:
            group.add_argument(flag, dest=f.name, nargs="?", const="true", default=None, metavar="true|false",
                               help=f"{text} (bool; default: {str(default).lower()}; "
                                    f"the flag alone means true)")
            group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const",
                               const="false", help=f"same as {flag} false")
        elif tp is dict:
            example = DICT_EXAMPLES.get(f.name, "'{}'")
            group.add_argument(flag, dest=f.name, default=None, metavar="YAML",
                               help=f"{text} (a YAML mapping such as {example}, "
                                    f"merged key by key into the --config file's; default: {{}})")
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=type_name(tp).upper(),
                               help=f"{text} ({type_name(tp)}; default: {escape(repr(default))})")


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file (.safetensors) or a run folder holding checkpoint.safetensors")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="data set to use (default: the one the model was trained on, with its options): "
                             + ", ".join(DATASET_NAMES))
    parser.add_argument("--data", default=None, metavar="{KEY: VALUE}",
                        help="options for load_dataset, as for train, e.g. '{root: ~/pictures}' with --dataset "
                             "folder; merged over the training run's options when the data set is the same")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
