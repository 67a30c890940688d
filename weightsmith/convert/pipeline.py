"""The straight line: read -> rename/relayout -> cast or quantize -> write, streamed in pieces of rows."""
from pathlib import Path

import numpy as np

from .. import dtypes, formats
from ..checkpoint import Checkpoint, numel
from ..errors import BadInput, Unsupported
from ..formats.common import Spec
from ..output import AtomicOutput
from ..quant import compressed, presets
from ..quant import types as quant
from . import layout, mapping
from .log import TensorLog

# --type values: float types everywhere; for GGUF output, llama-quantize's types and mixtures (quant.presets)
FLOAT_TARGETS = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def source_type(ck: Checkpoint) -> str:
    """The source's float type: that of most of its matrices (GGUF keeps norms f32 beside f16 matrices);
    a quantized source's is f32, which holds its dequantized values exactly."""
    mats = [r.dtype for r in ck.tensors if len(r.shape) > 1]
    t = max(set(mats), key=mats.count) if mats else "F32"
    return t if dtypes.is_float(t) else "F32"


def target_type(type_: str | None, ref, writer_cls, default: str, mixture: presets.Mixture | None) -> str:
    """The type tensor ref is written as; mixture: the preset's per-tensor choice (asked in writing order)."""
    scheme = compressed.get(type_) if type_ else None
    if scheme is not None:
        if not writer_cls.packs_int:
            raise Unsupported(f"--type {type_}: compressed-tensors weights (int8, int4, w8a8, fp8) are written to HF "
                              f"output only")
        return scheme.name if mapping.is_block_matrix(ref.canonical) else default
    if mixture is not None:
        if not writer_cls.keeps_quantized:
            raise Unsupported(f"--type {type_}: ggml block types are written to GGUF output only")
        t = mixture.choose(ref.canonical, ref.shape)
        if t is not None:
            return t
        type_ = None  # not quantized (norms, --leave-output-tensor): the source's type, as when no --type is given
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
            force: bool = False, check: bool = True, imatrix=None, calibrate=None, samples: int = 128,
            ctx: int = 512, overrides: presets.Overrides | None = None, method: str | None = None,
            group_size: int | None = None, damp: float = 0.01, actorder: str | None = None,
            device=None, observer: str | None = None) -> Checkpoint:
    """imatrix: an importance-matrix file (GGUF or legacy .dat) for the ggml types; calibrate with a ggml type: a
    text file to collect one from in the same run (samples chunks of ctx tokens, the forward pass on device), or
    with method gptq GPTQ inside the preset's types (natural column order only), the importance matrix from its
    Hessians; overrides: llama-quantize's per-tensor options for the ggml types.
    int4/int8: calibrate runs GPTQ (method gptq, the default with it; rtn: round-to-nearest) with damp, actorder
    (default static) and the forward pass on device; group_size: columns per scale; observer: how scales are
    chosen (minmax, the default; mse: compressed.observed_scales)."""
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
    if tok_files is None:
        ck.vocab  # a GGUF's vocabulary, read (and checked) before anything is written; writers use it at the end
    cfg = ck.config
    default = source_type(ck)
    type_, producer_args, ggml_gptq = _int_options(type_, calibrate, method, group_size, actorder, observer)
    preset = presets.get(type_) if type_ else None
    _check_ggml_options(type_, preset, imatrix, calibrate, overrides, writer_cls)
    opts = tokens = None
    if producer_args or ggml_gptq:
        from .gptq_stream import Options
        opts = Options(calibrate, samples, ctx, damp, actorder or "static", device)
    if ggml_gptq:
        im, tokens = _hessian_importance(ck, opts, quiet)
    else:
        im = _importance(ck, preset, imatrix, calibrate, samples, ctx, device, quiet)
    mixture = presets.Mixture(preset[0], cfg, im is not None, overrides or presets.Overrides()) if preset else None
    jobs = [(r.canonical, r, target_type(type_, r, writer_cls, default, mixture)) for r in ck.tensors]
    if cfg.tied_embeddings and writer_cls.stores_tied_output:
        embd = next(j for j in jobs if j[0] == "token_embd.weight")
        jobs.append(("output.weight", embd[1], embd[2]))
    specs = [Spec(name, ref.shape, t) for name, ref, t in jobs]
    # ggml GPTQ: the block matrices' types (the producer quantizes those not written float)
    targets = {name: t for name, _, t in jobs if name in im.entries} if ggml_gptq else {}
    by_gptq = {name for name, t in targets.items() if not dtypes.is_float(t)}
    weights = {name: _weights_for(im, name, ref, t, preset[0]) for name, ref, t in jobs
               if name not in targets} if im else {}
    producer = None
    with AtomicOutput(dst, writer_cls.is_dir, force) as tmp:
        if opts:  # GPTQ runs on its own thread, a block ahead of the writer
            from .gptq_stream import Producer
            producer = Producer(ck, producer_args, default, opts, quiet, targets=targets if ggml_gptq else None,
                                tokens=tokens)
        w = writer_cls(tmp, ck, specs, tokenizer_files=tok_files, tokenizer_pre=tokenizer_pre, shard_size=shard_size,
                       mp=mp, split_max_size=split_max_size, file_type=preset[1].file_type if preset else None,
                       metadata=_imatrix_metadata(im, imatrix or calibrate) if im else None)
        try:
            log = TensorLog(len(jobs), sum(r.nbytes for _, r, _ in jobs), quiet)
            tensors = [_Tensor(name, ref, t, w.name(name), default, cfg, *weights.get(name, (None, "")),
                               producer=producer if producer and (compressed.get(t) or name in by_gptq) else None)
                       for name, ref, t in jobs]
            pieces = _staged([(c, rows) for c in tensors for rows in c.plan], any(c.uses_torch for c in tensors))
            for c in tensors:
                w.write(c.name, (next(pieces) for _ in c.plan))
                log.tensor(c.out_name, c.ref.shape, c.t, c.ref.nbytes, c.nbytes, c.note())
            w.finish()
        finally:
            w.close()
            if producer:
                producer.close()
    if producer and not quiet:
        from .gptq_stream import summary
        print(summary([c.gptq for c in tensors if c.gptq]), flush=True)
    log.finish(dst)
    return ck


