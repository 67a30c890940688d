"""Format detection and the reader/writer registry: the only place that knows which formats exist."""
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import BadInput, Unsupported
from . import gguf, hf, meta
from .. import hub  # after the readers: hub reads their file-name tables

READERS = {"gguf": gguf, "hf": hf, "meta": meta}
WRITERS = {"gguf": gguf.Writer, "hf": hf.Writer, "meta": meta.Writer}


def detect(path) -> str:
    """The format of a checkpoint path or repo id (hub.resolve), from its name and layout only (nothing is parsed)."""
    return _detect(hub.resolve(path).path, path)


def _detect(p: Path, arg) -> str:
    if not p.exists():
        raise BadInput(f"{p}: no such file or directory{hub.missing_hint(arg)}")
    for name, mod in READERS.items():
        if mod.detect(p):
            return name
    if p.is_dir():
        raise BadInput(f"{p}: not a checkpoint directory (no config.json + *.safetensors, no params.json + "
                       f"consolidated.NN.pth)")
    raise BadInput(f"{p}: not a checkpoint file weightsmith recognizes (.gguf, .safetensors, .pth)")


def open_checkpoint(path) -> Checkpoint:
    """Read a local path, or a Hugging Face repo id (ORG/NAME[@REV], hf://ORG/NAME[@REV][/PATH]) through hub."""
    src = hub.resolve(path)
    fmt = _detect(src.path, path)
    ck = READERS[fmt].read(src.path)
    if src.ref is not None and ck.name is None:
        ck.name = src.name  # the repo's name, not the snapshot's commit-hash folder
    if fmt == "hf" and src.meta_beside:
        ck.info["also"] = [f"original/ holds a Meta checkpoint (read it with {src.meta_beside})"]
    return ck


def writer(fmt: str):
    try:
        return WRITERS[fmt]
    except KeyError:
        raise Unsupported(f"writing {fmt} is not supported (targets: {', '.join(WRITERS)})") from None


def default_target(dst) -> str:
    return "gguf" if str(dst).endswith(".gguf") else "hf"
