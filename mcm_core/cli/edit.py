"""``mcm edit``: a PNG grid of reconstructions of an MCM checkpoint with one concept forced on or off.

Rows: input, masked input, reconstruction, edited reconstruction (one mask for both), each
image labelled with the model's probability of the concept. Drawn with the Agg backend
(:func:`save_grid`), no global pyplot state.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mcm_core.choices import check_mask_ratio
from mcm_core.cli.common import UsageError, checkpoint_data, load_model
from mcm_core.cli.flags import add_checkpoint_options


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


def resolve_concept(model: Any, text: str) -> int:
    """Concept index from a name (case-insensitive) or an index; a clear error listing the names."""
    import difflib

    from mcm_core.evaluate.pipeline import concept_names

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

    from mcm_core.evaluate.pipeline import concept_names, first_batch, has_capability

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
