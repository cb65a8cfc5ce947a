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
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from mcm_core.choices import DATASET_NAMES, check_mask_ratio
from mcm_core.config import TrainConfig, field_types, load_config, parse_overrides, parse_value, type_name

from mcm_core.runs import METRICS_NAME
EVAL_BATCH = 256
DICT_EXAMPLES = {"model": "'{depth: 4}'", "data": "'{size: 512}'"}

EPILOG = """\
Errors in the input end with a one-line message and exit code 2 (MCM_DEBUG=1 shows the traceback).
Run 'mcm COMMAND --help' for the options of a command."""

TRAIN_EPILOG = """\
precedence: TrainConfig defaults < --config FILE < --<field> flags < --set key=value (last wins).
--model/--data take a YAML mapping that is merged key by key into the file's mapping;
--set model.depth=4 or --set data.size=512 sets a single entry.

examples:
  mcm train --method mae --mask-ratio 0.75 --steps 2000 --out-dir runs/mae
  mcm train --config run.yaml --batch-size 64 --set model.depth=4 --no-progress
  mcm train --config run.yaml --resume            # continue from out_dir/checkpoint.safetensors
  mcm train --out-dir runs/mae --extend 1000      # train a finished run 1,000 steps further
  mcm train --out-dir runs/mae --overwrite        # delete the run in out_dir and start afresh
  mcm train --steps 3 --batch-size 8 --set data.size=64 --dry-run   # print the resolved config
  mcm train --nproc-per-node 2 --out-dir runs/ddp   # DDP (torchrun): NCCL on GPUs, gloo on CPUs"""


class UsageError(ValueError):
    """A command-line mistake found by the CLI itself (reported like the library's errors)."""


# =========================================================================== parser
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


def add_train(sub: Any) -> None:
    parser = sub.add_parser(
        "train", help="train a model (MAE, MCM, MiCL, Latent MIM) and evaluate it on the validation split",
        description=textwrap.fill("Train a model as a TrainConfig says, checkpoint it into out_dir, evaluate "
                                  "it on the validation split and write out_dir/metrics.json."),
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    run = parser.add_argument_group("run options")
    run.add_argument("--config", metavar="FILE.yaml", default=None,
                     help="YAML file of TrainConfig fields (optional); flags on the command line override it")
    run.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config key, applied after every other flag; repeatable; "
                          "model.<name>=... and data.<name>=... set one entry (e.g. --set model.depth=4)")
    run.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                     help="continue a run: from PATH (a checkpoint or a run folder), or without a value "
                          "from out_dir's checkpoint if there is one (else start fresh); without --config the "
                          "run's own config.yaml is the base, so the flags given are the only changes")
    run.add_argument("--overwrite", action="store_true",
                     help="out_dir holds a run: delete its checkpoint, history and metrics and start afresh "
                          "(without --resume, --overwrite or --extend, training into a run's folder is refused)")
    run.add_argument("--extend", type=int, default=None, metavar="N",
                     help="train a run N steps beyond its total: resumes out_dir's checkpoint (or --resume PATH's) "
                          "with steps = its steps + N; the cosine schedule is stretched to the new total, so the "
                          "learning rate rises again to where the longer schedule has it at the resumed step")
    run.add_argument("--allow-config-change", action="store_true",
                     help="with --resume: continue even though the flags change a training setting "
                          "(refused otherwise, listing every change)")
    run.add_argument("--until", type=int, default=None, metavar="N",
                     help="stop (and checkpoint) after step N of the full schedule; resume later with --resume")
    run.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                     help="train with N processes on this machine (DDP): starts torchrun itself, and a failure "
                          "ends with the workers' one-line message instead of torchrun's report")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved config as YAML and exit without training")
    add_config_flags(parser)
    parser.set_defaults(handler=run_train)


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


