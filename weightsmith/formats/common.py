"""Small pieces the format modules share: JSON files, tensor bytes, file copies, the writer plan."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import dtypes
from ..errors import BadInput
from ..lazy import torch


@dataclass(frozen=True)
class Spec:
    """One tensor a writer will receive: canonical name, PyTorch-order shape, weightsmith type name."""
    canonical: str
    shape: tuple[int, ...]
    dtype: str


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BadInput(f"{path.parent}: missing {path.name} ({what})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, a 5000-digit number, nesting too deep
        raise BadInput(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def write_json(path: Path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def as_bytes(t) -> memoryview:
    """An array's or torch tensor's raw little-endian bytes, as written to a file (no copy when contiguous)."""
    return memoryview(np.ascontiguousarray(dtypes.to_numpy(t)).reshape(-1).view(np.uint8))


class Streamed:
    """A tensor that arrives in pieces, shaped for gguf-py's GGUFWriter.write_tensor_data (which wants its nbytes
    and calls tofile once): each piece is written as it is produced, the whole never held."""

    def __init__(self, nbytes: int, chunks):
        self.nbytes, self.chunks = nbytes, chunks

    def tofile(self, f):
        written = 0
        for c in self.chunks:
            b = as_bytes(c)
            f.write(b)
            written += b.nbytes
        if written != self.nbytes:
            raise AssertionError(f"streamed {written} bytes of a {self.nbytes}-byte tensor")


def pwrite_all(fd: int, data: memoryview, offset: int):
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def copy_files(files: dict[str, Path], out: Path):
    for name, src in files.items():
        shutil.copyfile(src, out / name)


def confined(base: Path, name: str, what: str) -> Path:
    """base/name, refusing names that would leave base (a hostile index pointing at ../../etc/passwd)."""
    if not isinstance(name, str) or "\0" in name or os.path.isabs(name) \
            or (base / name).resolve().parent != base.resolve():
        raise BadInput(f"{what}: file name {name!r} points outside {base}")
    return (base / name).resolve()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_MADV_DONTNEED = 4


def _libc():
    import ctypes
    import ctypes.util
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return lib
    except (OSError, AttributeError, TypeError):
        return None


_LIBC = _libc() if os.name == "posix" else None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def map_large_allocations(threshold: int = 8 << 20):
    """Have glibc serve every allocation above `threshold` with its own mmap, returned to the OS when freed, and
    keep freed memory below it for reuse.

    By default glibc raises that threshold to the size of the last large block freed and then carves later tensors
    out of its heaps, where a second thread's heap (the read-ahead) fragments and RSS creeps up tensor by tensor.
    Fixing the threshold also fixes the trim threshold at 128 KB: every freed piece of a streamed tensor would go
    back to the OS and the next one fault in afresh, page by page; a few pieces' worth is kept instead.
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, threshold)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, threshold)


def release_mapped(t: torch.Tensor):
    """Drop the resident pages of a tensor that views a read-only file mapping (torch.load(mmap=True)).

    The file is unchanged and re-read on next access; without this, every page of a model read through a mapping
    stays counted in the process's RSS until the whole file is unmapped.
    """
    st = t.untyped_storage()
    release_mapped_range(st.data_ptr(), st.nbytes())


def release_mapped_range(address: int, nbytes: int):
    """madvise(DONTNEED) the whole pages inside [address, address + nbytes) of a read-only file mapping."""
    if _LIBC is None:
        return
    start = -(-address // _PAGE) * _PAGE
    end = (address + nbytes) // _PAGE * _PAGE
    if end > start:
        _LIBC.madvise(start, end - start, _MADV_DONTNEED)
