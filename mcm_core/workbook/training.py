"""Train a run, or load it when its run folder already holds a finished run of the same config.

A notebook trains with one call per config::

    run = train_or_load(cfg)                      # cfg.out_dir is the run folder
    model, history = run.model, run.history       # the same whether trained now or loaded

:func:`train_or_load` trains with :func:`mcm_core.train.fit` (live progress bar, checkpoint,
history and config written into the run folder) unless :func:`checkpoint_matches` finds a finished
run of ``cfg`` there, in which case it loads that run's model, history and evaluations from the
checkpoint. It prints one line saying which. Re-running a notebook with the same settings
therefore costs nothing; changing a setting that changes what is learned trains again.

Evaluations during training (``eval_fn(model, step)``, every ``cfg.eval_every`` steps and at the
end) are stored in the checkpoint, so a loaded run has them too. An ``eval_fn`` that needs the
training state itself (notebook 04 reads the EMA encoder and the masker that make its masks) is
built by ``watch(trainer)`` instead, which also evaluates the untrained model at step 0.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcm_core.runs import CHECKPOINT_NAME
from mcm_core.workbook.checkpoints import checkpoint_matches

if TYPE_CHECKING:  # the heavy modules are imported when training or loading
    import torch.nn as nn

    from mcm_core.config import TrainConfig
    from mcm_core.train import Trainer

__all__ = ["TrainedRun", "train_or_load", "run_config", "evaluated_steps"]

EvalFn = Callable[["nn.Module", int], dict[str, Any]]


@dataclass
class TrainedRun:
    """What :func:`train_or_load` returns, the same whether the run was trained now or loaded.

    Attributes:
        model: the trained model, in eval mode on ``config.device``.
        history: one row per logged step (``step``, ``loss``, ``lr``, the model's other losses).
        evaluations: ``eval_fn``'s rows, each with its ``step`` (empty without an ``eval_fn``).
        checkpoint: the checkpoint file in the run folder.
        config: the config, with ``out_dir`` the run folder.
        trained: True when trained by this call, False when loaded.
        wall_seconds, cpu_seconds: the training time (wall clock, this process's CPU time); None when loaded.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    checkpoint: Path
    config: TrainConfig
    trained: bool
    wall_seconds: float | None = None
    cpu_seconds: float | None = None

    @property
    def folder(self) -> Path:
        """The run folder (for files a notebook keeps next to the checkpoint)."""
        return self.checkpoint.parent

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one logged quantity of the history, for plotting."""
        rows = [r for r in self.history if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]


def run_config(cfg: TrainConfig, checkpoint_path: str | Path | None) -> TrainConfig:
    """``cfg`` with ``out_dir`` set to ``checkpoint_path``: a run folder, or its ``checkpoint.safetensors``.

    Raises:
        ValueError: a ``.safetensors`` file with another name (the trainer always writes ``checkpoint.safetensors``).
    """
    if checkpoint_path is None:
        return cfg
    path = Path(checkpoint_path)
    if path.suffix == ".safetensors":
        if path.name != CHECKPOINT_NAME:
            raise ValueError(f"checkpoint_path {path} must be a run folder or its {CHECKPOINT_NAME} (the name the "
                             f"trainer writes); pass the folder, e.g. {path.parent}")
        path = path.parent
    return cfg if cfg.out_dir == str(path) else dataclasses.replace(cfg, out_dir=str(path))


def evaluated_steps(cfg: TrainConfig, start: bool = False) -> list[int]:
    """The steps the trainer calls ``eval_fn`` at: every ``cfg.eval_every`` steps and the last (and 0 with ``start``)."""
    every = list(range(cfg.eval_every, cfg.steps, cfg.eval_every)) if cfg.eval_every else []
    return ([0] if start else []) + every + [cfg.steps]


def reusable(cfg: TrainConfig, evaluated: bool, start: bool, needs: Sequence[str]) -> bool:
    """Whether the run folder holds a finished run of ``cfg`` with the evaluations and files asked for."""
    from mcm_core.checkpoint import read_metadata

    checkpoint = Path(cfg.out_dir) / CHECKPOINT_NAME
    if not checkpoint_matches(checkpoint, cfg) or not all((checkpoint.parent / n).is_file() for n in needs):
        return False
    if not evaluated:
        return True
    saved = read_metadata(checkpoint).get("train", {}).get("evaluations", [])
    return [e.get("step") for e in saved] == evaluated_steps(cfg, start)


def train_watched(cfg: TrainConfig, watch: Callable[[Trainer], EvalFn]) -> Any:
    """Train one process as :func:`mcm_core.train.fit` does, with the ``eval_fn`` that ``watch(trainer)`` builds.

    The untrained model is evaluated first (step 0). Returns the trainer's ``TrainResult``.
    """
    from mcm_core.train import Trainer

    trainer = Trainer(cfg)
    trainer.eval_fn = watch(trainer)
    trainer.evaluate()  # step 0: the untrained model
    return trainer.run()


def train_or_load(cfg: TrainConfig, checkpoint_path: str | Path | None = None, eval_fn: EvalFn | None = None, *,
                  watch: Callable[[Trainer], EvalFn] | None = None, needs: Sequence[str] = (),
                  quiet: bool = False) -> TrainedRun:
    """Train ``cfg`` with :func:`mcm_core.train.fit`, or load its finished run; prints one line saying which.

    Args:
        cfg: the run's config; ``cfg.out_dir`` is its run folder unless ``checkpoint_path`` is given.
        checkpoint_path: the run folder (or its ``checkpoint.safetensors``); it replaces ``cfg.out_dir``.
        eval_fn: ``eval_fn(model, step) -> {name: value}`` (JSON values), called every
            ``cfg.eval_every`` steps and at the end; a saved run is reused only when it holds
            these evaluations.
        watch: instead of ``eval_fn``, for an evaluation that needs the training state:
            ``watch(trainer) -> eval_fn``, called once before training; the untrained model is
            evaluated too (step 0).
        needs: file names that must exist in the run folder for it to be reused (files the
            notebook writes next to the checkpoint when ``trained``).
        quiet: print nothing.
    Returns:
        A :class:`TrainedRun`: model, history, evaluations, checkpoint, and whether it was trained.
    Raises:
        ValueError: both ``eval_fn`` and ``watch``, or a checkpoint file not named ``checkpoint.safetensors``.
    """
    if eval_fn is not None and watch is not None:
        raise ValueError("pass eval_fn (called with the model) or watch (builds one from the trainer), not both")
    cfg = run_config(cfg, checkpoint_path)
    checkpoint = Path(cfg.out_dir) / CHECKPOINT_NAME
    evaluated, start = eval_fn is not None or watch is not None, watch is not None
    if reusable(cfg, evaluated, start, needs):
        from mcm_core.checkpoint import load_checkpoint
        from mcm_core.devices import resolve_device

        model, info = load_checkpoint(checkpoint, device=resolve_device(cfg.device))
        if not quiet:
            print(f"loaded {checkpoint}: a finished {cfg.method} run of these settings ({info.train['step']} steps)")
        return TrainedRun(model, list(info.train.get("history", [])), list(info.train.get("evaluations", [])),
                          checkpoint, cfg, trained=False)
    from mcm_core.train import fit

    replaced = checkpoint.is_file()
    wall, cpu = time.perf_counter(), time.process_time()
    result = train_watched(cfg, watch) if watch is not None else fit(cfg, eval_fn=eval_fn)  # live progress bar
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not quiet:
        print(f"trained {cfg.method} {cfg.steps} steps in {wall:.1f} s ({wall / cfg.steps:.2f} s/step, {cpu:.0f} s CPU)"
              f"; saved {result.checkpoint}" + (" (it replaces the run that was there)" if replaced else ""))
    return TrainedRun(result.model, result.history, result.evaluations, Path(result.checkpoint), cfg, trained=True,
                      wall_seconds=wall, cpu_seconds=cpu)