def add_eval(sub: Any) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a checkpoint: concepts, reconstruction, kNN / probe, edits",
        description="Evaluate a checkpoint on a split of its training data (or of --dataset): concept metrics "
                    "with a per-concept table (MCM), reconstruction MSE/PSNR on hidden patches, optionally "
                    "kNN and linear-probe accuracy on frozen features and MCM's edit success rate. Prints the "
                    "metrics and writes them as JSON.", allow_abbrev=False)
    add_checkpoint_options(parser)
    parser.add_argument("--split", default="test", help="split to evaluate on (default: test)")
    parser.add_argument("--size", type=int, default=None, metavar="N",
                        help="evaluate on the first N images of the split (default: the run's eval_size, else 1000)")
    parser.add_argument("--mask-ratio", type=float, default=None, metavar="R",
                        help="mask ratio of the reconstruction (and --edit) metrics "
                             "(default: the model's training mask ratio; 0.75 for --edit)")
    parser.add_argument("--knn", action="store_true",
                        help="weighted kNN accuracy (k=20) of frozen CLS features; class data sets only")
    parser.add_argument("--probe", action="store_true",
                        help="linear-probe accuracy on frozen CLS features (per-concept probes on concept data)")
    parser.add_argument("--train-size", type=int, default=2000, metavar="N",
                        help="training images (first N of the train split) for --knn / --probe (default: 2000)")
    parser.add_argument("--prior-threshold", action="store_true",
                        help="concept metrics at per-concept logit thresholds log((1 - f) / f) that undo the "
                             "loss's frequency weighting (predict a concept when it is more likely than not "
                             "under the training frequencies f) instead of logit 0 (the balanced decision)")
    parser.add_argument("--edit", action="store_true",
                        help="MCM only: fraction of single-concept edits that flip the re-encoded prediction")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random masks (default: 0)")
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="where to write the metrics (default: eval_<dataset>_<split>.json next to "
                             "the checkpoint)")
    parser.set_defaults(handler=run_eval)


def add_edit(sub: Any) -> None:
    parser = sub.add_parser(
        "edit", help="MCM: write a PNG of reconstructions with one concept forced on or off",
        description="Take --count images of a split, hide patches, and write a PNG grid with the rows input, "
                    "masked input, reconstruction and edited reconstruction (the concept forced to --state). "
                    "Under the images: the model's probability of the concept.", allow_abbrev=False)
    add_checkpoint_options(parser)
    parser.add_argument("--concept", required=True, metavar="NAME_OR_INDEX",
                        help="concept to edit, by name (e.g. circle) or index")
    parser.add_argument("--state", required=True, type=int, choices=(0, 1),
                        help="state to write: 1 = present, 0 = absent")
    parser.add_argument("--mask-ratio", type=float, default=0.75, metavar="R",
                        help="fraction of patches hidden and regenerated (default: 0.75)")
    parser.add_argument("--count", type=int, default=8, metavar="N", help="number of images (default: 8)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the mask (default: 0)")
    parser.add_argument("--split", default="test", help="split the images come from (default: test)")
    parser.add_argument("--output", required=True, metavar="FILE.png", help="PNG file to write")
    parser.set_defaults(handler=run_edit)


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


# =========================================================================== helpers
def jsonable(value: Any) -> Any:
    """Strict JSON: nan / inf become null, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    from mcm_core.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint path, or a run folder's ``checkpoint.safetensors``."""
    from mcm_core.checkpoint import checkpoint_file as resolve

    return resolve(path)


def device_of(name: str):
    from mcm_core.train import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as error:  # no GPU for device=cuda: a usage problem, not a crash
        raise UsageError(str(error)) from None


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """Say on stderr what starts and how long it took, so a long evaluation is never silent."""
    print(f"... {what}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def limit(dataset: Any, n: int) -> Any:
    """The first ``n`` items of ``dataset`` (the data set itself when it is not longer)."""
    from torch.utils.data import Subset

    return dataset if n >= len(dataset) else Subset(dataset, range(n))


def first_batch(dataset: Any, n: int) -> tuple[Any, Any]:
    """Images (n, 3, H, W) and targets of the first ``n`` items, in one batch."""
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(limit(dataset, n), batch_size=min(n, len(dataset)), shuffle=False)))


