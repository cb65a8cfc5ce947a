"""Latent MIM's reference mode against the reference code, end to end (a local check, no network).

Give it a local copy of the public reference repository (github.com/yibingwei-1/LatentMIM; it
needs only torch and timm). Its model files are imported from that path for the comparison and
never copied into this project::

    git clone https://github.com/yibingwei-1/LatentMIM /tmp/LatentMIM   # or any local copy
    python benchmarks/latent_mim_reference_check.py --official /tmp/LatentMIM

For each setting it builds the reference model, moves every one of its weights off its
initialisation (so that LayerNorms, the mask token, the decoder's per-layer context norms and the
EMA target all differ from their starting values), copies the weights into ``latent_mim`` with
``reference=True``, feeds both the same images and the same mask, and prints one JSON line: the
largest absolute differences of the position embeddings, the loss, every gradient (and the
largest gradient, for scale) and, after one EMA step at momentum 0.99, the target weights.
float32 runs use each model's own position embeddings; float64 runs copy the reference's into
ours (their float32 rounding is measured separately), so what is left is the order of float
operations. The ``default`` rows run our default mode on the same weights (its shared context
norm takes the first layer's), to show what the switch changes.

tests/test_latent_mim.py runs the tiny rows when ``LATENT_MIM_OFFICIAL`` names the copy; CI has
none and skips it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import re
import sys
import warnings
from functools import partial
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mcm_core.masking import ids_from_mask, random_mask  # noqa: E402
from mcm_core.models import build_model  # noqa: E402
from mcm_core.models.latent_mim import hidden_ids  # noqa: E402

# (preset, our overrides, batch): the tiny preset and the paper's ViT-B/16 setting (20 of 196 visible).
SETTINGS: dict[str, tuple[str, dict[str, Any], int]] = {
    "tiny": ("tiny", {"mask_ratio": 0.75, "projector_dim": 256}, 4),
    "base": ("base", {"mask_ratio": 0.9, "projector_dim": 4096, "decoder_depth": 3}, 2),
}

# Our parameter names -> the reference's (first match wins).
NAME_MAP: list[tuple[str, str]] = [
    (r"^(encoder|target_encoder)\.patch_embed\.proj\.", r"\1.embed.proj."),
    (r"^(encoder|target_encoder)\.(cls_token|blocks\..*|norm\..*)$", r"\1.\2"),
    (r"^projector\.", "encoder.head."),
    (r"^target_projector\.", "target_encoder.head."),
    (r"^decoder_embed\.", "decoder.embed."),
    (r"^mask_token$", "decoder.mask_token"),
    (r"^decoder_cls_token$", "decoder.cls_token"),
    (r"^context_norms\.(\d+)\.", r"decoder.blocks.\1.norm2kv."),
    (r"^context_norm\.", "decoder.blocks.0.norm2kv."),  # default mode: one norm for every layer
    (r"^decoder_blocks\.(\d+)\.attn\.", r"decoder.blocks.\1.self_attn."),
    (r"^decoder_blocks\.(\d+)\.norm_cross\.", r"decoder.blocks.\1.norm2q."),
    (r"^decoder_blocks\.(\d+)\.cross\.q\.", r"decoder.blocks.\1.cross_attn.q_proj."),
    (r"^decoder_blocks\.(\d+)\.cross\.kv\.", r"decoder.blocks.\1.cross_attn.kv_proj."),
    (r"^decoder_blocks\.(\d+)\.cross\.proj\.", r"decoder.blocks.\1.cross_attn.proj."),
    (r"^decoder_blocks\.(\d+)\.norm2\.", r"decoder.blocks.\1.norm3."),
    (r"^decoder_blocks\.(\d+)\.(norm1|mlp)\.", r"decoder.blocks.\1.\2."),
    (r"^decoder_norm\.", "decoder.norm."),
    (r"^decoder_pred\.", "decoder.head."),
]


def official_name(name: str) -> str:
    """The reference model's name for our parameter ``name`` (projector layers: ``linear{l}`` / ``norm{l}``)."""
    for pattern, replacement in NAME_MAP:
        if re.match(pattern, name):
            mapped = re.sub(pattern, replacement, name)
            # Our projector is an nn.Sequential: index 3l is layer l's Linear, 3l + 1 its LayerNorm.
            head = re.match(r"^(.*\.head\.)(\d+)\.(.*)$", mapped)
            if head and not mapped.startswith("decoder."):
                index = int(head.group(2))
                mapped = f"{head.group(1)}{'linear' if index % 3 == 0 else 'norm'}{index // 3}.{head.group(3)}"
            return mapped
    raise KeyError(f"no reference name for {name!r}")


