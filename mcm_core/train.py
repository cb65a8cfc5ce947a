"""The one training loop, for every method.

``fit(cfg)`` builds the data, the model and the masking strategy from a
``TrainConfig``, trains with AdamW (warm-up + cosine), and writes a checkpoint,
the metrics history and the config into ``cfg.out_dir``.

Reproducibility and exact resume come from making every random choice a pure
function of ``(seed, step)``: the data order of each epoch and the mask of each
step are drawn from generators seeded by them, so a resumed run sees exactly the
batches and masks an uninterrupted run would have seen.

The step never synchronizes with the GPU: losses stay on the device and are read
back once every ``log_every`` steps, when the loss is also checked for NaN/inf.

Under ``torchrun`` the same loop runs in every process with DistributedDataParallel
(see :mod:`mcm_core.distributed`): each process takes its share of the global batch.

What is not the loop lives next to it: :mod:`mcm_core.batches` (the data set, the step-seeded
batches and their value checks), :mod:`mcm_core.optim` (AdamW and its schedule) and
:mod:`mcm_core.devices` (the device, and bf16 precision on it).
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn

from mcm_core import distributed
from mcm_core.batches import (
    StepBatchSampler, bad_images, check_batch, device_split, model_for_data, step_batches, step_seed, training_data,
)
from mcm_core.checkpoint import (
    CHECKPOINT_NAME, CheckpointError, atomic_write_text, load_checkpoint, load_state_strict, optimizer_tensors,
    package_versions, restore_optimizer, save_checkpoint,
)
from mcm_core.config import TrainConfig, config_changes
from mcm_core.devices import explicit_attention, resolve_device, use_bf16
from mcm_core.masking import make_masker
from mcm_core.models import has
from mcm_core.models.layers import ema_update
from mcm_core.models.outputs import ModelOutput
from mcm_core.optim import apply_optimizer_settings, make_optimizer
from mcm_core.runs import HISTORY_NAME, StopSignals, TrainingInterrupted, clean_stale_temporaries


EvalFn = Callable[[nn.Module, int], dict[str, float]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the checkpoint kept."""


