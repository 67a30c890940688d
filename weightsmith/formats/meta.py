"""Meta checkpoints: params.json + consolidated.NN.pth (one per model-parallel rank) [+ checklist.chk, tokenizer.model].

.pth files are pickles. Reading a checkpoint reads each file's tensor table only (pth_file: the zip directory and
data.pkl, through an unpickler that admits what torch's weights-only one does and calls nothing), so inspect never
imports torch. Tensors are loaded with torch.load(weights_only=True, mmap=True), which refuses any pickle that would
run code and maps tensor bytes instead of reading them, once per file, on first use.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import struct
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..lazy import torch

from .. import dtypes
from ..checkpoint import Checkpoint, TensorRef, numel, order
from ..config import check_shapes, from_meta_params, to_meta_params
from ..convert import layout, mapping, tokenizer
from ..convert.log import warn
from ..errors import BadInput, Unsupported
from . import pth_file
from .common import (Spec, as_bytes, confined, copy_files, pwrite_all, read_json, release_mapped,
                     release_mapped_range, write_json)

SHARD_RE = re.compile(r"consolidated\.(\d+)\.pth$")
TOKENIZER_FILES = ("tokenizer.model",)
# What torch.load raises on damaged bytes: its zip reader, the weights-only unpickler and tensor rebuilding fail in
# all of these ways (found by bench/fuzz_readers.py). Only UnpicklingError naming a refused global is unsafe.
PTH_ERRORS = (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, IndexError,
              KeyError, TypeError, AttributeError, struct.error, OverflowError, MemoryError, RecursionError,
              AssertionError)  # torch asserts on a malformed persistent id
UNSAFE_RE = re.compile(r"GLOBAL|unsupported class|reduce for unrecognized", re.IGNORECASE)


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "params.json").is_file() or any(path.glob("consolidated.*.pth"))
    return path.suffix in (".pth", ".pt")


def _shards(path: Path) -> tuple[Path, list[Path]]:
    if path.is_file():
        return path.parent, [path]
    files = sorted((f for f in path.glob("consolidated.*.pth") if SHARD_RE.search(f.name)),
                   key=lambda f: int(SHARD_RE.search(f.name).group(1)))
    if not files:
        raise BadInput(f"{path}: no consolidated.NN.pth files")
    ranks = [int(SHARD_RE.search(f.name).group(1)) for f in files]
    if ranks != list(range(len(files))):
        raise BadInput(f"{path}: model-parallel shards are not consolidated.00 .. {len(files) - 1:02d} "
                       f"(found {', '.join(f.name for f in files)})")
    return path, files


def load_pth(file: Path) -> dict:
    """A state dict from a .pth, never executing the pickle."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols on stderr: one error line only
            warnings.simplefilter("ignore")
            sd = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except PTH_ERRORS as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        refused = [ln for ln in lines if UNSAFE_RE.search(ln)]
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise pth_file.unsafe(file, refused[0]) from None
        raise pth_file.corrupt(file, f"{type(e).__name__}: {lines[-1][:200]}") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise pth_file.not_tensors(file)
    return sd


class _Shard:
    """One consolidated.NN.pth: its tensor table, read without torch, and its tensors, which torch.load maps on the
    first tensor asked for (once: the state dict is kept, its tensors views of the one mapping)."""

    def __init__(self, table: pth_file.Table):
        self.table, self._sd, self._lock = table, None, threading.Lock()

    def tensor(self, key: str) -> torch.Tensor:
        with self._lock:
            if self._sd is None:
                sd = load_pth(self.table.path)
                got = {k: (str(v.dtype), tuple(v.shape)) for k, v in sd.items()}
                want = {k: (f"torch.{e.dtype}", e.shape) for k, e in self.table.tensors.items()}
                if got != want:  # the table and torch read the file differently: trust neither
                    bad = next((k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)))
                    raise pth_file.corrupt(self.table.path, f"torch.load reads tensor {bad} as {got.get(bad)}, its "
                                                            f"tensor table as {want.get(bad)}")
                self._sd = sd
        return self._sd[key]


def _parts(shards: list[_Shard], key: str) -> list[torch.Tensor]:
    return [s.tensor(key) for s in shards]


