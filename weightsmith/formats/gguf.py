"""GGUF files (llama.cpp), read through gguf-py's memory-mapped GGUFReader.

GGUF lists dims innermost-first; everything past this module sees PyTorch order. Llama q/k rows are already in
the canonical interleaved rope order (llama.cpp's converter permutes HF's), so no relayout happens here.
Quantized tensors are dequantized by gguf-py for float targets.
"""
from __future__ import annotations

import mmap
import re
import struct
from pathlib import Path

import numpy as np
from ..lazy import torch

from .. import dtypes
from ..checkpoint import Checkpoint, TensorRef, numel, order
from ..config import check_shapes, from_gguf_metadata
from ..convert import layout, mapping, tokenizer
from ..errors import BadInput, Unsupported
from .common import release_mapped_range

MAGIC = b"GGUF"
# ggml types that never hold model weights: integers, f64, and the block types only matmuls use internally
NOT_WEIGHTS = {"I8", "I16", "I32", "I64", "F64", "Q8_1", "Q8_K"}
SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


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


def _open(file: Path):
    import gguf
    _scan(file)
    try:
        return gguf.GGUFReader(file, "r")
    except (ValueError, IndexError, KeyError, OverflowError) as e:  # what _scan does not check (duplicate names)
        raise BadInput(f"{file}: corrupt GGUF ({type(e).__name__}: {e})") from None


# ---- header validation ------------------------------------------------------------------------------------
# gguf-py trusts the header: an array count of 2**60 past the end of the file makes it loop for ever, and a
# tensor offset out of range surfaces as a numpy reshape error. _scan walks the same layout first, checking every
# count, length and offset against the file's real size, so gguf-py only ever sees a well-formed header.

VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
STRING, ARRAY, UINT32 = 8, 9, 4
VERSIONS = (2, 3)
MAX_DIMS = 4            # GGML_MAX_DIMS
MIN_KV_BYTES = 8 + 4 + 1       # key length, value type, a one-byte value
MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


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

    def text(self, what: str) -> str:
        n = self.u64(f"{what} length")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{self.file}: {what} at byte {start} is not UTF-8") from None

    def skip_value(self, vtype: int, key: str):
        if vtype in VALUE_SIZES:
            self.take(VALUE_SIZES[vtype], f"value of {key}")
        elif vtype == STRING:
            self.take(self.u64(f"string length of {key}"), f"string value of {key}")
        elif vtype == ARRAY:
            itype, n = self.u32(f"array type of {key}"), self.u64(f"array length of {key}")
            if itype in VALUE_SIZES:
                self.take(n * VALUE_SIZES[itype], f"{n} array items of {key}")
            elif itype == STRING:
                self.take(0 if n * 8 <= len(self.buf) - self.pos else n * 8, f"{n} strings of {key}")
                for _ in range(n):
                    self.take(self.u64(f"a string length in {key}"), f"a string in {key}")
            else:
                raise BadInput(f"{self.file}: key {key} is an array of value type {itype}, which GGUF does not have "
                               f"(nested arrays are not supported)")
        else:
            raise BadInput(f"{self.file}: key {key} has value type {vtype}, which GGUF does not have")


