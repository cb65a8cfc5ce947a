"""Time the trainer's full training step for every method and preset, and count its FLOPs.

One run = one (method, preset, mask ratio): a ``Trainer`` built from a ``TrainConfig`` (its
shapes data set is only used to size the model; the loader is not timed), random input made
directly on the device (images in [0, 1], random 0/1 concepts), then ``trainer.train_step``
called directly: mask generation, forward, backward, gradient clipping, the fused AdamW step,
the schedule, and the EMA where the method has one. Warm-up steps, then timed steps; on a GPU
each step is bracketed by CUDA events and the host synchronizes only before and after the
timed steps. Prints one JSON line per run (``--out FILE.jsonl`` also appends it there):

- ``gflop_per_image``: model FLOPs of one training step (forward + backward, and the EMA
  affinity pass of hierarchical masking), counted by ``torch.utils.flop_counter`` through
  ``mcm_core.evaluate`` (attention on the MATH backend while counting); optimizer FLOPs are
  not included. ``tflops`` = ``gflop_per_image`` x images/s.
- ``forward_gflop_per_image`` and ``forward_gflop_by_part``: one forward pass, split by the
  model's top-level modules (``encoder`` is the online ViT encoder, ``other`` the model's own
  code outside its modules, ``outside_model`` mask generation);
  ``encoder_forward_share`` = encoder / forward, the share that falls with the visible patches.
- ``step_ms`` (median) and ``images_per_s`` (batch / median step); ``images_per_s_mean`` over
  the whole timed window; peak memory: ``peak_mem_gib`` (``torch.cuda.max_memory_allocated``
  over the timed steps) on a GPU, ``peak_rss_mib`` (the process's peak so far) on a CPU.

Defaults are each paper's setting (``paper_setting``); ``--mask-ratios`` sweeps instead::

    python benchmarks/bench_train.py --presets tiny --batch-size 8 --steps 2              # CPU
    python benchmarks/bench_train.py --presets base --batch-size 256 --compile            # GPU
    python benchmarks/bench_train.py --methods mcm --mask-ratios 0 0.25 0.5 0.75 0.9      # cost vs mask
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout: make mcm_core importable
    sys.path.insert(0, str(ROOT))
if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (the tests): its sibling compile_check
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import timm  # noqa: E402

import mcm_core  # noqa: E402
from compile_check import compile_stats, reset_compile  # noqa: E402
from mcm_core.choices import MASKINGS, PRECISIONS  # noqa: E402
from mcm_core.config import TrainConfig, parse_overrides, read_yaml  # noqa: E402
from mcm_core.devices import resolve_device  # noqa: E402
from mcm_core.evaluate import count_flops, flop_counting  # noqa: E402
from mcm_core.masking import num_hidden  # noqa: E402
from mcm_core.models import make_config  # noqa: E402
from mcm_core.models.backbone import PRESETS  # noqa: E402
from mcm_core.train import Trainer  # noqa: E402

METHODS = ("mae", "mcm", "micl", "latent_mim")
DATA_SIZE = 64  # images in the (untimed) shapes data set that sizes each model


def paper_setting(method: str, preset: str) -> tuple[float, dict[str, Any]]:
    """``(mask ratio, model overrides)`` of each paper's training step at ``preset`` (METHODS.md).

    MAE hides 0.75 and MCM 0.25 at every size. At the papers' 224 px (196 patches): MiCL's paper
    hides 0.9, which its code turns into 9 patches per view (it keeps int(0.1 x 196) = 19, made
    even); ``num_hidden`` rounds 0.9 x 196 to 176 hidden (10 per view), so 0.91 (178 hidden) is
    the paper's 9 per view. Latent MIM hides 0.9 (20 visible) with a 3-block decoder, 4-pixel
    patch gaps (16-pixel patches in 20-pixel cells: the reference's 280 px input) and the reference
    code's projector (3 layers, 4096 wide, on the online and the EMA target encoder's tokens). With 64 patches
    (tiny, small) both keep a quarter (0.75): 8 per MiCL view, 16 visible for Latent MIM.
    """
    papers_scale = PRESETS[preset]["img_size"] >= 224
    if method == "mae":
        return 0.75, {}
    if method == "mcm":
        return 0.25, {}
    if method == "micl":
        return (0.91 if papers_scale else 0.75), {}
    if method == "latent_mim":
        reference = {"decoder_depth": 3, "patch_gap": 4, "projector_depth": 3, "projector_dim": 4096,
                     "target_projector": True}
        return (0.9, reference) if papers_scale else (0.75, {})
    raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")


# ---------------------------------------------------------------------- environment
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when files differ from it (None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------- FLOPs
def flops_by_part(counts: dict[str, dict[Any, int]], root: str) -> dict[str, int]:
    """Split a ``FlopCounterMode.get_flop_counts()`` of one forward pass by the model's top-level modules.

    A module's count includes its submodules', and modules whose own ``forward`` is never called
    (e.g. the ``ViTEncoder`` whose blocks a model runs itself) have no entry; so each part sums
    its outermost entries. ``other``: FLOPs in the model's own code outside any submodule;
    ``outside_model``: FLOPs outside the model (mask generation, e.g. the EMA affinity pass).
    """
    totals = {key: sum(ops.values()) for key, ops in counts.items()}
    everything = totals.pop("Global", 0)
    inside = [key for key in totals if key.startswith(root + ".")]
    parts: dict[str, int] = {}
    for key in inside:
        if any(key.startswith(other + ".") for other in inside if other != key):
            continue  # counted in an enclosing entry
        part = key.split(".")[1]
        parts[part] = parts.get(part, 0) + totals[key]
    model_total = totals.get(root, 0)
    parts["other"] = model_total - sum(parts.values())
    parts["outside_model"] = everything - model_total
    return parts


def count_step_flops(trainer: Trainer, images: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Counted FLOPs of one training step and one forward pass, on the eager model.

    Runs one real ``train_step`` (weights change, as in a warm-up step) and one more forward
    pass, both at this trainer's step (same mask), then advances the step. The forward pass
    records its graph (never used): under ``no_grad`` the counter's module tracker fails on
    MCM's expanded concept tokens.
    """
    compiled, trainer.step_fn = trainer.step_fn, trainer.model  # the counter does not see compiled code
    try:
        step = count_flops(lambda: trainer.train_step(images, targets))
        with flop_counting() as counter:
            trainer.forward(images, targets)
        trainer.step += 1
    finally:
        trainer.step_fn = compiled
    forward = int(counter.get_total_flops())
    parts = flops_by_part(counter.get_flop_counts(), type(trainer.unwrapped).__name__)
    batch = images.shape[0]
    per_image = {part: round(flops / batch / 1e9, 6) for part, flops in parts.items() if flops}
    encoder = parts.get("encoder", 0)
    return {"gflop_per_image": step / batch / 1e9, "forward_gflop_per_image": forward / batch / 1e9,
            "encoder_forward_gflop_per_image": encoder / batch / 1e9,
            "encoder_forward_share": encoder / forward if forward else float("nan"),
            "forward_gflop_by_part": per_image}


