"""Checkpoints: safetensors (no pickle, so loading never runs code) plus a JSON sidecar.

One ``.safetensors`` file is self-contained: the model weights under ``model.*``,
optional training state (optimizer moments, EMA encoder) under other prefixes,
and JSON metadata naming the method, its config, the training state and the
package versions. The ``.json`` sidecar repeats the metadata for people.

Writes are atomic: data goes to a temporary file in the same folder, is flushed
to disk, then renamed over the old file. A crash or a full disk never leaves a
half-written checkpoint, and the previous one stays intact. A CRC-32 of the tensors
and the metadata, stored in the metadata, catches a file damaged after it was written.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import platform
import zlib
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mcm_core.models import build_from_dict, config_to_dict
from mcm_core.runs import CHECKPOINT_NAME  # the checkpoint's name inside a run folder

FORMAT = "mcm_core.checkpoint/1"
CHECKSUM_KEY = "checksum"
# Distributions recorded next to every run besides torch, timm and mcm_core itself.
RECORDED_PACKAGES = ("numpy", "safetensors", "PyYAML", "Pillow", "scikit-learn", "matplotlib")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says why and what to do."""


@dataclass
class CheckpointInfo:
    """Everything in a checkpoint besides the model weights."""

    method: str
    config: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def package_versions() -> dict[str, str]:
    """Versions recorded next to every checkpoint and result."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    import timm
    import mcm_core
    versions = {"mcm_core": mcm_core.__version__, "torch": torch.__version__, "timm": timm.__version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {**versions, "cuda": str(torch.version.cuda), "python": platform.python_version(),
            "platform": platform.platform()}


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the finished file onto ``path``.

    On any failure the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # what open() gives a new file (some writers create 0o600)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, (OSError, SafetensorError)):  # safetensors reports its I/O errors as its own type
            raise CheckpointError(write_error_message(path, error)) from error
        raise


def write_error_message(path: Path, error: BaseException) -> str:
    """What went wrong writing ``path`` and the fix that matches the cause (permissions, disk, size limit)."""
    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None) or error
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (f"you cannot write into {path.parent} (permissions or a read-only file system): choose a folder "
               "you can write to (out_dir=... / --out-dir) or fix its permissions")
    elif code in (errno.ENOSPC, errno.EDQUOT):
        fix = "the disk (or your quota) is full: free space or choose a folder on another disk"
    elif code == errno.EFBIG:
        fix = "the file is larger than the file-size limit (ulimit -f): raise the limit or choose another folder"
    else:
        fix = ("check that the folder exists and can be written, that the disk has space, or choose another "
               "folder")
    return f"could not write {path}: {reason}; {fix} (any previous file there is intact)"


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: str | Path, model: nn.Module, *, extra: dict[str, torch.Tensor] | None = None,
                    train: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` (and optional training state) to ``path`` (``.safetensors``) and ``path.json``.

    Args:
        extra: more tensors, under their own prefixes (e.g. ``optim.*``, ``ema.*``).
        train: JSON-serializable training state (step, history, trainer config).
        dtype: store the model's floating-point weights in this dtype (e.g. ``torch.float16`` halves
            the file); loading casts them back to the model's own dtype.
    Returns:
        The checkpoint path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    tensors = {f"model.{k}": cast_floating(v.detach().contiguous().cpu(), dtype)
               for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra or {}).items()})
    meta = {"format": FORMAT, **config_to_dict(model), "train": train or {}, "versions": package_versions()}
    metadata = {key: json.dumps(value) for key, value in meta.items()}
    meta[CHECKSUM_KEY] = checksum(tensors, metadata)
    metadata[CHECKSUM_KEY] = json.dumps(meta[CHECKSUM_KEY])
    atomic_write_bytes(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path


def cast_floating(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in ``dtype`` if it is floating point and a dtype is given, else unchanged."""
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """CRC-32 of the metadata strings and of every CPU tensor's name, dtype, shape and bytes, by name."""
    crc = zlib.crc32(json.dumps({k: v for k, v in metadata.items() if k != CHECKSUM_KEY}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        crc = zlib.crc32(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode(), crc)
        crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)  # the raw bytes, whatever the dtype
    return f"crc32:{crc:08x}"


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint file, with clear errors for files that are not checkpoints."""
    return {key: json.loads(value) for key, value in read_raw_metadata(path).items()}


def read_raw_metadata(path: Path) -> dict[str, str]:
    """The metadata strings of a checkpoint's safetensors header; reads only the header, never unpickles."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train one first (python -m mcm_core train) "
                                "or check the path")
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > min(path.stat().st_size - 8, 100_000_000):
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
        raw = header.get("__metadata__", {})
        meta = {key: json.loads(value) for key, value in raw.items()}
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({error}); it may be truncated, corrupted or "
                              "another kind of file (pickled .pt/.pth files are refused: loading them could run "
                              "code): re-save it with mcm_core.save_checkpoint") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an mcm_core checkpoint "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    return raw


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or a run folder's checkpoint (``<folder>/checkpoint.safetensors``)."""
    path = Path(path).expanduser()
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    with_training_state: bool = False) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model saved at ``path``.

    Args:
        path: a checkpoint file, or a run folder (its ``checkpoint.safetensors``).
    Returns:
        ``(model, info)``: the model in eval mode on ``device``, and a ``CheckpointInfo`` with the
        method, its config, the training state and versions (``info.tensors`` holds the extra
        tensors when ``with_training_state``).
    """
    path = checkpoint_file(path)
    raw = read_raw_metadata(path)
    meta = {key: json.loads(value) for key, value in raw.items()}
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); it may be truncated or corrupted: "
                              "use an earlier checkpoint or train again") from None
    if CHECKSUM_KEY in meta and checksum(tensors, raw) != meta[CHECKSUM_KEY]:  # older files have no checksum
        raise CheckpointError(f"{path} is corrupted: its contents no longer match the checksum written when it was "
                              "saved; use an earlier checkpoint or train again")
    try:
        model = build_from_dict({"method": meta["method"], "config": meta["config"]})
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} describes a model this version of mcm_core cannot build ({error}); "
                              "load it with the mcm_core version it was saved with (see its versions)") from None
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_strict(model, state, path)
    model = model.to(device)
    extra = {k: v.to(device) for k, v in tensors.items() if not k.startswith("model.")} if with_training_state else {}
    info = CheckpointInfo(meta["method"], meta["config"], meta.get("train", {}), meta.get("versions", {}), extra)
    return model.eval(), info


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Any = "state") -> None:
    """Load weights, listing every missing, unexpected or mis-shaped key in one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source} does not match this model's configuration: missing {missing}, "
                              f"unexpected {unexpected}, shape mismatches {shapes}; build the model with the "
                              "checkpoint's own config (load_checkpoint does this)")
    model.load_state_dict(state)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer's state to tensors (``optim.<param>.<name>``) plus JSON-able groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            tensors[f"optim.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      groups: dict[str, Any]) -> None:
    """Inverse of ``optimizer_tensors``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})
