"""The straight line: read -> rename/relayout -> cast -> write, one tensor in memory at a time."""
from pathlib import Path

from .. import dtypes, formats
from ..checkpoint import Checkpoint, numel
from ..errors import BadInput, Unsupported
from ..formats.common import Spec
from ..output import AtomicOutput
from .log import TensorLog

# --type values for float targets; quantized types arrive with the quant package
FLOAT_TARGETS = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def target_type(type_: str | None, src_dtype: str) -> str:
    if type_ is None:  # keep the source's float type; a quantized source becomes f32, exactly
        return src_dtype if dtypes.is_float(src_dtype) else "F32"
    try:
        return FLOAT_TARGETS[type_.lower()]
    except KeyError:
        raise Unsupported(f"--type {type_}: not a supported type (float types: {', '.join(FLOAT_TARGETS)})") from None


def tokenizer_override(path) -> dict[str, Path]:
    """--tokenizer: a tokenizer file, or a directory whose tokenizer files are all taken."""
    p = Path(path)
    if p.is_file():
        return {p.name: p}
    if p.is_dir():
        names = set(formats.hf.TOKENIZER_FILES) | set(formats.meta.TOKENIZER_FILES)
        found = {n: p / n for n in sorted(names) if (p / n).is_file()}
        if found:
            return found
    raise BadInput(f"--tokenizer {p}: no tokenizer file there")


def convert(src, dst, to: str | None = None, type_: str | None = None, shard_size: int = 5_000_000_000, mp: int = 1,
            tokenizer=None, quiet: bool = False, force: bool = False, check: bool = True) -> Checkpoint:
    dst = Path(dst)
    to = to or formats.default_target(dst)
    writer_cls = formats.writer(to)
    if mp < 1 or (mp > 1 and to != "meta"):
        raise BadInput("--mp N (N >= 1) applies to Meta output only")
    tok_files = tokenizer_override(tokenizer) if tokenizer else None
    ck = formats.open_checkpoint(src)
    if check and ck.integrity_check:
        ck.integrity_check()
    cfg = ck.config
    jobs = [(r.canonical, r, target_type(type_, r.dtype)) for r in ck.tensors]
    if cfg.tied_embeddings and writer_cls.stores_tied_output:
        embd = next(j for j in jobs if j[0] == "token_embd.weight")
        jobs.append(("output.weight", embd[1], embd[2]))
    specs = [Spec(name, ref.shape, t) for name, ref, t in jobs]
    with AtomicOutput(dst, writer_cls.is_dir, force) as tmp:
        w = writer_cls(tmp, cfg, specs, shard_size=shard_size, mp=mp)
        try:
            log = TensorLog(len(jobs), sum(r.nbytes for _, r, _ in jobs), quiet)
            for name, ref, t in jobs:
                tensor = dtypes.cast(ref.load(), t)
                w.write(name, tensor)
                log.tensor(w.name(name), ref.shape, t, ref.nbytes, numel(ref.shape) * dtypes.itemsize(t))
                del tensor
            w.finish(ck, tok_files if tok_files is not None else ck.tokenizer_files)
        finally:
            w.close()
        log.finish(dst)
    return ck
