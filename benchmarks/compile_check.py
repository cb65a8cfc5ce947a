"""How torch.compile sees each method's training forward: graphs, graph breaks, recompiles.

On a GPU the trainer compiles the model (``compile: true``). Every graph break splits the
compiled step into pieces with eager Python between them, and a break from ``.item()`` or a
data-dependent branch is also a host synchronization: both cost the fast path its speed. The
GPU benchmark records these counts; this script finds them on a CPU, before any GPU time is
spent, and CI runs it.

It compiles each method's model (inductor, CPU), runs a few training steps with the compiled
and the eager model from the same initial weights and first batch, and prints one JSON line per
method: ``unique_graphs``, ``graph_breaks`` with their reasons, ``recompiles``, the first
compiled step's time, and both loss curves (``max_loss_diff``: compile must not change the math).
Graph breaks are dynamo's, the same for every backend; ``--backend aot_eager`` finds them without
building kernels (CI's choice).

Which code path is compiled. On CPU tensors the models check masks and concepts, because there
reading a value back costs nothing (``.item()`` and ``if tensor:``, each a graph break); on a GPU
they trust the counts instead. ``--path gpu`` (the default) therefore runs a temporary copy of
``mcm_core`` in which every ``<tensor>.device.type == "cpu"`` test in ``mcm_core/models`` and
``mcm_core/masking.py`` reads ``False``: the graphs are the ones a GPU compiles. ``--path cpu``
compiles the package as it is::

    python benchmarks/compile_check.py                      # every method, the GPU's code path
    python benchmarks/compile_check.py --methods mcm --path cpu
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD_ENV = "MCM_COMPILE_CHECK_PACKAGE"  # set in the child: the rewritten package's directory
CPU_TEST = re.compile(r"\b[\w.]+\.device\.type == \"cpu\"")
if os.environ.get(CHILD_ENV) is None and str(ROOT) not in sys.path:  # a checkout's script: import its mcm_core
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

METHODS = ("mae", "mcm", "micl", "latent_mim")


# ---------------------------------------------------------------------- the GPU's code path
def checked_files(package: Path) -> list[Path]:
    """The modules whose CPU-only checks the GPU path skips: the models and the maskers."""
    return [*sorted((package / "models").glob("*.py")), *sorted((package / "masking").glob("*.py"))]


def gpu_path_copy(dest: Path, source: Path = ROOT / "mcm_core") -> int:
    """Copy the package to ``dest/mcm_core`` with its CPU-only checks off; -> how many were turned off."""
    package = dest / "mcm_core"
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__"))
    replaced = 0
    for path in checked_files(package):
        text, n = CPU_TEST.subn("False", path.read_text())
        path.write_text(text)
        replaced += n
    if replaced == 0:
        raise RuntimeError("no `<tensor>.device.type == \"cpu\"` test found in mcm_core/models or mcm_core/masking: "
                           "the models' CPU-only checks moved; update CPU_TEST in benchmarks/compile_check.py")
    return replaced


def run_on_gpu_path(argv: list[str]) -> list[dict[str, Any]]:
    """Run this script again in a child process that imports the rewritten copy; -> its rows."""
    with tempfile.TemporaryDirectory(prefix="mcm_gpu_path_") as tmp:
        replaced = gpu_path_copy(Path(tmp))
        print(f"# GPU code path: {replaced} CPU-only checks turned off in a copy of mcm_core", file=sys.stderr)
        env = {**os.environ, CHILD_ENV: tmp, "PYTHONPATH": os.pathsep.join(
            [tmp, *filter(None, [os.environ.get("PYTHONPATH")])])}
        rows = []
        with subprocess.Popen([sys.executable, __file__, *argv], env=env, stdout=subprocess.PIPE,
                              text=True) as child:  # its stderr (dynamo's warnings) goes straight through
            for line in child.stdout:  # relayed as each method finishes; the child writes --out itself
                print(line, end="", flush=True)
                rows += [json.loads(line)] if line.startswith("{") else []
    if child.returncode:
        raise RuntimeError(f"the GPU-path child failed (exit {child.returncode}); its error is above")
    return rows


# ---------------------------------------------------------------------- one method
def make_trainer(method: str, preset: str, batch_size: int, seed: int, out_dir: str):
    """A CPU Trainer of ``method`` (its weights depend only on ``seed``)."""
    from mcm_core.config import TrainConfig
    from mcm_core.models.backbone import PRESETS
    from mcm_core.train import Trainer

    cfg = TrainConfig(method=method, preset=preset, dataset="shapes",
                      data={"size": 64, "image_size": PRESETS[preset]["img_size"]},
                      steps=100, batch_size=batch_size, seed=seed, device="cpu", precision="fp32", progress=False,
                      out_dir=out_dir)  # float32: compiled and eager losses are compared to 1e-4
    trainer = Trainer(cfg)
    if os.environ.get(CHILD_ENV):  # the GPU's code path: a GPU trainer keeps the fused attention kernel
        trainer.explicit_attention = False
    return trainer


def losses(trainer, images: torch.Tensor, targets: torch.Tensor, steps: int) -> tuple[list[float], float]:
    """Loss of each of ``steps`` training steps, and the first step's time (s)."""
    out, first, start = [], 0.0, time.perf_counter()
    for _ in range(steps):
        out.append(float(trainer.train_step(images, targets)["loss"]))
        if len(out) == 1:
            first = time.perf_counter() - start
        trainer.step += 1
    return out, first


