"""What hidden-pixel PSNR means on the built-in shapes data, and what a pure inpainter reaches (issue 18).

Three questions behind the PSNR targets of issue 18 (24 dB for notebook 01's 5-minute run, 28 dB for
the reference), answered with measurements instead of guesses:

1. ``--oracles``: how sharp must a reconstruction be for a given PSNR? On held-out images at test-time
   mask 0.5 (the measures' nested masks, ``mcm_core.evaluate.measures``), the PSNR of predictors that
   know the true image: each hidden patch filled with its own mean colour (a perfect *flat* patch), and
   the true image blurred by a Gaussian of sigma 0.5 / 0.75 / 1 px. For every checkpoint given, its own
   PSNR and that of its prediction flattened to per-patch means (how much edge detail it draws).
2. ``--bayes N``: the best any model can do. For each of N held-out images, every object the data
   could have drawn (each shape, size, fill, colour and background, centres on a grid of
   ``1 / --grid-steps`` of the side) is rendered; those that agree best with the visible pixels (within
   the noise texture's amplitude; up to ``--slack`` more disagreeing pixels than the best candidate,
   since a grid never hits the true centre exactly) are kept, weighted by their prior, and their mean
   approximates the prediction that minimizes the expected squared error given the visible pixels.
   It reads only visible pixels, so its PSNR is reachable: a lower bound of the ceiling that a finer
   grid only raises (the zero-mean noise texture is unpredictable and stays in the error). Its colour
   fidelity is counted as ``mcm_core.evaluate.measures`` counts it. ``--figures DIR`` draws it next to
   a checkpoint's reconstruction on 8 test images per ratio.
3. ``--unet``: how far does a model built only for inpainting get in the same CPU budget? A plain
   convolutional U-Net (four resolutions, 32 / 16 / 8 / 4 px; 0.84 M parameters, no concepts, no encoder / decoder split) is trained on the
   masked image plus the mask, MSE on hidden pixels, training mask 0.5, for ``--budget-s`` seconds on
   2 threads; measured like (1) on the val split.

Usage (rows appended to ``--out`` as JSON lines)::

    python benchmarks/pixel_ceiling.py --oracles --checkpoints mcm_core/assets/mcm_tiny_shapes.safetensors
    python benchmarks/pixel_ceiling.py --bayes 100 --mask-ratios 0.25 0.5 0.75 0.9
    python benchmarks/pixel_ceiling.py --figures docs/img --mask-ratios 0.5 0.9 \
        --checkpoints mcm_core/assets/mcm_tiny_shapes.safetensors
    python benchmarks/pixel_ceiling.py --unet --seeds 0 1 --budget-s 270
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make mcm_core importable
    sys.path.insert(0, str(ROOT))

from mcm_core.checkpoint import load_checkpoint  # noqa: E402
from mcm_core.data.shapes import ShapesDataset  # noqa: E402
from mcm_core.data.shapes_factors import (  # noqa: E402
    BACKGROUND_U8, COLOUR_NAMES, FILL_PROBS, NOISE_AMPLITUDE_U8, NOISE_GRID, P_DARK, P_LARGE, PALETTE_U8, SHAPE_NAMES,
    radius_of,
)
from mcm_core.data.shapes_render import render_u8  # noqa: E402
from mcm_core.evaluate.measures import nearest_palette, pixel_mask  # noqa: E402
from mcm_core.masking import mask_noise, nested_mask  # noqa: E402
from mcm_core.models.pixel_head import grid_to_patches, patches_to_grid  # noqa: E402

PATCH, GRID = 4, (8, 8)  # the tiny preset: 32 px images, 4 px patches
BLURS = (0.5, 0.75, 1.0)


def hidden_psnr(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR over hidden pixel values (pooled), predictions clipped: (N, 3, S, S) x 2, mask bool (N, L)."""
    hidden = pixel_mask(mask, PATCH)[:, None].expand_as(images)
    error = ((pred.clamp(0, 1) - images) ** 2)[hidden].mean()
    return 10 * math.log10(1 / float(error))


