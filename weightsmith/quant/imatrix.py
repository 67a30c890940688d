"""The importance matrix (llama-imatrix's output, llama-quantize's --imatrix input): per matmul weight, the sum
over calibration tokens of each input column's squared activation and the number of tokens. The quantizers take
sum/count per column as their quant_weights; nothing here runs a model (verify/imatrix.py collects).

Two file forms, told apart by content (GGUF magic), never by extension:

- GGUF (llama-imatrix's default): `general.type = imatrix`, `imatrix.datasets` (strings), `imatrix.chunk_count`,
  `imatrix.chunk_size` (u32), and per entry two F32 tensors, `<name>.in_sum2` (ggml ne [n, n_mat]) and
  `<name>.counts` (ne [1, n_mat]), names sorted; ggml drops trailing dims of 1, so a dense entry's are [n] and [1].
  Written through gguf-py's GGUFWriter, byte for byte what llama-imatrix writes for the same numbers.
- legacy .dat (`--output-format dat`): i32 entry count; per entry i32 name length, name, i32 ncall, i32 nval,
  nval f32 values = (sum/count) * ncall, where ncall = ceil(max count / chunk_size); then i32 chunk count and
  i32 length + bytes of the last dataset's name (this trailer is optional).

A .dat carries no token counts, no per-matrix counts (one ncall per entry), no chunk size and only one dataset
name, so GGUF -> .dat loses them (and sum/count*ncall is one more float32 rounding). It is read as in_sum2 = the
stored values, counts = [ncall], chunk_size = 0 (unknown, as llama.cpp's loader sets it): sum/count is then exactly
llama-quantize's legacy arithmetic (values / ncall), and writing such an Imatrix as .dat again gives the same bytes
(chunk_size 0 means "counts are calls": the values are stored as they are). GGUF -> GGUF and .dat -> GGUF -> .dat
are exact.

What llama.cpp itself accepts, and where this reader is stricter (every refusal is a BadInput naming the file):
  llama-quantize accepts any entry name (an entry applies to the model tensor of that name); llama-imatrix only ever
  collects `blk.*` matmul weights and `output.weight`, and only those are accepted here. It ignores GGUF tensors
  without the two suffixes, tolerates a truncated .dat trailer and trailing bytes, lets a repeated .dat name
  overwrite the earlier one, cuts a name at an embedded NUL, takes an in_sum2 whose size is not a multiple of its
  counts' (the rest left 0), a .dat ncall <= 0 (values used undivided) and negative or NaN values (NaN and inf
  then stop llama-quantize): all refused here. It does require the three imatrix.* keys of a GGUF file (else
  "missing imatrix metadata") and F32 sums and counts; so does this reader (laxer in one thing: the two counts
  are taken in any integer type, where llama.cpp asserts u32 and aborts). Counts are rounded to integers as
  llama.cpp rounds them (lround) when sum/count is formed; a count of 0 (an expert no token reached) gives
  importance 1, as in llama-quantize.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput

FORMATS = ("gguf", "dat")
# gguf-py's gguf.Keys.General.TYPE and gguf.Keys.IMatrix (spelled out: `import gguf` costs 0.2 s, and a reader
# that only checks a .dat should not pay it)
KEY_TYPE, KEY_DATASETS = "general.type", "imatrix.datasets"
KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.chunk_count", "imatrix.chunk_size"
SUM, COUNT = ".in_sum2", ".counts"
OUTPUT = "output.weight"
MAX_NCALL = 1 << 24  # counts are float32: past 2**24 an integer call count is no longer exact
_I32 = struct.Struct("<i")


@dataclass
class Entry:
    """One matmul weight's statistics."""
    in_sum2: np.ndarray  # float32 [n_mat * n]: per input column (per matrix), the sum over tokens of x^2
    counts: np.ndarray   # float32 [n_mat] (1 for a dense Llama): tokens seen (calls for a .dat, chunk_size 0)

    def importance(self) -> np.ndarray:
        """sum/count per column in float32, as llama-quantize's load_imatrix forms it (count rounded by lround;
        a matrix with count 0 gets 1 for every column)."""
        n = self.in_sum2.size // self.counts.size
        out = np.empty(self.in_sum2.size, np.float32)
        for j, c in enumerate(_lround(self.counts)):
            cf = np.float32(c)  # (float) of the int64 count, as the C does
            out[j * n:(j + 1) * n] = self.in_sum2[j * n:(j + 1) * n] / cf if cf > 0 else np.float32(1)
        return out


