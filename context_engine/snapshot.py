"""A file of named numpy arrays and a JSON header, written atomically and private, read back memory-mapped.

The warm state of a workspace (retrieval's BM25 index, the repo map's graph data: `ContextEngine.save_state`)
lives in one such file beside the SQLite index, so that a restart maps it instead of re-reading every file. The
layout: MAGIC, the header's length (8 bytes, little-endian), the header (UTF-8 JSON: `meta` and, per array, its
dtype, shape and offset), then each array's bytes at a 64-byte aligned offset.

It is a cache: `load` raises `SnapshotError` for anything that is not a whole, well-formed file of this format
(truncated, garbage, another version); the caller then rebuilds. Arrays come back read-only, as views of the
mapping; the bounds of their values are the caller's to check. `save` writes a temporary file created 0600 in
the same (private) folder and renames it over the old one, so a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np

MAGIC = b"RCSNAP01"
ALIGN = 64
_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}


class SnapshotError(ValueError):
    """Not a readable snapshot: missing, truncated, damaged or of another format."""


def save(path: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> int:
    """Write `meta` (JSON-serialisable) and `arrays` to `path` atomically (mode 0600); returns the bytes written."""
    path = Path(path)
    entries, offset = {}, 0
    prepared = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in _DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} cannot be stored")
        offset = -(-offset // ALIGN) * ALIGN
        entries[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        prepared[name] = a
        offset += a.nbytes
    header = json.dumps({"meta": meta, "arrays": entries}, separators=(",", ":")).encode("utf-8")
    start = -(-(len(MAGIC) + 8 + len(header)) // ALIGN) * ALIGN  # where the arrays begin
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with open(fd, "wb", closefd=True) as f:
            os.fchmod(f.fileno(), 0o600)  # (a leftover temporary file of another mode)
            f.write(MAGIC + len(header).to_bytes(8, "little") + header)
            f.write(b"\0" * (start - f.tell()))
            for name, a in prepared.items():
                pad = start + entries[name]["offset"] - f.tell()
                f.write(b"\0" * pad)
                f.write(memoryview(a).cast("B") if a.nbytes else b"")
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return size


def load(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a snapshot file; raises SnapshotError when it is missing or not well formed."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < len(MAGIC) + 8:
                raise SnapshotError("truncated")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise SnapshotError(f"unreadable ({e.strerror or type(e).__name__})") from None
    except ValueError as e:  # mmap of an empty file
        raise SnapshotError(str(e)) from None
    if buf[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a snapshot of this format")
    n = int.from_bytes(buf[len(MAGIC) : len(MAGIC) + 8], "little")
    if n > size - len(MAGIC) - 8:
        raise SnapshotError("truncated header")
    try:
        header = json.loads(bytes(buf[len(MAGIC) + 8 : len(MAGIC) + 8 + n]).decode("utf-8"))
        meta, entries = header["meta"], header["arrays"]
        if not isinstance(meta, dict) or not isinstance(entries, dict):
            raise TypeError("meta and arrays must be objects")
        start = -(-(len(MAGIC) + 8 + n) // ALIGN) * ALIGN
        arrays = {}
        for name, e in entries.items():
            dtype = np.dtype(e["dtype"])
            if dtype.name not in _DTYPES:
                raise TypeError(f"dtype {dtype}")
            shape = tuple(int(d) for d in e["shape"])
            if any(d < 0 for d in shape):
                raise ValueError(f"shape {shape}")
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            offset = start + int(e["offset"])
            if offset < start or offset + count * dtype.itemsize > size:
                raise ValueError(f"array {name} runs past the end of the file")
            arrays[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SnapshotError(f"damaged header ({type(e).__name__}: {e})") from None
    return meta, arrays


def pack_strings(items) -> np.ndarray:
    """Strings (none holding NUL) as one uint8 array, NUL-separated."""
    return np.frombuffer("\0".join(items).encode("utf-8", "surrogatepass"), dtype=np.uint8)


def unpack_strings(a: np.ndarray, n: int) -> list[str]:
    """The `n` strings of `pack_strings`; raises SnapshotError when there are not exactly `n`."""
    if n == 0:
        if len(a):
            raise SnapshotError("strings where none were expected")
        return []
    try:
        items = a.tobytes().decode("utf-8", "surrogatepass").split("\0")
    except UnicodeDecodeError:
        raise SnapshotError("damaged strings") from None
    if len(items) != n:
        raise SnapshotError(f"expected {n} strings, found {len(items)}")
    return items
