"""GGUF files (llama.cpp): the header read by one validating scan of our own, tensor data as views of a memory map.

GGUF lists dims innermost-first; everything past this module sees PyTorch order. Llama q/k rows are already in
the canonical interleaved rope order (llama.cpp's converter permutes HF's), so no relayout happens here.
Quantized tensors are dequantized by gguf-py for float targets.

Why not gguf-py's GGUFReader: it makes a numpy view of every item of every metadata array, so opening a file with a
128K-token vocabulary (tokens, token types, 280K merges) takes seconds before anything is printed. The header has to
be walked by us anyway, to check every count, length and offset against the file's size (gguf-py trusts them), so
that walk, _scan, is the one parser of the header: it decodes scalar values and short arrays, keeps each longer array
as where it lies in the file (_Array, decoded when asked: the vocabulary only when a conversion or verify uses it),
and lists each tensor's type, shape and byte range, which become numpy views of the file's memory map. gguf-py still
supplies the value and ggml types, block sizes, dequantization and the writer.
"""
from __future__ import annotations

import functools
import mmap
import re
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ..lazy import torch

from .. import dtypes
from ..checkpoint import Checkpoint, TensorRef, numel, order
from ..config import check_shapes, from_gguf_metadata
from ..convert import layout, mapping, tokenizer
from ..errors import BadInput, Unsupported
from .common import DirectFile, as_bytes, release_mapped_range

MAGIC = b"GGUF"
# ggml types that never hold model weights: integers, f64, and the block types only matmuls use internally
NOT_WEIGHTS = {"I8", "I16", "I32", "I64", "F64", "Q8_1", "Q8_K"}
SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
SHORT_ARRAY = 16  # metadata arrays up to this long are decoded with the header (inspect prints them whole)


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC or path.suffix == ".gguf"


