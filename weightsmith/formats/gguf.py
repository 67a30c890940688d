"""GGUF files (llama.cpp), read through gguf-py's memory-mapped GGUFReader.

GGUF lists dims innermost-first; everything past this module sees PyTorch order. Llama q/k rows are already in
the canonical interleaved rope order (llama.cpp's converter permutes HF's), so no relayout happens here.
Quantized tensors are dequantized by gguf-py for float targets.
"""
import re
from pathlib import Path

import numpy as np
import torch

from .. import dtypes
from ..checkpoint import Checkpoint, TensorRef, order
from ..config import check_shapes, from_gguf_metadata
from ..convert import layout, mapping
from ..errors import BadInput, Unsupported
from .common import release_mapped_range

MAGIC = b"GGUF"
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
    with open(file, "rb") as f:
        if f.read(4) != MAGIC:
            raise BadInput(f"{file}: not a GGUF file (bad magic)")
    try:
        return gguf.GGUFReader(file, "r")
    except (ValueError, IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise BadInput(f"{file}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from None


def metadata(reader) -> dict:
    kv = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        v = field.contents()
        kv[name] = v.tolist() if isinstance(v, np.ndarray) else v
    return kv


def read(path: Path) -> Checkpoint:
    files = split_files(path)
    readers = [_open(f) for f in files]
    kv = metadata(readers[0])
    refs: dict[str, TensorRef] = {}
    rope_freqs = None
    for file, reader in zip(files, readers):
        for t in reader.tensors:
            name = mapping.lookup("canonical", t.name)
            if name is None:
                if t.name == "rope_freqs.weight":
                    rope_freqs = _Loader(t, (int(t.n_elements),), file)
                continue
            if t.name in refs:
                raise BadInput(f"{file}: tensor {t.name} appears twice")
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            refs[t.name] = TensorRef(t.name, t.name, shape, t.tensor_type.name, int(t.n_bytes), _Loader(t, shape, file))
    shapes = {k: r.shape for k, r in refs.items()}
    cfg = from_gguf_metadata(kv, shapes, str(path))
    if rope_freqs is not None and cfg.rope_scaling is None:
        cfg.rope_scaling = layout.llama3_scaling_from_factors(rope_freqs(), cfg.head_dim, cfg.rope_theta)
        if cfg.rope_scaling is None:  # never drop scaling silently: the model would be wrong past 8K tokens
            raise Unsupported(f"{path}: rope_freqs.weight matches no Llama 3.x rope scaling weightsmith knows")
    check_shapes(cfg, shapes, lambda c: c, str(path))
    summary = {k: (f"[{len(v)} items]" if isinstance(v, list) and len(v) > 16 else v) for k, v in kv.items()}
    return Checkpoint(format="gguf", path=path, config=cfg, tensors=order(refs, cfg),
                      info={"files": [f.name for f in files], "metadata": summary})


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