@dataclass
class Imatrix:
    entries: dict[str, Entry]           # GGUF tensor names: "blk.0.attn_q.weight", "output.weight"
    datasets: list[str] = field(default_factory=list)  # calibration file names
    chunk_count: int = 0
    chunk_size: int = 0                 # tokens per chunk; 0: unknown (read from a .dat), counts are calls

    def importance(self, name: str) -> np.ndarray | None:
        """float32 [n]: what llama-quantize hands ggml as quant_weights for that tensor (its load_imatrix's
        arithmetic exactly: sum/count, and 1 where count is 0), None when the entry is absent."""
        e = self.entries.get(name)
        return None if e is None else e.importance()


def _lround(counts: np.ndarray) -> list[int]:
    """C's lround (half away from zero) of non-negative finite float32 counts."""
    return [int(np.floor(np.float64(c) + 0.5)) for c in counts]


# ---- checks shared by the readers and the writer -------------------------------------------------------------

def check_name(where, name: str):
    if not name or "\0" in name:
        raise BadInput(f"{where}: an entry has an empty name or one holding a NUL byte: {name!r}")
    if not (name.startswith("blk.") or name == OUTPUT):
        raise BadInput(f"{where}: entry {name!r} is not a blk.* matmul weight or {OUTPUT}, the only tensors "
                       f"llama-imatrix collects (llama-quantize would apply it to any tensor of that name)")


def check_entry(where, name: str, e: Entry):
    check_name(where, name)
    if e.counts.size < 1 or e.in_sum2.size < 1 or e.in_sum2.size % e.counts.size:
        raise BadInput(f"{where}: entry {name} has {e.in_sum2.size} sums for {e.counts.size} counts; it needs at "
                       f"least one of each and a whole row of sums per count")
    for what, v in (("sums", e.in_sum2), ("counts", e.counts)):
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            raise BadInput(f"{where}: entry {name} has {int(bad.sum())} negative, NaN or infinite {what} (first "
                           f"{v[bad][0]!r}): sums of squares and token counts cannot be")


# ---- reading -------------------------------------------------------------------------------------------------