def load_official(path: str | Path) -> ModuleType:
    """The reference code's ``models_lmim`` module, imported from ``path``."""
    path = Path(path).resolve()
    if not (path / "models_lmim.py").is_file():
        raise FileNotFoundError(f"{path} has no models_lmim.py; pass a copy of github.com/yibingwei-1/LatentMIM")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm.models.layers' deprecation, meshgrid's indexing
        return importlib.import_module("models_lmim")


def build_official(module: ModuleType, ours: nn.Module, sim_coeff: float) -> nn.Module:
    """The reference model at our model's sizes (its ViT blocks take LayerNorm eps 1e-6, as its builder)."""
    cfg = ours.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.LMIM(
            grid_size=cfg.grid[0], patch_size=cfg.patch_size, patch_gap=0, in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, depth=cfg.depth, target_depth=cfg.depth,
            decoder_embed_dim=cfg.decoder_embed_dim, decoder_depth=cfg.decoder_depth,
            decoder_num_heads=cfg.decoder_num_heads, mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), tau=cfg.tau, num_vis=1, avg_vis_mask_token=cfg.visual_cue,
            avg_sim_coeff=sim_coeff, mask_target=True, loss="infonce_patches", freeze_pe=True,
            proj_cfg=SimpleNamespace(mlp_dim=cfg.projector_dim or int(cfg.embed_dim * cfg.mlp_ratio),
                                     mlp_depth=cfg.projector_depth))


@torch.no_grad()
def perturb(model: nn.Module, seed: int) -> None:
    """Move every parameter off its initialisation (matrices by half their spread, the rest by 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        p.add_(noise * (0.5 * p.std() if p.ndim > 1 and p.numel() > 1 and p.std() > 0 else 0.1))


def in_our_layout(theirs: dict[str, torch.Tensor], name: str, like: torch.Tensor) -> torch.Tensor:
    """The reference's tensor for our parameter ``name`` (patch embedding: its (row, col, channel) pixel order
    of a (D, p*p*C) linear, turned into our conv's (D, C, p, p))."""
    tensor = theirs[official_name(name)]
    if name.endswith("patch_embed.proj.weight"):
        d, c, ph, pw = like.shape
        tensor = tensor.reshape(d, ph, pw, c).permute(0, 3, 1, 2)
    return tensor


@torch.no_grad()
def copy_weights(official: nn.Module, ours: nn.Module) -> None:
    """Every parameter of ours (the frozen target's too) from the reference; in reference mode, every one of
    the reference's must have been used."""
    theirs = dict(official.named_parameters())
    for name, p in ours.named_parameters():
        p.copy_(in_our_layout(theirs, name, p))
    unused = sorted(set(theirs) - {official_name(name) for name, _ in ours.named_parameters()})
    if ours.cfg.reference and unused:
        raise AssertionError(f"reference parameters with no counterpart in ours: {unused}")