def _scan(file: Path):
    import gguf
    size = file.stat().st_size
    if size < 24:
        raise BadInput(f"{file}: too short to be a GGUF file ({size} bytes)")
    with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
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
        alignment = 32  # GGUF_DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key = c.text(f"name of key/value {i}")
            vtype = c.u32(f"value type of {key}")
            if key == "general.alignment":
                alignment = struct.unpack_from("<I", buf, c.pos)[0] if c.pos + 4 <= size else 0
                if vtype != UINT32 or alignment == 0 or alignment & (alignment - 1):
                    raise BadInput(f"{file}: general.alignment must be a uint32 power of two")
            c.skip_value(vtype, key)
        infos = []
        for i in range(n_tensors):
            name = c.text(f"name of tensor {i}")
            n_dims = c.u32(f"dimension count of tensor {name}")
            if n_dims > MAX_DIMS:
                raise BadInput(f"{file}: tensor {name} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
            dims = [c.u64(f"dimensions of tensor {name}") for _ in range(n_dims)]
            infos.append((name, dims, c.u32(f"type of tensor {name}"), c.u64(f"data offset of tensor {name}")))
        data_start = c.pos + (-c.pos % alignment)
        spans = []
        for name, dims, ttype, offset in infos:
            try:
                qtype = gguf.GGMLQuantizationType(ttype)
            except ValueError:
                raise BadInput(f"{file}: tensor {name} has type {ttype}, which ggml does not have") from None
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            if dims and dims[0] % block:
                raise BadInput(f"{file}: tensor {name}: rows of {dims[0]} values are not whole {qtype.name} blocks "
                               f"of {block}")
            nbytes = numel(dims) // block * type_size
            start = data_start + offset
            if offset % alignment or start + nbytes > size:
                raise BadInput(f"{file}: tensor {name}: bytes [{start}, {start + nbytes}) are misaligned or lie "
                               f"beyond the end of the file ({size} bytes): truncated or corrupt")
            spans.append((start, start + nbytes, name))
        spans.sort()
        for (_, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0 and e1 > s1:
                raise BadInput(f"{file}: tensors {n0} and {n1} overlap in the file")


def metadata(reader, file="GGUF file") -> dict:
    kv = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            v = field.contents()
        except UnicodeDecodeError:
            raise BadInput(f"{file}: the value of {name} is not UTF-8 text") from None
        kv[name] = v.tolist() if isinstance(v, np.ndarray) else v
    return kv


def read(path: Path) -> Checkpoint:
    files = split_files(path)
    readers = [_open(f) for f in files]
    kv = metadata(readers[0], files[0])
    refs: dict[str, TensorRef] = {}
    rope_freqs = None
    for file, reader in zip(files, readers):
        for t in reader.tensors:
            if t.tensor_type.name in NOT_WEIGHTS:
                raise BadInput(f"{file}: tensor {t.name} has type {t.tensor_type.name}, which is not a weight type "
                               f"(float or ggml quantized)")
            name = mapping.lookup("canonical", t.name)
            if name is None:
                if t.name == "rope_freqs.weight":
                    rope_freqs = _Loader(t, (int(t.n_elements),), file)
                continue
            if t.name in refs:
                raise BadInput(f"{file}: tensor {t.name} appears twice")
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            loader = _Loader(t, shape, file)
            refs[t.name] = TensorRef(t.name, t.name, shape, t.tensor_type.name, int(t.n_bytes), loader, loader.raw)
    shapes = {k: r.shape for k, r in refs.items()}
    cfg = from_gguf_metadata(kv, shapes, str(path))
    check_shapes(cfg, shapes, lambda c: c, str(path))  # first: the rope check below allocates head_dim values
    if rope_freqs is not None and cfg.rope_scaling is None:
        cfg.rope_scaling = layout.llama3_scaling_from_factors(rope_freqs(), cfg.head_dim, cfg.rope_theta)
        if cfg.rope_scaling is None:  # never drop scaling silently: the model would be wrong past 8K tokens
            raise Unsupported(f"{path}: rope_freqs.weight matches no Llama 3.x rope scaling weightsmith knows")
    summary = {k: (f"[{len(v)} items]" if isinstance(v, list) and len(v) > 16 else v) for k, v in kv.items()}
    return Checkpoint(format="gguf", path=path, config=cfg, tensors=order(refs, cfg),
                      info={"files": [f.name for f in files], "metadata": summary},
                      vocab=tokenizer.from_gguf(kv, str(path)), name=kv.get("general.name"))


class _Loader:
    def __init__(self, t, shape, file):
        self.t, self.shape, self.file = t, shape, file

    def __call__(self) -> torch.Tensor:
        import gguf
        t, qtype = self.t, self.t.tensor_type
        try:
            if qtype == gguf.GGMLQuantizationType.BF16:
                out = torch.from_numpy(np.array(t.data).view(np.int16)).view(torch.bfloat16)
            elif dtypes.is_float(qtype.name):
                out = torch.from_numpy(np.array(t.data))
            else:
                out = torch.from_numpy(gguf.quants.dequantize(t.data, qtype))
        except NotImplementedError:
            raise Unsupported(f"{self.file}: tensor {t.name} has type {qtype.name}, which gguf-py cannot dequantize") from None
        release_mapped_range(t.data.ctypes.data, t.data.nbytes)
        return out.reshape(self.shape)

    def raw(self) -> np.ndarray:
        """The stored bytes, for passing a quantized tensor through to a GGUF file untouched."""
        out = np.array(self.t.data).reshape(-1).view(np.uint8)
        release_mapped_range(self.t.data.ctypes.data, self.t.data.nbytes)
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
    """Streams a GGUF file through gguf-py's GGUFWriter: header, key/values and tensor infos first, then each
    tensor's data as it arrives (in the order of the specs)."""
    format = "gguf"
    is_dir = False
    stores_tied_output = False  # llama.cpp ties output to token_embd when output.weight is absent
    keeps_quantized = True      # quantized GGUF tensors pass through byte for byte
    vectors_f32 = True          # norms stay f32, as llama.cpp's converter writes them
    packs_int = False           # int8/int4 (compressed-tensors) is an HF format

    def __init__(self, out: Path, ck: Checkpoint, specs, tokenizer_files: dict | None = None,
                 tokenizer_pre: str | None = None, split_max_size: int = 0, file_type: int | None = None, **_):
        import gguf
        cfg = ck.config
        vocab = tokenizer.vocab_for(ck, tokenizer_files, tokenizer_pre)
        if vocab is None:
            raise Unsupported(f"{ck.path}: no tokenizer to put in the GGUF file (llama.cpp needs one): pass "
                              f"--tokenizer with an HF tokenizer.json")
        # split files are named as llama.cpp's gguf-split names them: model-00001-of-00003.gguf
        self.w = gguf.GGUFWriter(None, "llama", split_max_size=split_max_size)
        w = self.w
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
        tokenizer.to_gguf(w, vocab.padded(cfg.vocab_size))
        if rope_freqs is not None:
            w.add_tensor_info("rope_freqs.weight", list(rope_freqs.shape), np.dtype(np.float32), rope_freqs.numel() * 4)
        for s in specs:
            block, size = gguf.GGML_QUANT_SIZES[_ggml_type(s.dtype)]  # floats too: blocks of one
            nbytes = int(np.prod(s.shape)) // block * size
            w.add_tensor_info(s.canonical, list(s.shape), np.dtype(np.float32), nbytes, raw_dtype=_ggml_type(s.dtype))
        if split_max_size and len(w.tensors) == 1:
            raise BadInput(f"--split-max-size {split_max_size}: the model fits in one file; nothing to split")
        w.write_header_to_file(path=out)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        if rope_freqs is not None:
            w.write_tensor_data(rope_freqs.numpy())

    def name(self, canonical: str) -> str:
        return canonical

    def write(self, canonical: str, data):
        if isinstance(data, torch.Tensor):
            data = data.contiguous()
            data = (data.view(torch.int16) if data.dtype == torch.bfloat16 else data).numpy()
        self.w.write_tensor_data(data)

    def finish(self):
        self.close()

    def close(self):
        if self.w.fout is not None:
            self.w.close()
