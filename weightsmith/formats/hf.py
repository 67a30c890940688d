"""Hugging Face checkpoints: config.json + *.safetensors (single or sharded with an index), read lazily,
written streaming, each tensor in pieces of rows as they come."""
from pathlib import Path

import numpy as np

from .. import dtypes
from ..checkpoint import Checkpoint, TensorRef, numel, order
from ..config import check_shapes, from_hf_config, to_hf_config
from ..convert import layout, mapping, tokenizer
from ..errors import BadInput
from ..quant import compressed
from .common import DirectFile, Spec, as_bytes, confined, copy_files, read_json, write_json
from .safetensors_file import header_bytes, read_header, read_tensor

INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
AUX_FILES = ("generation_config.json",)


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file() or (path / INDEX).is_file() or any(path.glob("*.safetensors"))
    return path.suffix == ".safetensors"


def _shard_files(path: Path) -> tuple[Path, list[Path]]:
    if path.is_file():
        return path.parent, [path]
    if (path / INDEX).is_file():
        index = read_json(path / INDEX, "the shard index")
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise BadInput(f"{path / INDEX}: no weight_map of tensor name -> file name")
        names = sorted(set(wm.values()))
        files = [confined(path, n, INDEX) for n in names]
        for f in files:
            if not f.is_file():
                raise BadInput(f"{path / INDEX} lists {f.name}, which is missing")
        return path, files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BadInput(f"{path}: no *.safetensors files")
    return path, files


def read(path: Path) -> Checkpoint:
    base, files = _shard_files(path)
    raw_config = read_json(base / "config.json", "the model config")
    qconfig = raw_config.get("quantization_config") if isinstance(raw_config, dict) else None
    refs: dict[str, TensorRef] = {}
    entries = [(file, e) for file in files for e in read_header(file)]
    # compressed-tensors modules: those with a weight_scale / weight_packed (its format says which tensors it has)
    marked = {e.name.rpartition(".")[0] for _, e in entries if e.name.rpartition(".")[2] in compressed.MARKERS}
    packed: dict[str, dict] = {}  # compressed-tensors module -> {suffix: (file, entry)}
    for file, e in entries:
        module, _, suffix = e.name.rpartition(".")
        if module in marked and (suffix in compressed.MARKERS or suffix == "weight"):
            packed.setdefault(module, {})[suffix] = (file, e)
            continue
        loader = _Loader(file, e)
        _add(refs, e.name, file, TensorRef(e.name, "", e.shape, e.dtype, e.end - e.start, loader,
                                           rows=loader.rows if e.shape else None))
    for module, parts in packed.items():
        scheme = compressed.scheme_of(qconfig, module, str(base / "config.json"))
        fmt = compressed.FORMATS[scheme.format]
        missing = [s for s in fmt.suffixes if s not in parts]
        if missing:
            raise BadInput(f"{base}: {module} is stored {fmt.name} but has no {missing[0]}")
        extra = sorted(set(parts) - set(fmt.suffixes))
        if extra:
            raise BadInput(f"{base}: {module} is stored {fmt.name}, which has no {module}.{extra[0]}")
        (pf, pe), (_, se) = parts[fmt.suffixes[0]], parts["weight_scale"]
        if pe.dtype != fmt.storage or len(pe.shape) != 2 or not dtypes.is_float(se.dtype):
            raise BadInput(f"{pf}: {module}: {fmt.name} stores {fmt.suffixes[0]} as {fmt.storage} "
                           f"[out, in{f' * {scheme.bits} / 32' if scheme.per_word > 1 else ''}] and weight_scale "
                           f"float, not {pe.dtype} {list(pe.shape)} and {se.dtype}")
        shape = (pe.shape[0], pe.shape[1] * scheme.per_word)
        nbytes = sum(e.end - e.start for _, e in parts.values())
        _add(refs, module + ".weight", pf, TensorRef(module + ".weight", "", shape, scheme.name, nbytes,
                                                      _PackedLoader(parts, scheme, shape)))
    shapes = {k: r.shape for k, r in refs.items()}
    cfg = from_hf_config(raw_config, shapes, str(base / "config.json"))
    check_shapes(cfg, shapes, lambda c: mapping.rename(c, "hf"), str(base))
    for r in refs.values():
        r.load.heads = layout.rope_heads(mapping.canonical(r.canonical).row.rope, cfg)
    return Checkpoint(
        format="hf", path=path, config=cfg, tensors=order(refs, cfg),
        tokenizer_files={n: base / n for n in TOKENIZER_FILES if (base / n).is_file()},
        aux_files={n: base / n for n in AUX_FILES if (base / n).is_file()},
        info={"files": [f.name for f in files]})


