"""Small image helpers shared by the real-data loaders (tensors in, tensors out).

Image files are decoded by Pillow (:func:`read_image`), with EXIF orientation applied,
every mode and bit depth scaled to [0, 1] and transparency composited on
:data:`ALPHA_BACKGROUND`. :func:`probe_image` checks that a file decodes without keeping
its pixels (the folder loader's scan before training).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ALPHA_BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)
"""RGB in [0, 1] that transparent pixels are composited on: white, as photo viewers show them."""


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


def _image_formats() -> set[str]:
    """Pillow's format ids that open *and* decode here (no stubs, no identify-only formats)."""
    Image.init()
    formats = {"MPO"}  # multi-picture JPEGs: opened by the JPEG plugin
    for name, entry in Image.OPEN.items():
        factory = entry[0]
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue  # BUFR, GRIB, HDF5, WMF: need a handler that is never registered here
        formats.add(name)
    formats.discard("MPEG")  # identifies the video header only, decodes no pixels
    if "EPS" in formats:
        from PIL import EpsImagePlugin
        if not EpsImagePlugin.has_ghostscript():
            formats.discard("EPS")  # Pillow renders PostScript through Ghostscript
    return formats


def image_extensions() -> tuple[str, ...]:
    """Lower-case file extensions (``".png"``, ...) of every format this Pillow can decode, sorted."""
    formats = _image_formats()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in formats))


_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def _rawmode(img: Image.Image) -> str:
    """The decoder's raw pixel layout (``"I;16B"``, ``"RGB;16B"``, ...), or "" once loaded."""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3]
        for arg in args if isinstance(args, tuple) else (args,):
            if isinstance(arg, str):
                return arg
    return ""


def _int_scale(rawmode: str) -> float:
    """Full-scale value of a 32-bit integer ("I") image from its file's sample layout.

    Pillow stores 16-bit files in "I" too (16-bit PNG in old Pillow, 16-bit PGM rescaled
    to 0..65535, signed 16-bit TIFF), so 16 bits is the default; files that store 32-bit
    samples use the 32-bit range (unsigned when the layout says so).
    """
    if rawmode == "I" or rawmode.startswith("I;32"):
        return float(2**31 - 1) if rawmode == "I" or rawmode.endswith("S") else float(2**32 - 1)
    if rawmode.startswith("I;8"):
        return 255.0
    return 65535.0


