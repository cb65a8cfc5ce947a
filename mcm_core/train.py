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
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mcm_core import distributed
from mcm_core.checkpoint import (
    CHECKPOINT_NAME, CheckpointError, atomic_write_text, load_checkpoint, load_state_strict, optimizer_tensors,
    package_versions, restore_optimizer, save_checkpoint,
)
from mcm_core.config import TrainConfig, config_changes
from mcm_core.data import load_dataset
from mcm_core.data.shapes_render import u8_to_float
from mcm_core.masking import make_masker
from mcm_core.models import build_model, has
from mcm_core.models.backbone import check_image_values
from mcm_core.models.mae import ModelOutput
from mcm_core.models.mcm import check_binary_concepts
from mcm_core.models.schedules import cosine_schedule, ema_update
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


# ---------------------------------------------------------------------- devices and seeds
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; a clear error for a CUDA request without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available; use device=cpu or auto")
    return device


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct 63-bit seed per (run seed, step, stream) (stream 0: data order, 1: masks)."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729 + 12_345) % (2 ** 63 - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for steps ``start .. steps - 1``; epoch ``e`` uses permutation ``seed(e)``.

    The batch of a step depends only on (seed, step), which makes resume exact.
    ``rank``/``world_size`` shard each global batch between processes.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size > size:
            raise ValueError(f"batch_size={batch_size} is larger than the data set ({size} images); "
                             "lower batch_size or use a larger split")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.steps, self.rank, self.world_size = start, steps, rank, world_size
        self.per_epoch = size // batch_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)  # the permutation of one epoch, cached

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.ids(step)

    def ids(self, step: int) -> list[int]:
        """This process's indices of the batch of ``step`` (a pure function of seed and step)."""
        epoch = step // self.per_epoch
        if self._epoch != epoch:
            self._epoch = epoch
            self._order = torch.randperm(self.size, generator=torch.Generator().manual_seed(step_seed(self.seed, epoch, 0)))
        first = (step % self.per_epoch) * self.batch_size
        return self._order[first:first + self.batch_size][self.rank::self.world_size].tolist()


# ---------------------------------------------------------------------- data and model
class OneHotTargets(Dataset):
    """Wrap a class-labelled data set so targets are one-hot concept vectors (B, K) (MCM on class data)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.concept_names = dataset, list(dataset.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        return image, nn.functional.one_hot(torch.as_tensor(label), len(self.concept_names)).float()


def training_data(cfg: TrainConfig, split: str = "train") -> Dataset:
    """The data set of ``cfg``; class labels become one-hot concepts for models that use concepts."""
    dataset = load_dataset(cfg.dataset, split=split, **cfg.data)
    if has(cfg.method, "uses_concepts") and not hasattr(dataset, "concept_names"):
        if not hasattr(dataset, "classes"):
            raise ValueError(f"{cfg.method} needs concept labels, and data set {cfg.dataset!r} has none; "
                             "use shapes, celeba, or a class-labelled set (classes become one-hot concepts)")
        dataset = OneHotTargets(dataset)
    return dataset


def model_for_data(cfg: TrainConfig, dataset: Dataset) -> nn.Module:
    """Build ``cfg.method`` sized to the data (image size, number of concepts and their frequencies)."""
    overrides = dict(cfg.model)
    image = dataset[0][0]
    overrides.setdefault("img_size", int(image.shape[-1]))
    if has(cfg.method, "uses_concepts"):
        names = list(dataset.concept_names)
        overrides.setdefault("num_concepts", len(names))
        overrides.setdefault("concept_names", names)
        if hasattr(dataset, "concept_frequencies"):
            overrides.setdefault("concept_freq", [round(float(f), 6) for f in dataset.concept_frequencies()])
        else:  # one-hot classes: each class is as frequent as 1/K on balanced data
            overrides.setdefault("concept_freq", [1.0 / len(names)] * len(names))
    overrides.setdefault("mask_ratio", cfg.mask_ratio)
    torch.manual_seed(cfg.seed)
    return build_model(cfg.method, cfg.preset, **overrides)


def check_batch(images: torch.Tensor, concepts: torch.Tensor | None = None) -> None:
    """Value checks, done once on the first batch (they synchronize): images (B, 3, H, W) in [0, 1]
    (no NaN), concept targets (B, K) all 0 or 1."""
    low, high = float(images.min()), float(images.max())
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise ValueError(f"images must be floats in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                         "divide uint8 images by 255, do not normalize by mean/std, and drop NaN images")
    if concepts is not None:
        check_binary_concepts(concepts)


# ---------------------------------------------------------------------- optimization
def param_groups(model: nn.Module, weight_decay: float, patch_embed_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens, embeddings and scalar parameters.

    Each group carries ``decays`` (whether weight decay applies) and ``lr_scale``, its learning rate as a multiple of the schedule's. With
    ``patch_embed_lr_scale`` != 1 the patch embeddings (``patch_embed`` parameters) get their own
    group(s) at that scale, so the first layer can learn faint pixel statistics faster.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or any(key in name for key in ("token", "pos_embed", "state_embed", "concept_bias"))
        embed = patch_embed_lr_scale != 1.0 and "patch_embed" in name
        groups.setdefault((skip, embed), []).append(param)
    return [{"params": groups.get((skip, embed), []), "weight_decay": 0.0 if skip else weight_decay,
             "decays": not skip, "lr_scale": patch_embed_lr_scale if embed else 1.0}
            for embed in ((False, True) if patch_embed_lr_scale != 1.0 else (False,)) for skip in (False, True)]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at a step: linear warm-up, then cosine decay to ``min_lr``."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cosine_schedule(progress, 1.0, cfg.min_lr / cfg.lr)
    return factor


# ---------------------------------------------------------------------- the trainer
def cpu_bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), where bf16 pays.

    Measured on the 2-core AMD EPYC (Zen 4) of docs/benchmarks.md: a (2112 x 128) @ (128 x 512)
    matrix product runs at 396 GFLOP/s in bf16 against 150 in float32. CPUs without these units
    emulate bf16 and run slower than in float32, so they keep float32.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:  # oneDNN's own _is_mkldnn_bf16_supported() is true on any AVX-512 CPU, emulated bf16 included
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:
        return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run of ``precision`` (auto, bf16, fp32) trains under bf16 autocast on ``device``.

    ``auto``: always on a GPU; on a CPU only where bf16 matrix products are native
    (:func:`cpu_bf16_supported`).
    """
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_supported())


