"""Small image helpers shared by the real-data loaders (tensors in, tensors out)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def check_size(image_size: int) -> int:
    """Return ``image_size`` if it is a positive int, else raise ValueError."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}; "
                         "e.g. image_size=32")
    return image_size


def check_readable_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder this process may list and read, else raise naming the fix.

    ``what`` names the data in the message (e.g. "image folder").
    """
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; pass root= an existing folder")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder; pass root= the folder that holds the data")
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"{what} {path} is not readable (permission denied); make it readable "
                              f"(chmod -R u+rX {path}) or copy the data to a folder you can read")
    return path


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of float ``(..., C, H, W)`` to ``(..., C, S, S)``, clamped to [0, 1].

    Antialiased when shrinking; returns the input unchanged when it already has size S.
    """
    h, w = images.shape[-2:]
    if (h, w) == (image_size, image_size):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    shrink = image_size < max(h, w)
    out = F.interpolate(flat, size=(image_size, image_size), mode="bilinear",
                        align_corners=False, antialias=shrink)
    return out.clamp_(0, 1).reshape(*lead, images.shape[-3], image_size, image_size)


def grey_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Repeat a grey channel: ``(..., 1, H, W)`` -> ``(..., 3, H, W)`` (a copy)."""
    return images.repeat_interleave(3, dim=-3)


def load_rgb(path: str | Path, image_size: int, crop: int | None = None) -> torch.Tensor:
    """Read an image file as float ``(3, S, S)`` in [0, 1].

    Centre-crops a ``crop`` x ``crop`` square (default: the largest centred square; never
    larger than the image), then resizes to ``image_size`` (bilinear, antialiased).
    """
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h) if crop is None else min(crop, w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            if side != image_size:
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise
    except PermissionError:
        raise PermissionError(f"cannot read image {path} (permission denied); make it readable "
                              "(chmod u+r) or remove it from the data folder") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow: unidentified, truncated or broken files
        raise ValueError(f"cannot read image {path} ({error}); the file is damaged or not an image: "
                         "replace it or remove it from the data folder") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
