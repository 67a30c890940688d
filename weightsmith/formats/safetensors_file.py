"""The safetensors file format, bytes only: a validated header reader, pread-based tensor reads (no mmap, so
pages read do not stay resident), and the header for a streaming writer.

Layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [b, e]},
"__metadata__": {...}}, then the data; offsets are relative to the end of the header.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import dtypes
from ..checkpoint import numel
from ..errors import BadInput

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


def read_header(path: Path) -> list[Entry]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise BadInput(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise BadInput(f"{path}: header length {n} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):  # bad JSON or UTF-8, a 5000-digit number, [[[[...]]]] nested too deep
            raise BadInput(f"{path}: header is not valid JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise BadInput(f"{path}: header is not a JSON object")
    base, entries = 8 + n, []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or not isinstance(e.get("shape"), list) or not isinstance(e.get("data_offsets"), list) \
                or len(e["data_offsets"]) != 2 or not all(_count(x) for x in e["shape"] + e["data_offsets"]):
            raise BadInput(f"{path}: tensor {name}: malformed header entry")
        dtype = e.get("dtype")
        if not isinstance(dtype, str) or dtype not in dtypes.STORAGE_TYPES:
            raise BadInput(f"{path}: tensor {name} has dtype {dtype!r}; weightsmith reads "
                           f"{', '.join(dtypes.STORAGE_TYPES)}")
        b, end = e["data_offsets"]
        if end - b != numel(e["shape"]) * dtypes.itemsize(dtype) or base + end > size:
            raise BadInput(f"{path}: tensor {name}: byte range [{b}, {end}) does not match its shape {e['shape']} "
                           f"{dtype} or lies beyond the end of the file: truncated or corrupt")
        entries.append(Entry(name, dtype, tuple(e["shape"]), base + b, base + end))
    spans = sorted((e.start, e.end, e.name) for e in entries)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise BadInput(f"{path}: tensors {n0} and {n1} overlap in the file")
    return entries


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0  # JSON true is a Python int


def read_tensor(path: Path, e: Entry, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor, or only rows [r0, r1) of it (its first dimension), as a numpy array (dtypes.NUMPY_TYPES): one
    pread into a fresh buffer."""
    start, end, shape = e.start, e.end, e.shape
    if rows is not None:
        row_bytes = (e.end - e.start) // shape[0]
        start, end = e.start + rows[0] * row_bytes, e.start + rows[1] * row_bytes
        shape = (rows[1] - rows[0], *shape[1:])
    buf = np.empty(end - start, dtype=np.uint8)
    view, off = memoryview(buf), start
    with open(path, "rb", buffering=0) as f:
        while len(view):
            got = os.preadv(f.fileno(), [view], off)
            if got <= 0:
                raise BadInput(f"{path}: tensor {e.name}: file ended early (truncated)")
            view, off = view[got:], off + got
    return buf.view(dtypes.numpy_dtype(e.dtype)).reshape(shape)


def header_bytes(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None = None) -> bytes:
    """The complete prefix (length + JSON) for tensors written in this order, data 8-byte aligned."""
    header, offset = {"__metadata__": metadata or {"format": "pt"}}, 0
    for name, dtype, shape in tensors:
        n = numel(shape) * dtypes.itemsize(dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw
