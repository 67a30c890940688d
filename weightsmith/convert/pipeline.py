"""The straight line: read -> rename/relayout -> cast -> write, one tensor in memory at a time."""
from pathlib import Path

from .. import dtypes, formats
from ..checkpoint import Checkpoint
from ..errors import BadInput, Unsupported
from ..formats.common import Spec
from ..output import AtomicOutput
from ..quant import compressed, presets
from ..quant import types as quant
from . import mapping
from .log import TensorLog

# --type values: float types everywhere; for GGUF output, llama-quantize's types and mixtures (quant.presets)
FLOAT_TARGETS = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def source_type(ck: Checkpoint) -> str:
    """The source's float type: that of most of its matrices (GGUF keeps norms f32 beside f16 matrices);
    a quantized source's is f32, which holds its dequantized values exactly."""
    mats = [r.dtype for r in ck.tensors if len(r.shape) > 1]
    t = max(set(mats), key=mats.count) if mats else "F32"
    return t if dtypes.is_float(t) else "F32"


def target_type(type_: str | None, ref, writer_cls, default: str, config) -> str:
    scheme = compressed.get(type_) if type_ else None
    if scheme is not None:
        if not writer_cls.packs_int:
            raise Unsupported(f"--type {type_}: compressed-tensors int8/int4 weights are written to HF output only")
        return scheme.name if mapping.is_block_matrix(ref.canonical) else default
    preset = presets.get(type_) if type_ else None
    if preset is not None:
        if not writer_cls.keeps_quantized:
            raise Unsupported(f"--type {type_}: ggml block types are written to GGUF output only")
        return presets.choose(preset[0], ref.canonical, ref.shape, config)
    if type_ is not None:
        try:
            t = FLOAT_TARGETS[type_.lower()]
        except KeyError:
            names = [*FLOAT_TARGETS, *presets.PRESETS, *presets.ALIASES, *(n.lower() for n in compressed.SCHEMES)]
            raise Unsupported(f"--type {type_}: not a supported type ({', '.join(names)})") from None
    elif writer_cls.keeps_quantized:
        t = ref.dtype if ref.raw is not None or dtypes.is_float(ref.dtype) else "F32"  # quantized bytes pass through
    else:
        t = default
    if writer_cls.vectors_f32 and len(ref.shape) == 1:
        t = "F32"  # llama.cpp keeps norms in f32
    return t


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
            tokenizer=None, tokenizer_pre: str | None = None, split_max_size: int = 0, quiet: bool = False,
            force: bool = False, check: bool = True) -> Checkpoint:
    dst = Path(dst)
    to = to or formats.default_target(dst)
    writer_cls = formats.writer(to)
    if mp < 1 or (mp > 1 and to != "meta"):
        raise BadInput("--mp N (N >= 1) applies to Meta output only")
    if split_max_size and to != "gguf":
        raise BadInput("--split-max-size applies to GGUF output only (HF output shards with --shard-size)")
    tok_files = tokenizer_override(tokenizer) if tokenizer else None
    ck = formats.open_checkpoint(src)
    if check and ck.integrity_check:
        ck.integrity_check()
    cfg = ck.config
    default = source_type(ck)
    jobs = [(r.canonical, r, target_type(type_, r, writer_cls, default, cfg)) for r in ck.tensors]
    if cfg.tied_embeddings and writer_cls.stores_tied_output:
        embd = next(j for j in jobs if j[0] == "token_embd.weight")
        jobs.append(("output.weight", embd[1], embd[2]))
    specs = [Spec(name, ref.shape, t) for name, ref, t in jobs]
    with AtomicOutput(dst, writer_cls.is_dir, force) as tmp:
        preset = presets.get(type_) if type_ else None
        w = writer_cls(tmp, ck, specs, tokenizer_files=tok_files, tokenizer_pre=tokenizer_pre, shard_size=shard_size,
                       mp=mp, split_max_size=split_max_size, file_type=preset[1].file_type if preset else None)
        try:
            log = TensorLog(len(jobs), sum(r.nbytes for _, r, _ in jobs), quiet)
            for (name, ref, t), src_data in _read_ahead(jobs):
                note = ""
                if _passes_through(ref, t):
                    data = src_data  # quantized bytes, untouched
                elif dtypes.is_float(t):
                    data = dtypes.cast(src_data, t)
                else:
                    data, note = _quantize(src_data, ref, t, w.name(name), default)
                del src_data
                w.write(name, data)
                log.tensor(w.name(name), ref.shape, t, ref.nbytes, data.nbytes, note)
                del data
            w.finish()
        finally:
            w.close()
        log.finish(dst)
    return ck


def _passes_through(ref, t: str) -> bool:
    return t == ref.dtype and not dtypes.is_float(t) and ref.raw is not None


def _read_ahead(jobs):
    """(job, its source data) in order, the next tensor read on a second thread while the caller converts and
    writes this one: at most two source tensors in memory. File reads and torch ops release the GIL."""
    from concurrent.futures import ThreadPoolExecutor
    from ..formats.common import map_large_allocations
    map_large_allocations()

    def read(job):
        _, ref, t = job
        return ref.raw() if _passes_through(ref, t) else ref.load()
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(read, jobs[0]) if jobs else None
        for k, job in enumerate(jobs):
            data = ahead.result()
            ahead = pool.submit(read, jobs[k + 1]) if k + 1 < len(jobs) else None
            yield job, data
            del data


def _quantize(x, ref, t: str, name: str, float_dtype: str):
    """Tensor x as type t (ggml block bytes, or compressed-tensors' packed int8/int4 with scales in float_dtype),
    and the log note: its relative RMS error (and where it was requantized from)."""
    x = x.float()
    scheme = compressed.get(t)
    if scheme:
        data = compressed.quantize(x, scheme, float_dtype)
        err = quant.relative_error(compressed.dequantize(data.packed, data.scale, scheme), x)
    else:
        data, err = quant.quantize_with_error(x, t, name)
    note = f" | rel rms err {err:.2%}"
    if not dtypes.is_float(ref.dtype):
        note += f" | requantized from {ref.dtype} through f32"
    return data, note
