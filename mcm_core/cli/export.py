"""``mcm export``: a checkpoint's encoder as timm weights, and the ``timm.create_model`` call that loads them.

The conversion and its check are :mod:`mcm_core.export`'s; this module parses the command and prints.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcm_core.cli.common import UsageError, checkpoint_file


def add_export(sub: Any) -> None:
    parser = sub.add_parser(
        "export", help="write a checkpoint's encoder as timm weights that timm.create_model loads",
        description="Write the encoder of a checkpoint (any method) as a timm VisionTransformer state dict, and "
                    "next to it (same name, .json) the timm.create_model(..., pretrained=True, "
                    "pretrained_cfg_overlay=dict(file=FILE, ...)) call that loads it without a network, with the "
                    "data config (input size, bilinear, mean 0, std 1) that timm's resolve_model_data_config and "
                    "create_transform turn into the training input. The call is printed and checked.",
        allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file (.safetensors) or a run folder holding checkpoint.safetensors")
    parser.add_argument("--output", required=True, metavar="FILE.safetensors",
                        help="weights file to write: .safetensors (or .pth / .pt for torch.save); the "
                             "timm.create_model call goes to the same name with .json")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from mcm_core.checkpoint import load_checkpoint
    from mcm_core.export import SPEC_SUFFIX, WEIGHT_SUFFIXES, save_timm

    path = checkpoint_file(args.checkpoint)
    output = Path(args.output)
    if output.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UsageError(f"--output must be a {' or '.join(WEIGHT_SUFFIXES)} file, got {output}")
    if path.is_file() and output.with_suffix(SPEC_SUFFIX).resolve() == path.with_suffix(".json").resolve():
        raise UsageError(f"--output {output} would overwrite the checkpoint {path} or its .json; "
                         "choose another name (e.g. encoder.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a checkpoint file or a run folder holding "
                                "checkpoint.safetensors")
    model, info = load_checkpoint(path, device="cpu")
    source = {"checkpoint": str(path.resolve()), "method": info.method, "step": info.train.get("step")}
    spec = save_timm(model, output, source=source)
    print(f"timm weights of the {info.method} encoder: {output}")
    print(f"timm.create_model call (checked: same features as model.features): {output.with_suffix(SPEC_SUFFIX)}")
    print(spec["create_model"])
    return 0