def _check_ggml_options(type_, preset, imatrix, calibrate, overrides, writer_cls):
    """Refuses the ggml-type options (importance matrix, per-tensor overrides) where they do not apply."""
    if imatrix and calibrate:
        raise BadInput("give --imatrix FILE or --calibrate TEXT, not both")
    if preset is None:
        if imatrix:
            raise BadInput(f"--imatrix applies to the ggml types (--type q4_k_m, ...), not "
                           f"{'--type ' + type_ if type_ else 'a conversion without --type'}")
        if overrides not in (None, presets.Overrides()):
            raise BadInput("the per-tensor type options (--tensor-type, --output-tensor-type, --token-embedding-type, "
                           "--pure, --leave-output-tensor) apply to the ggml types (--type q4_k_m, ...)")
        if calibrate and not (type_ and compressed.get(type_)):
            raise BadInput("--calibrate applies to the ggml types (an importance matrix) and to int4/int8 (GPTQ)")
    elif not writer_cls.keeps_quantized:
        what = "--imatrix" if imatrix else "--calibrate" if calibrate else f"--type {type_}"
        raise Unsupported(f"{what}: ggml block types (and their importance matrix) are written to GGUF output only")


def _importance(ck, preset, imatrix, calibrate, samples, ctx, device, quiet):
    """The importance matrix a ggml-type conversion quantizes with: read from --imatrix, or collected from
    --calibrate text over the source itself. None without either, and for one without entries: llama-quantize
    then quantizes (and chooses types) as without one."""
    if preset is None or not (imatrix or calibrate):
        return None
    if imatrix:
        from ..quant.imatrix import read
        im = read(imatrix)
    else:
        from ..verify.imatrix import collect, tokens_for
        from ..verify.model import device_for
        device_for(device)  # a bad --device fails here, before anything runs
        tokens = tokens_for(ck, calibrate, ctx, samples)  # cut as `weightsmith imatrix --ctx --chunks` cuts it
        if not quiet:
            fewer = f" (fewer than --samples {samples}: the text holds no more)" if len(tokens) < samples else ""
            print(f"imatrix: collecting over {len(tokens)} chunks of {ctx} tokens of {calibrate}{fewer}", flush=True)
        im = collect(ck, tokens, progress=_progress("imatrix blocks", ck.config.n_layers, quiet), device=device,
                     datasets=[str(calibrate)])
    if not im.entries:
        from .log import warn
        warn(f"{imatrix or calibrate}: the importance matrix has no entries; quantizing without one "
             f"(as llama-quantize does)")
        return None
    if not set(im.entries) & {r.canonical for r in ck.tensors}:  # llama-quantize would go on without a word
        raise BadInput(f"{imatrix or calibrate}: none of the importance matrix's {len(im.entries)} entries (e.g. "
                       f"{next(iter(im.entries))}) names a tensor of {ck.path}: an imatrix of another model?")
    for name in im.entries:  # llama-quantize refuses the whole matrix for one non-finite value
        w = im.importance(name)
        if not np.isfinite(w).all():
            raise BadInput(f"{imatrix or calibrate}: the importance matrix of {name} holds NaN or Inf")
    return im


