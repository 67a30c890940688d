"""Small pieces the format modules share: JSON files, tensor bytes, file copies, the writer plan."""
from __future__ import annotations

import errno
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


class DirectFile:
    """The rest of a file, from byte `start` on, appended through O_DIRECT: staged in page-aligned buffers and
    written from them straight to the device by a background thread (one buffer fills while the other is written),
    bypassing the page cache.

    Buffered writes of a multi-GB output cost about a core of kernel time (fresh page-cache pages allocated and
    copied into: 0.2 to 2.3 s per GB on the 2-core VM of bench/convert_bench.py, by the moment), which the
    converting threads need; O_DIRECT costs almost none, and leaves the page cache to the input. The bytes before
    `start` (written and flushed by the caller) are read back to fill the first aligned block. Where the file
    system refuses O_DIRECT (tmpfs) or the platform lacks it, the same writes go through the page cache."""

    ALIGN = 4096  # offsets, lengths and the buffer address: a multiple of any device's logical block

    def __init__(self, path, start: int, size: int = 4 << 20):
        import mmap
        from concurrent.futures import ThreadPoolExecutor
        self.path, self.base = Path(path), start // self.ALIGN * self.ALIGN
        self.maps = [mmap.mmap(-1, size) for _ in range(2)]  # page-aligned
        self.bufs = [memoryview(m) for m in self.maps]
        self.view = self.bufs[0]
        with open(self.path, "rb") as f:
            head = os.pread(f.fileno(), start - self.base, self.base)
        self.view[:len(head)] = head
        self.fill = len(head)
        self.direct = hasattr(os, "O_DIRECT")
        self.fd = self._open()
        self.pool, self.pending, self.closed = ThreadPoolExecutor(1, thread_name_prefix="write"), None, False

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | (os.O_DIRECT if self.direct else 0))
        except OSError as e:
            if not self.direct or e.errno != errno.EINVAL:
                raise
            self.direct = False
            return self._open()

    def tell(self) -> int:
        return self.base + self.fill

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        n = len(data)
        while len(data):
            k = min(len(data), len(self.view) - self.fill)
            self.view[self.fill:self.fill + k] = data[:k]
            self.fill += k
            data = data[k:]
            if self.fill == len(self.view):
                self._submit()
        return n

    def _submit(self):
        """Hand the staged buffer (a whole number of blocks) to the writing thread; stage into the other one."""
        if self.pending is not None:
            self.pending.result()  # the other buffer is written: reuse it
        self.pending = self.pool.submit(self._pwrite, self.view[:self.fill], self.base)
        self.base += self.fill
        self.view, self.fill = self.bufs[1] if self.view is self.bufs[0] else self.bufs[0], 0

    def _pwrite(self, data: memoryview, offset: int):
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as e:
            if not self.direct or e.errno != errno.EINVAL:
                raise
            fd, self.fd = self.fd, None  # an alignment this device does not take: page cache from here on
            os.close(fd)
            self.direct = False
            self.fd = self._open()
            pwrite_all(self.fd, data, offset)

    def close(self):
        """Write what is staged (padded to a whole block, then the file cut back to its true length)."""
        if self.closed:
            return
        try:
            end = self.tell()
            if self.fill:
                n = -(-self.fill // self.ALIGN) * self.ALIGN
                self.view[self.fill:n] = bytes(n - self.fill)
                self.fill = n
                self._submit()
            if self.pending is not None:
                self.pending.result()
            os.ftruncate(self.fd, end)
        finally:
            self.abort()

    def abort(self):
        """Let go of the file and the buffers without writing what is staged (the output is being thrown away)."""
        if self.closed:
            return
        self.closed = True
        self.pool.shutdown(wait=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.view = self.pending = None
        try:
            for b in self.bufs:
                b.release()
            for m in self.maps:
                m.close()
        except BufferError:  # a slice still held by a failed write's traceback: freed with it
            pass


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


def release_free_heap():
    """Give glibc's free heap pages back to the OS (malloc_trim): a long run of many threads (GPTQ: a block's
    Hessians, GPTQ's scratch and the forward pass's intermediates, each from its own thread's heap) leaves them
    fragmented, about 140 MB free but resident in SmolLM2's, which no threshold returns."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


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