# ---------------------------------------------------------------------- timing
def time_steps(trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, warmup: int,
               steps: int) -> tuple[list[float], float]:
    """Per-step times (ms) of ``steps`` timed training steps after ``warmup`` ones, and the window (s).

    GPU: CUDA events around each step; the host synchronizes only before and after the window.
    """
    device = images.device
    for _ in range(warmup):
        trainer.train_step(images, targets)
        trainer.step += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        start = time.perf_counter()
        events[0].record()
        for i in range(steps):
            trainer.train_step(images, targets)
            trainer.step += 1
            events[i + 1].record()
        torch.cuda.synchronize(device)
        window = time.perf_counter() - start
        return [events[i].elapsed_time(events[i + 1]) for i in range(steps)], window
    times, start = [], time.perf_counter()
    for _ in range(steps):
        begin = time.perf_counter()
        trainer.train_step(images, targets)
        trainer.step += 1
        times.append((time.perf_counter() - begin) * 1000)
    return times, time.perf_counter() - start


# ---------------------------------------------------------------------- one run
def run_one(method: str, preset: str, mask_ratio: float, overrides: dict[str, Any], args: argparse.Namespace,
            device: torch.device) -> dict[str, Any]:
    """Build a Trainer for one setting, count its FLOPs, time it; -> the JSON row."""
    if args.compile and device.type == "cuda":
        reset_compile()  # counters at zero, and no recompile limit carried over from earlier runs
    image_size = PRESETS[preset]["img_size"]
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = TrainConfig(method=method, preset=preset, model=dict(overrides), dataset="shapes",
                          data={"size": DATA_SIZE, "image_size": image_size}, masking=args.masking,
                          mask_ratio=mask_ratio, steps=args.warmup + args.steps + 1, batch_size=args.batch_size,
                          seed=args.seed, device=str(device), precision=args.precision, compile=args.compile,
                          progress=False, out_dir=out_dir)
        trainer = Trainer(cfg)
    model_cfg = trainer.unwrapped.cfg
    gen = torch.Generator(device=device).manual_seed(args.seed)
    images = torch.rand(args.batch_size, 3, image_size, image_size, generator=gen, device=device)
    k = getattr(model_cfg, "num_concepts", len(getattr(trainer.dataset, "concept_names", [])) or 1)
    targets = torch.randint(0, 2, (args.batch_size, k), generator=gen, device=device).float()
    trainer.model.train()

    flops = count_step_flops(trainer, images, targets)
    times, window = time_steps(trainer, images, targets, args.warmup, args.steps)
    step_ms = statistics.median(times)
    images_per_s = args.batch_size / step_ms * 1000
    num_patches = model_cfg.num_patches
    row: dict[str, Any] = {
        "method": method, "preset": preset, "mask_ratio": mask_ratio, "batch_size": args.batch_size,
        "images_per_s": round(images_per_s, 1), "step_ms": round(step_ms, 3),
        "gflop_per_image": round(flops["gflop_per_image"], 6),
        "tflops": round(flops["gflop_per_image"] * images_per_s / 1000, 6),
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 3)
    else:
        row["peak_rss_mib"] = round(peak_rss_mib(), 1)
    compiled = trainer.step_fn is not trainer.model
    row.update({
        "device": device_name(device), "precision": "bf16" if trainer.use_bf16 else "fp32", "compile": compiled,
        "torch": torch.__version__, "timm": timm.__version__, "mcm_core": mcm_core.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "forward_gflop_per_image": round(flops["forward_gflop_per_image"], 6),
        "encoder_forward_gflop_per_image": round(flops["encoder_forward_gflop_per_image"], 6),
        "encoder_forward_share": round(flops["encoder_forward_share"], 4),
        "forward_gflop_by_part": flops["forward_gflop_by_part"],
        "images_per_s_mean": round(args.batch_size * args.steps / window, 1),
        "step_ms_min": round(min(times), 3), "step_ms_max": round(max(times), 3),
        "steps": args.steps, "warmup": args.warmup, "masking": args.masking, "overrides": overrides,
        "num_patches": num_patches, "visible_patches": num_patches - num_hidden(num_patches, mask_ratio),
        "image_size": model_cfg.img_size, "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda, "python": platform.python_version(), "commit": git_commit(),
    })
    if compiled:
        row["compile_stats"] = compile_stats()
    del trainer, images, targets
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------- command line
def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``["decoder_depth=3", "norm_pix_loss=true"]`` -> typed model overrides (values read as YAML)."""
    return {key: read_yaml(f"--set {key}={value}", value) for key, value in parse_overrides(pairs).items()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--presets", nargs="+", default=None, choices=sorted(PRESETS),
                   help="default: base on a GPU, tiny on a CPU")
    p.add_argument("--mask-ratios", nargs="+", type=float, default=None,
                   help="mask ratios to run every method at (default: each paper's, see paper_setting)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on a GPU, 8 on a CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on a GPU, 3 on a CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps after the FLOP-counting step "
                        "(default: 5 on a GPU, 8 with --compile, 1 on a CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 autocast on a GPU, float32 on a CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor; on a CPU it needs a C++ compiler)")
    p.add_argument("--masking", default="random", choices=MASKINGS)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model overrides for every run, e.g. --set decoder_depth=3")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="append each JSON line to this .jsonl file")
    return p


def plan_runs(args: argparse.Namespace) -> list[tuple[str, str, float, dict[str, Any]]]:
    """Every (method, preset, mask ratio, overrides), validated before anything runs."""
    extra = parse_set(args.set)
    runs = []
    for preset in args.presets:
        for method in args.methods:
            paper_ratio, paper_overrides = paper_setting(method, preset)
            overrides = {**paper_overrides, **extra}
            for ratio in (args.mask_ratios or [paper_ratio]):
                make_config(method, preset, mask_ratio=ratio, **overrides)  # a clear error for a bad setting
                num_hidden(1, ratio)  # mask ratio in [0, 1)
                runs.append((method, preset, ratio, overrides))
    return runs


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every requested setting; print (and with ``--out`` append) one JSON line each; return the rows."""
    p = parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.presets = args.presets or (["base"] if gpu else ["tiny"])
    args.batch_size = args.batch_size or (256 if gpu else 8)
    args.steps = args.steps if args.steps is not None else (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else ((8 if args.compile else 5) if gpu else 1)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2:
        p.error("need --steps >= 1, --warmup >= 0 and --batch-size >= 2 (MiCL contrasts the images of a batch)")
    try:
        runs = plan_runs(args)
    except (ValueError, TypeError) as error:
        p.error(str(error))
    rows = []
    for method, preset, ratio, overrides in runs:
        row = run_one(method, preset, ratio, overrides, args, device)
        line = json.dumps(row)
        print(line, flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as handle:
                handle.write(line + "\n")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
