"""The importance matrix (weightsmith imatrix, weightsmith.quant.imatrix).

- Collected on tiny models of several families (GQA, tied, rope scaling) it equals one computed here from
  transformers' activations: forward pre-hooks on every nn.Linear of LlamaForCausalLM fed the same chunks, cut here
  from the tokenizers library's own ids; same names, counts, sums; its running perplexity equals transformers'.
- The GGUF file is what gguf-py's GGUFReader reads as llama-imatrix's form (keys, types, shapes); importance() is
  llama-quantize's load_imatrix arithmetic, reimplemented here from the file's bytes (GGUF via gguf-py, .dat via
  struct); the .dat bytes are save_imatrix_legacy's, reimplemented here; round trips are exact where the formats
  allow.
- Hostile files and bad command lines: one clean error, nothing written.
"""
import math
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error
from test_gguf_write import tok_dir  # noqa: F401  (fixture: a small byte-level BPE tokenizer.json)
from weightsmith.errors import BadInput
from weightsmith.quant import imatrix as im

WORDS = ("weightsmith converts llama checkpoints between formats while the quick brown fox jumps over lazy dogs "
         "and numbers like 42 or 1999 appear").split()
CTX, CHUNKS = 32, 5

# transformers' module names -> llama.cpp's tensor names (written out here, not taken from weightsmith's table)
HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    import random
    rnd = random.Random(0)
    p = tmp_path_factory.mktemp("imatrix-text") / "calib.txt"
    p.write_text(" ".join(rnd.choice(WORDS) for _ in range(1200)))
    return p


@pytest.fixture(scope="module")
def models(built, tok_dir, tmp_path_factory):  # noqa: F811
    """family -> an HF directory of the tiny model with the BPE tokenizer beside it."""
    root = tmp_path_factory.mktemp("imatrix-models")

    def get(family):
        d = root / family
        if not d.exists():
            shutil.copytree(built.hf(family), d)
            for f in tok_dir.iterdir():
                shutil.copy(f, d / f.name)
        return d
    return get


