"""Execute every notebook in ``notebooks/`` in order with papermill.

Executed copies go to ``--output``; figures go to ``figures/`` (the notebooks
read ``MCM_FIGURES_DIR``). Each notebook's wall time, CPU time and peak memory (the
kernel's resident memory, sampled every 0.2 s) are written to ``<output>/runs.json``
as soon as it ends. A failing notebook stops the run with a non-zero exit.

    python scripts/run_notebooks.py                  # full settings (the README's main job)
    python scripts/run_notebooks.py --smoke          # seconds per notebook
    python scripts/run_notebooks.py --only 01 03     # a subset, by number prefix
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def notebooks(only: list[str] | None) -> list[Path]:
    """The numbered notebooks, in order, optionally filtered by prefix."""
    found = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(prefix) for prefix in only)]
    return found


class KernelMonitor:
    """Samples this process's descendants (the kernel and its workers) in a thread.

    ``peak_mib``: the highest summed resident memory seen; ``cpu_seconds``: their user +
    system CPU time at the last sample (the kernel's work, not papermill's).
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_mib, self.cpu_seconds = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, cpu = 0, 0.0
        for child in psutil.Process().children(recursive=True):
            try:
                rss += child.memory_info().rss
                times = child.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
            except psutil.Error:  # the process ended between listing and reading
                continue
        self.peak_mib = max(self.peak_mib, rss / 2**20)
        self.cpu_seconds = max(self.cpu_seconds, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "KernelMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
        with KernelMonitor() as monitor:
            pm.execute_notebook(str(path), str(out_dir / path.name), parameters=params, kernel_name=args.kernel,
                                cwd=str(path.parent), progress_bar=False)
        seconds = time.perf_counter() - start
        records.append({"notebook": path.name, "seconds": round(seconds, 1),
                        "kernel_cpu_seconds": round(monitor.cpu_seconds, 1),
                        "peak_rss_mib": round(monitor.peak_mib, 1), "smoke": args.smoke})
        (out_dir / "runs.json").write_text(json.dumps(records, indent=2))  # after each: a failure keeps the rest
        print(f"[workbook] {path.name} done in {seconds:.1f} s, peak {monitor.peak_mib:.0f} MiB", flush=True)
    print(f"[workbook] all {len(records)} notebooks in {sum(r['seconds'] for r in records):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