def break_reason(message: str) -> str:
    """Dynamo's graph-break message in one line: its title and its debug context (what it could not trace)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    context = [line.removeprefix("Developer debug context:").strip() for line in lines
               if line.startswith("Developer debug context:")]
    return " | ".join([lines[0], *context])[:300] if lines else "?"


def reset_compile() -> None:
    """Fresh torch.compile state: no cached graphs or recompile limits, and the counters at zero
    (``torch._dynamo.reset()`` alone keeps the counters)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def compile_stats() -> dict[str, Any]:
    """torch.compile's counters since the last ``reset_compile``: graphs compiled, graph breaks
    (and their reasons, one line each), recompilations."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "break_reasons": sorted({break_reason(message) for message in counters["graph_break"]}),
            "recompiles": int(sum(counters["recompiles"].values()))}


def check_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Compile ``method``'s model, train eager and compiled side by side; -> the JSON row."""
    import timm

    import mcm_core

    reset_compile()
    with tempfile.TemporaryDirectory() as out_dir:
        eager = make_trainer(method, args.preset, args.batch_size, args.seed, out_dir)
        compiled = make_trainer(method, args.preset, args.batch_size, args.seed, out_dir)
    compiled.step_fn = torch.compile(compiled.model, backend=args.backend)
    images, targets = next(eager.batches(1))  # the first training batch (the shapes data set)
    eager_losses, _ = losses(eager, images, targets, args.steps)
    compiled_losses, compile_s = losses(compiled, images, targets, args.steps)
    return {
        "method": method, "preset": args.preset, "batch_size": args.batch_size, "steps": args.steps,
        "backend": args.backend,
        "path": "gpu" if os.environ.get(CHILD_ENV) else "cpu", **compile_stats(),
        "first_compiled_step_s": round(compile_s, 1),
        "losses_eager": eager_losses, "losses_compiled": compiled_losses,
        "max_loss_diff": max(abs(a - b) for a, b in zip(eager_losses, compiled_losses)),
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "mcm_core_dir": str(Path(mcm_core.__file__).parent), "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="training steps, eager and compiled (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="inductor",
                   help="torch.compile backend: inductor (the trainer's; default) or aot_eager (the same graphs "
                        "and graph breaks, traced through AOT autograd, without building kernels: much faster)")
    p.add_argument("--path", choices=("gpu", "cpu"), default="gpu",
                   help="compile the GPU's code path (CPU-only checks off; default) or the package as it is")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.steps < 1:
        p.error("--batch-size must be at least 2 (MiCL contrasts images) and --steps at least 1")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    package = os.environ.get(CHILD_ENV)
    if args.path == "gpu" and package is None:
        return run_on_gpu_path(argv)
    if package is not None:
        import mcm_core
        if not Path(mcm_core.__file__).resolve().is_relative_to(Path(package).resolve()):
            raise RuntimeError(f"the child imported {mcm_core.__file__}, not the rewritten copy in {package}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for method in args.methods:
        rows.append(check_method(method, args))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


if __name__ == "__main__":
    main()
