"""Run folders: what a folder holds, never replacing a run by accident, and stopping on a signal.

Imports no torch (the command line's ``--help`` stays instant). A run folder (``TrainConfig.out_dir``) holds the checkpoint, its JSON sidecar, the metrics
history, the config and the package versions (and, from the command line, ``metrics.json``).
This module reads what a folder holds without loading any weights (:func:`read_run`), refuses
to train over a run unless asked (:func:`check_run_folder`), removes a run's files when asked
to replace it (:func:`remove_run`), cleans temporary files left by a save that was killed
(:func:`clean_stale_temporaries`), and turns SIGINT / SIGTERM into "finish this step, save a
checkpoint, stop" (:class:`StopSignals`, :class:`TrainingInterrupted`).
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Callable

CHECKPOINT_NAME = "checkpoint.safetensors"
HISTORY_NAME = "history.jsonl"
METRICS_NAME = "metrics.json"
# Every file a run writes into its folder (the checkpoint's sidecar is CHECKPOINT_NAME with .json).
RUN_FILES = (CHECKPOINT_NAME, Path(CHECKPOINT_NAME).with_suffix(".json").name, HISTORY_NAME, METRICS_NAME,
             "config.yaml", "versions.json")
# checkpoint.atomic_write_bytes writes ".<name>.tmp-<pid>" next to the file, then renames it.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint at the step it had reached.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C stops on it too. Attributes: ``step``,
    ``steps`` (the run's total), ``checkpoint`` (the saved path, or None in a process that does not
    write), ``signal_number``.
    """

    def __init__(self, step: int, steps: int, checkpoint: Path | None, signal_number: int) -> None:
        self.step, self.steps, self.checkpoint, self.signal_number = step, steps, checkpoint, signal_number
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "the main process saved the checkpoint"
        super().__init__(f"stopped by {signal.Signals(signal_number).name} at step {step} of {steps}; {saved}; "
                         "continue with fit(cfg, resume=True) or `mcm train --resume`")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RunState:
    """What a run folder holds: its checkpoint's method, step and total steps (``None`` fields: no checkpoint)."""

    folder: Path
    method: str | None
    step: int | None
    steps: int | None

    @property
    def finished(self) -> bool:
        return self.step is not None and self.steps is not None and self.step >= self.steps

    def describe(self) -> str:
        if self.step is None:
            return f"{self.folder} holds the files of a run that saved no checkpoint"
        state = "a finished" if self.finished else "an unfinished"
        return f"{self.folder} holds {state} {self.method} run (step {self.step} of {self.steps})"


def read_run(folder: str | Path) -> RunState | None:
    """What ``folder`` holds, read from the checkpoint's header only; None when it holds no run files.

    Raises:
        CheckpointError: the checkpoint exists but cannot be read (truncated, not a checkpoint).
    """
    folder = Path(folder)
    if not folder.is_dir() or not any((folder / name).exists() for name in RUN_FILES):
        return None
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        return RunState(folder, None, None, None)
    from mcm_core.checkpoint import read_metadata  # torch: only when a folder holds a checkpoint

    meta = read_metadata(path)
    train = meta.get("train", {})
    steps = train.get("config", {}).get("steps")
    return RunState(folder, meta.get("method"), int(train.get("step", 0)), None if steps is None else int(steps))


def check_run_folder(folder: str | Path, resume: bool, overwrite: bool) -> RunState | None:
    """Refuse to start a new run in a folder that holds one, unless ``resume`` or ``overwrite``.

    Returns:
        What the folder holds (None: nothing).
    Raises:
        FileExistsError: the folder holds a run and neither option was given; the message names
            ``--resume``, ``--overwrite``, ``--extend N`` and another ``--out-dir``.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in the "
                         "folder, --overwrite deletes it; pass one of them")
    state = read_run(folder)
    if state is None or resume or overwrite:
        return state
    continue_hint = ("--extend N trains it N more steps" if state.finished
                     else "--resume continues it from its checkpoint")
    raise FileExistsError(f"{state.describe()}; training here would replace it. {continue_hint}, --overwrite "
                          "deletes it and starts afresh, or pass another --out-dir")


def remove_run(folder: str | Path) -> list[Path]:
    """Delete the run files of ``folder`` (only those this library writes) -> the paths removed."""
    removed = []
    for name in RUN_FILES:
        path = Path(folder) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.<file>.tmp-<pid>`` files a killed save left in ``folder`` (their process is gone).

    A temporary file of a process that is still running (another save in progress) is kept.
    Returns the paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class StopSignals:
    """Within the block, SIGINT and SIGTERM only set :attr:`signal_number`; the loop stops at a safe point.

    A second signal (more than :attr:`SAME_EVENT_S` after the first) stops at once (``KeyboardInterrupt``). Handlers are installed only in the main
    thread of the main interpreter (elsewhere the block is a no-op) and the previous ones are put back
    on exit, so a notebook kernel's own Ctrl-C handling returns after training.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # A signal this soon after the first is the same request: under plain torchrun a terminal's Ctrl-C
    # reaches every worker directly and again through torchrun, which forwards what it receives.
    SAME_EVENT_S = 2.0

    def __init__(self, announce: Callable[[str], Any] | None = None) -> None:
        self.signal_number: int | None = None
        self.announce = announce if announce is not None else (lambda text: print(text, file=sys.stderr, flush=True))
        self._previous: dict[int, Any] = {}
        self._first = 0.0

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None and time.monotonic() - self._first < self.SAME_EVENT_S:
            return  # the same stop delivered twice (a terminal's Ctrl-C and torchrun's forwarded copy)
        if self.signal_number is not None:  # a second one: stop now
            self._restore()
            raise KeyboardInterrupt(f"{signal.Signals(number).name} again: stopped at once, no checkpoint saved "
                                    "for the current step (the last saved one is intact)")
        self.signal_number, self._first = number, time.monotonic()
        self.announce(f"\n{signal.Signals(number).name} received: finishing this step and saving a checkpoint "
                      "(send it again to stop at once)")

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._restore()


__all__ = [
    "CHECKPOINT_NAME", "HISTORY_NAME", "METRICS_NAME", "RUN_FILES", "RunState", "StopSignals", "TrainingInterrupted",
    "check_run_folder", "clean_stale_temporaries", "read_run", "remove_run",
]
