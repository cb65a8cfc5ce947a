"""``mcm train``: its parser, the TrainConfig it resolves from file, flags and ``--set``, and the run.

Precedence: TrainConfig defaults < ``--config`` file (or a resumed run's ``config.yaml``) <
``--<field>`` flags < ``--set key=value``. The run folder rules (``--resume``, ``--extend``,
``--overwrite``) are those of :mod:`mcm_core.runs`; the evaluation after training is
:class:`mcm_core.evaluate.pipeline.RunEvaluator`, written to ``out_dir/metrics.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path
from typing import Any

from mcm_core.cli.common import UsageError, checkpoint_file, device_of, fmt, write_json
from mcm_core.cli.flags import add_config_flags
from mcm_core.config import TrainConfig, field_types, load_config, parse_overrides, parse_value
from mcm_core.runs import METRICS_NAME

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
    from mcm_core.evaluate.pipeline import RunEvaluator
    from mcm_core.runs import CHECKPOINT_NAME, check_run_folder, read_run, remove_run
    from mcm_core.train import fit

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