def reconstruction_over(model: Any, dataset: Any, mask_ratio: float, seed: int) -> dict[str, float]:
    """MSE / PSNR on hidden patches over a data set, batch by batch (bounded memory).

    Every image hides the same number of patches, so the pooled MSE is the image-weighted
    mean of the batch MSEs.
    """
    import torch
    from torch.utils.data import DataLoader
    from mcm_core.evaluate import model_device, reconstruction_metrics

    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    total, count = 0.0, 0
    for images, _ in DataLoader(dataset, batch_size=EVAL_BATCH, shuffle=False):
        result = reconstruction_metrics(model, images, mask_ratio, generator=generator, batch_size=EVAL_BATCH)
        total, count = total + result["mse"] * images.shape[0], count + images.shape[0]
    mse = total / count
    return {"mse": mse, "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else float("inf"), "mask_ratio": mask_ratio}


def shapes_measures(model: Any, dataset: Any, size: int, seed: int) -> list[dict[str, float]] | None:
    """``mcm_core.measures`` over the curve's mask ratios on the first ``size`` images, or None where they
    do not apply (not an MCM decoding pixels, or not the one-object shapes data)."""
    from torch.utils.data import Subset

    from mcm_core.measures import measure_dataset
    from mcm_core.models.capabilities import has, pixel_problem

    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not has(model, "can_edit") or pixel_problem(model) is not None or not getattr(base, "one_object", False):
        return None
    return [m.to_dict() for m in measure_dataset(model, base, num_images=min(size, len(base)), seed=seed)]


def print_measures(rows: list[dict[str, float]]) -> None:
    print("hidden pixels of held-out images (mcm_core.measures):")
    for r in rows:
        print(f"  mask ratio {r['mask_ratio']:.2f}: psnr {fmt(r['psnr'], 2)} dB  colour fidelity "
              f"{fmt(r['colour_fidelity'])}  colour-edit following {fmt(r['edit_following'])}")


def concept_report(model: Any, dataset: Any, prior_threshold: bool = False) -> tuple[Any, float | None]:
    """MCM's concept metrics on full images, named after the model's concepts, and the class accuracy.

    The class accuracy (top-1: the argmax of the concept logits against the one positive) is
    given when every target row has exactly one positive, i.e. on class data such as
    Fashion-MNIST, whose classes are trained as one-hot concepts; otherwise None.
    ``prior_threshold``: per-concept thresholds that undo the loss's frequency weighting
    (``evaluate.prior_thresholds``) instead of logit 0.
    """
    from mcm_core.evaluate import class_accuracy, concept_metrics, predict_concepts, prior_thresholds

    logits, targets = predict_concepts(model, dataset, batch_size=EVAL_BATCH)
    if targets.shape[1] != model.cfg.num_concepts:
        raise ValueError(f"the data have {targets.shape[1]} concepts but the model has "
                         f"{model.cfg.num_concepts}; evaluate on the data set it was trained on")
    threshold = prior_thresholds(model) if prior_threshold else 0.0
    report = concept_metrics(logits, targets, names=concept_names(model), threshold=threshold)
    return report, class_accuracy(logits, targets)


def concept_metrics_dict(report: Any, class_accuracy: float | None) -> dict[str, Any]:
    """The report's dict, plus ``class_accuracy`` on class data."""
    out = report.to_dict()
    if class_accuracy is not None:
        out["class_accuracy"] = class_accuracy
    return out


def concept_names(model: Any) -> list[str]:
    names = getattr(model.cfg, "concept_names", None)
    return list(names) if names else [f"concept_{i}" for i in range(model.cfg.num_concepts)]


def has_capability(model: Any, capability: str) -> bool:
    """Whether ``model`` has ``capability`` (``mcm_core.models.capabilities``; imported when a command runs)."""
    from mcm_core.models.capabilities import has

    return has(model, capability)


def no_reconstruction(model: Any) -> str | None:
    """Why reconstruction metrics do not apply to ``model``, or None when they do."""
    from mcm_core.models.capabilities import pixel_problem

    why = pixel_problem(model)
    return None if why is None else f"no reconstruction metrics: {why}"


def summary_line(metrics: dict[str, Any]) -> str:
    parts = []
    if "concepts" in metrics:
        macro = metrics["concepts"]["macro"]
        parts.append(f"concepts macro acc {fmt(macro['accuracy'])}  f1 {fmt(macro['f1'])}  auc {fmt(macro['auc'])}")
        if "class_accuracy" in metrics["concepts"]:
            parts.append(f"class accuracy {fmt(metrics['concepts']['class_accuracy'])}")
    if "reconstruction" in metrics:
        rec = metrics["reconstruction"]
        parts.append(f"reconstruction mse {fmt(rec['mse'], 4)}  psnr {fmt(rec['psnr'], 2)} dB "
                     f"(mask ratio {rec['mask_ratio']})")
    parts += [f"note: {note}" for note in metrics.get("notes", [])]
    return " | ".join(parts) if parts else "no metrics"


# =========================================================================== train
def resumed_config(args: argparse.Namespace) -> Path | None:
    """The run's own config.yaml when resuming without --config, so ``--resume`` alone continues that run."""
    if (args.resume is None and args.extend is None) or args.config is not None:
        return None
    if args.resume is True or args.resume is None:  # --resume alone, or --extend
        folder = Path(args.out_dir or TrainConfig.__dataclass_fields__["out_dir"].default)
    else:
        folder = checkpoint_file(args.resume).parent
    path = folder / "config.yaml"
    return path if path.is_file() else None


def train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from --config (or a resumed run's config.yaml), the field flags and --set, in that order."""
    config_path = args.config or resumed_config(args)
    overrides: dict[str, Any] = {}
    mappings: dict[str, dict] = {}
    for f in dataclasses.fields(TrainConfig):
        text = getattr(args, f.name)
        if text is None:
            continue
        if field_types()[f.name] is dict:
            mappings[f.name] = parse_value(f.name, text)  # a dict, or the library's TypeError
            overrides[f.name] = None  # keeps its place in the order; filled in below
        else:
            overrides[f.name] = text
    if mappings:  # merge into the file's mapping instead of replacing it
        base = load_config(config_path)
        for name, mapping in mappings.items():
            overrides[name] = {**getattr(base, name), **mapping}
    overrides.update(parse_overrides(args.set))
    return load_config(config_path, overrides)


class RunEvaluator:
    """``eval_fn`` for ``fit``: validation metrics, remembered so the final evaluation is not repeated."""

    SPLITS = ("val", "test", "train")  # the first split a data set has

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self._data: Any = None
        self.split = ""
        self.last: tuple[int, dict[str, Any]] | None = None

    def data(self) -> Any:
        if self._data is None:
            from mcm_core.train import training_data

            for split in self.SPLITS:
                try:
                    dataset = training_data(self.cfg, split)
                except ValueError as error:
                    if "split" in str(error) and split != self.SPLITS[-1]:
                        continue
                    raise
                self.split, self._data = split, limit(dataset, self.cfg.eval_size)
                break
        return self._data

    def full(self, model: Any) -> dict[str, Any]:
        data = self.data()
        metrics: dict[str, Any] = {"split": self.split, "num_images": len(data), "notes": []}
        if self.split != "val":
            metrics["notes"].append(f"{self.cfg.dataset} has no val split; evaluated on {self.split}")
        if has_capability(model, "uses_concepts"):
            metrics["concepts"] = concept_metrics_dict(*concept_report(model, data))
        if (why := no_reconstruction(model)) is not None:
            metrics["notes"].append(why)
        else:
            metrics["reconstruction"] = reconstruction_over(model, data, self.cfg.mask_ratio, self.cfg.seed)
        if (rows := shapes_measures(model, data, len(data), self.cfg.seed)) is not None:
            metrics["measures"] = rows
        return metrics

    def __call__(self, model: Any, step: int) -> dict[str, float]:
        metrics = self.full(model)
        self.last = (step, metrics)
        flat = {}
        if "concepts" in metrics:
            flat.update({f"concept_{k}": v for k, v in metrics["concepts"]["macro"].items()})
        if "reconstruction" in metrics:
            rec = metrics["reconstruction"]
            flat.update({"recon_mse": rec["mse"], "recon_psnr": rec["psnr"]})
        for row in metrics.get("measures", []):
            if row["mask_ratio"] in (0.5, 0.9):
                ratio = f"{row['mask_ratio']:g}".replace(".", "")
                flat.update({f"psnr_{ratio}": row["psnr"], f"colour_fidelity_{ratio}": row["colour_fidelity"],
                             f"edit_following_{ratio}": row["edit_following"]})
        return flat

    def final(self, model: Any, step: int) -> dict[str, Any]:
        if self.last is not None and self.last[0] == step:
            return self.last[1]
        return self.full(model)


def run_train(args: argparse.Namespace) -> int:
    import yaml

    cfg = train_config(args)
    if args.until is not None and args.until < 1:
        raise UsageError(f"--until must be at least 1, got {args.until}")
    if args.extend is not None:
        cfg = extended_config(args, cfg)
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from mcm_core.distributed import is_main_process
    from mcm_core.runs import check_run_folder, read_run, remove_run
    from mcm_core.train import CHECKPOINT_NAME, fit

    device = device_of(cfg.device)
    main_process = is_main_process()  # under torchrun, rank 0 alone prints, evaluates and writes metrics
    say = print if main_process else (lambda *_, **__: None)
    resume = True if args.extend is not None and args.resume is None else args.resume
    out_dir = Path(cfg.out_dir)
    if main_process:  # one process reads and deletes, so the others never race it
        state = check_run_folder(out_dir, resume=resume is not None, overwrite=args.overwrite)
        if args.overwrite and state is not None:
            removed = remove_run(out_dir)
            say(f"--overwrite: deleted {state.describe().split(' holds ', 1)[1]} ({len(removed)} files in {out_dir})")
    if resume is True:
        found = (out_dir / CHECKPOINT_NAME).exists()
        say(f"resuming from {out_dir / CHECKPOINT_NAME}" if found
            else f"no checkpoint in {out_dir} yet; starting a fresh run")
        resume = out_dir / CHECKPOINT_NAME if found else None
    elif resume is not None:
        resume = checkpoint_file(resume)
        if not resume.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {resume} not found; pass a checkpoint file or run "
                                    "folder, or --resume alone for out_dir's checkpoint")
        say(f"resuming from {resume}")
    if resume is not None and main_process:
        done = read_run(Path(resume).parent)
        if done is not None and done.step is not None and done.step >= cfg.steps:
            say(f"{done.describe()}: nothing to train; its evaluation is in {Path(resume).parent / METRICS_NAME}. "
                "To train it further, pass --extend N (N more steps)")
            return 0
    say(f"training {cfg.method} ({cfg.preset}) on {cfg.dataset} for {cfg.steps} steps "
        f"(batch {cfg.batch_size}, {cfg.masking} masking r={cfg.mask_ratio}) on {device} -> {out_dir}", flush=True)
    evaluator = RunEvaluator(cfg)
    result = fit(cfg, resume=resume, eval_fn=evaluator, until=args.until,
                 allow_config_change=args.allow_config_change)
    if not main_process:
        return 0
    step = int(result.history[-1]["step"]) + 1 if result.history else 0
    evaluation = evaluator.final(result.model, step)
    metrics = {"method": cfg.method, "dataset": cfg.dataset, "step": step, "steps": cfg.steps,
               "final_loss": result.history[-1]["loss"] if result.history else None,
               "wall_seconds": result.wall_seconds, "images_seen": result.images_seen,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None, **evaluation}
    path = out_dir / METRICS_NAME
    write_json(path, metrics)
    status = "finished" if step >= cfg.steps else f"stopped at step {step} of {cfg.steps} (resume with --resume)"
    print(f"{status}: {result.images_seen} images in {result.wall_seconds:.1f} s, final loss "
          f"{fmt(metrics['final_loss'], 4)}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"{evaluation['split']} ({evaluation['num_images']} images): {summary_line(evaluation)}")
    print(f"metrics: {path}")
    return 0


def extended_config(args: argparse.Namespace, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``steps`` = the resumed run's total + ``--extend``; refuses other changes unless allowed."""
    from mcm_core.checkpoint import read_metadata
    from mcm_core.config import config_changes

    if args.extend < 1:
        raise UsageError(f"--extend must be at least 1 (the number of steps to add), got {args.extend}")
    if args.overwrite:
        raise UsageError("--extend trains a run further and --overwrite deletes it; pass one of them")
    source = checkpoint_file(args.resume if args.resume not in (None, True) else cfg.out_dir)
    saved = read_metadata(source).get("train", {}).get("config", {})  # a clear error when it is missing
    steps = int(saved.get("steps", cfg.steps)) + args.extend
    changes = config_changes(saved, dataclasses.replace(cfg, steps=int(saved.get("steps", cfg.steps))).to_dict())
    if changes and not args.allow_config_change:
        raise UsageError(f"--extend continues {source} with more steps only, but the flags also change "
                         f"{'; '.join(changes)}; drop those flags or add --allow-config-change")
    args.allow_config_change = True  # the step count is the one change --extend makes
    return dataclasses.replace(cfg, steps=steps)


# =========================================================================== eval and edit
def load_model(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    from mcm_core.checkpoint import load_checkpoint

    path = checkpoint_file(args.checkpoint)
    model, info = load_checkpoint(path, device=device_of(args.device))
    return model, info, path


def checkpoint_data(model: Any, info: Any, name: str | None, split: str,
                    data: str | None = None) -> tuple[str, Any, dict[str, Any]]:
    """``(dataset name, the split's data set, its options)``: the training data unless ``name`` says otherwise;
    ``data`` (the ``--data`` text, a YAML mapping) adds or replaces options."""
    from mcm_core.data import dataset_options, load_dataset

    trained = info.train.get("config", {})
    if name is None:
        name = trained.get("dataset")
        if name is None:
            raise UsageError("this checkpoint records no training data set; pass --dataset NAME")
    options = dict(trained.get("data", {})) if name == trained.get("dataset") else {}
    if data is not None:
        options.update(parse_value("data", data))  # a mapping, or an error naming --data
    if "image_size" in dataset_options(name):
        options.setdefault("image_size", model.cfg.img_size)
    return name, load_dataset(name, split=split, **options), options


def as_concepts(dataset: Any, model: Any, what: str) -> Any:
    """The data set with 0/1 concept targets for an MCM model (class labels become one-hot, as in training)."""
    from mcm_core.train import OneHotTargets

    if hasattr(dataset, "concept_names"):
        return dataset
    if hasattr(dataset, "classes"):
        return OneHotTargets(dataset)
    raise UsageError(f"{what} needs concept or class labels, and this data set has none; pass --dataset")


def labelled(dataset: Any) -> bool:
    return hasattr(dataset, "concept_names") or hasattr(dataset, "classes")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    model, info, path = load_model(args)
    with stage(f"loading {args.dataset or 'the training data set'} ({args.split} split)"):
        name, dataset, options = checkpoint_data(model, info, args.dataset, args.split, args.data)
    size = args.size if args.size is not None else int(info.train.get("config", {}).get("eval_size", 1000))
    if size < 1 or args.train_size < 1:
        raise UsageError(f"--size and --train-size must be at least 1, got {size} and {args.train_size}")
    if args.edit and not has_capability(model, "can_edit"):
        raise UsageError(f"--edit needs an MCM checkpoint; {path} holds a {info.method!r} model")
    data = limit(dataset, size)
    ratio = check_mask_ratio(model.cfg.mask_ratio if args.mask_ratio is None else args.mask_ratio, "--mask-ratio")
    step = info.train.get("step")
    print(f"checkpoint: {path} ({info.method}, step {step})")
    print(f"data: {name} {args.split}, {len(data)} images")
    metrics: dict[str, Any] = {"checkpoint": str(path), "method": info.method, "step": step, "dataset": name,
                               "split": args.split, "num_images": len(data), "notes": []}
    if has_capability(model, "uses_concepts") and not labelled(dataset):
        metrics["notes"].append(f"no concept metrics: {name} has no labels")
    elif has_capability(model, "uses_concepts"):
        with stage(f"concept metrics on {len(data)} images"):
            report, class_accuracy = concept_report(model, limit(as_concepts(dataset, model, "concept metrics"), size),
                                                    prior_threshold=args.prior_threshold)
        metrics["concepts"] = concept_metrics_dict(report, class_accuracy)
        rule = "logit > log((1 - f) / f), f = training frequency" if args.prior_threshold else "logit > 0"
        print(f"\nconcepts (full images, {rule}):\n{report.format()}\n")
        if class_accuracy is not None:
            print(f"class accuracy (argmax of the concept logits): {fmt(class_accuracy)}\n")
    if (why := no_reconstruction(model)) is not None:
        metrics["notes"].append(why)
    else:
        with stage(f"reconstruction at mask ratio {ratio} on {len(data)} images"):
            metrics["reconstruction"] = reconstruction_over(model, data, ratio, args.seed)
        rec = metrics["reconstruction"]
        print(f"reconstruction (hidden patches, mask ratio {ratio}): mse {fmt(rec['mse'], 4)}  "
              f"psnr {fmt(rec['psnr'], 2)} dB")
        with stage("colour measures over the mask ratios (shapes data only)"):
            rows = shapes_measures(model, dataset, size, args.seed)
        if rows is not None:
            metrics["measures"] = rows
            print_measures(rows)
    if args.knn or args.probe:
        with stage(f"frozen features of {args.train_size} train and {len(data)} {args.split} images"):
            features_metrics(model, name, dataset, data, options, args, metrics)
    if args.edit:
        from mcm_core.evaluate import edit_success_rate

        edit_ratio = 0.75 if args.mask_ratio is None else args.mask_ratio
        images, concepts = first_batch(as_concepts(dataset, model, "--edit"), len(data))
        generator = torch.Generator(device=images.device).manual_seed(args.seed)
        with stage(f"edit success at mask ratio {edit_ratio} ({len(data)} images, every concept)"):
            result = edit_success_rate(model, images, concepts, mask_ratio=edit_ratio, generator=generator)
        names = concept_names(model)
        per_concept = {names[i]: r for i, r in zip(result["concept_indices"], result["per_concept"])}
        metrics["edit"] = {"rate": result["rate"], "mask_ratio": edit_ratio, "per_concept": per_concept}
        print(f"edit success rate (mask ratio {edit_ratio}): {fmt(result['rate'])}")
        print("  " + "  ".join(f"{n} {fmt(r, 2)}" for n, r in metrics["edit"]["per_concept"].items()))
    for note in metrics["notes"]:
        print(f"note: {note}")
    output = Path(args.output) if args.output else path.with_name(f"eval_{name}_{args.split}.json")
    write_json(output, metrics)
    print(f"metrics: {output}")
    return 0


def features_metrics(model: Any, name: str, dataset: Any, data: Any, options: dict[str, Any],
                     args: argparse.Namespace, metrics: dict[str, Any]) -> None:
    """kNN and/or linear-probe accuracy of frozen features: train split (limited) vs the evaluated images."""
    from mcm_core.data import load_dataset
    from mcm_core.evaluate import extract_features, knn_accuracy, linear_probe

    if not labelled(dataset):
        metrics["notes"].append(f"no kNN / probe: {name} has no labels")
        return
    train = limit(load_dataset(name, split="train", **options), args.train_size)
    train_x, train_y = extract_features(model, train, batch_size=EVAL_BATCH)
    test_x, test_y = extract_features(model, data, batch_size=EVAL_BATCH)
    classes = train_y.ndim == 1
    print(f"frozen CLS features: {train_x.shape[0]} train / {test_x.shape[0]} {args.split} images")
    if args.knn:
        if classes:
            metrics["knn"] = {"accuracy": knn_accuracy(train_x, train_y, test_x, test_y), "k": 20,
                              "train_images": train_x.shape[0]}
            print(f"kNN accuracy (k=20): {fmt(metrics['knn']['accuracy'])}")
        else:
            metrics["notes"].append(f"no kNN: {name} has concept labels, kNN needs classes (use --probe)")
    if args.probe:
        result = linear_probe(train_x, train_y, test_x, test_y)
        if not classes:
            names = list(dataset.concept_names)
            result["per_concept_f1"] = dict(zip(names, result["per_concept_f1"]))
        metrics["probe"] = {**result, "train_images": train_x.shape[0]}
        extra = "" if classes else f"  macro f1 {fmt(result['macro_f1'])}  macro auc {fmt(result['macro_auc'])}"
        print(f"linear probe ({'classes' if classes else 'per concept'}): accuracy {fmt(result['accuracy'])}{extra}")


def resolve_concept(model: Any, text: str) -> int:
    """Concept index from a name (case-insensitive) or an index; a clear error listing the names."""
    import difflib

    names = concept_names(model)
    if text in names:
        return names.index(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    listing = ", ".join(names)
    try:
        index = int(text)
    except ValueError:
        close = difflib.get_close_matches(text, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown concept {text!r}{hint}; valid names: {listing} "
                         f"(or an index 0..{len(names) - 1})") from None
    if not 0 <= index < len(names):
        raise UsageError(f"concept index {index} out of range; this model has {len(names)} concepts "
                         f"(0..{len(names) - 1}): {listing}")
    return index


def run_edit(args: argparse.Namespace) -> int:
    import torch

    model, info, path = load_model(args)
    if not has_capability(model, "can_edit"):
        raise UsageError(f"edit needs an MCM checkpoint; {path} holds a {info.method!r} model")
    k = resolve_concept(model, args.concept)
    name = concept_names(model)[k]
    if args.count < 1:
        raise UsageError(f"--count must be at least 1, got {args.count}")
    check_mask_ratio(args.mask_ratio, "--mask-ratio")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {output}")
    dataset_name, dataset, _ = checkpoint_data(model, info, args.dataset, args.split, args.data)
    count = min(args.count, len(dataset))
    images, _ = first_batch(dataset, count)
    device = next(model.parameters()).device
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        mask = model.make_mask(images, args.mask_ratio, generator)  # one mask for both reconstructions
        patches = model.patchify(images)
        masked = model.unpatchify(torch.where(mask[..., None], torch.full_like(patches, 0.5), patches))
        recon, _ = model.reconstruct(images, mask=mask)
        edited = model.edit(images, {k: args.state}, mask=mask)
        probs = [torch.sigmoid(model.predict_concepts(x)[:, k]).cpu() for x in (images, recon, edited)]
    rows = [("input", images, probs[0]), ("masked", masked, None), ("reconstruction", recon, probs[1]),
            (f"{name} = {args.state}", edited, probs[2])]
    title = (f"{info.method} {path.parent.name}/{path.name}: concept {name!r} -> {args.state}, "
             f"mask ratio {args.mask_ratio} ({dataset_name} {args.split}; p = P({name}))")
    save_grid(output, rows, title)
    print(output)
    return 0


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


def save_grid(path: Path, rows: list[tuple[str, Any, Any]], title: str) -> None:
    """Write rows of images (B, 3, H, W) as a PNG with the Agg backend (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mcm_core.checkpoint import atomic_write_bytes

    count = rows[0][1].shape[0]
    fig = Figure(figsize=(1.25 * count + 1.2, 1.45 * len(rows) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), count, squeeze=False)
    for r, (label, images, probs) in enumerate(rows):
        for c in range(count):
            ax = axes[r][c]
            ax.imshow(images[c].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if probs is not None:
                ax.set_xlabel(f"p={float(probs[c]):.2f}", fontsize=7, labelpad=1)
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png"))


# =========================================================================== entry point
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


if __name__ == "__main__":
    raise SystemExit(main())
