"""The device a run trains on and the precision it trains in there.

- :func:`resolve_device`: ``auto`` -> cuda if available else cpu, with a clear error for a
  CUDA request on a machine without a GPU.
- :func:`use_bf16` / :func:`cpu_bf16_supported`: whether a run trains under bf16 autocast
  (always on a GPU; on a CPU only where bf16 matrix products are native).
- :func:`explicit_attention`: plain-matmul attention for every training step and the colour
  measures on a CPU, where the fused kernel is slower (in bf16 and in float32).

Used by :class:`mcm_core.train.Trainer`; nothing here depends on the model or the data.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; a clear error for a CUDA request without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available; use device=cpu or auto")
    return device



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

    Used on a CPU (every training step, the colour measures): at the ``tiny`` preset's sequence
    lengths (13 to 65 tokens) the CPU's fused flash-attention kernel spends 5x longer in its bf16
    backward than the matrix products it replaces, took 23% of a float32 step on an AVX2 CPU, and
    its MATH fallback adds masking checks (``isneginf``, ``all``, ``where``) on every call
    (torch.profiler, docs/benchmarks.md). Modules opt in through timm's
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

