"""Multi-process training on PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node=N -m mcm_core train ...`` starts N copies of the command and
gives each the environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus
``MASTER_ADDR`` / ``MASTER_PORT``). :func:`process_group` reads them, picks the backend
(NCCL on GPUs, gloo on CPUs), pins each process to GPU ``LOCAL_RANK``, and tears the
group down at the end. Without those variables everything here is a no-op, so the
same code runs as one plain process.

What each process does is in :mod:`mcm_core.train`: its share of every global batch
(``StepBatchSampler`` shards it), its own masks (seeded by ``step * world_size + rank``),
gradients averaged by DDP, metrics averaged across processes for the history, and
checkpoints, logs and the progress bar on rank 0 only.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in a multi-process run (rank 0 of 1 for a plain process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, logs and metrics."""
        return self.rank == 0


def from_environment(env: Mapping[str, str] | None = None) -> ProcessInfo:
    """The rank, world size and local rank torchrun set, or a single process when none is set.

    Raises:
        ValueError: only some of the variables are set, or they are not consistent integers.
    """
    env = os.environ if env is None else env
    present = [key for key in ENV_KEYS if key in env]
    if not present:
        return ProcessInfo()
    if len(present) < len(ENV_KEYS):
        missing = [key for key in ENV_KEYS if key not in env]
        raise ValueError(f"found {present} but not {missing} in the environment; start multi-process runs with "
                         "torchrun (it sets all of RANK, WORLD_SIZE and LOCAL_RANK), or unset them for one process")
    try:
        rank, world, local = (int(env[key]) for key in ENV_KEYS)
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         f"{[env[key] for key in ENV_KEYS]}; start the run with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}; "
                         "RANK must be in [0, WORLD_SIZE) and LOCAL_RANK non-negative")
    return ProcessInfo(rank, world, local)


def is_main_process() -> bool:
    """True unless this is a torchrun worker with a rank other than 0 (no process group needed)."""
    return from_environment().is_main


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device, info: ProcessInfo | None = None) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device`` itself."""
    info = from_environment() if info is None else info
    if device.type != "cuda" or info.world_size == 1:
        return device
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise RuntimeError(f"LOCAL_RANK={info.local_rank} but this machine has {count} GPU(s); start at most "
                           f"{count} processes per node (torchrun --nproc_per_node={count}) or use device=cpu")
    return torch.device("cuda", info.local_rank)


@contextmanager
def process_group(device: torch.device) -> Iterator[ProcessInfo]:
    """Join torchrun's process group for the body of the ``with`` block, then leave it.

    Args:
        device: the run's device before the rank is known (``cuda`` or ``cpu``); picks the backend.
    Yields:
        This process's :class:`ProcessInfo`. A plain process (no torchrun variables) gets rank 0
        of 1 and no group. A group someone else initialised is used as it is and left alone.
    """
    info = from_environment()
    if info.world_size == 1:
        yield info
        return
    if dist.is_initialized():  # the caller manages the group
        yield ProcessInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
        return
    device = local_device(device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), rank=info.rank, world_size=info.world_size)
    try:
        yield info
        # Nobody leaves before rank 0 has written the final checkpoint (not on errors: the
        # other processes may never arrive; torchrun stops them all when one fails).
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()
    finally:
        dist.destroy_process_group()


def check_global_batch(batch_size: int, world_size: int) -> None:
    """Raise unless the global batch splits evenly between the processes."""
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is the global batch and must be divisible by the {world_size} "
                         f"processes; use e.g. batch_size={max(1, batch_size // world_size) * world_size}")


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` in DistributedDataParallel (gradients averaged across processes in ``backward``).

    Buffers are not broadcast each step: every buffer here is fixed (position embeddings,
    concept weights) or updated identically on every process.
    """
    if not dist.is_initialized():
        raise RuntimeError("world_size > 1 needs a process group: start the run with torchrun, or train "
                           "inside mcm_core.distributed.process_group(...)")
    device_ids = [device.index] if device.type == "cuda" else None
    # Newer torch renamed the switch (and deprecated the old name); both still sync buffers once at start.
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=device_ids, **{no_sync: False})


def mean_across_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` (any shape) over all processes; ``values`` itself in a plain process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true in any process (one all-reduce); ``flag`` itself in a plain process.

    Every process must call it at the same point (it is a collective operation).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