def split_files(path: Path) -> list[Path]:
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    n = int(m.group("n"))
    files = [path.with_name(f"{m.group('stem')}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BadInput(f"{path}: split GGUF is missing {', '.join(missing)}")
    return files


# ---- the header ---------------------------------------------------------------------------------------------
# gguf-py's GGUFReader trusts the header: an array count of 2**60 past the end of the file makes it loop for ever,
# and a tensor offset out of range surfaces as a numpy reshape error. _scan checks every count, length and offset
# against the file's real size as it reads them.

VERSIONS = (2, 3)
MAX_DIMS = 4            # GGML_MAX_DIMS
MIN_KV_BYTES = 8 + 4 + 1       # key length, value type, a one-byte value
MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
_U64 = struct.Struct("<Q")


@functools.cache
def _gguf():
    """gguf-py and its value type -> numpy dtype table (imported on first use: `import gguf` takes 0.2 s)."""
    import gguf
    return gguf, {t: np.dtype(d) for t, d in gguf.GGUFReader.gguf_scalar_to_np.items()}


@functools.cache
def _writer_class():
    """gguf-py's GGUFWriter with its metadata arrays packed whole: gguf-py packs a vocabulary one struct.pack call
    per item (0.35 s of SmolLM2's 2 s quantize); _packed_items gives the same bytes from one numpy cast (numbers)
    or one join (strings). Anything else, a mixed array among them, goes to gguf-py's own packing (and errors)."""
    gguf, np_types = _gguf()
    T = gguf.GGUFValueType

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == T.ARRAY and self.endianess == gguf.GGUFEndian.LITTLE and isinstance(val, (list, tuple)) and val:
                ltype = sub_type if sub_type is not None else T.get_type(val[0])
                body = _packed_items(val, ltype, T, np_types, typed=sub_type is not None)
                if body is not None:
                    head = struct.pack("<I", vtype) if add_vtype else b""
                    return head + struct.pack("<IQ", ltype, len(val)) + body
            return super()._pack_val(val, vtype, add_vtype, sub_type)
    return Writer


def _packed_items(val, ltype, T, np_types, typed: bool) -> bytes | None:
    """The items of a little-endian GGUF array of ltype as gguf-py's struct.pack calls would give them, or None
    where they might not (other types, values of other Python types, numbers out of range). typed: the caller named
    ltype (ints may then fill a float array); else gguf-py wants every item of val[0]'s Python type."""
    if ltype == T.STRING:
        if not all(type(v) is str for v in val):
            return None
        return b"".join(_U64.pack(len(e)) + e for e in (v.encode("utf-8") for v in val))
    dt = np_types.get(ltype)
    if dt is None or ltype == T.BOOL:
        return None
    kinds = {type(v) for v in val}
    if dt.kind == "f":
        if not kinds <= ({float, int} if typed else {float}):
            return None
        a = np.asarray(val, dtype=np.float64)
        with np.errstate(over="ignore"):  # detected below
            out = a.astype(dt)
        if not np.array_equal(np.isfinite(out), np.isfinite(a)):  # struct.pack refuses what overflows
            return None
        return out.tobytes()
    if kinds != {int}:
        return None
    try:
        a = np.asarray(val, dtype=np.int64 if dt.kind == "i" else np.uint64)
    except OverflowError:
        return None
    info = np.iinfo(dt)
    if a.min() < info.min or a.max() > info.max:
        return None
    return a.astype(dt).tobytes()


class _Array:
    """A metadata array longer than SHORT_ARRAY items: where its items lie in the file, decoded by values()."""

    def __init__(self, buf, file: Path, key: str, itype, count: int, start: int):
        self.buf, self.file, self.key, self.itype, self.count, self.start = buf, file, key, itype, count, start

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"[{self.count} items]"

    def values(self) -> list:
        gguf, np_types = _gguf()
        if self.itype != gguf.GGUFValueType.STRING:
            return np.frombuffer(self.buf, np_types[self.itype], self.count, self.start).tolist()
        return _strings(self.buf, self.start, self.count, self.file, self.key)


def _strings(buf, pos: int, n: int, file, key: str) -> list[str]:
    """n GGUF strings (u64 length + UTF-8 bytes) from pos; _scan has checked that they lie inside the file."""
    unpack, out = _U64.unpack_from, []
    try:
        for _ in range(n):
            k = unpack(buf, pos)[0]
            out.append(str(buf[pos + 8:pos + 8 + k], "utf-8"))
            pos += 8 + k
    except UnicodeDecodeError:
        raise BadInput(f"{file}: the value of {key} is not UTF-8 text") from None
    return out


def _strings_end(buf, pos: int, n: int) -> int:
    """Where n GGUF strings from pos end, or -1 where one runs past the end of buf."""
    unpack = _U64.unpack_from
    try:
        for _ in range(n):
            pos += 8 + unpack(buf, pos)[0]
    except (struct.error, OverflowError):
        return -1
    return pos if pos <= len(buf) else -1


class TensorInfo(NamedTuple):
    name: str
    dims: tuple[int, ...]  # GGUF order, innermost first
    qtype: object          # gguf.GGMLQuantizationType
    start: int             # absolute byte offset of the data in the file
    nbytes: int


class Header:
    """One GGUF file's header: key/values (scalars and short arrays decoded, longer arrays as _Array) and tensor
    infos, with the file's memory map for what is read later."""

    def __init__(self, file: Path, buf, kv: dict, tensors: list[TensorInfo]):
        self.file, self.buf, self.kv, self.tensors = file, buf, kv, tensors

    def metadata(self) -> dict:
        """Every key/value decoded: arrays as lists (a vocabulary's strings too: O(vocabulary))."""
        return {k: v.values() if isinstance(v, _Array) else v for k, v in self.kv.items()}


class _Cursor:
    def __init__(self, buf, file: Path):
        self.buf, self.file, self.pos = buf, file, 0

    def take(self, n: int, what: str) -> int:
        if n > len(self.buf) - self.pos:
            raise BadInput(f"{self.file}: {what} at byte {self.pos} needs {n} bytes, past the end of the file "
                           f"({len(self.buf)} bytes): truncated or corrupt")
        self.pos += n
        return self.pos - n

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def text(self, what: str, utf8_error: str | None = None) -> str:
        n = self.u64(f"{what} length")
        start = self.take(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{self.file}: {utf8_error or f'{what} at byte {start} is not UTF-8'}") from None

    def value(self, vtype: int, key: str):
        """The value of key: a Python scalar, str or list, or an _Array for an array longer than SHORT_ARRAY."""
        gguf, np_types = _gguf()
        V = gguf.GGUFValueType
        not_utf8 = f"the value of {key} is not UTF-8 text"
        if vtype in np_types:
            dt = np_types[vtype]
            return np.frombuffer(self.buf, dt, 1, self.take(dt.itemsize, f"value of {key}"))[0].item()
        if vtype == V.STRING:
            return self.text(f"string value of {key}", not_utf8)
        if vtype != V.ARRAY:
            raise BadInput(f"{self.file}: key {key} has value type {vtype}, which GGUF does not have")
        itype, n = self.u32(f"array type of {key}"), self.u64(f"array length of {key}")
        start = self.pos
        if itype in np_types:
            self.take(n * np_types[itype].itemsize, f"{n} array items of {key}")
        elif itype == V.STRING:
            self.take(0 if n * 8 <= len(self.buf) - self.pos else n * 8, f"{n} strings of {key}")
            end = _strings_end(self.buf, start, n)
            if end < 0:
                raise BadInput(f"{self.file}: the {n} strings of {key} from byte {start} run past the end of the "
                               f"file ({len(self.buf)} bytes): truncated or corrupt")
            self.pos = end
        else:
            raise BadInput(f"{self.file}: key {key} is an array of value type {itype}, which GGUF does not have "
                           f"(nested arrays are not supported)")
        arr = _Array(self.buf, self.file, key, V(itype), n, start)
        if n > SHORT_ARRAY:
            return arr
        if itype == V.STRING:
            return _strings(self.buf, start, n, self.file, key)
        return arr.values()


def _scan(file: Path) -> Header:
    gguf, _ = _gguf()
    size = file.stat().st_size
    if size < 24:
        raise BadInput(f"{file}: too short to be a GGUF file ({size} bytes)")
    with open(file, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # kept open: tensor data and _Arrays read it later
    size = len(buf)
    c = _Cursor(buf, file)
    if buf[:4] != MAGIC:
        raise BadInput(f"{file}: not a GGUF file (bad magic)")
    c.take(4, "magic")
    version = c.u32("version")
    if version not in VERSIONS:
        raise BadInput(f"{file}: GGUF version {version} (big-endian or unknown); weightsmith reads little-endian "
                       f"versions {' and '.join(map(str, VERSIONS))}")
    n_tensors, n_kv = c.u64("tensor count"), c.u64("key/value count")
    if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_BYTES > size - c.pos:
        raise BadInput(f"{file}: header claims {n_tensors} tensors and {n_kv} key/values, more than a file of "
                       f"{size} bytes can hold: truncated or corrupt")
    header = Header(file, buf, {}, [])
    kv = header.kv
    for i in range(n_kv):
        key = c.text(f"name of key/value {i}")
        if key in kv:
            raise BadInput(f"{file}: key {key} appears twice")
        vtype = c.u32(f"value type of {key}")
        kv[key] = c.value(vtype, key)
        if key == gguf.Keys.General.ALIGNMENT and (vtype != gguf.GGUFValueType.UINT32 or kv[key] == 0
                                                   or kv[key] & (kv[key] - 1)):
            raise BadInput(f"{file}: general.alignment must be a uint32 power of two")
    alignment = kv.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    infos = []
    for i in range(n_tensors):
        name = c.text(f"name of tensor {i}")
        n_dims = c.u32(f"dimension count of tensor {name}")
        if n_dims > MAX_DIMS:
            raise BadInput(f"{file}: tensor {name} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
        dims = tuple(c.u64(f"dimensions of tensor {name}") for _ in range(n_dims))
        infos.append((name, dims, c.u32(f"type of tensor {name}"), c.u64(f"data offset of tensor {name}")))
    data_start = c.pos + (-c.pos % alignment)
    names = set()
    for name, dims, ttype, offset in infos:
        if name in names:
            raise BadInput(f"{file}: tensor {name} appears twice")
        names.add(name)
        try:
            qtype = gguf.GGMLQuantizationType(ttype)
        except ValueError:
            raise BadInput(f"{file}: tensor {name} has type {ttype}, which ggml does not have") from None
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if block > 1 and (not dims or dims[0] % block):
            raise BadInput(f"{file}: tensor {name}: rows of {dims[0] if dims else 'no'} values are not whole "
                           f"{qtype.name} blocks of {block}")
        if any(d >= 2**63 for d in dims):
            raise BadInput(f"{file}: tensor {name} has a dimension of {max(dims)}: corrupt")
        nbytes = numel(dims) // block * type_size
        start = data_start + offset
        if offset % alignment or start + nbytes > size:
            raise BadInput(f"{file}: tensor {name}: bytes [{start}, {start + nbytes}) are misaligned or lie "
                           f"beyond the end of the file ({size} bytes): truncated or corrupt")
        header.tensors.append(TensorInfo(name, dims, qtype, start, nbytes))
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in header.tensors)
    for (_, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0 and e1 > s1:
            raise BadInput(f"{file}: tensors {n0} and {n1} overlap in the file")
    return header


def metadata(file) -> dict:
    """A GGUF file's key/values, every one decoded (arrays as lists)."""
    return _scan(Path(file)).metadata()


def read(path: Path) -> Checkpoint:
    files = split_files(path)
    headers = [_scan(f) for f in files]
    kv = headers[0].kv  # long arrays undecoded: nothing here reads a vocabulary
    refs: dict[str, TensorRef] = {}
    rope_freqs = None
    for h in headers:
        for t in h.tensors:
            if t.qtype.name in NOT_WEIGHTS:
                raise BadInput(f"{h.file}: tensor {t.name} has type {t.qtype.name}, which is not a weight type "
                               f"(float or ggml quantized)")
            name = mapping.lookup("canonical", t.name)
            if name is None:
                if t.name == "rope_freqs.weight":
                    rope_freqs = _Loader(h, t, (numel(t.dims),))
                continue
            if t.name in refs:
                raise BadInput(f"{h.file}: tensor {t.name} appears twice")
            shape = tuple(reversed(t.dims))
            loader = _Loader(h, t, shape)
            refs[t.name] = TensorRef(t.name, t.name, shape, t.qtype.name, t.nbytes, loader, loader.raw,
                                     rows=loader.rows if shape else None)
    shapes = {k: r.shape for k, r in refs.items()}
    cfg = from_gguf_metadata(kv, shapes, str(path))
    check_shapes(cfg, shapes, lambda c: c, str(path))  # first: the rope check below allocates head_dim values
    if rope_freqs is not None and cfg.rope_scaling is None:
        cfg.rope_scaling = layout.llama3_scaling_from_factors(rope_freqs.rows(0, rope_freqs.shape[0]), cfg.head_dim,
                                                              cfg.rope_theta)
        if cfg.rope_scaling is None:  # never drop scaling silently: the model would be wrong past 8K tokens
            raise Unsupported(f"{path}: rope_freqs.weight matches no Llama 3.x rope scaling weightsmith knows")
    summary = {k: (f"[{len(v)} items]" if isinstance(v, (list, _Array)) and len(v) > SHORT_ARRAY else v)
               for k, v in kv.items()}
    return Checkpoint(format="gguf", path=path, config=cfg, tensors=order(refs, cfg),
                      info={"files": [f.name for f in files], "metadata": summary},
                      read_vocab=lambda: tokenizer.from_gguf(headers[0].metadata(), str(path)),
                      name=kv.get("general.name") if isinstance(kv.get("general.name"), str) else None)


class _Loader:
    def __init__(self, header: Header, t: TensorInfo, shape):
        self.header, self.t, self.shape = header, t, shape

    def _bytes(self, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """The stored bytes of rows [r0, r1) (a row of a quantized matrix is a run of whole blocks)."""
        r1 = self.shape[0] if r1 is None else r1
        row = self.t.nbytes // max(self.shape[0], 1)
        return np.frombuffer(self.header.buf, np.uint8, (r1 - r0) * row, self.t.start + r0 * row)

    def __call__(self) -> torch.Tensor:
        return dtypes.to_torch(self.rows(0, self.shape[0]))

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) as a fresh numpy array: float values as stored, quantized ones dequantized to f32."""
        gguf, _ = _gguf()
        t, data, shape = self.t, self._bytes(r0, r1), (r1 - r0, *self.shape[1:])
        try:
            if dtypes.is_float(t.qtype.name):
                out = data.view(dtypes.numpy_dtype(t.qtype.name)).copy()
            else:
                out = gguf.quants.dequantize(
                    data.reshape(gguf.quants.quant_shape_to_byte_shape(shape, t.qtype)), t.qtype)
        except NotImplementedError:
            raise Unsupported(f"{self.header.file}: tensor {t.name} has type {t.qtype.name}, which gguf-py cannot "
                              f"dequantize") from None
        release_mapped_range(data.ctypes.data, data.nbytes)
        return out.reshape(shape)

    def raw(self) -> np.ndarray:
        """The stored bytes, for passing a quantized tensor through to a GGUF file untouched."""
        data = self._bytes()
        out = data.copy()
        release_mapped_range(data.ctypes.data, data.nbytes)
        return out


# ---- writing ----------------------------------------------------------------------------------------------

# general.file_type (llama_ftype) of a float file, by the type of most of its matrices; quantized mixtures carry
# theirs in quant.presets, and a GGUF passed through as it is keeps its own
FLOAT_FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}


def _ggml_type(name: str):
    import gguf
    try:
        return gguf.GGMLQuantizationType[name]
    except KeyError:
        raise Unsupported(f"GGUF has no tensor type {name}") from None


class Writer:
    """Streams a GGUF file: gguf-py's GGUFWriter lays out and writes the header, key/values and tensor infos of each
    file; then each tensor's data goes through a DirectFile as it arrives (in the order of the specs), one file at a
    time."""
    format = "gguf"
    is_dir = False
    stores_tied_output = False  # llama.cpp ties output to token_embd when output.weight is absent
    keeps_quantized = True      # quantized GGUF tensors pass through byte for byte
    vectors_f32 = True          # norms stay f32, as llama.cpp's converter writes them
    packs_int = False           # int8/int4 (compressed-tensors) is an HF format

    def __init__(self, out: Path, ck: Checkpoint, specs, tokenizer_files: dict | None = None,
                 tokenizer_pre: str | None = None, split_max_size: int = 0, file_type: int | None = None,
                 metadata: dict | None = None, **_):
        """metadata: further keys, in order, after general.quantization_version (llama-quantize's quantize.imatrix.*,
        which it sets as kv overrides): str values as strings (empty ones too), int values as uint32."""
        import gguf
        cfg = ck.config
        vocab = tokenizer.vocab_for(ck, tokenizer_files, tokenizer_pre)
        if vocab is None:
            raise Unsupported(f"{ck.path}: no tokenizer to put in the GGUF file (llama.cpp needs one): pass "
                              f"--tokenizer with an HF tokenizer.json")
        # split files are named as llama.cpp's gguf-split names them: model-00001-of-00003.gguf
        self.w = _writer_class()(None, "llama", split_max_size=split_max_size)
        w = self.w
        self.nbytes = {}
        w.add_name(ck.name or Path(ck.path).name)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_dimension_count(cfg.head_dim)
        if cfg.head_dim * cfg.n_heads != cfg.dim:
            w.add_key_length(cfg.head_dim)
            w.add_value_length(cfg.head_dim)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_vocab_size(cfg.vocab_size)
        rope_freqs = None
        rs = cfg.rope_scaling
        if rs is not None:
            kind = rs.get("rope_type", rs.get("type"))
            if kind == "llama3":
                rope_freqs = layout.llama3_rope_factors(cfg.head_dim, cfg.rope_theta, rs)
            elif kind == "linear":
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(rs["factor"])
            else:
                raise Unsupported(f"rope scaling {kind!r} has no GGUF spelling weightsmith writes")
        if file_type is None:
            mats = [s.dtype for s in specs if len(s.shape) > 1]
            main = max(set(mats), key=mats.count) if mats else "F32"
            file_type = FLOAT_FILE_TYPES.get(main, ck.info.get("metadata", {}).get("general.file_type", 0))
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in (metadata or {}).items():
            if isinstance(value, str):
                w.add_key_value(key, value, gguf.GGUFValueType.STRING)  # add_string would drop an empty one
            else:
                w.add_uint32(key, value)
        tokenizer.to_gguf(w, vocab.padded(cfg.vocab_size))
        if rope_freqs is not None:
            w.add_tensor_info("rope_freqs.weight", list(rope_freqs.shape), np.dtype(np.float32), rope_freqs.nbytes)
        for s in specs:
            block, size = gguf.GGML_QUANT_SIZES[_ggml_type(s.dtype)]  # floats too: blocks of one
            self.nbytes[s.canonical] = nbytes = int(np.prod(s.shape)) // block * size
            w.add_tensor_info(s.canonical, list(s.shape), np.dtype(np.float32), nbytes, raw_dtype=_ggml_type(s.dtype))
        if split_max_size and len(w.tensors) == 1:
            raise BadInput(f"--split-max-size {split_max_size}: the model fits in one file; nothing to split")
        w.write_header_to_file(path=out)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        # gguf-py has laid out header, key/values and tensor infos; the data sections are ours to write, each
        # tensor at the next multiple of the alignment in its file, in the order of the infos (as write_tensor_data)
        self.file_of = {name: k for k, tensors in enumerate(w.tensors) for name in tensors}
        for fout in w.fout:
            fout.flush()
        self.sink, self.sink_file = None, None  # the data section being written, of one file at a time
        if rope_freqs is not None:
            self._write("rope_freqs.weight", rope_freqs.nbytes, [rope_freqs])

    def name(self, canonical: str) -> str:
        return canonical

    def write(self, canonical: str, chunks):
        """chunks: the tensor's rows in order, in pieces (float arrays or quantized bytes), streamed to the file."""
        self._write(canonical, self.nbytes[canonical], chunks)

    def _write(self, name: str, nbytes: int, chunks):
        k = self.file_of[name]
        if k != self.sink_file:
            self._end_file()
            self.sink, self.sink_file = DirectFile(self.w.fout[k].name, self.w.fout[k].tell()), k
        self._pad()
        written = sum(self.sink.write(as_bytes(c)) for c in chunks)
        if written != nbytes:
            raise AssertionError(f"{name}: streamed {written} bytes of a {nbytes}-byte tensor")

    def _pad(self):
        """Zeros up to the next multiple of the alignment: before each tensor, and after a file's last one."""
        self.sink.write(bytes(-self.sink.tell() % self.w.data_alignment))

    def _end_file(self):
        if self.sink is not None:
            self._pad()
            self.sink.close()
            self.sink = None

    def finish(self):
        self._end_file()
        self.close()

    def close(self):
        if self.sink is not None:
            self.sink.abort()
        if self.w.fout is not None:
            self.w.close()
