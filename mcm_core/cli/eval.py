"""``mcm eval``: its parser, and the metrics of a checkpoint printed and written as JSON.

The numbers come from :mod:`mcm_core.evaluate.pipeline` (concept metrics, reconstruction,
the shapes measures, kNN / linear probe) and :func:`mcm_core.evaluate.edit_success_rate`;
this module only picks what applies, prints it and writes ``eval_<dataset>_<split>.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcm_core.choices import check_mask_ratio
from mcm_core.cli.common import UsageError, checkpoint_data, fmt, load_model, stage, write_json
from mcm_core.cli.flags import add_checkpoint_options


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


def as_concepts(dataset: Any, model: Any, what: str) -> Any:
    """The data set with 0/1 concept targets for an MCM model (class labels become one-hot, as in training)."""
    from mcm_core.batches import OneHotTargets

    if hasattr(dataset, "concept_names"):
        return dataset
    if hasattr(dataset, "classes"):
        return OneHotTargets(dataset)
    raise UsageError(f"{what} needs concept or class labels, and this data set has none; pass --dataset")


def print_measures(rows: list[dict[str, float]]) -> None:
    print("hidden pixels of held-out images (mcm_core.evaluate.measures):")
    for r in rows:
        print(f"  mask ratio {r['mask_ratio']:.2f}: psnr {fmt(r['psnr'], 2)} dB  colour fidelity "
              f"{fmt(r['colour_fidelity'])}  colour-edit following {fmt(r['edit_following'])}")


def print_features(result: Any, split: str) -> None:
    """The kNN / linear-probe lines of a :class:`~mcm_core.evaluate.pipeline.FeatureMetrics` (none without labels)."""
    if not result.train_images:
        return
    print(f"frozen CLS features: {result.train_images} train / {result.test_images} {split} images")
    if result.knn is not None:
        print(f"kNN accuracy (k=20): {fmt(result.knn['accuracy'])}")
    if result.probe is not None:
        probe, classes = result.probe, result.classes
        extra = "" if classes else f"  macro f1 {fmt(probe['macro_f1'])}  macro auc {fmt(probe['macro_auc'])}"
        print(f"linear probe ({'classes' if classes else 'per concept'}): accuracy {fmt(probe['accuracy'])}{extra}")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from mcm_core.evaluate.pipeline import (
        concept_metrics_dict, concept_names, concept_report, features_metrics, first_batch, has_capability, labelled,
        limit, no_reconstruction, reconstruction_over, shapes_measures,
    )

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
            features = features_metrics(model, name, dataset, data, options, args.train_size,
                                        knn=args.knn, probe=args.probe)
            print_features(features, args.split)
        metrics["notes"] += features.notes
        metrics.update({key: value for key, value in (("knn", features.knn), ("probe", features.probe))
                        if value is not None})
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
