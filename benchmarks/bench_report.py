"""Turn ``bench_train.py``'s JSON lines into a table in ``docs/benchmarks.md`` and a bar plot.

One call = one generated section of the page (fenced, see ``report.py``) and one figure::

    python benchmarks/bench_train.py --presets tiny --batch-size 64 --steps 15 --warmup 3 \\
        --threads 2 --out runs/cpu_bench_t2.jsonl
    python benchmarks/bench_report.py runs/cpu_bench_t2.jsonl --section cpu_methods \\
        --plot docs/img/bench_cpu_methods.png

The table has one row per JSON line, in file order: method, preset, mask ratio, visible
patches, batch, precision, compile, images/s, step ms, counted GFLOP per image step, achieved
TFLOP/s, the encoder's share of the forward FLOPs and peak memory (GPU: GiB allocated; CPU:
the process's peak RSS). The plot shows images/s and TFLOP/s per row, side by side. The
conditions (device, threads, torch, timm, date, commit) are listed under the table from the
rows themselves, so a figure never loses the machine it was measured on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import replace_section  # noqa: E402

NAMES = {"mae": "MAE", "mcm": "MCM", "micl": "MiCL", "latent_mim": "Latent MIM"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (blank lines skipped); a clear error for a line that is not JSON."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON line from bench_train.py ({error})") from None
    if not rows:
        raise ValueError(f"{path} holds no rows; run benchmarks/bench_train.py --out {path} first")
    return rows


def label(row: dict[str, Any]) -> str:
    """``"MCM tiny 0.25"`` (plus the masking when not random, ``compiled``, and a CPU row's threads)."""
    parts = [NAMES.get(row["method"], row["method"]), row["preset"], f"{row['mask_ratio']:g}"]
    if row.get("masking", "random") != "random":
        parts.append(row["masking"])
    if row.get("compile"):
        parts.append("compiled")
    if "peak_mem_gib" not in row and row.get("threads"):  # a CPU row: its thread count matters
        parts.append(f"({row['threads']} thr)")
    return " ".join(parts)


def memory(row: dict[str, Any]) -> str:
    if "peak_mem_gib" in row:
        return f"{row['peak_mem_gib']:.2f} GiB"
    return f"{row['peak_rss_mib']:.0f} MiB RSS" if "peak_rss_mib" in row else "-"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines, one row per benchmark run (a ``threads`` column when a row ran on a CPU)."""
    cpu = any("peak_mem_gib" not in r for r in rows)
    head = ["method", "preset", "mask", "visible", "masking", "batch", *(["threads"] if cpu else []), "precision",
            "compiled", "images/s", "step (ms)", "GFLOP / image step", "TFLOP/s", "encoder share of forward",
            "peak memory"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [NAMES.get(r["method"], r["method"]), r["preset"], f"{r['mask_ratio']:g}",
                 f"{r['visible_patches']}/{r['num_patches']}", r.get("masking", "random"), str(r["batch_size"]),
                 *([str(r.get("threads", "-"))] if cpu else []), r["precision"], "yes" if r["compile"] else "no",
                 f"{r['images_per_s']:,.1f}", f"{r['step_ms']:.1f}", f"{r['gflop_per_image']:.3f}",
                 f"{r['tflops']:.3f}", f"{r['encoder_forward_share']:.2f}", memory(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def conditions(rows: list[dict[str, Any]]) -> list[str]:
    """One line per distinct (device, threads, versions) with the dates and commits it covers."""
    seen: dict[tuple, set] = {}
    for r in rows:
        key = (r["device"], r.get("threads"), r["torch"], r["timm"], r.get("cuda"))
        seen.setdefault(key, set()).add((r["date"][:10], r.get("commit") or "?"))
    out = []
    for (device, threads, torch_v, timm_v, cuda), stamps in seen.items():
        dates = ", ".join(sorted({d for d, _ in stamps}))
        commits = ", ".join(sorted({c for _, c in stamps}))
        out.append(f"- {device}, {threads} torch thread(s), torch {torch_v}"
                   f"{f' (CUDA {cuda})' if cuda else ''}, timm {timm_v}; {dates}; commit {commits}")
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two horizontal bar panels: images/s and achieved TFLOP/s per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label(r) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.6), sharey=True)
    for ax, key, xlabel in ((axes[0], "images_per_s", "images / s"), (axes[1], "tflops", "achieved TFLOP/s")):
        values = [r[key] for r in rows]
        bars = ax.barh(range(len(rows)), values, color="tab:blue" if key == "images_per_s" else "tab:orange")
        ax.bar_label(bars, labels=[f"{v:,.0f}" if key == "images_per_s" else f"{v:.3g}" for v in values],
                     padding=3, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, max(values) * 1.25)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl", type=Path, nargs="+", help="bench_train.py --out files (rows kept in order)")
    p.add_argument("--section", required=True, help="name of the generated section in the page, e.g. cpu_methods")
    p.add_argument("--page", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--plot", type=Path, default=None, help="also draw images/s and TFLOP/s to this PNG")
    p.add_argument("--title", default=None, help="plot title (default: the device of the first row)")
    p.add_argument("--command", default=None, help="the bench_train.py command(s) to print above the table")
    args = p.parse_args(argv)
    try:
        rows = [row for path in args.jsonl for row in read_rows(path)]
    except (OSError, ValueError) as error:
        p.error(str(error))
    lines = []
    if args.command:
        lines += [f"Command: `{args.command}`", ""]
    lines += table(rows) + ["", "Measured on:"] + conditions(rows)
    if args.plot:
        plot(rows, args.plot, args.title or f"Training step, {rows[0]['device']}")
        link = Path(os.path.relpath(args.plot.resolve(), args.page.resolve().parent)).as_posix()
        lines += ["", f"![images/s and TFLOP/s per run]({link})"]
    replace_section(args.page, args.section, lines)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