def read(path) -> Imatrix:
    """A GGUF importance matrix or a legacy .dat, told apart by the GGUF magic."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise BadInput(f"{p}: not a file")
        if size == 0:
            raise BadInput(f"{p}: empty file, not an importance matrix")
        with open(p, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise BadInput(f"{p}: no such file") from None
    except PermissionError:
        raise BadInput(f"{p}: permission denied") from None
    from ..formats.gguf import MAGIC
    return _read_gguf(p) if magic == MAGIC else _read_dat(p)


def _read_gguf(p: Path) -> Imatrix:
    import gguf
    from ..formats.gguf import _Array, _scan  # the validating header walk: counts and offsets checked against the size
    h = _scan(p)
    kv = h.kv
    if kv.get(KEY_TYPE, "imatrix") != "imatrix":
        raise BadInput(f"{p}: a GGUF {kv[KEY_TYPE]!r} file, not an importance matrix (general.type)")
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in kv]
    if missing:
        raise BadInput(f"{p}: not an importance matrix GGUF: no {', '.join(missing)} (llama-quantize refuses it too: "
                       f"missing imatrix metadata)")
    datasets = kv[KEY_DATASETS]
    if isinstance(datasets, _Array):
        datasets = datasets.values()
    if not isinstance(datasets, list) or not all(isinstance(s, str) for s in datasets):
        raise BadInput(f"{p}: {KEY_DATASETS} must be an array of strings")
    counts_of = {}
    for k in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if not isinstance(kv[k], int) or isinstance(kv[k], bool) or not 0 <= kv[k] < 2**32:
            raise BadInput(f"{p}: {k} must be a uint32, not {kv[k]!r}")
        counts_of[k] = kv[k]
    if not h.tensors:
        raise BadInput(f"{p}: an importance matrix with no entries")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in h.tensors:
        if t.name.endswith(SUM):
            name, part = t.name[:-len(SUM)], SUM
        elif t.name.endswith(COUNT):
            name, part = t.name[:-len(COUNT)], COUNT
        else:
            raise BadInput(f"{p}: tensor {t.name} is neither <name>{SUM} nor <name>{COUNT}: not an importance "
                           f"matrix file")
        if t.qtype != gguf.GGMLQuantizationType.F32:
            raise BadInput(f"{p}: tensor {t.name} is {t.qtype.name}; sums and counts must be F32")
        parts.setdefault(name, {})[part] = np.frombuffer(h.buf, np.float32, t.nbytes // 4, t.start).copy()
    entries = {}
    for name in sorted(parts):
        got = parts[name]
        if SUM not in got or COUNT not in got:
            raise BadInput(f"{p}: entry {name} has {SUM if SUM in got else COUNT} without "
                           f"{COUNT if SUM in got else SUM}")
        e = Entry(got[SUM], got[COUNT])
        check_entry(p, name, e)
        entries[name] = e
    return Imatrix(entries, list(datasets), counts_of[KEY_CHUNK_COUNT], counts_of[KEY_CHUNK_SIZE])


class _Dat:
    """A cursor over a .dat's bytes that checks every claimed length against what the file holds."""

    def __init__(self, buf, p: Path):
        self.buf, self.p, self.pos = buf, p, 0

    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> int:
        if n < 0 or n > self.left():
            raise BadInput(f"{self.p}: {what} at byte {self.pos} needs {n} bytes, {self.left()} are left: not an "
                           f"importance matrix (neither GGUF nor llama-imatrix's .dat), or truncated")
        self.pos += n
        return self.pos - n

    def i32(self, what: str) -> int:
        return _I32.unpack_from(self.buf, self.take(4, what))[0]

    def text(self, n: int, what: str) -> str:
        start = self.take(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{self.p}: {what} at byte {start} is not UTF-8: not an importance matrix") from None


MIN_DAT_ENTRY = 4 + 1 + 4 + 4 + 4  # name length, a one-byte name, ncall, nval, one value


def _read_dat(p: Path) -> Imatrix:
    with open(p, "rb") as f:  # mapped, not read: a hostile file's size costs nothing before its claims are checked
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _parse_dat(buf, p)


def _parse_dat(buf, p: Path) -> Imatrix:
    c = _Dat(buf, p)
    n_entries = c.i32("entry count")
    if n_entries < 1 or n_entries * MIN_DAT_ENTRY > c.left():
        raise BadInput(f"{p}: not an importance matrix: no GGUF magic, and as a legacy .dat it would hold "
                       f"{n_entries} entries in {len(buf)} bytes")
    entries = {}
    for i in range(n_entries):
        n = c.i32(f"name length of entry {i + 1}")
        if n < 1:
            raise BadInput(f"{p}: entry {i + 1} has a name of {n} bytes: corrupt")
        name = c.text(n, f"name of entry {i + 1}")
        check_name(p, name)
        if name in entries:
            raise BadInput(f"{p}: entry {name} appears twice")
        ncall, nval = c.i32(f"ncall of {name}"), c.i32(f"value count of {name}")
        if not 1 <= ncall <= MAX_NCALL:
            raise BadInput(f"{p}: entry {name} claims {ncall} calls; llama-imatrix writes 1 to {MAX_NCALL}")
        if nval < 1:
            raise BadInput(f"{p}: entry {name} claims {nval} values")
        start = c.take(4 * nval, f"{nval} values of {name}")
        e = Entry(np.frombuffer(buf, "<f4", nval, start).astype(np.float32), np.array([ncall], np.float32))
        check_entry(p, name, e)
        entries[name] = e
    chunk_count, datasets = 0, []
    if c.left():  # the trailer: chunk count, then the dataset's name
        chunk_count = c.i32("chunk count")
        n = c.i32("dataset name length")
        if chunk_count < 0 or n < 0:
            raise BadInput(f"{p}: trailer claims {chunk_count} chunks and a {n}-byte dataset name: corrupt")
        if n:
            datasets.append(c.text(n, "dataset name"))
            if "\0" in datasets[0]:
                raise BadInput(f"{p}: the dataset name holds a NUL byte")
        if c.left():
            raise BadInput(f"{p}: {c.left()} bytes after the end of the importance matrix: corrupt")
    return Imatrix(entries, datasets, chunk_count, 0)


# ---- writing -------------------------------------------------------------------------------------------------

def write(path, im: Imatrix, fmt: str = "gguf", force: bool = False):
    """Write im as llama-imatrix writes it ("gguf" or "dat"), atomically (nothing left behind on failure)."""
    from ..output import AtomicOutput
    if fmt not in FORMATS:
        raise BadInput(f"output format {fmt!r}: one of {', '.join(FORMATS)}")
    if not im.entries:
        raise BadInput("an importance matrix with no entries")
    for name, e in im.entries.items():
        check_entry("importance matrix", name, e)
    if fmt == "dat" and im.chunk_size == 0 and any(e.counts.size != 1 for e in im.entries.values()):
        raise BadInput("a .dat needs a chunk size to turn per-matrix token counts into one ncall")
    with AtomicOutput(Path(path), is_dir=False, force=force) as tmp:
        (_write_gguf if fmt == "gguf" else _write_dat)(tmp, im)


def _writer_class():
    import gguf

    class Writer(gguf.GGUFWriter):
        """gguf-py refuses an empty array; llama-imatrix writes imatrix.datasets empty when it merged files that
        named none, and llama-quantize needs the key present. Only that case is packed here."""

        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
                return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)
    return Writer