class _HessianImatrix:
    """ggml GPTQ's importance matrix: one entry per blk.* matmul input (what `weightsmith imatrix` collects), each
    the diagonal of that input's GPTQ Hessian / 2 (the per-column mean of x^2), known only as its block is reached,
    on the producer's thread; here for the preset rules (an imatrix is given), the quantize.imatrix.* keys and the
    tensors outside the blocks (no entry, as in the imatrix path)."""

    def __init__(self, ck, text_file, n_chunks: int, ctx: int):
        from ..verify.model import SHARED_INPUTS
        self.entries = {f"blk.{i}.{k}.weight": None for i in range(ck.config.n_layers)
                        for names in SHARED_INPUTS for k in names}
        self.datasets, self.chunk_count, self.chunk_size = [str(text_file)], n_chunks, ctx

    def importance(self, name: str):
        return None


def _hessian_importance(ck, opts, quiet):
    """(_HessianImatrix, the calibration tokens) for --method gptq with a ggml type."""
    from ..verify.model import device_for
    from .gptq_stream import calibration_tokens
    device_for(opts.device)  # a bad --device fails here, before anything runs
    tokens = calibration_tokens(ck, opts, quiet)
    if not quiet:
        print(f"gptq: {len(tokens)} chunks of {opts.ctx} tokens of {opts.text}, the preset's ggml types with error "
              f"feedback; the importance matrix from each input's Hessian", flush=True)
    return _HessianImatrix(ck, opts.text, len(tokens), opts.ctx), tokens


def _progress(desc: str, total: int, quiet: bool):
    """A tqdm bar on stderr (a terminal only) as a progress(i, n) callback; it closes itself at the end."""
    import sys
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="blk", file=sys.stderr, disable=quiet or not sys.stderr.isatty(),
               leave=False)

    def progress(i, n):
        bar.update(1)
        if i + 1 >= n:
            bar.close()
    return progress


# what llama-quantize records of the importance matrix it used, in its order (tools/quantize/quantize.cpp: kv
# overrides, strings cut at 127 bytes, counts as uint32); the chunk count only when it is known (above 0)
IMATRIX_KEYS = {"file": "quantize.imatrix.file", "dataset": "quantize.imatrix.dataset",
                "entries": "quantize.imatrix.entries_count", "chunks": "quantize.imatrix.chunks_count"}


def _imatrix_metadata(im, source) -> dict:
    """quantize.imatrix.* as llama-quantize writes them for an imatrix read from file `source` (--calibrate: as if
    the text were that file; the collected matrix names the text as its dataset, as `weightsmith imatrix` does)."""
    meta = {IMATRIX_KEYS["file"]: _cut(str(source))}
    if im.datasets:
        meta[IMATRIX_KEYS["dataset"]] = _cut(im.datasets[0])
    meta[IMATRIX_KEYS["entries"]] = len(im.entries)
    if im.chunk_count > 0:
        meta[IMATRIX_KEYS["chunks"]] = int(im.chunk_count)
    return meta


def _cut(text: str) -> str:
    """At most 127 bytes, as strncpy into llama_model_kv_override's val_str[128] leaves it (and up to a NUL); a
    character the cut would split is dropped whole, so that the value stays UTF-8 (llama-quantize would write its
    first bytes)."""
    return text.encode("utf-8", "surrogateescape").split(b"\0")[0][:127].decode("utf-8", "ignore")


