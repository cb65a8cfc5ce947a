"""Execute every notebook in ``notebooks/`` in order with papermill.

Executed copies go to ``--output``; figures go to ``figures/`` (the notebooks
read ``MCM_FIGURES_DIR``). Each notebook's runtime and peak memory are written
to ``<output>/runs.json``. A failing notebook stops the run with a non-zero exit.

    python scripts/run_notebooks.py                  # full settings (the README's main job)
    python scripts/run_notebooks.py --smoke          # seconds per notebook
    python scripts/run_notebooks.py --only 01 03     # a subset, by number prefix
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebooks(only: list[str] | None) -> list[Path]:
    """The numbered notebooks, in order, optionally filtered by prefix."""
    found = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(prefix) for prefix in only)]
    return found


def peak_memory_mib() -> float:
    """Peak resident memory of finished child processes (the kernels), MiB."""
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/notebooks", help="folder for the executed notebooks")
    parser.add_argument("--smoke", action="store_true", help="run every notebook in smoke mode (tiny loops)")
    parser.add_argument("--only", nargs="*", help="number prefixes of the notebooks to run, e.g. 01 03")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (set-up registers python3 in .venv)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra papermill parameter for every notebook (value parsed as YAML)")
    args = parser.parse_args(argv)

    import papermill as pm
    import yaml

    out_dir = ROOT / args.output
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MCM_FIGURES_DIR", str(ROOT / "figures"))
    selected = notebooks(args.only)
    if not selected:
        print("no notebooks to run yet in notebooks/ (they arrive with the workbook issue)")
        return 0
    params = {name: yaml.safe_load(value) for name, value in args.parameter}
    if args.smoke:
        params["smoke"] = True
    records = []
    for path in selected:
        start = time.perf_counter()
        print(f"[workbook] {path.name} ...", flush=True)
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params, kernel_name=args.kernel,
                            cwd=str(path.parent), progress_bar=False)
        seconds = time.perf_counter() - start
        records.append({"notebook": path.name, "seconds": round(seconds, 1),
                        "peak_rss_mib_so_far": round(peak_memory_mib(), 1), "smoke": args.smoke})
        print(f"[workbook] {path.name} done in {seconds:.1f} s", flush=True)
    (out_dir / "runs.json").write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