def _write_gguf(path: Path, im: Imatrix):
    import gguf
    w = _writer_class()(path, "")
    w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none (GGUFWriter skips arch "")
    w.add_type(gguf.GGUFType.IMATRIX)
    K = gguf.Keys.IMatrix
    w.add_key_value(K.DATASETS, list(im.datasets), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    w.add_uint32(K.CHUNK_COUNT, im.chunk_count)
    w.add_uint32(K.CHUNK_SIZE, im.chunk_size)
    for name in sorted(im.entries):
        e = im.entries[name]
        n_mat = e.counts.size
        # ggml writes ne [n, n_mat] and [1, n_mat] with trailing 1s dropped (ggml_n_dims): [n] and [1] when dense
        lead = (n_mat,) if n_mat > 1 else ()
        w.add_tensor(name + SUM, np.ascontiguousarray(e.in_sum2, np.float32).reshape(*lead, -1))
        w.add_tensor(name + COUNT, np.ascontiguousarray(e.counts, np.float32).reshape(*lead, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dat_values(e: Entry, chunk_size: int) -> tuple[int, np.ndarray]:
    """(ncall, values) of an entry in the legacy form, as save_imatrix_legacy computes them in float32:
    ncall = ceil(max count / chunk_size), values = (sum / count) * ncall, a matrix with count 0 stored as ncall.
    chunk_size 0 (an Imatrix read from a .dat): the counts are already calls and the sums already the values."""
    if chunk_size == 0:
        return _lround(e.counts)[0], e.in_sum2.astype(np.float32)
    counts = _lround(e.counts)
    ncall = (max(counts) + chunk_size - 1) // chunk_size
    n = e.in_sum2.size // e.counts.size
    out = np.empty(e.in_sum2.size, np.float32)
    for j, c in enumerate(counts):
        s = e.in_sum2[j * n:(j + 1) * n].astype(np.float32)
        if c == 0:
            s, c = np.ones_like(s), 1
        out[j * n:(j + 1) * n] = (s / np.float32(c)) * np.float32(ncall)
    return ncall, out


def _write_dat(path: Path, im: Imatrix):
    stored = {name: dat_values(e, im.chunk_size) for name, e in sorted(im.entries.items()) if e.counts.max() >= 0.5}
    if not stored:  # llama-imatrix skips an entry no token reached ("has no data"): a .dat has no count 0
        raise BadInput("no entry of the importance matrix has any tokens: nothing a .dat can hold")
    with open(path, "wb") as f:
        f.write(_I32.pack(len(stored)))
        for name, (ncall, values) in stored.items():
            b = name.encode()
            f.write(_I32.pack(len(b)) + b + _I32.pack(ncall) + _I32.pack(values.size))
            f.write(values.astype("<f4").tobytes())
        f.write(_I32.pack(im.chunk_count))
        ds = im.datasets[-1].encode() if im.datasets else b""
        f.write(_I32.pack(len(ds)) + ds)
