"""Hugging Face checkpoints: config.json + *.safetensors (single or sharded with an index), read lazily,
written streaming with one tensor in memory at a time."""
from pathlib import Path

from .. import dtypes
from ..checkpoint import Checkpoint, TensorRef, numel, order
from ..config import check_shapes, from_hf_config, to_hf_config
from ..convert import layout, mapping, tokenizer
from ..errors import BadInput
from .common import Spec, confined, copy_files, read_json, tensor_bytes, write_json
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
        if not isinstance(wm, dict) or not wm:
            raise BadInput(f"{path / INDEX}: no weight_map")
        names = sorted(set(wm.values()), key=str)
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
    refs: dict[str, TensorRef] = {}
    for file in files:
        for e in read_header(file):
            name = mapping.lookup("hf", e.name)
            if name is None:
                continue
            if name.canonical in refs:
                raise BadInput(f"{file}: tensor {e.name} appears twice in the checkpoint")
            refs[name.canonical] = TensorRef(e.name, name.canonical, e.shape, e.dtype, e.end - e.start,
                                             _Loader(file, e, name.row.rope))
    shapes = {k: r.shape for k, r in refs.items()}
    cfg = from_hf_config(read_json(base / "config.json", "the model config"), shapes, str(base / "config.json"))
    check_shapes(cfg, shapes, lambda c: mapping.rename(c, "hf"), str(base))
    for r in refs.values():
        r.load.heads = layout.rope_heads(r.load.rope, cfg)
    return Checkpoint(
        format="hf", path=path, config=cfg, tensors=order(refs, cfg),
        tokenizer_files={n: base / n for n in TOKENIZER_FILES if (base / n).is_file()},
        aux_files={n: base / n for n in AUX_FILES if (base / n).is_file()},
        info={"files": [f.name for f in files]})


class _Loader:
    """Reads one tensor and undoes HF's rope half-split (heads is set once the config is known)."""

    def __init__(self, file, entry, rope):
        self.file, self.entry, self.rope, self.heads = file, entry, rope, None

    def __call__(self):
        t = read_tensor(self.file, self.entry)
        return layout.rope_from_hf(t, self.heads) if self.heads else t


# ---- writing ----------------------------------------------------------------------------------------------

def plan_shards(specs: list[Spec], shard_size: int) -> list[list[Spec]]:
    """Greedy split into shards of at most shard_size bytes (a larger tensor gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for s in specs:
        n = numel(s.shape) * dtypes.itemsize(s.dtype)
        if cur and size + n > shard_size:
            shards.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += n
    if cur:
        shards.append(cur)
    return shards


class Writer:
    """Streams safetensors shards: each file's header is known up front, tensors are appended as they come."""
    format = "hf"
    is_dir = True
    keeps_quantized = False  # float formats: quantized sources are dequantized
    vectors_f32 = False
    stores_tied_output = False  # transformers ties lm_head to the embeddings; no copy is written

    def __init__(self, out: Path, ck: Checkpoint, specs: list[Spec], tokenizer_files: dict | None = None,
                 shard_size: int = 5_000_000_000, **_):
        self.out, self.ck, self.config = out, ck, ck.config
        self.tokenizer_files = ck.tokenizer_files if tokenizer_files is None else tokenizer_files
        self.shards = plan_shards(specs, shard_size)
        n = len(self.shards)
        self.file_names = ["model.safetensors"] if n == 1 else \
            [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.queue = [(fi, s) for fi, shard in enumerate(self.shards) for s in shard]
        self.pos = 0
        self.fh = None
        self.weight_map = {}
        self.total = 0
        self.dtype = specs[0].dtype if specs else "F32"

    def name(self, canonical: str) -> str:
        return mapping.rename(canonical, "hf")

    def _open(self, fi: int):
        if self.fh:
            self.fh.close()
        tensors = [(self.name(s.canonical), s.dtype, s.shape) for s in self.shards[fi]]
        for name, dtype, shape in tensors:
            self.weight_map[name] = self.file_names[fi]
            self.total += numel(shape) * dtypes.itemsize(dtype)
        self.fh = open(self.out / self.file_names[fi], "wb")
        self.fh.write(header_bytes(tensors))

    def write(self, canonical: str, t):
        fi, spec = self.queue[self.pos]
        assert spec.canonical == canonical and tuple(t.shape) == spec.shape, (spec, canonical, t.shape)
        if self.pos == 0 or self.queue[self.pos - 1][0] != fi:
            self._open(fi)
        heads = layout.rope_heads(mapping.canonical(canonical).row.rope, self.config)
        if heads:
            t = layout.rope_to_hf(t, heads)
        self.fh.write(tensor_bytes(t))
        self.pos += 1

    def finish(self):
        self.close()
        if len(self.file_names) > 1:
            write_json(self.out / INDEX, {"metadata": {"total_size": self.total}, "weight_map": self.weight_map})
        write_json(self.out / "config.json", to_hf_config(self.config, self.dtype))
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
        if self.fh:
            self.fh.close()
            self.fh = None