def fix_views(official: nn.Module, mask: torch.Tensor) -> None:
    """Make the reference model take our mask: visible and hidden patches, each in ascending order."""
    ids_keep, _ = ids_from_mask(mask)
    ids_hidden = hidden_ids(mask, ids_keep.shape[1])

    def create_views(patch_pix: torch.Tensor):
        take = lambda ids: patch_pix.gather(1, ids[..., None].expand(-1, -1, patch_pix.shape[-1]))  # noqa: E731
        return take(ids_keep), ids_keep, take(ids_hidden), ids_hidden, ids_hidden

    official.create_views = create_views
    official.num_vis = ids_keep.shape[1]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def compare(module: ModuleType, setting: str = "tiny", dtype: torch.dtype = torch.float32, reference: bool = True,
            sim_coeff: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """One comparison row (see the module docstring)."""
    preset, overrides, batch = SETTINGS[setting]
    torch.manual_seed(seed)
    ours = build_model("latent_mim", preset, reference=reference, projector_depth=3, target_projector=True,
                       sim_reg_weight=sim_coeff, **overrides)
    torch.manual_seed(seed)
    official = build_official(module, ours, sim_coeff)
    perturb(official, seed + 1)
    copy_weights(official, ours)
    row: dict[str, Any] = {"setting": setting, "dtype": str(dtype).replace("torch.", ""),
                           "mode": "reference" if reference else "default", "sim_reg": sim_coeff}
    pos = {"encoder": (ours.encoder.pos_embed[0], official.encoder.pos_embed.pos_embeds),
           "target": (ours.target_encoder.pos_embed[0], official.target_encoder.pos_embed.pos_embeds),
           "decoder": (ours.decoder_pos_embed[0], official.decoder.pos_embed.pos_embeds)}
    row["pos_embed"] = max(max_diff(a, b) for a, b in pos.values())
    ours.to(dtype), official.to(dtype)
    if dtype == torch.float64:  # same positions: what is left is the order of operations
        ours.encoder.pos_embed = official.encoder.pos_embed.pos_embeds[None].clone()
        ours.target_encoder.pos_embed = official.target_encoder.pos_embed.pos_embeds[None].clone()
        ours.decoder_pos_embed = official.decoder.pos_embed.pos_embeds[None].clone()
    generator = torch.Generator().manual_seed(seed + 2)
    cfg = ours.cfg
    images = torch.rand(batch, 3, cfg.img_size, cfg.img_size, generator=generator, dtype=dtype)  # our models take [0, 1]
    mask = random_mask(batch, cfg.num_patches, cfg.mask_ratio, generator=generator)
    fix_views(official, mask)

    out = ours(images, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.autocast's deprecation
        loss, _ = official(images, mom=0.99, sim_trg=cfg.sim_reg_start, update_ema=False)
    out.loss.backward()
    loss.backward()
    mine, theirs_loss = float(out.loss.detach()), float(loss.detach())
    row.update(loss=mine, loss_official=theirs_loss, loss_diff=abs(mine - theirs_loss))
    if reference:  # the default mode has no CLS query and one context norm: its gradients have no counterpart
        theirs = {n: q.grad for n, q in official.named_parameters() if q.grad is not None}
        trained = {official_name(n) for n, q in ours.named_parameters() if q.grad is not None}
        if trained != set(theirs):
            raise AssertionError(f"parameters trained by one model only: {sorted(trained ^ set(theirs))}")
        grad_diff, grad_max = 0.0, 0.0
        for name, p in ours.named_parameters():
            if p.grad is not None:
                other = in_our_layout(theirs, name, p)
                grad_diff = max(grad_diff, max_diff(p.grad, other))
                grad_max = max(grad_max, float(other.abs().max()))
        row.update(grad_diff=grad_diff, grad_max=grad_max)
    ours.after_step(0.0)  # momentum 0.99
    official._update_target_encoder(0.99)
    theirs = dict(official.named_parameters())
    ema = [max_diff(p, in_our_layout(theirs, n, p)) for name in ("target_encoder", "target_projector")
           for n, p in getattr(ours, name).named_parameters(prefix=name)]
    row["ema_diff"] = max(ema)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="local copy of github.com/yibingwei-1/LatentMIM")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    module = load_official(args.official)
    rows = []
    for setting in args.settings:
        for dtype in (torch.float32, torch.float64):
            rows.append(compare(module, setting, dtype))
        rows.append(compare(module, setting, torch.float32, sim_coeff=0.5))
        rows.append(compare(module, setting, torch.float32, reference=False))
    for row in rows:
        print(json.dumps({**row, "date": dt.date.today().isoformat(), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