@contextmanager
def explicit_attention(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every attention module of ``model`` computes ``softmax(q k^T / sqrt(d)) v``
    with plain matrix products instead of ``F.scaled_dot_product_attention``; restored after.

    Used for bf16 training on a CPU: at the ``tiny`` preset's sequence lengths (13 to 65 tokens)
    the CPU's fused flash-attention kernel spends 5x longer in its bf16 backward than the matrix
    products it replaces, and its MATH fallback adds masking checks (``isneginf``, ``all``,
    ``where``) on every call (torch.profiler, docs/benchmarks.md). Modules opt in through timm's
    ``fused_attn`` attribute (timm's ``Attention`` and MCM's ``CrossAttention`` have it).
    """
    modules = [m for m in model.modules() if getattr(m, "fused_attn", None) is True] if enabled else []
    for module in modules:
        module.fused_attn = False
    try:
        yield
    finally:
        for module in modules:
            module.fused_attn = True


def fused_adamw_supported(device: torch.device) -> bool:
    """The fused AdamW kernel (one pass over all parameters) exists for CUDA and, since torch 2.4, CPU.

    On CPU it replaces the per-parameter loop, which took about 5% of a single-thread ``tiny``
    MCM step in one torch.profiler run (45 ms of 0.80 s).
    """
    if device.type == "cuda":
        return True
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


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
        groups = param_groups(self.model, cfg.weight_decay, cfg.patch_embed_lr_scale)
        for group in groups:
            group["lr"] = cfg.lr * group["lr_scale"]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                           fused=fused_adamw_supported(self.device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.use_bf16 = use_bf16(cfg.precision, self.device)
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
            self.apply_optimizer_settings()

    def apply_optimizer_settings(self) -> None:
        """Set lr (on this step's place in the new schedule), weight decay and betas from ``cfg``."""
        cfg = self.cfg
        factor = lr_lambda(cfg)(self.scheduler.last_epoch)
        self.scheduler.base_lrs = [cfg.lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]
        for i, (group, base) in enumerate(zip(self.optimizer.param_groups, self.scheduler.base_lrs)):
            decay = cfg.weight_decay if group.get("decays", i == 0) else 0.0  # see param_groups
            group.update(lr=base * factor, initial_lr=base, weight_decay=decay, betas=(cfg.beta1, cfg.beta2))

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
        explicit = self.device.type == "cpu" and self.use_bf16
        with autocast, explicit_attention(self.unwrapped, explicit):
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
        source = getattr(self.dataset, "dataset", self.dataset)  # OneHotTargets wraps the real data set
        paths = getattr(source, "paths", None)
        bad = []
        for index in self.step_ids.ids(step):
            image, target = self.dataset[index]
            try:  # the model's own value checks, on one image
                check_image_values(image[None])
                if self.uses_concepts:
                    check_binary_concepts(torch.as_tensor(target)[None])
            except ValueError:
                bad.append(f"{paths[index]}" if paths is not None else f"index {index}")
        if not bad:
            return None
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return f"{len(bad)} image(s) with NaN/inf, values outside [0, 1] or non-0/1 concepts ({shown})"

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
        make = getattr(self.dataset, "device_tensors", None)
        if make is None:
            return None
        if self._device_data is None:
            if self.device.type == "cuda":
                pixels = len(self.dataset) * 3 * self.dataset.image_size ** 2
                if pixels > torch.cuda.get_device_properties(self.device).total_memory // 4:
                    return None
            self._device_data = make(self.device)
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
        if data is not None:
            images_u8, targets = data
            for ids in sampler:
                index = torch.tensor(ids)
                if images_u8.device != index.device:  # a pinned, non-blocking copy never stalls the host
                    index = index.pin_memory().to(images_u8.device, non_blocking=True)
                yield u8_to_float(images_u8[index]), targets[index]
            return
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for images, targets in loader:
            yield images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

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