def _weights_for(im, name: str, ref, t: str, preset_name: str) -> tuple[np.ndarray | None, str]:
    """(the importance of each input column of one tensor, as llama-quantize hands it to ggml_quantize_chunk, or
    None; the log's note). llama-quantize looks an entry up for every tensor whose type changes: none -> quantized
    without one (but a q2_k_s Q2_K matrix is refused, as presets.Mixture refuses it with no imatrix at all); one
    whose length is not the row length -> an error, except for token_embd (a lookup, never in an imatrix by
    rights), which is then quantized without it."""
    if t == ref.dtype or _passes_through(ref, t):
        return None, ""
    w = im.importance(name)
    weighted = not dtypes.is_float(t) and quant.get(t).weighted
    if w is None:
        if presets.requires_imatrix(preset_name, name, t):
            raise BadInput(f"--type {preset_name}: {name} would be {t}, which llama-quantize writes only with an "
                           f"importance matrix, and the importance matrix has no entry for it")
        return None, " | no imatrix entry" if weighted else ""
    n = ref.shape[-1] if ref.shape else 1
    if w.shape[0] != n:
        if name == "token_embd.weight":
            return None, f" | imatrix entry of {w.shape[0]} values ignored (rows of {n})"
        raise BadInput(f"{name}: the importance matrix has {w.shape[0]} values for it, its rows {n} "
                       f"(an imatrix of another model?)")
    if not weighted:
        return None, ""
    quant.get(t).weighted_kernel  # a missing weighted kernel is Unsupported here, before anything is written
    return w, " | imatrix"


def _int_options(type_, calibrate, method, group_size, actorder=None, observer=None):
    """(--type with --group-size applied, the scheme GPTQ quantizes to or None, whether GPTQ runs inside the ggml
    types of a preset) for int4/int8 and ggml output."""
    scheme = compressed.get(type_) if type_ else None
    is_int = scheme is not None and scheme.format == compressed.FORMAT
    ggml = scheme is None and type_ is not None and presets.get(type_) is not None
    if group_size is not None and not is_int:
        raise BadInput("--group-size applies to --type int4 / int8")
    if method is not None and not (is_int or ggml):
        raise BadInput("--method applies to --type int4 / int8 and to the ggml types (q4_k_m, q8_0, ...)")
    if calibrate and scheme is not None and not is_int:
        raise BadInput(f"--calibrate applies to int4 / int8 (GPTQ) and the ggml types, not --type {type_}")
    from .gptq_stream import METHODS
    if method is not None and method not in METHODS:
        raise BadInput(f"--method {method}: {' or '.join(METHODS)}")
    if method == "gptq" and not calibrate:
        raise BadInput("--method gptq needs calibration text (--calibrate TEXT)")
    ggml_gptq = ggml and method == "gptq"  # without --method: the importance matrix alone, as before
    if ggml_gptq and actorder == "static":
        raise BadInput(f"--actorder static: GPTQ inside the ggml types (--type {type_}) runs in natural column order "
                       f"(a block's scales are fixed before its columns are rounded); leave --actorder out or give "
                       f"--actorder none")
    if observer is not None and scheme is None:
        raise BadInput("--observer applies to the compressed-tensors types (int4, int8, w8a8)")
    if group_size is not None:
        scheme = compressed.grouped(scheme, group_size)
        type_ = scheme.name
    if observer is not None:
        scheme = compressed.observed(scheme, observer)
        type_ = scheme.name
    return type_, scheme if is_int and calibrate and method != "rtn" else None, ggml_gptq


def _passes_through(ref, t: str) -> bool:
    return t == ref.dtype and not dtypes.is_float(t) and ref.raw is not None


# Values per piece: a tensor is read, converted and written in row ranges of about this many values, so memory
# holds a few pieces, not a few tensors, and each piece is still in cache when it is converted and written.
PIECE_VALUES = 1 << 20