def _composite(rgba: torch.Tensor) -> torch.Tensor:
    """Float ``(4, H, W)`` RGB + straight alpha -> ``(3, H, W)`` over :data:`ALPHA_BACKGROUND`."""
    colour, alpha = rgba[:3], rgba[3:]
    background = torch.tensor(ALPHA_BACKGROUND, dtype=rgba.dtype).view(3, 1, 1)
    return colour * alpha + background * (1 - alpha)


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says (Pillow's ``ImageOps.exif_transpose``)."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block: photo viewers show such pictures as stored
        return img


def _pixels(img: Image.Image, square: bool = False, crop: int | None = None) -> torch.Tensor:
    """The opened file's first frame as float ``(3, H, W)`` in [0, 1], upright (EXIF orientation).

    With ``square``, only the centred ``crop`` x ``crop`` square (default: the largest; never
    larger than the image) is converted: ``(3, side, side)``.
    """
    rawmode = _rawmode(img)  # read before decoding: it names the file's sample width
    img = _upright(img)
    if square:
        w, h = img.size
        side = min(w, h) if crop is None else min(crop, w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    mode = img.mode
    if mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF, JPEG 2000)
        grey = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":
        full = _int_scale(rawmode)
        samples = np.asarray(img)  # int32
        grey = (samples.view(np.uint32) if full == 2**32 - 1 else samples).astype(np.float64) / full
    elif mode == "F":  # float samples are taken as already in [0, 1]
        grey = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
    else:  # 1, L, P, LA, PA, RGB, RGBA, RGBX, CMYK, YCbCr, LAB, HSV, ...: 8 bits per channel
        # (Pillow reads 16-bit colour PNGs as 8-bit RGB(A): the high byte of each sample.)
        alpha = mode in _ALPHA_MODES or "transparency" in img.info
        array = np.asarray(img.convert("RGBA" if alpha else "RGB"))  # (H, W, 3 or 4) uint8
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        return _composite(pixels) if alpha else pixels
    grey = np.clip(grey, 0.0, 1.0).astype(np.float32)
    return grey_to_rgb(torch.from_numpy(grey)[None])


def _draft(img: Image.Image, image_size: int, crop: int | None) -> float:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while the square crop stays >= ``image_size``;
    returns the scale applied (1.0 for other formats)."""
    w, h = img.size
    if img.format not in ("JPEG", "MPO") or min(w, h) == 0:
        return 1.0
    side = min(w, h) if crop is None else min(crop, w, h)
    need = image_size / side
    if need >= 1:
        return 1.0
    img.draft(None, (max(1, math.ceil(w * need)), max(1, math.ceil(h * need))))
    return img.size[0] / w


def _read_error(path: str | Path, error: BaseException) -> BaseException:
    """The exception ``read_image``/``load_rgb`` raise for a file Pillow failed on (message names the fix)."""
    if isinstance(error, PermissionError):
        return PermissionError(f"cannot read image {path} (permission denied); make it readable "
                               "(chmod u+r) or remove it from the data folder")
    return ValueError(f"cannot read image {path} ({describe_error(error)}); the file is damaged "
                      "or not an image: replace it or remove it from the data folder")


# Pillow signals unidentified, truncated, broken or oversized files with these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def describe_error(error: BaseException) -> str:
    """A short reason for a file that failed to decode (no path: callers print it)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format Pillow can read"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, Image.DecompressionBombError):
        return f"too many pixels ({error})"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file as float ``(3, H, W)`` in [0, 1], H x W its upright size.

    - Every format Pillow decodes (:func:`image_extensions`); multi-frame files (GIF, TIFF)
      give their first frame.
    - EXIF orientation is applied (a phone's portrait photo comes back portrait).
    - Scaling by bit depth: 8-bit modes / 255; 16-bit grey / 65535; 32-bit integer / its
      full range; float samples are taken as [0, 1] and clipped. 16-bit colour PNGs come
      out at 8-bit precision (Pillow keeps the high byte of each sample), correctly scaled.
    - Palette, 1-bit, CMYK, YCbCr and LAB images are converted to RGB (embedded ICC
      profiles are not applied); grey is repeated to 3 channels.
    - Transparency (alpha, or a palette/colour key) is composited on :data:`ALPHA_BACKGROUND`.

    Raises FileNotFoundError, PermissionError, or ValueError for a damaged or non-image file.
    """
    try:
        with Image.open(path) as img:
            return _pixels(img)
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as error:
        raise _read_error(path, error) from None


def load_rgb(path: str | Path, image_size: int, crop: int | None = None) -> torch.Tensor:
    """Read an image file as float ``(3, S, S)`` in [0, 1] (decoded as in :func:`read_image`).

    Centre-crops a ``crop`` x ``crop`` square of the upright image (default: the largest
    centred square; never larger than the image), then resizes to ``image_size``
    (bilinear, antialiased when shrinking). Large JPEGs are decoded at a reduced scale
    (1/2 to 1/8) that keeps the crop at least ``image_size`` wide.
    """
    try:
        with Image.open(path) as img:
            scale = _draft(img, image_size, crop)
            if crop is not None:
                crop = max(1, round(crop * scale))
            square = _pixels(img, square=True, crop=crop)  # (3, side, side)
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as error:
        raise _read_error(path, error) from None
    return resize(square, image_size)


def probe_image(path: str | Path) -> tuple[int, int]:
    """Decode ``path`` fully (JPEGs at 1/8 scale) and return its stored ``(width, height)``.

    Raises the decoder's own exception (OSError, UnidentifiedImageError, ...) when the file
    is not an image, truncated or damaged; use :func:`describe_error` for a short reason.
    """
    with Image.open(path) as img:
        size = img.size
        if img.mode not in _KNOWN_MODES:
            raise ValueError(f"unsupported pixel mode {img.mode!r}")
        if img.format in ("JPEG", "MPO"):
            img.draft(None, (1, 1))  # decodes every byte still, 8x fewer pixels
        img.load()
    return size


_KNOWN_MODES = frozenset({
    "1", "L", "P", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
    "HSV", "I", "F", "I;16", "I;16L", "I;16B", "I;16N",
})
