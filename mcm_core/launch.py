"""``mcm train --nproc-per-node N``: start the run under torchrun and end a failure with its one-line message.

A worker that stops on bad input prints ``mcm train: error: ...`` and exits with code 2; torchrun then
stops the other workers and prints its own report (a ``ChildFailedError`` box and a traceback) after it,
which buries the message. This launcher runs torchrun as a child process with an error folder in the
environment (:data:`ERROR_DIR_ENV`); each worker writes its one-line message there
(:func:`record_error`), and once torchrun has finished the launcher prints the first worker's message
last and exits with that worker's code. Everything else (output, progress bars, the exit code of a
successful run) passes through unchanged. SIGINT and SIGTERM sent to the launcher are passed to torchrun,
which passes them to the workers (they save a checkpoint and stop, see :mod:`mcm_core.runs`). Imports no
torch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ERROR_DIR_ENV = "MCM_LAUNCH_ERROR_DIR"
OPTION = "--nproc-per-node"


def split_nproc(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """``(N, the arguments without --nproc-per-node N)``; N is None when the option is absent.

    Raises:
        ValueError: the option has no value or a value that is not a whole number >= 1.
    """
    rest, count, items = [], None, list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item == OPTION or item.startswith(OPTION + "="):
            text = item.partition("=")[2] if "=" in item else (items[i + 1] if i + 1 < len(items) else "")
            i += 1 if "=" in item else 2
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"{OPTION} takes the number of processes, a whole number >= 1, got {text!r}; "
                                 f"e.g. {OPTION} 2")
            count = int(text)
            continue
        rest.append(item)
        i += 1
    return count, rest


def record_error(message: str, code: int) -> None:
    """Under :func:`launch`, write this worker's one-line error (and exit code) for the launcher to print."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return
    rank = os.environ.get("RANK", "0")
    try:
        Path(folder, f"rank{int(rank):05d}.txt").write_text(f"{code}\n{message}\n")
    except OSError:
        pass  # the message was printed anyway; the launcher then falls back to torchrun's exit code


def first_error(folder: Path) -> tuple[int, str] | None:
    """``(exit code, message)`` of the lowest rank that recorded an error, or None."""
    for path in sorted(folder.glob("rank*.txt")):
        code, _, message = path.read_text().partition("\n")
        if code.strip().lstrip("-").isdigit() and message.strip():
            return int(code), message.strip()
    return None


def launch(nproc: int, argv: Sequence[str], prog: str = "mcm") -> int:
    """Run ``python -m torch.distributed.run --nproc_per_node=nproc -m mcm_core *argv``; -> its exit code.

    On failure the last line on stderr is the first failing worker's ``prog command: error: ...``.
    """
    with tempfile.TemporaryDirectory(prefix="mcm-launch-") as folder:
        env = {**os.environ, ERROR_DIR_ENV: folder}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "mcm_core", *argv]
        # torchrun in its own session: a Ctrl-C in the terminal reaches the launcher alone, which passes one
        # signal on; torchrun passes it to every worker, and each saves a checkpoint at the same step.
        child = subprocess.Popen(command, env=env, start_new_session=True)
        forward = lambda number, frame: child.send_signal(number)  # noqa: E731
        previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = child.wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        if code == 0:
            return 0
        found = first_error(Path(folder))
        if found is None:
            print(f"{prog} {argv[0] if argv else ''}: error: torchrun exited with code {code} and no worker "
                  "reported a message; see its report above", file=sys.stderr, flush=True)
            return code
        worker_code, message = found
        print(message, file=sys.stderr, flush=True)
        return worker_code


__all__ = ["ERROR_DIR_ENV", "launch", "record_error", "split_nproc", "first_error"]