def _add(refs: dict, hf_name: str, file: Path, ref: TensorRef):
    name = mapping.lookup("hf", hf_name)
    if name is None:
        return
    if name.canonical in refs:
        raise BadInput(f"{file}: tensor {hf_name} appears twice in the checkpoint")
    ref.canonical = name.canonical
    refs[name.canonical] = ref


class _Loader:
    """Reads one tensor and undoes HF's rope half-split (heads is set once the config is known)."""

    def __init__(self, file, entry):
        self.file, self.entry, self.heads = file, entry, None

    def __call__(self):
        return dtypes.to_torch(self.unrope(read_tensor(self.file, self.entry)))

    def rows(self, r0: int, r1: int):
        """Rows [r0, r1) alone, as numpy; a rope tensor's range holds whole heads (the pipeline cuts at head
        boundaries)."""
        return self.unrope(read_tensor(self.file, self.entry, (r0, r1)))

    def unrope(self, t):
        # the permutation stays inside each head, so a run of whole heads unropes on its own
        return layout.rope_from_hf(t, self.heads * t.shape[0] // self.entry.shape[0]) if self.heads else t


class _PackedLoader(_Loader):
    """A compressed-tensors weight, dequantized to f32 as compressed-tensors' own decompression does."""

    def __init__(self, parts, scheme, shape):
        self.values = compressed.FORMATS[scheme.format].suffixes[0]
        super().__init__(*parts[self.values])
        self.parts, self.scheme, self.shape = parts, scheme, shape

    def __call__(self):
        t = {s: dtypes.to_torch(read_tensor(f, e)).view(dtypes.torch_dtype(e.dtype))  # fp8: from its bits
             for s, (f, e) in self.parts.items()}
        sc = t["weight_scale"]
        per_tensor = sc.shape in ((1,), (1, 1))  # compressed-tensors' tensor strategy
        stored_shape = tuple(t["weight_shape"].tolist()) if "weight_shape" in t else self.shape
        if stored_shape != self.shape or not per_tensor and (sc.ndim != 2 or sc.shape[0] != self.shape[0]
                                                             or self.shape[1] % max(sc.shape[1], 1)):
            raise BadInput(f"{self.file}: {self.entry.name}: weight_shape {list(stored_shape)} / "
                           f"weight_scale {list(sc.shape)} disagree with the stored {list(self.shape)}")
        return self.unrope(compressed.dequantize(t[self.values], sc, self.scheme))


# ---- writing ----------------------------------------------------------------------------------------------

def plan_shards(specs: list[Spec], shard_size: int, nbytes) -> list[list[Spec]]:
    """Greedy split into shards of at most shard_size bytes (a larger tensor gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for s in specs:
        n = nbytes(s)
        if cur and size + n > shard_size:
            shards.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += n
    if cur:
        shards.append(cur)
    return shards


class Writer:
    """Streams safetensors shards: each file's header is known up front, tensors are appended as they come.
    A weight of a compressed-tensors type (INT8/INT4/W8A8/FP8) is stored as the tensors its format names
    (compressed.FORMATS), kept in one shard."""
    format = "hf"
    is_dir = True
    keeps_quantized = False  # float formats: quantized sources are dequantized
    vectors_f32 = False
    packs_int = True  # --type int8/int4/w8a8/fp8: compressed-tensors weights
    stores_tied_output = False  # transformers ties lm_head to the embeddings; no copy is written

    def __init__(self, out: Path, ck: Checkpoint, specs: list[Spec], tokenizer_files: dict | None = None,
                 shard_size: int = 5_000_000_000, **_):
        self.out, self.ck, self.config = out, ck, ck.config
        self.tokenizer_files = ck.tokenizer_files if tokenizer_files is None else tokenizer_files
        floats = [s.dtype for s in specs if dtypes.is_float(s.dtype)]
        self.dtype = floats[0] if floats else "F32"  # the model's float dtype; int8/int4 scales are stored in it
        self.scheme = next((compressed.get(s.dtype) for s in specs if compressed.get(s.dtype)), None)
        self.shards = plan_shards(specs, shard_size, lambda s: sum(numel(sh) * dtypes.itemsize(dt)
                                                                   for _, dt, sh in self._stored(s)))
        n = len(self.shards)
        self.file_names = ["model.safetensors"] if n == 1 else \
            [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.queue = [(fi, s) for fi, shard in enumerate(self.shards) for s in shard]
        self.pos = 0
        self.sink = None  # the open shard's data, written through formats.common.DirectFile
        self.weight_map = {}
        self.total = 0
        self.quantized: dict[int | None, set[str]] = {}  # int8/int4 group size -> projections

    def name(self, canonical: str) -> str:
        return mapping.rename(canonical, "hf")

    def _stored(self, s: Spec) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, dtype, shape) of what one spec is stored as."""
        scheme = compressed.get(s.dtype)
        if scheme is None:
            return [(self.name(s.canonical), s.dtype, s.shape)]
        module = self.name(s.canonical).removesuffix(".weight")
        return [(f"{module}.{suffix}", dt, sh) for suffix, dt, sh in compressed.stored(scheme, s.shape, self.dtype)]

    def _open(self, fi: int):
        self._close_shard()
        tensors = [t for s in self.shards[fi] for t in self._stored(s)]
        for name, dtype, shape in tensors:
            self.weight_map[name] = self.file_names[fi]
            self.total += numel(shape) * dtypes.itemsize(dtype)
        header = header_bytes(tensors)
        (self.out / self.file_names[fi]).write_bytes(header)
        self.sink = DirectFile(self.out / self.file_names[fi], len(header))

    def write(self, canonical: str, chunks):
        """chunks: the tensor's rows in order, in pieces of whole heads. A compressed-tensors weight's pieces are
        compressed.Packed rows: their values are written as they come; their scales, which the file stores after
        all the values (and which are 1/64 of the values' size or less), are kept until the last piece, then
        written, then weight_shape."""
        fi, spec = self.queue[self.pos]
        assert spec.canonical == canonical, (spec, canonical)
        if self.pos == 0 or self.queue[self.pos - 1][0] != fi:
            self._open(fi)
        heads = layout.rope_heads(mapping.canonical(canonical).row.rope, self.config)
        rows, scales, fmt = 0, [], None
        for t in chunks:
            share = heads * t.shape[0] // spec.shape[0] if heads else 0  # heads in this piece
            if isinstance(t, compressed.Packed):  # rows permute with their scales; the shape stays [out, in]
                fmt = compressed.FORMATS[t.format]
                module = self.name(canonical).removesuffix(".weight")
                kind = module.split(".", 3)[-1]  # model.layers.N.self_attn.q_proj -> self_attn.q_proj
                self.quantized.setdefault(compressed.group_size(self.scheme, t.shape[1]), set()).add(kind)
                self.sink.write(as_bytes(layout.rope_to_hf(t.packed, share) if share else t.packed))
                scales.append(layout.rope_to_hf(t.scale, share) if share else t.scale)
            else:
                self.sink.write(as_bytes(layout.rope_to_hf(t, share) if share else t))
            rows += t.shape[0]
        assert rows == spec.shape[0], (canonical, rows, spec.shape)
        if fmt is not None:  # the order compressed.stored gives the header: values, weight_scale[, weight_shape]
            for p in scales:
                self.sink.write(as_bytes(p))
            if "weight_shape" in fmt.suffixes:
                self.sink.write(as_bytes(np.array(spec.shape, np.int64)))
        self.pos += 1

    def _close_shard(self):
        if self.sink:
            self.sink.close()
            self.sink = None

    def finish(self):
        self._close_shard()
        if len(self.file_names) > 1:
            write_json(self.out / INDEX, {"metadata": {"total_size": self.total}, "weight_map": self.weight_map})
        config = to_hf_config(self.config, self.dtype)
        if self.scheme:
            config["quantization_config"] = compressed.quantization_config(self.scheme, self.quantized, ["lm_head"])
        write_json(self.out / "config.json", config)
        if {"tokenizer.json", "tokenizer_config.json"} & set(self.tokenizer_files):  # HF's own files: as they are
            copy_files({n: p for n, p in self.tokenizer_files.items() if n in TOKENIZER_FILES}, self.out)
        else:
            vocab = tokenizer.vocab_for(self.ck, self.tokenizer_files)
            if vocab is not None:
                tokenizer.to_hf(vocab, self.out, self.config.max_seq_len)
        aux = self.ck.aux_files if self.ck.format == "hf" else {}
        copy_files(aux, self.out)
        if "generation_config.json" not in aux:
            write_json(self.out / "generation_config.json",
                       {"bos_token_id": self.config.bos_token_id, "eos_token_id": self.config.eos_token_id})

    def close(self):
        if self.sink:
            self.sink.abort()
            self.sink = None
