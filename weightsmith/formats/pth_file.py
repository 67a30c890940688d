"""The PyTorch .pth file format (torch.save's zip), read without torch: the tensor table only (name -> dtype, shape,
where its bytes lie). torch itself loads the tensors later (torch.load(weights_only=True, mmap=True)), when they are
needed; `import torch` alone takes over a second, and inspect needs the table only.

Layout: a zip whose entries share one top folder <archive>/: data.pkl (the pickled state dict), data/<key> (each
storage's raw bytes, stored uncompressed), byteorder ("little" or "big"), version. In data.pkl each tensor is
`torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`
(`torch._utils._rebuild_parameter(tensor, ...)` around it for an nn.Parameter), and each storage a persistent id
`('storage', torch.<Type>Storage, key, location, numel)`; the dict is a `collections.OrderedDict`.

data.pkl is read by pickle's own Unpickler, whose find_class hands out only inert stand-ins for those few globals
(nothing the file names is ever imported or called), after a scan that admits only the opcodes and globals torch's
weights-only unpickler admits: a file that names anything else (os.system, ...) is refused as unsafe, as torch.load
refuses it.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .. import dtypes
from ..checkpoint import numel
from ..errors import BadInput

MAX_PICKLE = 256 << 20  # data.pkl of a 405B model's shard is a few hundred KB
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name length, extra length

# The opcodes torch's weights-only unpickler executes (torch/_weights_only_unpickler.py); it fails on any other.
OPCODES = {"GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK", "TUPLE",
           "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT",
           "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID",
           "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1", "PROTO", "STOP"}
# Globals torch's weights-only unpickler also admits, which a state dict of plain tensors never names: such a file is
# refused as one weightsmith does not read, not as unsafe (torch.load would load it).
TORCH_ADMITS = re.compile(
    r"torch\._utils\._rebuild_\w+|torch\._tensor\._rebuild_from_type_v2|torch\.storage\.(Untyped|Typed)Storage"
    r"|torch\.(cuda\.)?\w+(Storage|Tensor)|torch\.(Size|device|Tensor)|torch\.nn\.parameter\.Parameter"
    r"|torch\.serialization\._get_layout|torch\.per_(tensor|channel)_\w+"
    r"|torch\.(bool|u?int\d+|float\d+\w*|bfloat16|complex\d+|bits\w+|q?u?int\d+\w*)"
    r"|collections\.Counter|_codecs\.encode|builtins\.(bytearray|set|complex)")


def unsafe(file: Path, detail: str) -> BadInput:
    return BadInput(f"{file}: refused as unsafe: its pickle does more than rebuild tensors ({detail})")


def corrupt(file: Path, detail: str) -> BadInput:
    return BadInput(f"{file}: not a readable PyTorch checkpoint, truncated or corrupt ({detail})")


def not_tensors(file: Path) -> BadInput:
    return BadInput(f"{file}: not a state dict of named tensors")


@dataclass(frozen=True)
class Entry:
    """One tensor: a view (offset, shape, stride, in elements) of storage `key`, whose bytes start at `start`."""
    name: str
    dtype: str                # torch's dtype name: "float32", "bfloat16", ... (dtypes.STORAGE_CLASSES)
    itemsize: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    key: str
    start: int                # absolute file offset of the storage's first byte

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.itemsize

    @property
    def contiguous(self) -> bool:
        """Row-major and dense: its bytes are the nbytes from data_start on."""
        want, n = [], 1
        for d in reversed(self.shape):
            want.append(n)
            n *= d
        return all(s == w for s, w, d in zip(self.stride, reversed(want), self.shape) if d > 1)

    @property
    def data_start(self) -> int:
        return self.start + self.offset * self.itemsize


@dataclass(frozen=True)
class Table:
    path: Path
    tensors: dict[str, Entry]  # in the file's order
    little_endian: bool


# ---- the unpickler's stand-ins -------------------------------------------------------------------------------
# Immutable tuples: BUILD and NEWOBJ on them fail, nothing in them can be called.

class _StorageType(NamedTuple):
    dtype: str
    itemsize: int


class _Storage(NamedTuple):
    key: str
    dtype: str
    itemsize: int
    numel: int


class _Tensor(NamedTuple):
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


def _is_count(x) -> bool:
    return type(x) is int and x >= 0


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage) or not _is_count(storage_offset) or type(size) is not tuple \
            or type(stride) is not tuple or len(size) != len(stride) or not all(map(_is_count, size + stride)):
        raise pickle.UnpicklingError("malformed tensor record")
    if numel(size) and storage_offset + sum((d - 1) * s for d, s in zip(size, stride)) >= storage.numel:
        raise pickle.UnpicklingError(f"tensor of size {list(size)} lies beyond its storage of {storage.numel} elements")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("malformed parameter record")
    return data


GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    **{f"torch.{cls}": _StorageType(*t) for cls, t in dtypes.STORAGE_CLASSES.items()},
}


def _global_name(module: str, name: str, proto: int) -> str:
    """As torch names it: Python 2 module names (protocol 2's __builtin__, ...) mapped as pickle maps them."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class _Refused(pickle.UnpicklingError):
    """A global torch's weights-only unpickler refuses too."""


class _NotRead(pickle.UnpicklingError):
    """A global torch admits but a state dict of plain tensors never names."""


def _check_global(full: str):
    if full in GLOBALS:
        return
    if TORCH_ADMITS.fullmatch(full):
        raise _NotRead(full)
    raise _Refused(f"GLOBAL {full} is not allowed")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, records: dict[str, tuple[int, int]]):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.records, self.storages, self.proto = records, {}, 2

    def find_class(self, module, name):
        full = _global_name(module, name, self.proto)
        _check_global(full)
        return GLOBALS[full]

    def persistent_load(self, pid):
        if type(pid) is not tuple or len(pid) != 5:
            raise pickle.UnpicklingError(f"malformed persistent id {str(pid)[:80]}")
        kind, stype, key, _location, count = pid
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if kind != "storage" or not isinstance(stype, _StorageType) or type(key) is not str or not _is_count(count):
            raise pickle.UnpicklingError(f"malformed persistent id {str(pid)[:80]}")
        if key not in self.storages:  # torch shares one storage among the tensors that name its key
            if key not in self.records:
                raise pickle.UnpicklingError(f"storage data/{key} is missing from the archive")
            start, size = self.records[key]
            if count * stype.itemsize > size:
                raise pickle.UnpicklingError(f"storage data/{key} holds {size} bytes, not the "
                                             f"{count * stype.itemsize} its {count} elements need")
            self.storages[key] = _Storage(key, stype.dtype, stype.itemsize, count)
        return self.storages[key]