def flat_patches(images: torch.Tensor) -> torch.Tensor:
    """Every patch replaced by its own mean colour: (N, 3, S, S) -> same shape."""
    patches = grid_to_patches(images, PATCH, GRID).unflatten(-1, (PATCH * PATCH, 3))
    flat = patches.mean(dim=2, keepdim=True).expand_as(patches).flatten(-2)
    return patches_to_grid(flat, PATCH, GRID, 3)


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``sigma`` px (7x7 kernel, edges replicated): (N, 3, S, S) -> same shape."""
    k = torch.arange(-3, 4, dtype=torch.float32)
    w = torch.exp(-k ** 2 / (2 * sigma ** 2))
    kernel = (w[:, None] * w[None]) / w.sum() ** 2
    return F.conv2d(F.pad(images, (3, 3, 3, 3), mode="replicate"), kernel.expand(3, 1, 7, 7).contiguous(), groups=3)


def first_images(split: str, n: int, seed: int = 0) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``split``: their ``ShapesBatch``, the images as uint8 (n, 3, S, S), and the
    per-image mask noise (n, L) that ``nested_mask`` turns into masks (as the measures draw them)."""
    batch = ShapesDataset(split, size=n, seed=0).batch(range(n))
    noise = mask_noise(n, GRID[0] * GRID[1], torch.Generator().manual_seed(seed))
    return batch, (batch.images * 255).round().to(torch.uint8), noise