def chunks_from_tokenizer(tok_dir, text: str, ctx: int, n: int) -> torch.Tensor:  # noqa: F811
    """The tokenizers library's ids with BOS first, cut as llama-imatrix cuts them (BOS at each chunk's start)."""
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    bos = tk.token_to_id("<s>")
    ids = [bos] + tk.encode(text, add_special_tokens=False).ids
    t = torch.tensor(ids[: len(ids) // ctx * ctx]).view(-1, ctx)[:n].clone()
    t[:, 0] = bos
    return t


def hf_imatrix(path, tokens: torch.Tensor, process_output: bool, tied: bool):
    """{gguf name: (sum of x^2 per column, float64; tokens)} from transformers' Linear inputs, and its logits."""
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    acc = {}

    def hook(name):
        def pre(_module, args):
            x = args[0].double()
            s, c = acc.get(name, (0, 0))
            acc[name] = (s + (x * x).sum(dim=(0, 1)), c + x.shape[0] * x.shape[1])
        return pre
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            if mname == "lm_head":
                name = "output.weight"
            else:
                _, _, i, role = mname.split(".", 3)
                name = f"blk.{i}.{HF_TO_GGUF[role]}.weight"
            mod.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        logits = model(tokens).logits
    if not process_output or tied:  # llama-imatrix: output.weight on request; a tied head is token_embd (never)
        acc.pop("output.weight")
    return acc, logits


@pytest.mark.parametrize("family,process_output", [
    ("llama1", False), ("llama1", True),
    ("llama2_70b", True),   # GQA 8:1, ffn_dim_multiplier
    ("llama31", False),     # rope scaling, GQA 4:1
    ("llama32", True),      # tied embeddings: --process-output collects nothing more
])
def test_imatrix_equals_transformers_activations(models, tok_dir, calib, ws, tmp_path, family,  # noqa: F811
                                                 process_output):
    from families import is_tied
    src = models(family)
    out = tmp_path / "imatrix.gguf"
    r = ws("imatrix", src, "--text", calib, "-o", out, "--ctx", CTX, "--chunks", CHUNKS,
           *(["--process-output"] if process_output else []))
    assert r.returncode == 0, r.stderr
    got = im.read(out)
    tokens = chunks_from_tokenizer(tok_dir, calib.read_text(), CTX, CHUNKS)
    want, logits = hf_imatrix(src, tokens, process_output, is_tied(family))
    assert sorted(got.entries) == sorted(want)
    for name, (s, c) in want.items():
        e = got.entries[name]
        assert e.counts.tolist() == [CHUNKS * CTX] == [c], name
        assert e.in_sum2.dtype == np.float32 and e.in_sum2.shape == s.shape
        # measured worst 1.4e-6 relative (float32 forward passes, ours and transformers')
        np.testing.assert_allclose(e.in_sum2, s.numpy(), rtol=2e-5, err_msg=name)
        assert np.array_equal(got.importance(name), e.in_sum2 / np.float32(c))
    assert got.datasets == [str(calib)] and got.chunk_count == CHUNKS and got.chunk_size == CTX
    # the running perplexity, as llama-imatrix prints it: positions ctx/2 .. ctx-2 predict the next token
    lp = logits[:, CTX // 2:-1].double().log_softmax(-1).gather(-1, tokens[:, CTX // 2 + 1:, None])[..., 0]
    running = [math.exp(-lp[:k].mean().item()) for k in range(1, CHUNKS + 1)]
    line = next(x for x in r.stdout.splitlines() if x.startswith("[1]"))
    printed = [float(x.split("]")[1]) for x in line.rstrip(",").split(",")]
    assert printed == pytest.approx(running, rel=1e-3, abs=1e-3)  # printed to 4 decimals
    assert f"[{CHUNKS}]" in r.stdout and "Final estimate: PPL = " in r.stdout


def test_collect_counts_what_calibrate_streams(models, calib):
    """The API H4's quantize --calibrate uses: collect() over tokens_for(); --chunks limits, all of the text
    otherwise, and names every block matmul once per block."""
    from weightsmith.formats import open_checkpoint
    from weightsmith.verify import imatrix as vim
    ck = open_checkpoint(models("llama2_70b"))
    all_chunks = vim.tokens_for(ck, calib, CTX)
    assert all_chunks.shape[0] > CHUNKS and vim.tokens_for(ck, calib, CTX, CHUNKS).shape == (CHUNKS, CTX)
    got = vim.collect(ck, all_chunks[:2])
    assert sorted(got.entries) == sorted(f"blk.{i}.{r}.weight" for i in range(2) for r in HF_TO_GGUF.values())
    q, k, v = (got.entries[f"blk.1.attn_{x}.weight"] for x in "qkv")
    assert np.array_equal(q.in_sum2, k.in_sum2) and np.array_equal(q.in_sum2, v.in_sum2)  # one shared input
    assert got.entries["blk.0.ffn_down.weight"].in_sum2.shape == (ck.config.ffn_dim,)


# ---- the file forms --------------------------------------------------------------------------------------------

def sample(n_mat_entry=True) -> im.Imatrix:
    """Entries as a collection makes them, plus (optionally) a two-matrix entry with one matrix no token reached
    and a count that is not an integer (llama.cpp rounds it)."""
    rng = np.random.default_rng(0)
    e = {f"blk.{i}.{r}.weight": im.Entry((rng.random(64, dtype=np.float32) * 100).astype(np.float32),
                                         np.array([96], np.float32))
         for i in range(2) for r in ("attn_q", "attn_k", "ffn_down")}
    e["output.weight"] = im.Entry(rng.random(64, dtype=np.float32), np.array([96], np.float32))
    if n_mat_entry:
        e["blk.1.ffn_gate_exps.weight"] = im.Entry(rng.random(2 * 16, dtype=np.float32),
                                                   np.array([0, 40.5], np.float32))
    return im.Imatrix(e, ["calib.txt", "more text.txt"], chunk_count=3, chunk_size=32)


def reference_importance_gguf(path) -> dict:
    """llama-quantize's load_imatrix for a GGUF file, from the tensors gguf-py reads: count = lround(f32 count);
    sums / count in float32, or 1 for each value of a matrix with count 0."""
    import gguf
    r = gguf.GGUFReader(path)
    t = {x.name: np.array(x.data, np.float32).ravel() for x in r.tensors}
    out = {}
    for name in t:
        if not name.endswith(".in_sum2"):
            continue
        base = name[:-len(".in_sum2")]
        sums, counts = t[name], t[base + ".counts"]
        ne0 = sums.size // counts.size
        e = np.empty(sums.size, np.float32)
        for j, c in enumerate(counts):
            cnt = np.float32(math.floor(float(c) + 0.5))  # lround of a non-negative value, then (float)
            e[j * ne0:(j + 1) * ne0] = sums[j * ne0:(j + 1) * ne0] / cnt if cnt > 0 else np.float32(1)
        out[base] = e
    return out


def parse_dat(path):
    """A legacy .dat by its layout: ({name: (ncall, values)}, chunk count, dataset)."""
    b = Path(path).read_bytes()
    pos, entries = 4, {}
    for _ in range(struct.unpack_from("<i", b, 0)[0]):
        n = struct.unpack_from("<i", b, pos)[0]
        name = b[pos + 4:pos + 4 + n].decode()
        ncall, nval = struct.unpack_from("<ii", b, pos + 4 + n)
        pos += 12 + n
        entries[name] = (ncall, np.frombuffer(b, "<f4", nval, pos).copy())
        pos += 4 * nval
    chunks, n = struct.unpack_from("<ii", b, pos)
    return entries, chunks, b[pos + 8:pos + 8 + n].decode()


def reference_dat(gguf_path) -> bytes:
    """save_imatrix_legacy's bytes for the contents of a GGUF imatrix (read by gguf-py): sorted names; ncall =
    ceil(max count / chunk_size); values (sum / count) * ncall in float32 (count 0: 1 * ncall); entries no token
    reached are skipped; then the chunk count and the last dataset's name."""
    import gguf
    r = gguf.GGUFReader(gguf_path)
    cs = int(r.fields["imatrix.chunk_size"].parts[-1][0])
    f = r.fields["imatrix.datasets"]
    datasets = [bytes(f.parts[i]).decode() for i in f.data]
    t = {x.name: np.array(x.data, np.float32).ravel() for x in r.tensors}
    body, n = b"", 0
    for name in sorted(k[:-len(".in_sum2")] for k in t if k.endswith(".in_sum2")):
        # llama-imatrix holds counts as int64, lround of the file's float32 (its loader)
        sums, counts = t[name + ".in_sum2"], [math.floor(float(c) + 0.5) for c in t[name + ".counts"]]
        if max(counts) == 0:
            continue
        ncall = (max(counts) + cs - 1) // cs
        ne0 = sums.size // len(counts)
        vals = np.empty(sums.size, np.float32)
        for i in range(sums.size):
            c, v = np.float32(counts[i // ne0]), sums[i]
            if c == 0:
                v, c = np.float32(1), np.float32(1)
            vals[i] = (v / c) * np.float32(ncall)
        body += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, sums.size) + vals.tobytes()
        n += 1
    chunk_count = int(r.fields["imatrix.chunk_count"].parts[-1][0])
    return struct.pack("<i", n) + body + struct.pack("<ii", chunk_count, len(datasets[-1])) + datasets[-1].encode()


def test_gguf_form_read_by_gguf_py(tmp_path):
    import gguf
    p = tmp_path / "m.gguf"
    im.write(p, sample())
    r = gguf.GGUFReader(p)
    V = gguf.GGUFValueType
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == ["general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"]
    assert fields["general.type"].types == [V.STRING] and bytes(fields["general.type"].parts[-1]) == b"imatrix"
    assert fields["imatrix.datasets"].types == [V.ARRAY, V.STRING]
    assert [bytes(fields["imatrix.datasets"].parts[i]).decode() for i in fields["imatrix.datasets"].data] == \
        ["calib.txt", "more text.txt"]
    assert fields["imatrix.chunk_count"].types == [V.UINT32] and fields["imatrix.chunk_count"].parts[-1][0] == 3
    assert fields["imatrix.chunk_size"].types == [V.UINT32] and fields["imatrix.chunk_size"].parts[-1][0] == 32
    names = [t.name for t in r.tensors]
    assert names == [n + s for n in sorted(sample().entries) for s in (".in_sum2", ".counts")]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        n_mat = 2 if "exps" in t.name else 1
        # ggml's ne [n, n_mat] / [1, n_mat], trailing 1s dropped as llama-imatrix's ggml writer drops them
        want = [1, 2] if t.name.endswith(".counts") else [16, 2]
        assert list(t.shape) == (want if n_mat == 2 else want[:1] if "counts" in t.name else [64])
    # importance() is load_imatrix's arithmetic on those bytes, bit for bit
    ref = reference_importance_gguf(p)
    got = im.read(p)
    assert sorted(ref) == sorted(got.entries)
    for name, want in ref.items():
        assert np.array_equal(got.importance(name), want), name
    assert got.importance("blk.1.ffn_gate_exps.weight")[:16].tolist() == [1.0] * 16  # count 0
    assert got.importance("blk.9.attn_q.weight") is None


def test_round_trips(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    im.write(a, sample())
    im.write(b, im.read(a))
    assert a.read_bytes() == b.read_bytes()  # GGUF -> GGUF: exact
    # GGUF -> .dat: save_imatrix_legacy's bytes (the expert no token reached is written as ones)
    d1, d2 = tmp_path / "a.dat", tmp_path / "b.dat"
    im.write(d1, im.read(a), "dat")
    assert d1.read_bytes() == reference_dat(a)
    entries, chunks, dataset = parse_dat(d1)
    assert chunks == 3 and dataset == "more text.txt" and entries["blk.0.attn_q.weight"][0] == 3  # ceil(96 / 32)
    # .dat -> Imatrix: importance is llama-quantize's legacy arithmetic (values / ncall)
    back = im.read(d1)
    assert back.chunk_size == 0 and back.datasets == ["more text.txt"] and back.chunk_count == 3
    for name, (ncall, values) in entries.items():
        assert np.array_equal(back.importance(name), values / np.float32(ncall)), name
        # and close to the GGUF's sum/count: one float32 rounding more (x ncall, / ncall)
        np.testing.assert_allclose(back.importance(name), im.read(a).importance(name), rtol=3e-7)
    # .dat -> GGUF -> .dat: exact
    im.write(c, back)
    im.write(d2, im.read(c), "dat")
    assert d1.read_bytes() == d2.read_bytes()
    ref = reference_importance_gguf(c)  # and llama-quantize reads that GGUF as it reads the .dat
    assert sorted(ref) == sorted(back.entries) and all(np.array_equal(ref[k], back.importance(k)) for k in ref)


def test_empty_datasets_and_nothing_to_write(tmp_path):
    """llama-imatrix writes imatrix.datasets even when empty (llama-quantize needs the key); gguf-py's writer
    refuses empty arrays, so weightsmith packs that one case itself."""
    s = sample(n_mat_entry=False)
    s.datasets = []
    im.write(tmp_path / "e.gguf", s)
    assert im.read(tmp_path / "e.gguf").datasets == []
    with pytest.raises(BadInput):
        im.write(tmp_path / "x.gguf", im.Imatrix({}, [], 0, 0))
    with pytest.raises(BadInput, match="no entry"):
        im.write(tmp_path / "x.dat", im.Imatrix({"blk.0.attn_q.weight": im.Entry(
            np.ones(4, np.float32), np.zeros(1, np.float32))}, ["t"], 0, 32), "dat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.gguf"]


LLAMA_IMATRIX = Path("/tmp/lcp/build/bin/llama-imatrix")


@pytest.mark.skipif(not LLAMA_IMATRIX.exists(), reason="llama-imatrix not built (bench/common.py)")
def test_llama_imatrix_reads_and_rewrites_our_files(tmp_path):
    """llama-imatrix itself loads our files (--in-file, no model: it only combines and saves): the GGUF it saves
    again is byte for byte ours, and so is the .dat it saves from our .dat."""
    ours = tmp_path / "ours.gguf"
    s = sample(n_mat_entry=False)
    s.datasets = ["calib.txt"]
    im.write(ours, s)
    for src, fmt_ in ((ours, "gguf"), (tmp_path / "ours.dat", "dat")):
        if fmt_ == "dat":
            im.write(src, im.read(ours), "dat")
        out = tmp_path / f"theirs.{fmt_}"
        p = subprocess.run([LLAMA_IMATRIX, "-m", "unused.gguf", "--in-file", src, "-o", out, "--output-format",
                            fmt_, "-c", "32"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        if fmt_ == "gguf":
            assert out.read_bytes() == ours.read_bytes()
        else:  # llama-imatrix rebuilds sums as values * chunk_size: ours has them exact for chunk size 32
            theirs = im.read(out)
            for name, e in im.read(src).entries.items():
                np.testing.assert_allclose(theirs.importance(name), e.importance(), rtol=3e-7)


# ---- hostile files -------------------------------------------------------------------------------------------

def gguf_file(path, tensors: dict, kv=None, type_="imatrix"):
    """An imatrix-shaped GGUF written by gguf-py directly (so that anything can be put in it)."""
    import gguf
    w = gguf.GGUFWriter(path, "")
    if type_:
        w.add_type(type_)
    for k, v in ({"imatrix.datasets": ["t.txt"], "imatrix.chunk_count": 1, "imatrix.chunk_size": 32}
                 if kv is None else kv).items():
        if isinstance(v, list):
            w.add_array(k, v)
        else:
            w.add_uint32(k, v)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def dat_file(path, entries, trailer=b"", count=None):
    body = b"".join(struct.pack("<i", len(n)) + n + struct.pack("<ii", nc, len(v)) + np.asarray(v, "<f4").tobytes()
                    for n, nc, v in entries)
    Path(path).write_bytes(struct.pack("<i", len(entries) if count is None else count) + body + trailer)
    return path


Q = b"blk.0.attn_q.weight"
S, C = "blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts"
ONE = np.ones((1, 8), np.float32)
N1 = np.array([[32]], np.float32)


def hostile(tmp: Path):
    good = tmp / "good.gguf"
    im.write(good, sample(n_mat_entry=False))
    gb = good.read_bytes()
    good_dat = tmp / "good.dat"
    im.write(good_dat, im.read(good), "dat")
    db = good_dat.read_bytes()
    (tmp / "empty").write_bytes(b"")
    (tmp / "text.txt").write_text("hello, I am not an importance matrix at all\n" * 20)
    (tmp / "short").write_bytes(b"\x01\x00")
    (tmp / "trunc.gguf").write_bytes(gb[:len(gb) - 100])
    (tmp / "trunc.dat").write_bytes(db[:200])
    dup = bytearray(gb)  # two tensor infos with one name: rename blk.0.attn_k's pair to blk.0.attn_q's
    assert dup.count(b"blk.0.attn_k.weight.in_sum2") == 1
    i = dup.index(b"blk.0.attn_k.weight.in_sum2")
    dup[i:i + 27] = b"blk.0.attn_q.weight.in_sum2"
    (tmp / "dup.gguf").write_bytes(bytes(dup))
    # a legacy header claiming 2**31-1 values for a 40-byte file: refused before anything is allocated
    lying = struct.pack("<i", 1) + struct.pack("<i", len(Q)) + Q + struct.pack("<ii", 1, 2**31 - 1) + b"\0" * 8
    (tmp / "lying_nval.dat").write_bytes(lying)
    return {
        "empty": "empty",
        "text.txt": "not an importance matrix",
        "short": "not an importance matrix",
        "trunc.gguf": "truncated",
        "trunc.dat": "truncated",
        "dup.gguf": "twice",
        "lying_nval.dat": "values of blk.0.attn_q.weight",
        "lying_entries.dat": dat_file(tmp / "lying_entries.dat", [(Q, 1, [1.0])], count=10**9) and "entries",
        "no_counts.gguf": gguf_file(tmp / "no_counts.gguf", {S: ONE}) and "without",
        "no_sums.gguf": gguf_file(tmp / "no_sums.gguf", {C: N1}) and "without",
        "negative.gguf": gguf_file(tmp / "negative.gguf", {S: -ONE, C: N1}) and "negative",
        "nan.gguf": gguf_file(tmp / "nan.gguf", {S: ONE * np.nan, C: N1}) and "nan",
        "nan_count.gguf": gguf_file(tmp / "nan_count.gguf", {S: ONE, C: N1 * np.nan}) and "nan",
        "neg_count.gguf": gguf_file(tmp / "neg_count.gguf", {S: ONE, C: -N1}) and "negative",
        "f16.gguf": gguf_file(tmp / "f16.gguf", {S: ONE.astype(np.float16), C: N1}) and "F32",
        "ragged.gguf": gguf_file(tmp / "ragged.gguf", {S: np.ones((1, 7), np.float32),
                                                       C: np.array([[1, 1]], np.float32)}) and "whole row",
        "no_counts_values.gguf": gguf_file(tmp / "no_counts_values.gguf",
                                           {S: ONE, C: np.zeros((1, 0), np.float32)}) and "at least one",
        "token_embd.gguf": gguf_file(tmp / "token_embd.gguf", {"token_embd.weight.in_sum2": ONE,
                                                               "token_embd.weight.counts": N1}) and "token_embd",
        "other_tensor.gguf": gguf_file(tmp / "other_tensor.gguf", {S: ONE, C: N1, "blk.0.attn_q.weight": ONE})
        and "neither",
        "model.gguf": gguf_file(tmp / "model.gguf", {"blk.0.attn_q.weight": ONE}, kv={}, type_="model") and "model",
        "no_metadata.gguf": gguf_file(tmp / "no_metadata.gguf", {S: ONE, C: N1}, kv={}) and "metadata",
        "no_entries.gguf": gguf_file(tmp / "no_entries.gguf", {}) and "no entries",
        "dup.dat": dat_file(tmp / "dup.dat", [(Q, 1, [1.0]), (Q, 1, [2.0])]) and "twice",
        "ncall0.dat": dat_file(tmp / "ncall0.dat", [(Q, 0, [1.0])]) and "calls",
        "nval0.dat": dat_file(tmp / "nval0.dat", [(Q, 1, [])]) and "0 values",
        "neg.dat": dat_file(tmp / "neg.dat", [(Q, 1, [-1.0])]) and "negative",
        "nul_name.dat": dat_file(tmp / "nul_name.dat", [(Q + b"\0x", 1, [1.0])]) and "NUL",
        "bad_utf8.dat": dat_file(tmp / "bad_utf8.dat", [(b"blk.\xff", 1, [1.0])]) and "UTF-8",
        "output_norm.dat": dat_file(tmp / "output_norm.dat", [(b"output_norm.weight", 1, [1.0])]) and "output_norm",
        "trailing.dat": dat_file(tmp / "trailing.dat", [(Q, 1, [1.0])], struct.pack("<ii", 1, 1) + b"tX") and "after",
        "half_trailer.dat": dat_file(tmp / "half_trailer.dat", [(Q, 1, [1.0])], b"\1\0") and "truncated",
    }


def test_hostile_files_refused(tmp_path):
    for name, what in hostile(tmp_path).items():
        with pytest.raises(BadInput) as e:
            im.read(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and what.lower() in msg.lower(), (name, msg)
        assert "\n" not in msg, (name, msg)
    with pytest.raises(BadInput, match="no such file"):
        im.read(tmp_path / "missing.gguf")
    with pytest.raises(BadInput, match="not a file"):
        im.read(tmp_path)
    # a .dat without its optional trailer, and one with an empty dataset name, are llama-imatrix's own forms
    ok = im.read(dat_file(tmp_path / "bare.dat", [(Q, 2, [4.0, 6.0])]))
    assert ok.importance(Q.decode()).tolist() == [2.0, 3.0] and ok.datasets == [] and ok.chunk_count == 0
    assert im.read(dat_file(tmp_path / "nods.dat", [(Q, 1, [1.0])], struct.pack("<ii", 7, 0))).chunk_count == 7


# ---- the command line ------------------------------------------------------------------------------------------

def test_imatrix_dat_output_and_force(models, calib, ws, tmp_path):
    src = models("llama1")
    out = tmp_path / "i.dat"
    r = ws("imatrix", src, "--text", calib, "-o", out, "--ctx", 16, "--chunks", 3, "--output-format", "dat", "-q")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    entries, chunks, dataset = parse_dat(out)
    assert chunks == 3 and dataset == str(calib) and {n for n, _ in entries.items()} == set(im.read(out).entries)
    assert all(ncall == 3 for ncall, _ in entries.values())  # 48 tokens / 16 per chunk
    before = out.read_bytes()
    assert_clean_error(ws("imatrix", src, "--text", calib, "-o", out, "--ctx", 16), None, "already exists")
    assert out.read_bytes() == before
    assert ws("imatrix", src, "--text", calib, "-o", out, "--ctx", 16, "--chunks", 2, "--force", "-q",
              "--output-format", "dat").returncode == 0
    assert parse_dat(out)[1] == 2


def test_imatrix_bad_input(built, models, calib, ws, tmp_path):
    src = models("llama1")
    area = tmp_path / "area"
    area.mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    out = area / "imatrix.gguf"
    cases = [
        (["--text", tmp_path / "empty.txt"], "empty"),
        (["--text", tmp_path / "short.txt", "--ctx", "64"], "fewer than one"),
        (["--text", tmp_path / "latin1.txt"], "not UTF-8"),
        (["--text", tmp_path / "missing.txt"], "no such file"),
        (["--text", calib, "--ctx", "1"], "--ctx 1"),
        (["--text", calib, "--chunks", "0"], "--chunks 0"),
        (["--text", calib, "--output-format", "bin"], "output-format"),
        (["--text", calib, "--device", "nope"], "--device"),
        (["--text", calib, "-o", tmp_path / "nodir" / "i.gguf"], "does not exist"),
    ]
    for args, msg in cases:
        assert_clean_error(ws("imatrix", src, *args, *([] if "-o" in args else ["-o", out])), area, msg)
    assert_clean_error(ws("imatrix", src, "-o", out), area, "--text")
    assert_clean_error(ws("imatrix", tmp_path / "nothing", "--text", calib, "-o", out), area, "no such file")
    # a checkpoint without a tokenizer
    assert_clean_error(ws("imatrix", built.hf("llama1"), "--text", calib, "-o", out), area, "tokenizer")