def _scan(data: bytes) -> int:
    """The opcodes and globals torch's weights-only unpickler would meet, in its order; the pickle's protocol."""
    proto = 2
    for op, arg, _ in pickletools.genops(data):
        if op.name not in OPCODES:
            raise pickle.UnpicklingError(f"Unsupported operand {op.code.encode('latin-1')[0]}")
        if op.name == "PROTO":
            proto = arg
        elif op.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            _check_global(_global_name(module, name, proto))
    return proto


def record_start(fh, info: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes begin in the file: after its local header, whose lengths can differ from
    the central directory's."""
    fh.seek(info.header_offset)
    sig, name_len, extra_len = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if sig != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {info.filename}")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def read_table(file: Path) -> Table:
    """The file's tensors, from its zip directory and data.pkl only: no tensor byte is read, torch is not imported.

    Refuses what torch.load(weights_only=True) refuses (unsafe pickles, damaged archives), and storages that lie
    beyond the file's end.
    """
    try:
        with open(file, "rb") as fh, zipfile.ZipFile(fh) as z:
            infos = z.infolist()
            if not infos or "/" not in infos[0].filename:
                raise zipfile.BadZipFile("no archive folder")
            prefix = infos[0].filename.split("/", 1)[0] + "/"
            members = {i.filename[len(prefix):]: i for i in infos if i.filename.startswith(prefix)}
            pkl = members.get("data.pkl")
            if pkl is None:
                raise KeyError(f"no {prefix}data.pkl")
            if pkl.file_size > MAX_PICKLE:
                raise ValueError(f"data.pkl is {pkl.file_size} bytes")
            data = z.read(pkl)
            order = z.read(members["byteorder"]) if "byteorder" in members else b"little"
            size = os.fstat(fh.fileno()).st_size
            records = {}
            for name, info in members.items():
                if not name.startswith("data/"):
                    continue
                start = record_start(fh, info)
                if info.compress_type != zipfile.ZIP_STORED or start + info.file_size > size:
                    raise zipfile.BadZipFile(f"record {info.filename} is compressed or lies beyond the end of the file")
                records[name[len("data/"):]] = (start, info.file_size)
        if order not in (b"little", b"big"):
            raise ValueError(f"byteorder {order[:20]!r}")
        u = _Unpickler(data, records)
        u.proto = _scan(data)
        sd = u.load()
    except _Refused as e:
        raise unsafe(file, str(e)) from None
    except _NotRead as e:
        raise BadInput(f"{file}: not a state dict of plain tensors weightsmith reads (its pickle uses {e})") from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError,
            TypeError, AttributeError, struct.error, OverflowError, MemoryError, RecursionError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        raise corrupt(file, f"{type(e).__name__}: {lines[-1][:200]}") from None
    if not isinstance(sd, dict) or not all(type(k) is str and isinstance(v, _Tensor) for k, v in sd.items()):
        raise not_tensors(file)
    tensors = {k: Entry(k, t.storage.dtype, t.storage.itemsize, t.shape, t.stride, t.offset, t.storage.key,
                        records[t.storage.key][0]) for k, t in sd.items()}
    return Table(file, tensors, order == b"little")
