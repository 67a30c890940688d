"""Format detection and the reader/writer registry: the only place that knows which formats exist."""
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import BadInput, Unsupported
from . import gguf, hf, meta

READERS = {"gguf": gguf, "hf": hf, "meta": meta}
WRITERS = {"gguf": gguf.Writer, "hf": hf.Writer, "meta": meta.Writer}


def detect(path) -> str:
    """The format of a checkpoint path, from its name and layout only (nothing is parsed)."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file or directory")
    for name, mod in READERS.items():
        if mod.detect(p):
            return name
    if p.is_dir():
        raise BadInput(f"{p}: not a checkpoint directory (no config.json + *.safetensors, no params.json + "
                       f"consolidated.NN.pth)")
    raise BadInput(f"{p}: not a checkpoint file weightsmith recognizes (.gguf, .safetensors, .pth)")


def open_checkpoint(path) -> Checkpoint:
    return READERS[detect(path)].read(Path(path))


def writer(fmt: str):
    try:
        return WRITERS[fmt]
    except KeyError:
        raise Unsupported(f"writing {fmt} is not supported (targets: {', '.join(WRITERS)})") from None


def default_target(dst) -> str:
    return "gguf" if str(dst).endswith(".gguf") else "hf"