def eval_set(split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of ``split`` and their nested mask at 0.5."""
    batch, _, noise = first_images(split, n, seed)
    return batch.images, nested_mask(noise, 0.5)


def oracles(checkpoints: list[str], split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """PSNR at mask 0.5 of the oracle predictors and of each checkpoint (and its flattened prediction)."""
    images, mask = eval_set(split, n, seed)
    rows = [{"predictor": "true image, flat patches", "psnr": hidden_psnr(flat_patches(images), images, mask)}]
    rows += [{"predictor": f"true image, blurred sigma {s} px", "psnr": hidden_psnr(blurred(images, s), images, mask)}
             for s in BLURS]
    for path in checkpoints:
        model = load_checkpoint(path)[0].eval()
        with torch.no_grad():
            pred = model.unpatchify(model.forward_decoder(model.forward_encoder(images, mask=mask)))
        rows.append({"predictor": f"{path}", "psnr": hidden_psnr(pred, images, mask)})
        rows.append({"predictor": f"{path}, flat patches", "psnr": hidden_psnr(flat_patches(pred), images, mask)})
    return [dict(row, split=split, images=n, mask_ratio=0.5) for row in rows]


def candidates(grid_steps: int) -> dict[str, torch.Tensor]:
    """Every one-object image the data can draw, centres on a grid: factors (n, 1) and a prior weight (n,)."""
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("shape", "colour", "large", "cx", "cy", "fill", "dark",
                                                           "weight")}
    for large in (False, True):
        r = float(radius_of(torch.tensor(large)))
        axis = torch.arange(math.ceil(r * grid_steps), math.floor((1 - r) * grid_steps) + 1) / grid_steps
        cx, cy = (t.flatten() for t in torch.meshgrid(axis, axis, indexing="ij"))
        p_size = (P_LARGE if large else 1 - P_LARGE) / cx.numel()  # centres uniform on the square
        for shape in range(len(SHAPE_NAMES)):
            for fill, p_fill in enumerate(FILL_PROBS):
                for colour in range(len(COLOUR_NAMES)):
                    for dark in (False, True):
                        p = p_size * p_fill * (P_DARK if dark else 1 - P_DARK) / len(SHAPE_NAMES) / len(COLOUR_NAMES)
                        for key, value in (("shape", shape), ("colour", colour), ("large", large), ("fill", fill),
                                           ("dark", dark)):
                            rows[key].append(torch.full_like(cx, value, dtype=torch.long))
                        rows["cx"].append(cx)
                        rows["cy"].append(cy)
                        rows["weight"].append(torch.full_like(cx, p, dtype=torch.float64))
    return {k: torch.cat(v) for k, v in rows.items()}


def render_candidates(cands: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, 32, 32) noise-free renders of the candidates ``index``."""
    n = index.numel()
    factors = {k: cands[k][index][:, None] for k in ("shape", "colour", "cx", "cy", "fill")}
    factors["large"] = cands["large"][index][:, None].bool()
    factors["present"] = torch.ones((n, 1), dtype=torch.bool)
    factors["dark"] = cands["dark"][index].bool()
    factors["noisy"] = torch.zeros(n, dtype=torch.bool)
    factors["noise"] = torch.zeros((n, NOISE_GRID, NOISE_GRID), dtype=torch.int8)
    return render_u8(factors, 32)[0]


def plausible(image_u8: torch.Tensor, shown: torch.Tensor, cands: dict[str, torch.Tensor]) -> torch.Tensor:
    """Indices of the candidates whose colour and background agree with what the visible pixels show."""
    pixels = image_u8[:, shown].short().T  # (V, 3)
    palette = torch.tensor(PALETTE_U8, dtype=torch.short)
    seen = [(pixels == c).all(dim=1).any() for c in palette]
    colours = [i for i, s in enumerate(seen) if s] or list(range(len(COLOUR_NAMES)))
    greys = [(pixels - g).abs().amax(dim=1).le(NOISE_AMPLITUDE_U8).any() for g in BACKGROUND_U8]
    darks = [d for d, s in zip((False, True), greys) if s] or [False, True]
    keep = torch.isin(cands["colour"], torch.tensor(colours)) & torch.isin(cands["dark"].long(), torch.tensor(darks).long())
    return keep.nonzero().squeeze(1)


def bayes_prediction(image_u8: torch.Tensor, hidden: torch.Tensor, cands: dict[str, torch.Tensor],
                     slack: int = 2, chunk: int = 16384) -> tuple[torch.Tensor, int, int]:
    """Posterior-mean image (3, 32, 32) over the candidates that best agree with the visible pixels.

    Args:
        image_u8: (3, 32, 32) uint8; hidden: bool (32, 32) pixel mask.
        slack: also keep candidates with up to ``slack`` more disagreeing visible pixels than the best one
            (a centre grid cannot hit the true centre exactly, so the true render is rarely on it).
    Returns:
        The prediction in [0, 1], the fewest disagreeing visible pixels, and how many candidates were kept.
    A visible pixel disagrees when a channel differs from the render by more than the noise amplitude.
    """
    shown = ~hidden
    observed = image_u8[:, shown].short()  # (3, V)
    levels = 64  # accumulators per number of disagreeing pixels (more than that is never kept)
    total = torch.zeros(levels, 3, 32, 32, dtype=torch.float64)
    weight, count = torch.zeros(levels, dtype=torch.float64), torch.zeros(levels, dtype=torch.long)
    index_all = plausible(image_u8, shown, cands)
    for start in range(0, index_all.numel(), chunk):
        index = index_all[start:start + chunk]
        renders = render_candidates(cands, index)
        bad = ((renders[:, :, shown].short() - observed).abs() > NOISE_AMPLITUDE_U8).any(dim=1).sum(dim=1)
        near = bad < levels
        w, b, r = cands["weight"][index][near], bad[near], renders[near].double()
        total.index_add_(0, b, r * w[:, None, None, None])
        weight.index_add_(0, b, w)
        count.index_add_(0, b, torch.ones_like(b))
    best = int((count > 0).nonzero()[0]) if bool((count > 0).any()) else levels - 1
    use = slice(0, best + slack + 1)
    prediction = total[use].sum(0) / weight[use].sum().clamp_min(1e-300) / 255
    return prediction.float(), best, int(count[use].sum())


def colour_fidelity(pred: torch.Tensor, batch: Any, hidden: torch.Tensor) -> float:
    """Share of hidden object pixels whose nearest palette colour is the object's own (as the measures count)."""
    shown = torch.where(hidden[:, None], pred.clamp(0, 1), batch.images)
    scored = hidden & (batch.object_masks > 0)
    own = batch.factors["colour"][:, 0]
    return float((scored & (nearest_palette(shown) == own[:, None, None])).sum()) / max(int(scored.sum()), 1)


def bayes_ceiling(n: int, ratios: list[float], grid_steps: int, split: str, seed: int,
                  slack: int = 2) -> list[dict[str, Any]]:
    """Hidden-pixel PSNR of the posterior-mean predictor on the first ``n`` images of ``split``, per ratio."""
    batch, images_u8, noise = first_images(split, n, seed)
    cands = candidates(grid_steps)
    rows = []
    for ratio in ratios:
        mask = nested_mask(noise, ratio)
        hidden = pixel_mask(mask, PATCH)
        start = time.perf_counter()
        preds, best, kept = zip(*(bayes_prediction(images_u8[i], hidden[i], cands, slack) for i in range(n)))
        pred = torch.stack(preds)
        rows.append({"predictor": "posterior mean (Bayes ceiling)", "psnr": hidden_psnr(pred, batch.images, mask),
                     "colour_fidelity": colour_fidelity(pred, batch, hidden), "mask_ratio": ratio, "split": split, "images": n,
                     "grid_steps": grid_steps, "slack": slack, "candidates": cands["cx"].numel(),
                     "median_fewest_disagreeing": sorted(best)[n // 2], "median_kept": sorted(kept)[n // 2],
                     "seconds": time.perf_counter() - start})
    return rows


def ceiling_figures(checkpoint: str, ratios: list[float], out_dir: Path, grid_steps: int, slack: int,
                    split: str = "test", n: int = 8) -> list[Path]:
    """Per ratio, a figure of the first ``n`` images of ``split``: the input, what is visible, the checkpoint's
    reconstruction and the posterior mean (hidden patches filled, visible ones copied)."""
    from mcm_core.viz import show_masked  # matplotlib only when a figure is asked for

    batch, images_u8, noise = first_images(split, n)
    model, cands, paths = load_checkpoint(checkpoint)[0].eval(), candidates(grid_steps), []
    out_dir.mkdir(parents=True, exist_ok=True)
    for ratio in ratios:
        mask = nested_mask(noise, ratio)
        hidden = pixel_mask(mask, PATCH)
        with torch.no_grad():
            recon = model.composite(batch.images, model.forward_decoder(model.forward_encoder(batch.images, mask=mask)),
                                    mask)
        best = torch.stack([bayes_prediction(images_u8[i], hidden[i], cands, slack)[0] for i in range(n)])
        best = torch.where(hidden[:, None], best, batch.images)
        fig = show_masked(batch.images, mask, PATCH, {"reference": recon, "best possible": best})
        paths.append(out_dir / f"pixel_ceiling_mask{round(100 * ratio)}.png")
        fig.savefig(paths[-1], bbox_inches="tight")
    return paths


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GELU(), nn.Conv2d(cout, cout, 3, padding=1), nn.GELU())


class InpaintingUNet(nn.Module):
    """A U-Net over four resolutions (S, S/2, S/4, S/8): (masked image, mask) (N, 4, S, S) -> image (N, 3, S, S)."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.down = nn.ModuleList([_block(4, c), _block(c, 2 * c), _block(2 * c, 4 * c), _block(4 * c, 4 * c)])
        self.up = nn.ModuleList([_block(8 * c, 2 * c), _block(4 * c, c), _block(2 * c, c)])
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2), skip], dim=1))
        return self.out(x)


def unet_inputs(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) images and bool (N, L) mask -> (N, 4, S, S): hidden pixels zeroed, plus the mask."""
    hidden = pixel_mask(mask, PATCH)[:, None].float()
    return torch.cat([images * (1 - hidden), hidden], dim=1)


def train_unet(seed: int, budget_s: float, lr: float, batch_size: int) -> dict[str, Any]:
    """Train the U-Net for ``budget_s`` seconds (float32; Adam), then measure it on val at mask 0.5."""
    torch.manual_seed(seed)
    net = InpaintingUNet()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=0.0)
    train = ShapesDataset("train", size=500_000, seed=seed)
    g = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        images = train.batch(torch.randint(len(train), (batch_size,), generator=g)).images
        mask = nested_mask(mask_noise(batch_size, GRID[0] * GRID[1], g), 0.5)
        hidden = pixel_mask(mask, PATCH)[:, None].float()
        loss = (((net(unet_inputs(images, mask)) - images) ** 2) * hidden).sum() / (hidden.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    train_s = time.perf_counter() - start
    images, mask = eval_set("val", 600, 0)
    with torch.no_grad():
        psnr = hidden_psnr(net(unet_inputs(images, mask)), images, mask)
    return {"predictor": "inpainting U-Net", "seed": seed, "steps": steps, "train_s": train_s, "lr": lr,
            "batch_size": batch_size, "parameters": sum(p.numel() for p in net.parameters()), "split": "val",
            "images": 600, "mask_ratio": 0.5, "psnr": psnr}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--oracles", action="store_true", help="oracle predictors and --checkpoints at mask 0.5")
    p.add_argument("--checkpoints", nargs="*", default=[], help="MCM / MAE checkpoints to measure with --oracles")
    p.add_argument("--split", default="test", help="split for --oracles (default test)")
    p.add_argument("--num-images", type=int, default=600)
    p.add_argument("--bayes", type=int, default=0, metavar="N", help="posterior-mean ceiling on N images")
    p.add_argument("--mask-ratios", type=float, nargs="+", default=[0.5], help="ratios for --bayes")
    p.add_argument("--grid-steps", type=int, default=128, help="--bayes: centre grid, steps per image side")
    p.add_argument("--slack", type=int, default=2, help="--bayes: extra disagreeing visible pixels allowed")
    p.add_argument("--figures", type=Path, default=None, metavar="DIR",
                   help="with one --checkpoints: figures of 8 images of --split per --mask-ratios, saved in DIR")
    p.add_argument("--unet", action="store_true", help="train and measure the inpainting U-Net")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--budget-s", type=float, default=270.0, help="U-Net training seconds")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="append result rows (JSON lines)")
    args = p.parse_args(argv)
    if not (args.oracles or args.unet or args.bayes or args.figures):
        p.error("choose --oracles, --bayes N, --figures DIR or --unet (or several)")
    rows = oracles(args.checkpoints, args.split, args.num_images, 0) if args.oracles else []
    if args.bayes:
        rows += bayes_ceiling(args.bayes, args.mask_ratios, args.grid_steps, args.split, 0, args.slack)
    if args.figures is not None:
        if len(args.checkpoints) != 1:
            p.error("--figures draws one checkpoint's reconstructions: pass exactly one with --checkpoints")
        for path in ceiling_figures(args.checkpoints[0], args.mask_ratios, args.figures, args.grid_steps, args.slack,
                                    args.split):
            print(f"saved {path}")
    if args.unet:
        rows += [train_unet(seed, args.budget_s, args.lr, args.batch_size) for seed in args.seeds]
    stamp = {"threads": torch.get_num_threads(), "torch": torch.__version__, "date": dt.date.today().isoformat(),
             "machine": platform.processor() or platform.machine()}
    for row in rows:
        line = json.dumps({**row, **stamp})
        print(line)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