@dataclass
class TrainResult:
    """What ``fit`` returns: the trained model, its per-step history and where things were written."""

    model: nn.Module
    history: list[dict[str, float]]
    checkpoint: Path | None
    config: TrainConfig
    wall_seconds: float
    images_seen: int
    evaluations: list[dict[str, float]] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one logged quantity, for plotting."""
        rows = [r for r in self.history if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]


class Trainer:
    """Holds the state of one run. ``fit`` is the usual entry point."""

    def __init__(self, cfg: TrainConfig, eval_fn: EvalFn | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.eval_fn, self.rank, self.world_size = cfg, eval_fn, rank, world_size
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(cfg.device)
        if world_size > 1:  # torchrun: this process's GPU, and a global batch that splits evenly
            distributed.check_global_batch(cfg.batch_size, world_size)
            self.device = distributed.local_device(self.device)
        self.dataset = training_data(cfg)
        self.model = model_for_data(cfg, self.dataset).to(self.device)
        self.grid = self.model.cfg.grid
        # On a GPU the hierarchical masker skips its finiteness read-back (the loss check covers it).
        self.masker = make_masker(cfg.masking, self.grid, **(
            {"min_nodes": cfg.hierarchy_min_nodes, "check_finite": self.device.type == "cpu"}
            if cfg.masking == "hierarchical" else {}))
        self.ema = None
        if cfg.masking == "hierarchical":
            self.ema = copy.deepcopy(self.model.encoder).requires_grad_(False).eval()
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg, self.device)  # AdamW, warm-up + cosine
        self.use_bf16 = use_bf16(cfg.precision, self.device)
        # softmax(q k^T) v as plain products on every CPU step: 1.8x with bf16 (Zen 4); in float32 on an AVX2 CPU,
        # where the fused flash kernel took 23% of the step, 1.21x (tiny, depth 6) / 1.15x (notebook 01's recipe)
        # (docs/benchmarks.md). A GPU keeps the fused kernel.
        self.explicit_attention = self.device.type == "cpu"
        if world_size > 1:  # gradients averaged across processes in backward
            self.model = distributed.wrap(self.model, self.device)
        self.step_fn = self.model
        if cfg.compile:  # inductor; on a CPU it needs a C++ compiler, and pays only on long runs (docs/benchmarks.md)
            if cfg.mask_ratio_max > cfg.mask_ratio:
                warnings.warn("compile with a mask ratio range (mask_ratio_max): the number of visible patches changes "
                              "every step, so torch.compile recompiles (dynamic shapes) and may fall back to eager; "
                              "use a fixed mask_ratio (mask_ratio_max=0) for compiled runs", stacklevel=2)
            self.step_fn = torch.compile(self.model)
        self.out_dir = Path(cfg.out_dir)
        self.step, self.history, self.evaluations = 0, [], []
        self.uses_concepts = has(self.unwrapped, "uses_concepts")  # concept targets go into the model
        self.counterfactual = getattr(self.unwrapped.cfg, "counterfactual_weight", 0.0) > 0
        if self.counterfactual and not callable(getattr(self.dataset, "counterfactuals", None)):
            raise ValueError(f"model.counterfactual_weight > 0 needs a data set that renders counterfactual images "
                             f"(the built-in shapes data); {cfg.dataset!r} cannot, so set model.counterfactual_weight=0")
        self.step_ids = StepBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, 0, cfg.steps, rank, world_size)
        self._device_data: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- state -----------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save(self) -> Path | None:
        """Checkpoint model, optimizer, EMA encoder and history (rank 0 only)."""
        if self.rank != 0:
            return None
        extra, groups = optimizer_tensors(self.optimizer)
        if self.ema is not None:
            extra.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        train = {"step": self.step, "config": self.cfg.to_dict(), "optimizer": groups,
                 "scheduler": self.scheduler.state_dict(),
                 "history": self.history, "evaluations": self.evaluations}
        return save_checkpoint(self.checkpoint_path, self.unwrapped, extra=extra, train=train)

    @property
    def unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def resume(self, path: str | Path, allow_config_change: bool = False) -> None:
        """Restore everything saved by ``save`` and continue from its step.

        Refuses a checkpoint trained with other settings (any field but ``RUNTIME_FIELDS``),
        listing each change, unless ``allow_config_change``: then the new values apply from
        the resumed step on.
        """
        model, info = load_checkpoint(path, device=self.device, with_training_state=True)
        if info.method != self.cfg.method:
            raise CheckpointError(f"{path} is a {info.method} run and this config trains {self.cfg.method}; resume "
                                  f"it with method={info.method} (its config.yaml), or train {self.cfg.method} "
                                  "into another out_dir")
        load_state_strict(self.unwrapped, model.state_dict(), path)  # another architecture: keys and shapes
        changes = config_changes(info.train.get("config", {}), self.cfg.to_dict())
        if changes and not allow_config_change:
            raise ValueError(f"{path} was trained with other settings ({'; '.join(changes)}); resume with the "
                             "run's own config (its config.yaml), or allow the change explicitly "
                             "(fit(..., allow_config_change=True), CLI --allow-config-change)")
        if len(info.train["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{path} was trained with patch_embed_lr_scale="
                             f"{info.train.get('config', {}).get('patch_embed_lr_scale', 1.0)}, which sets the optimizer's "
                             "parameter groups; resume with that value (it cannot change within a run)")
        restore_optimizer(self.optimizer, {k: v for k, v in info.tensors.items() if k.startswith("optim.")},
                          info.train["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict({k[4:]: v for k, v in info.tensors.items() if k.startswith("ema.")})
        self.step = int(info.train["step"])
        self.history = list(info.train.get("history", []))
        self.evaluations = list(info.train.get("evaluations", []))
        self.scheduler.load_state_dict(info.train["scheduler"])
        if changes:  # allowed: the optimizer and schedule follow the new config from this step on
            apply_optimizer_settings(self.optimizer, self.scheduler, self.cfg)

    # -- one step --------------------------------------------------------
    def step_mask_ratio(self) -> float:
        """This step's training mask ratio: ``cfg.mask_ratio``, or with ``cfg.mask_ratio_max`` above it, a
        draw from uniform [mask_ratio, mask_ratio_max] that is a pure function of (seed, step).

        Drawn on the host (no device synchronization) and the same in every process, so a DDP
        step's processes agree on the number of visible patches.
        """
        low, high = self.cfg.mask_ratio, self.cfg.mask_ratio_max
        if high <= low:
            return low
        return random.Random(step_seed(self.cfg.seed, self.step, 3)).uniform(low, high)

    def make_mask(self, images: torch.Tensor, mask_ratio: float | None = None) -> torch.Tensor:
        """This step's mask (B, L) at ``mask_ratio`` (default ``cfg.mask_ratio``), drawn from a generator
        seeded by (seed, step, rank)."""
        generator = torch.Generator(device=images.device).manual_seed(
            step_seed(self.cfg.seed, self.step * self.world_size + self.rank, 1))
        affinity = None
        if self.ema is not None:
            affinity = self.ema.patch_affinity(images, kind=self.cfg.hierarchy_affinity)
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        return self.masker(images.shape[0], ratio, generator=generator, device=images.device,
                           affinity=affinity, progress=self.step / self.cfg.steps)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> ModelOutput:
        """This step's mask and the model's forward pass (autocast as configured) -> the model's output.

        The model is told the ``mask_ratio`` the mask was drawn at, so on a GPU it never reads the
        mask back to count its hidden patches (every masker hides exactly ``num_hidden`` of them).
        """
        ratio = self.step_mask_ratio()
        mask = self.make_mask(images, ratio)
        concepts = targets if self.uses_concepts else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.use_bf16 else nullcontext()
        # A second per-(seed, step, rank) stream for any randomness a model draws itself (e.g. MiCL's views).
        generator = torch.Generator(device=images.device).manual_seed(
            step_seed(self.cfg.seed, self.step * self.world_size + self.rank, 2))
        extra = {}
        if self.counterfactual:  # this step's images with one concept group changed, rendered on the device
            cf_generator = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.step * self.world_size + self.rank, 4))
            extra["counterfactual"] = self.dataset.counterfactuals(self.step_ids.ids(self.step), cf_generator, images.device)
        with autocast, explicit_attention(self.unwrapped, self.explicit_attention):
            return self.step_fn(images, mask=mask, mask_ratio=ratio, concepts=concepts,
                                generator=generator, **extra)

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward, backward, clip, optimizer and schedule step. Returns detached device scalars.

        Nothing in it reads a value back to the host (no ``.item()``, no data-dependent branch),
        so on a GPU the host queues steps ahead of the device.
        """
        out = self.forward(images, targets)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            ema_update(self.ema, self.unwrapped.encoder, self.cfg.ema_momentum)
        # per-step model state, e.g. an EMA target encoder and its momentum schedule (a no-op for most models)
        self.unwrapped.after_step((self.step + 1) / self.cfg.steps)
        return {"loss": out.loss.detach(), **{k: v.float() for k, v in out.losses.items()}, "grad_norm": grad_norm}

    # -- logging ---------------------------------------------------------
    def flush(self, pending: list[tuple[int, float, dict[str, torch.Tensor]]], started: float) -> None:
        """Read the pending step metrics back (one synchronization), check them, append to history."""
        if not pending:
            return
        keys = list(pending[0][2])
        values = torch.stack([torch.stack([m[k].float() for k in keys]) for _, _, m in pending])
        values = distributed.mean_across_processes(values).tolist()  # every process logs the same averages
        rows = []
        for (step, lr, _), vals in zip(pending, values):
            row = {"step": step, "lr": lr, **dict(zip(keys, vals))}
            if not math.isfinite(row["loss"]):
                kept = f"the last good checkpoint {self.checkpoint_path} is kept" if self.checkpoint_path.exists() \
                    else "no checkpoint had been written yet"
                bad_data = self.bad_batch_report(step)
                if bad_data:  # the data, not the optimization: name the images
                    raise TrainingDiverged(f"loss became {row['loss']} at step {step}: the batch of step {step} holds "
                                           f"bad values: {bad_data}; {kept}. Fix or remove those images and resume")
                raise TrainingDiverged(f"loss became {row['loss']} at step {step} (its batch's values are fine); "
                                       f"{kept}. Lower lr (now {self.cfg.lr}), keep grad_clip on, or use "
                                       "precision=fp32")
            rows.append(row)
        rows[-1]["elapsed_s"] = time.perf_counter() - started
        self.history.extend(rows)
        pending.clear()
        if self.rank == 0:
            with open(self.out_dir / HISTORY_NAME, "a") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in rows)

    def checked_step(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``train_step``; when a model's own value check refuses the batch (CPU tensors), the error names
        the images of this step's batch that hold the bad values (their files, for a folder of images)."""
        try:
            return self.train_step(images, targets)
        except ValueError as error:
            report = self.bad_batch_report(self.step)
            if report is None:
                raise
            raise ValueError(f"the batch of step {self.step} holds bad values: {report}; fix or remove those images "
                             f"and resume ({error})") from error

    def bad_batch_report(self, step: int) -> str | None:
        """Which images of ``step``'s batch (re-read: a batch is a pure function of seed and step) are NaN,
        infinite or outside [0, 1], or whose concept targets are not 0/1; None when all are fine."""
        return bad_images(self.dataset, self.step_ids.ids(step), self.uses_concepts)

    def evaluate(self) -> None:
        if self.eval_fn is None or self.rank != 0:
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            result = {"step": self.step, **self.eval_fn(self.unwrapped, self.step)}
        self.model.train(was_training)
        self.evaluations.append(result)

    # -- the loop --------------------------------------------------------
    def device_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The whole training split on the device, ``(uint8 images (N, 3, S, S), targets (N, K))``, or None.

        Only data sets that can render themselves on a device (the built-in shapes data), and on a
        GPU only when the pixels take at most a quarter of its memory. Rendered once per trainer.
        """
        if self._device_data is None:
            self._device_data = device_split(self.dataset, self.device)
        return self._device_data

    def batches(self, until: int, on_device: bool | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, targets)`` on the device for steps ``self.step .. until - 1``.

        On a GPU the built-in shapes data is rendered there once and each batch is an index into it
        (no DataLoader, no pixels copied from the host, so training is never input-bound; the
        values equal the DataLoader's bit for bit). Other data goes through a DataLoader with
        pinned memory and non-blocking copies. ``on_device`` forces the choice (True: the device
        path where the data set has one, also on the CPU).
        """
        sampler = StepBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, self.step,
                                   until, self.rank, self.world_size)
        use_device = self.device.type == "cuda" if on_device is None else on_device
        data = self.device_data() if use_device else None
        yield from step_batches(self.dataset, sampler, self.device, self.cfg.num_workers, data)

    def should_stop(self, stop: StopSignals, boundary: bool) -> bool:
        """Whether a stop signal ends the loop after this step. Alone: at once. Under torchrun: at the next
        logging step, when every process learns (one all-reduce) that any of them was signalled, so all
        stop at the same step."""
        if self.world_size == 1:
            return stop.requested
        return boundary and distributed.any_process(stop.requested, self.device)

    def run(self, until: int | None = None) -> TrainResult:
        """Train from ``self.step`` to ``until`` (default ``cfg.steps``); checkpoint and evaluate as configured.

        Stopping early with ``until`` keeps the schedule of the full run, so a later ``resume``
        continues exactly where this left off.
        """
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        if self.step >= cfg.steps and any(e.get("step") == cfg.steps for e in self.evaluations):
            # a finished, evaluated run: nothing to train, evaluate or write
            return TrainResult(self.unwrapped.eval(), self.history, self.checkpoint_path, cfg, 0.0, 0,
                               self.evaluations)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            clean_stale_temporaries(self.out_dir)  # left by a save that was killed
            cfg.save(self.out_dir / "config.yaml")
            atomic_write_text(self.out_dir / "versions.json", json.dumps(package_versions(), indent=2))
            atomic_write_text(self.out_dir / HISTORY_NAME, "".join(json.dumps(r) + "\n" for r in self.history))
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or self.rank != 0,
                   desc=f"{cfg.method} {cfg.masking} r={cfg.mask_ratio}", dynamic_ncols=True)
        started, first_step, pending = time.perf_counter(), self.step, []
        self.model.train()
        with StopSignals(announce=bar.write) as stop:
            for images, targets in self.batches(until):
                if self.step == first_step:
                    check_batch(images, targets if self.uses_concepts else None)
                lr = self.optimizer.param_groups[0]["lr"]
                pending.append((self.step, lr, self.checked_step(images, targets)))
                self.step += 1
                bar.update(1)
                boundary = self.step % cfg.log_every == 0 or self.step == until
                if boundary:
                    self.flush(pending, started)
                    bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
                if self.should_stop(stop, boundary):
                    break
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save()
            bar.close()
            self.flush(pending, started)
            path = self.save()  # before the final evaluation, so a failing eval_fn never costs the trained weights
        if stop.requested and self.step < until:
            raise TrainingInterrupted(self.step, cfg.steps, path, stop.signal_number or 2)
        if self.eval_fn is not None and self.step == cfg.steps:
            self.evaluate()
            path = self.save()  # again, now with the final evaluation in its metadata
        images_seen = (self.step - first_step) * cfg.batch_size
        return TrainResult(self.unwrapped.eval(), self.history, path, cfg, time.perf_counter() - started,
                           images_seen, self.evaluations)


def fit(cfg: TrainConfig, resume: str | Path | bool | None = None, eval_fn: EvalFn | None = None,
        until: int | None = None, allow_config_change: bool = False) -> TrainResult:
    """Train a model as ``cfg`` says (under torchrun: in every process, with DistributedDataParallel).

    Args:
        until: stop (and checkpoint) after this step instead of ``cfg.steps``; resume later.
        resume: a checkpoint path, or True for ``cfg.out_dir/checkpoint.safetensors`` if it exists.
        allow_config_change: resume even when ``cfg`` differs from the checkpoint's config.
        eval_fn: ``eval_fn(model, step) -> {name: value}``, called every ``cfg.eval_every`` steps and at
            the end (see ``mcm_core.evaluate``).
    """
    with distributed.process_group(resolve_device(cfg.device)) as process:  # a no-op outside torchrun
        trainer = Trainer(cfg, eval_fn, process.rank, process.world_size)
        if resume is True:
            resume = trainer.checkpoint_path if trainer.checkpoint_path.exists() else None
        if resume:
            trainer.resume(resume, allow_config_change)
        return trainer.run(until)
