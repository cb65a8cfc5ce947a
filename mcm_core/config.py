"""Training configuration: one dataclass, loadable from YAML, with typed overrides.

Every field carries its help text, so the CLI's ``--help`` documents every option
and notebooks can show the same descriptions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcm_core.choices import (
    AFFINITIES, DATASET_NAMES, MASKINGS, MODEL_NAMES, PRECISIONS, check_mask_ratio, one_of,
)

# Numeric fields and the values they accept: (lowest, highest, lowest allowed?, highest allowed?).
BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    **{name: (1, math.inf, True, False) for name in ("steps", "batch_size", "log_every", "eval_size",
                                                       "hierarchy_min_nodes")},
    **{name: (0, math.inf, True, False) for name in ("warmup_steps", "num_workers", "checkpoint_every",
                                                       "eval_every", "seed", "weight_decay", "min_lr",
                                                       "grad_clip")},
    "lr": (0, math.inf, False, False),
    "patch_embed_lr_scale": (0, math.inf, False, False),
    "beta1": (0, 1, True, False),
    "beta2": (0, 1, True, False),
    "ema_momentum": (0, 1, True, True),
}


# Fields that do not change what a run learns: a resumed run or a reused checkpoint may differ in these.
RUNTIME_FIELDS = ("device", "progress", "out_dir", "num_workers", "log_every", "checkpoint_every",
                  "eval_every", "compile", "deterministic")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a help text (and a factory for mutable defaults)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything one training run needs. Field help texts double as CLI documentation."""

    method: str = opt("mcm", f"model name: {', '.join(MODEL_NAMES)} (see mcm_core.models.model_names())")
    preset: str = opt("tiny", "backbone preset: tiny (CPU, 32 px), small, base (ViT-B/16, 224 px), large (ViT-L/16)")
    model: dict = opt({}, "overrides of the model config, e.g. {norm_pix_loss: true, pairing: sequential}")
    dataset: str = opt("shapes", f"data set name: {', '.join(DATASET_NAMES)}")
    data: dict = opt({}, "options for load_dataset, e.g. {root: /path, image_size: 32}")
    masking: str = opt("random", f"masking strategy: {', '.join(MASKINGS)} (hierarchical: evolved, from the EMA "
                       "encoder)")
    mask_ratio: float = opt(0.25, "fraction of patches hidden during training, in [0, 1)")
    mask_ratio_max: float = opt(0.0, "when above mask_ratio, every step draws its mask ratio uniformly from "
                                "[mask_ratio, mask_ratio_max] (the decoder learns to lean on the concept tokens "
                                "when little is visible); 0 = always mask_ratio")
    steps: int = opt(1000, "optimizer steps")
    batch_size: int = opt(128, "images per step (global batch across processes)")
    lr: float = opt(1e-3, "peak learning rate (MAE uses 1.5e-4 x batch/256 for long runs; short CPU runs need more)")
    weight_decay: float = opt(0.05, "AdamW weight decay (not applied to biases, norms, tokens and embeddings)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    warmup_steps: int = opt(50, "linear warm-up steps before the cosine decay")
    min_lr: float = opt(1e-5, "learning rate at the end of the cosine schedule")
    patch_embed_lr_scale: float = opt(1.0, "learning rate of the patch embedding as a multiple of lr (faint pixel "
                                      "statistics such as a noise texture are learned in that first layer)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this value (0 = off)")
    ema_momentum: float = opt(0.99, "momentum of the EMA encoder that drives hierarchical masking")
    hierarchy_min_nodes: int = opt(4, "hierarchical masking: number of tree nodes at the end of training")
    hierarchy_affinity: str = opt("tokens", "hierarchical masking: what the trees are built from: tokens (cosine "
                                  "of the EMA encoder's patch tokens) or attention (summed attention; gives "
                                  "chain-like trees, see notebook 04)")
    seed: int = opt(0, "seed of weights, data order and masks")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    precision: str = opt("auto", "auto (bf16 autocast on a GPU, and on a CPU with native bf16 matrix units "
                    "(AVX512-BF16 or AMX), where it trains 1.6x faster; float32 elsewhere), bf16 or fp32")
    compile: bool = opt(False, "torch.compile the model (inductor). On a GPU it pays at once; on a CPU it needs a "
                               "C++ compiler and its 1-2 minute compile pays only on runs of 10 minutes or more "
                               "(tiny MCM: 1.2x the eager bf16 step, docs/benchmarks.md)")
    deterministic: bool = opt(False, "use deterministic algorithms (bit-identical reruns, slower on GPU)")
    num_workers: int = opt(0, "DataLoader worker processes (unused for the built-in shapes data on a GPU, "
                                 "which is rendered on the GPU)")
    log_every: int = opt(10, "record metrics every N steps (one host synchronization each time)")
    checkpoint_every: int = opt(0, "save a checkpoint every N steps (0 = only at the end)")
    eval_every: int = opt(0, "evaluate on the validation split every N steps (0 = only at the end)")
    eval_size: int = opt(1000, "images used by the periodic evaluation")
    out_dir: str = opt("runs/default", "folder for checkpoint, metrics history and config")
    progress: bool = opt(True, "show a progress bar (a widget in notebooks, text in a terminal)")

    def __post_init__(self) -> None:
        check_types(self)
        check_mask_ratio(self.mask_ratio, hint="e.g. 0.25 for MCM, 0.75 for MAE")
        if self.mask_ratio_max and not self.mask_ratio <= self.mask_ratio_max < 1.0:
            raise ValueError(f"mask_ratio_max must be 0 (off) or in [mask_ratio, 1) = [{self.mask_ratio}, 1), got "
                             f"{self.mask_ratio_max}; e.g. mask_ratio=0.25, mask_ratio_max=0.9")
        for name, bounds in BOUNDS.items():
            check_bounds(name, getattr(self, name), *bounds)
        for name, choices in (("masking", MASKINGS), ("hierarchy_affinity", AFFINITIES), ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose {one_of(choices)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML, atomically (a crash never leaves half a file)."""
        from mcm_core.checkpoint import atomic_write_text  # lazy: the CLI's --help stays free of torch

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def check_bounds(name: str, value: float, low: float, high: float, low_ok: bool, high_ok: bool) -> None:
    """Raise a ValueError naming ``name`` and its valid range unless ``value`` lies in it (NaN never does)."""
    above = value >= low if low_ok else value > low
    below = value <= high if high_ok else value < high
    if not (above and below):
        if high == math.inf:
            wanted = f"at least {low:g}" if low_ok else f"greater than {low:g}"
        else:
            wanted = f"in {'[' if low_ok else '('}{low:g}, {high:g}{']' if high_ok else ')'}"
        default = TrainConfig.__dataclass_fields__[name].default
        raise ValueError(f"{name} must be {wanted}, got {value}; e.g. {name}={default!r}")


def field_types() -> dict[str, Any]:
    """Resolved type of every TrainConfig field."""
    return typing.get_type_hints(TrainConfig)


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def check_types(cfg: TrainConfig) -> None:
    """Raise a clear TypeError for a field whose value has the wrong type."""
    for name, tp in field_types().items():
        value = getattr(cfg, name)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if tp is float else (
            isinstance(value, tp) and not (tp is int and isinstance(value, bool)))
        if not ok:
            raise TypeError(f"config field {name!r} must be {type_name(tp)}, got {value!r} "
                            f"({type(value).__name__}); e.g. {name}={TrainConfig.__dataclass_fields__[name].default!r}")
        if tp is float:
            setattr(cfg, name, float(value))


def parse_value(name: str, text: str) -> Any:
    """Parse a command-line override ``name=text`` to the field's type, with a clear error."""
    tp = field_types()[name]
    try:
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if tp is dict:
            value = yaml.safe_load(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        return tp(text) if tp is not float else float(text)
    except (ValueError, yaml.YAMLError):
        raise TypeError(f"option {name!r} expects {type_name(tp)}, got {text!r}") from None


def merge(cfg_dict: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply overrides; ``model.x`` / ``data.x`` keys set one entry of those dicts."""
    merged = json.loads(json.dumps(cfg_dict))  # deep copy
    valid = set(field_types())
    for key, value in overrides.items():
        head, _, sub = key.partition(".")
        if head not in valid:
            raise KeyError(f"unknown config key {head!r}; valid keys are {sorted(valid)}")
        if sub:
            if head not in ("model", "data"):
                raise KeyError(f"{head!r} has no sub-keys; only model.<name> and data.<name> do")
            merged.setdefault(head, {})[sub] = value
        else:
            merged[head] = value
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from an optional YAML file plus overrides (values already typed or strings)."""
    base: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found; pass an existing YAML file or leave it out")
        base = read_yaml(path, path.read_text()) or {}
        if not isinstance(base, dict):
            raise TypeError(f"{path} must hold a YAML mapping of config keys, got {type(base).__name__}")
        unknown = sorted(set(base) - set(field_types()))
        if unknown:
            raise KeyError(f"{path}: unknown config key(s) {unknown}; valid keys are {sorted(field_types())}")
        base = {key: float_from_text(key, value) for key, value in base.items()}
    typed = {}
    for key, value in (overrides or {}).items():
        head, _, sub = key.partition(".")
        if isinstance(value, str) and not sub and head in field_types():
            value = parse_value(head, value)
        elif isinstance(value, str) and sub:
            value = read_yaml(f"--set {key}", value)
        typed[key] = value
    return TrainConfig(**merge(base, typed))


def read_yaml(source: str | Path, text: str) -> Any:
    """``yaml.safe_load(text)`` (plain data only: tags such as ``!!python/object`` are refused),
    with a clear error naming ``source`` when the text is not valid YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"{source} is not valid YAML ({detail}); fix the syntax (key: value, one per line; "
                         "quote strings with special characters)") from None


def float_from_text(name: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: turn such text into a float for float fields."""
    if isinstance(value, str) and field_types().get(name) is float:
        try:
            return float(value)
        except ValueError:
            return value  # not a number: check_types names the field and its type
    return value


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["steps=100", "model.depth=4"]`` -> ``{"steps": "100", "model.depth": "4"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"override {pair!r} must look like key=value, e.g. steps=200")
        out[key.strip()] = value.strip()
    return out


def config_changes(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between two config dicts, ignoring ``RUNTIME_FIELDS``: ``["lr: 0.002 -> 0.001", ...]``.

    A key missing on one side (e.g. a checkpoint from an older version) counts as a change, except a
    ``TrainConfig`` field missing from ``saved`` that ``wanted`` leaves at its default: a field added
    later keeps the old behaviour at its default.
    """
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)}
    changes = []
    for key in sorted(set(saved) | set(wanted)):
        if key in RUNTIME_FIELDS:
            continue
        if key not in saved and key in defaults and wanted.get(key) == defaults[key]:
            continue
        before, after = saved.get(key, "<missing>"), wanted.get(key, "<missing>")
        if before != after:
            changes.append(f"{key}: {before!r} -> {after!r}")
    return changes