class _Tensor:
    """One tensor to convert to type t, piece by piece, and what came out (bytes, error figure) for the log."""

    def __init__(self, name, ref, t: str, out_name: str, float_dtype: str, cfg, importance=None,
                 imatrix_note: str = "", producer=None):
        self.name, self.ref, self.t, self.out_name, self.float_dtype = name, ref, t, out_name, float_dtype
        self.importance = importance  # float32 [in] from an importance matrix, for the ggml types that take one
        self.imatrix_note = imatrix_note  # what the log says of it (" | imatrix", " | no imatrix entry", ...)
        self.producer = producer  # gptq_stream.Producer: where a GPTQ-quantized matrix comes from (whole)
        self.gptq = None  # its gptq_stream.Stats
        self.plan = self._plan(cfg)
        scheme = compressed.get(t)
        self.nbytes = compressed.shape_nbytes(scheme) if scheme else 0  # the pieces bring values and scales
        self.err2 = self.norm2 = 0.0

    def _plan(self, cfg) -> list[tuple[int, int] | None]:
        """The row ranges it is read in; [None] for one piece holding it whole (0-d tensors, bytes passed through,
        readers that cannot read rows, GPTQ's matrices). Rope q/k ranges hold whole heads (relayout is per head).
        int8/int4/w8a8/fp8 round-to-nearest has a scale per row or per group of a row's columns: any rows will do."""
        ref = self.ref
        if ref.rows is None or not ref.shape or _passes_through(ref, self.t) or self.producer:
            return [None]
        n_rows = ref.shape[0]
        heads = layout.rope_heads(mapping.canonical(ref.canonical).row.rope, cfg)
        unit = n_rows // heads if heads else 1
        step = max(PIECE_VALUES // max(numel(ref.shape[1:]) * unit, 1), 1) * unit
        return [(r0, min(r0 + step, n_rows)) for r0 in range(0, n_rows, step)]

    @property
    def uses_torch(self) -> bool:
        """Unpacking a compressed-tensors source, or GPTQ's matrices: whole tensors through torch ops."""
        return bool(self.producer or compressed.get(self.ref.dtype))

    def read(self, rows):
        """Rows [r0, r1) (None: all) as stored: quantized bytes to pass through, or values in canonical layout, as
        a numpy array (dtypes.NUMPY_TYPES)."""
        ref = self.ref
        if _passes_through(ref, self.t):
            return ref.raw()
        return dtypes.to_numpy(ref.load()) if rows is None else ref.rows(*rows)

    def convert(self, data):
        """A piece read() gave, as what the writer takes."""
        if not _passes_through(self.ref, self.t):
            data = self._convert(data)
        self.nbytes += data.nbytes
        return data

    def _convert(self, x):
        t = self.t
        if dtypes.is_float(t):
            return dtypes.cast(x, t)
        scheme = compressed.get(t)
        if self.producer and not scheme:  # GPTQ in a ggml type: its bytes, from the producer's thread
            (data, values), self.gptq = self.producer.take(self.name)
            self.err2, self.norm2 = quant.squared_norms(values, dtypes.to_torch(x).float().reshape(values.shape))
            return data
        if scheme and self.producer:  # GPTQ: the whole matrix, quantized on the producer's thread
            x = dtypes.to_torch(x).float()
            data, self.gptq = self.producer.take(self.name)
            self.err2, self.norm2 = quant.squared_norms(compressed.dequantize(data.packed, data.scale, scheme), x)
            return data
        if scheme:  # round-to-nearest, these rows: int8 per channel, int4 per group of columns
            data, e2, n2 = compressed.quantize_rows(x.reshape(x.shape[0], -1), scheme, self.float_dtype,
                                                    self.out_name)
            self.err2, self.norm2 = self.err2 + e2, self.norm2 + n2
            return data
        x = x.reshape(x.shape[0], -1)
        qt = quant.get(t)
        out = np.empty((x.shape[0], x.shape[1] // qt.block * qt.type_size), dtype=np.uint8)
        e2, n2 = quant.quantize_into(x, t, out, self.out_name, self.importance)
        self.err2, self.norm2 = self.err2 + e2, self.norm2 + n2
        return out

    def note(self) -> str:
        """The log's extra fields: a quantized tensor's relative RMS error (and where it was requantized from)."""
        if dtypes.is_float(self.t) or _passes_through(self.ref, self.t):
            return ""
        note = (self.gptq.note() if self.gptq else "") + f" | rel rms err {quant.relative(self.err2, self.norm2):.2%}"
        note += self.imatrix_note
        if not dtypes.is_float(self.ref.dtype):
            note += f" | requantized from {self.ref.dtype} through f32"
        return note


def _staged(pieces, torch_work: bool = False):
    """Each (tensor, rows) piece read and converted, in order, in three stages that overlap: while the caller writes
    piece k, piece k+1 is converted (quantized on all cores) and piece k+2 read, each stage on its own thread.
    File I/O, torch ops and the numba kernels release the GIL; at most four pieces are in memory."""
    from concurrent.futures import ThreadPoolExecutor
    from ..formats.common import map_large_allocations
    map_large_allocations()
    torch = threads = None
    if torch_work:  # torch's ops on one thread: an OpenMP team would only spin against the stages on busy cores
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as converter:
            reads = [reader.submit(c.read, rows) for c, rows in pieces[:2]]

            def convert(k):
                return pieces[k][0].convert(reads[k].result())
            ahead = converter.submit(convert, 0) if pieces else None
            for k in range(len(pieces)):
                out = ahead.result()
                reads[k] = None  # the source piece is converted: let it go
                if k + 2 < len(pieces):
                    reads.append(reader.submit(pieces[k + 2][0].read, pieces[k + 2][1]))
                ahead = converter.submit(convert, k + 1) if k + 1 < len(pieces) else None
                yield out
                del out
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
