"""Reader for the IDX format of (Fashion-)MNIST, raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions ``d``, then ``d``
big-endian uint32 sizes, then the values in C order (big-endian for multi-byte types).
"""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

IDX_DTYPES: dict[int, str] = {
    0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into a native-endian numpy array of the stored shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source} is not an IDX file (it must start with two zero bytes); "
                         "check that it is an uncompressed or .gz MNIST-style file")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02x}; "
                         f"valid codes are {[hex(c) for c in IDX_DTYPES]}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: IDX header is truncated; re-download or re-install the file")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    count = math.prod(dims)
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{source}: expected {count * dtype.itemsize} data bytes for shape "
                         f"{dims}, found {len(data) - header}; the file is truncated or corrupt")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return values.reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file; gzip is detected from the content, not the file name."""
    data = Path(path).read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    return parse_idx(data, str(path))