def read_checklist(base: Path) -> dict[str, str] | None:
    chk = base / "checklist.chk"
    if not chk.is_file():
        return None
    entries = {}
    for n, line in enumerate(chk.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{32}", parts[0]):
            raise BadInput(f"{chk}:{n}: expected 'md5  filename', found {line!r}")
        entries[parts[1]] = parts[0].lower()
    return entries


def verify_checklist(base: Path, entries: dict[str, str]):
    for name, want in entries.items():
        f = confined(base, name, "checklist.chk")
        if not f.is_file():
            raise BadInput(f"checklist.chk lists {name}, which is missing from {base}")
        h = hashlib.md5()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
        if h.hexdigest() != want:
            raise BadInput(f"{f}: md5 {h.hexdigest()} differs from checklist.chk's {want}: the download is corrupt "
                           f"(--no-check skips this check)")


def read(path: Path) -> Checkpoint:
    base, files = _shards(path)
    params = read_json(base / "params.json", "the model hyperparameters")
    if not isinstance(params, dict):
        raise BadInput(f"{base / 'params.json'}: expected a JSON object")
    dim = params.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise BadInput(f"{base / 'params.json'}: field 'dim' is missing or not a positive integer")
    tables = [pth_file.read_table(f) for f in files]
    sds = [t.tensors for t in tables]
    shards = [_Shard(t) for t in tables]
    n = len(sds)
    refs: dict[str, TensorRef] = {}
    stored: dict[str, tuple] = {}  # canonical -> (merge axis, [(table, entry) of each shard])
    for key, t0 in sds[0].items():
        name = mapping.lookup("meta", key)
        if name is None:
            continue
        missing = [files[r].name for r, sd in enumerate(sds) if key not in sd]
        if missing:
            raise BadInput(f"tensor {key} is in {files[0].name} but missing from {', '.join(missing)}")
        entries = [sd[key] for sd in sds]
        axis = layout.merge_axis(name.row.mp, t0.shape, n, dim) if len(t0.shape) > 1 or n == 1 else None
        if n > 1 and name.row.mp is not None and len(t0.shape) < 2:
            raise BadInput(f"{files[0].name}: tensor {key} has shape {list(t0.shape)}, expected a matrix")
        shape = layout.merged_shape(axis if n > 1 else None, [e.shape for e in entries], key)
        dtype = dtypes.type_name(t0.dtype)
        if any(e.dtype != t0.dtype for e in entries):
            raise BadInput(f"{key}: model-parallel shards disagree in dtype ({[e.dtype for e in entries]})")
        stored[name.canonical] = (axis, list(zip(tables, entries)))
        refs[name.canonical] = TensorRef(
            key, name.canonical, shape, dtype, numel(shape) * t0.itemsize,
            lambda shards=shards, axis=axis, key=key: _load(axis, _parts(shards, key), key),
            rows=(lambda r0, r1, shards=shards, axis=axis, key=key: _rows(axis, _parts(shards, key), r0, r1, key))
            if shape else None)
    for r, sd in enumerate(sds[1:], 1):
        extra = set(sd) - set(sds[0])
        if extra:
            raise BadInput(f"{files[r].name} has tensor {sorted(extra)[0]}, which {files[0].name} lacks")
    shapes = {k: r.shape for k, r in refs.items()}
    if "output.weight" in refs and _same_as_embeddings(refs, stored):
        del shapes["output.weight"]  # Llama 3.2: Meta stores a copy of the tied embeddings; the model ties them
        _check_tied_on_load(refs["token_embd.weight"], stored)
    cfg = from_meta_params(params, shapes, str(base / "params.json"))
    check_shapes(cfg, shapes, lambda c: mapping.rename(c, "meta"), str(base))
    checklist = read_checklist(base)
    info = {"files": [f.name for f in files], "model_parallel": n}
    if checklist is not None:
        info["checklist"] = sorted(checklist)
    ck = Checkpoint(format="meta", path=path, config=cfg, tensors=order(refs, cfg),
                    tokenizer_files={n: base / n for n in TOKENIZER_FILES if (base / n).is_file()}, info=info)
    if checklist is not None:
        ck.integrity_check = lambda: verify_checklist(base, checklist)
    return ck


def _load(axis, parts, key) -> torch.Tensor:
    """The merged tensor as a fresh copy; the mapped shard pages it came from are released."""
    t = layout.merge(axis, parts, key)
    if t is parts[0]:
        t = t.clone()
    for p in parts:
        release_mapped(p)
    return t


def _rows(axis, parts, r0: int, r1: int, name: str) -> np.ndarray:
    """Rows [r0, r1) of the merged tensor, from the shards that hold them, as a fresh numpy array; a replicated
    tensor's rows must be the same bytes in every shard (as layout.merge requires of the whole)."""
    if axis == 1 or axis is None:
        pieces = [p[r0:r1] for p in parts]
    else:
        pieces = [parts[k][a:b] for k, a, b in layout.row_bands([p.shape[0] for p in parts], r0, r1)]
    # numpy, not torch.cat: torch ops here would start OpenMP teams that spin against the pipeline's own threads
    arrays = [dtypes.to_numpy(p) for p in pieces]
    if axis is None:
        if any(a.tobytes() != arrays[0].tobytes() for a in arrays[1:]):
            raise BadInput(f"{name}: replicated tensor differs between model-parallel shards")
        arrays = arrays[:1]
    out = np.concatenate(arrays, axis=axis) if len(arrays) > 1 else arrays[0].copy()
    for p in pieces:
        release_mapped_range(p.data_ptr(), p.nbytes)
    return out


TIED_SAMPLE = 64  # rows of output.weight compared with tok_embeddings when the checkpoint is read


def _same_as_embeddings(refs, stored) -> bool:
    """Whether output.weight is a copy of tok_embeddings: a one-row test first, so untied models cost nothing.

    From the stored bytes (no torch), the first row and TIED_SAMPLE rows spread over the matrix: reading both whole
    would cost seconds for a 128K vocabulary, and inspect reads headers only. The other rows are compared as the
    embeddings are loaded (_check_tied_on_load). Shards torch would rearrange (strided, big-endian) are loaded and
    compared whole."""
    e, o = refs.get("token_embd.weight"), refs["output.weight"]
    if e is None or e.shape != o.shape or e.dtype != o.dtype or not e.shape or not e.shape[0]:
        return False
    (ea, ep), (oa, op) = stored[e.canonical], stored[o.canonical]
    if not _as_stored(ep + op):
        te, to = e.load(), o.load()
        return torch.equal(te[:1], to[:1]) and torch.equal(te, to)
    rows = e.shape[0]
    return all(_stored_rows(ea, ep, r, r + 1) == _stored_rows(oa, op, r, r + 1)
               for r in sorted({0, rows - 1, *(i * rows // TIED_SAMPLE for i in range(TIED_SAMPLE))}))


def _as_stored(parts) -> bool:
    """Whether torch loads these shards' bytes as they lie in the files (contiguous, little-endian)."""
    return all(e.contiguous and t.little_endian for t, e in parts)


def _check_tied_on_load(emb: TensorRef, stored):
    """The rest of _same_as_embeddings's test: each time the embeddings are loaded (whole or rows), output.weight's
    stored rows must equal theirs, or the conversion stops (it was planned without output.weight)."""
    (ea, ep), (oa, op) = stored["token_embd.weight"], stored["output.weight"]
    if not _as_stored(ep + op):
        return  # compared whole already

    def check(r0: int, r1: int):
        step = max(1, (64 << 20) // max(emb.nbytes // emb.shape[0], 1))  # 64 MB of rows at a time
        for a in range(r0, r1, step):
            b = min(a + step, r1)
            if _stored_rows(ea, ep, a, b) != _stored_rows(oa, op, a, b):
                raise BadInput(f"{ep[0][0].path.parent}: output.weight equals tok_embeddings.weight in the "
                               f"{TIED_SAMPLE} rows compared on reading, so it was taken for a tied copy, but differs "
                               f"within rows [{a}, {b})")

    load, rows = emb.load, emb.rows
    emb.load = lambda: (check(0, emb.shape[0]), load())[1]
    if rows is not None:
        emb.rows = lambda r0, r1: (check(r0, r1), rows(r0, r1))[1]


def _stored_rows(axis, parts, r0: int, r1: int) -> bytes | memoryview:
    """Rows [r0, r1) of a merged matrix as its shards store them (contiguous, little-endian), read from the files:
    _rows's bytes, without torch."""
    def read(table, e, a, b) -> memoryview:
        row = numel(e.shape[1:]) * e.itemsize
        with open(table.path, "rb") as f:
            data = os.pread(f.fileno(), (b - a) * row, e.data_start + a * row)
        if len(data) != (b - a) * row:
            raise pth_file.corrupt(table.path, f"tensor {e.name} is cut short")
        return memoryview(data)

    if axis == 1 and len(parts) > 1:  # each shard holds a column band of every row
        bands = [(read(t, e, r0, r1), numel(e.shape[1:]) * e.itemsize) for t, e in parts]
        return b"".join(band[i * w:(i + 1) * w] for i in range(r1 - r0) for band, w in bands)
    if axis == 0:  # each shard holds a band of rows
        pieces = [read(*parts[k], a, b) for k, a, b in layout.row_bands([e.shape[0] for _, e in parts], r0, r1)]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return read(*parts[0], r0, r1)


# ---- writing ----------------------------------------------------------------------------------------------

def embed_split_axis(config) -> int:
    """Which axis to split tok_embeddings on: Llama 3's code (128K vocab) splits the vocab, Llama 1/2's the dim."""
    return 0 if config.vocab_size >= 128000 else 1


class Writer:
    """Writes consolidated.NN.pth files torch.load reads, streaming.

    The zip layout of each file is laid down first by torch.save itself with skip_data (fake tensors, no bytes),
    then each tensor's bytes go to its record's offset as it arrives.
    """
    format = "meta"
    is_dir = True
    keeps_quantized = False  # float formats: quantized sources are dequantized
    vectors_f32 = False
    packs_int = False
    stores_tied_output = True  # Meta's reference model always has an output layer

    def __init__(self, out: Path, ck: Checkpoint, specs: list[Spec], tokenizer_files: dict | None = None, mp: int = 1,
                 **_):
        from torch._subclasses.fake_tensor import FakeTensorMode
        config = ck.config
        self.out, self.ck, self.config, self.mp = out, ck, config, mp
        self.tokenizer_files = ck.tokenizer_files if tokenizer_files is None else tokenizer_files
        self.params = to_meta_params(config)
        self.embed_axis = embed_split_axis(config)
        self.axes = {s.canonical: layout.split_axis(mapping.canonical(s.canonical).row.mp, self.embed_axis) for s in specs}
        self.shapes = {s.canonical: s.shape for s in specs}
        self.fds, self.offsets = [], []
        for rank in range(mp):
            with FakeTensorMode():
                skeleton = {}
                for s in specs:
                    shape = list(s.shape)
                    ax = self.axes[s.canonical]
                    if ax is not None:
                        if shape[ax] % mp:
                            raise BadInput(f"{self.name(s.canonical)}: size {shape[ax]} along dim {ax} does not split "
                                           f"into {mp} model-parallel shards")
                        shape[ax] //= mp
                    skeleton[self.name(s.canonical)] = torch.empty(shape, dtype=dtypes.torch_dtype(s.dtype))
            file = out / f"consolidated.{rank:02d}.pth"
            try:
                with torch.serialization.skip_data(materialize_fake_tensors=True):
                    torch.save(skeleton, file)
            except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as RuntimeError
                raise OSError(f"writing {file.name} failed ({str(e).strip().splitlines()[0]})") from None
            self.offsets.append(dict(zip(skeleton, _record_offsets(file, len(skeleton)))))
            self.fds.append(os.open(file, os.O_RDWR))

    def name(self, canonical: str) -> str:
        return mapping.rename(canonical, "meta")

    def write(self, canonical: str, chunks):
        """chunks: the tensor's rows in order, in pieces; each goes to its place in every shard that holds it."""
        name, axis, r0 = self.name(canonical), self.axes[canonical], 0
        for c in chunks:
            r1 = r0 + c.shape[0]
            row_bytes = c.nbytes // max(c.shape[0], 1)
            if axis == 0:  # each shard holds a band of rows
                size = self.shapes[canonical][0] // self.mp
                places = [(k, c[k * size + a - r0:k * size + b - r0], a * row_bytes)
                          for k, a, b in layout.row_bands([size] * self.mp, r0, r1)]
            elif axis == 1:  # each shard holds a column band of every row
                cols = c.shape[1] // self.mp
                places = [(k, c[:, k * cols:(k + 1) * cols], r0 * row_bytes // self.mp) for k in range(self.mp)]
            else:  # replicated
                places = [(k, c, r0 * row_bytes) for k in range(self.mp)]
            for k, piece, at in places:
                pwrite_all(self.fds[k], as_bytes(piece), self.offsets[k][name] + at)
            r0 = r1

    def finish(self):
        self.close()
        write_json(self.out / "params.json", self.params)
        if "tokenizer.model" in self.tokenizer_files:
            copy_files({"tokenizer.model": self.tokenizer_files["tokenizer.model"]}, self.out)
        else:
            vocab = tokenizer.vocab_for(self.ck, self.tokenizer_files)
            if vocab is not None:
                try:
                    tokenizer.to_meta(vocab, self.out)
                except Unsupported as e:  # the weights are still what was asked for; say what is missing
                    warn(f"no tokenizer.model written: {e}")

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _record_offsets(file: Path, n: int) -> list[int]:
    """Byte offsets of the data records data/0 .. data/n-1 inside a torch.save zip (storage keys follow dict order)."""
    with zipfile.ZipFile(file) as z, open(file, "rb") as fh:
        infos = {i.filename.split("/", 1)[1]: i for i in z.infolist() if "/" in i.filename}
        offsets = []
        for key in range(n):
            offsets.append(pth_file.record_start(fh, infos[f"data/{key}"]))
        return offsets
