"""Fuzz the readers: mutate valid tiny checkpoints of every format, open each one, read every tensor and build
inspect's report. The only exception allowed out is WeightsmithError (the clean `error:` line); anything else is
a reader bug, counted and shown with the mutation that caused it.

    nice -n 10 python bench/fuzz_readers.py --cases 10000            # every format, 10,000 cases each
    python bench/fuzz_readers.py --format gguf --cases 300 --seed 1   # one format, a quick seeded sample

Mutations are drawn by hypothesis: byte-level damage (truncation, flipped bytes, splices, integer fields overwritten
with boundary values where the format keeps its counts, lengths and offsets) and structure-aware damage (the
safetensors JSON header, config.json / params.json / the shard index, the .pth pickle and state dict, GGUF
key/value types). tests/test_hostile.py runs a small seeded sample of the same in CI.
"""
import argparse
import collections
import io
import json
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, given, settings, seed as hseed, strategies as st

from weightsmith import formats, inspect
from weightsmith.config import meta_ffn_dim
from weightsmith.convert import layout, mapping
from weightsmith.errors import WeightsmithError

# The seed model: one layer, GQA 4/2, every row a whole number of 32-value ggml blocks.
DIM, N_HEADS, N_KV, VOCAB, MULTIPLE_OF = 32, 4, 2, 64, 32
FFN = meta_ffn_dim(DIM, MULTIPLE_OF, None)  # 96
HEAD_DIM = DIM // N_HEADS
FORMATS = ("hf", "gguf", "meta")
# GGUF types of the seed's tensors: floats and the quantized kinds gguf-py dequantizes
GGUF_TYPES = {"attn_q": "Q8_0", "attn_k": "Q4_0", "attn_v": "BF16", "ffn_gate": "Q8_0", "ffn_down": "Q4_1",
              "ffn_up": "F16", "token_embd": "F16"}
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 255, 256, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
               2**53, 2**63 - 1, 2**63, 2**64 - 1]


# ---- seeds: valid checkpoints written with torch, safetensors and gguf-py (not weightsmith's writers) ----------

def seed_tensors() -> dict[str, torch.Tensor]:
    """Canonical name -> tensor (canonical layout) of the seed model."""
    g = torch.Generator().manual_seed(0)
    sizes = {"dim": DIM, "vocab_size": VOCAB, "q_dim": DIM, "kv_dim": N_KV * HEAD_DIM, "ffn_dim": FFN}
    return {name: torch.randn([sizes[s] for s in mapping.canonical(name).row.shape], generator=g)
            for name in mapping.canonical_order(1, False)}


def build_seeds(root: Path) -> dict[str, Path]:
    from safetensors.torch import save_file
    t = seed_tensors()
    seeds = {}
    hf = root / "hf"
    hf.mkdir()
    heads = {"q": N_HEADS, "k": N_KV}
    hf_sd = {mapping.rename(n, "hf"): (layout.rope_to_hf(x, heads[mapping.canonical(n).row.rope])
                                       if mapping.canonical(n).row.rope else x).contiguous() for n, x in t.items()}
    save_file(hf_sd, hf / "model.safetensors", metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
              "intermediate_size": FFN, "num_hidden_layers": 1, "num_attention_heads": N_HEADS,
              "num_key_value_heads": N_KV, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "max_position_embeddings": 256, "tie_word_embeddings": False, "hidden_act": "silu",
              "torch_dtype": "float32", "rope_scaling": None}
    (hf / "config.json").write_text(json.dumps(config))
    seeds["hf"] = hf

    sharded = root / "hf-sharded"  # two shards and an index: the index and the shard split are fuzzed too
    sharded.mkdir()
    names = sorted(hf_sd)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_file({k: hf_sd[k].to(torch.bfloat16 if "mlp" in k else torch.float16) for k in keys}, sharded / fname)
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}))
    (sharded / "config.json").write_text(json.dumps(config))
    seeds["hf-sharded"] = sharded

    from weightsmith.convert.pipeline import convert  # compressed-tensors int8/int4: from weightsmith's own writer
    for kind in ("int8", "int4"):
        convert(hf, root / f"hf-{kind}", type_=kind, quiet=True)
        seeds[f"hf-{kind}"] = root / f"hf-{kind}"

    meta = root / "meta"
    meta.mkdir()
    torch.save({mapping.rename(n, "meta"): x.to(torch.bfloat16) for n, x in t.items()}, meta / "consolidated.00.pth")
    (meta / "params.json").write_text(json.dumps({"dim": DIM, "n_layers": 1, "n_heads": N_HEADS, "n_kv_heads": N_KV,
                                                  "vocab_size": VOCAB, "multiple_of": MULTIPLE_OF, "norm_eps": 1e-5,
                                                  "rope_theta": 500000.0, "use_scaled_rope": True}))
    seeds["meta"] = meta

    meta2 = root / "meta-mp2"  # two model-parallel shards: the merge is fuzzed too
    meta2.mkdir()
    for rank in range(2):
        sd = {}
        for n, x in t.items():
            axis = layout.split_axis(mapping.canonical(n).row.mp, 1)
            sd[mapping.rename(n, "meta")] = (x if axis is None else x.chunk(2, dim=axis)[rank]).clone()
        torch.save(sd, meta2 / f"consolidated.{rank:02d}.pth")
    (meta2 / "params.json").write_text(json.dumps({"dim": DIM, "n_layers": 1, "n_heads": N_HEADS,
                                                   "n_kv_heads": N_KV, "vocab_size": -1, "multiple_of": MULTIPLE_OF,
                                                   "norm_eps": 1e-5}))
    seeds["meta-mp2"] = meta2

    g = root / "gguf"
    g.mkdir()
    write_gguf(g / "model.gguf", gguf_kv(), t)
    seeds["gguf"] = g / "model.gguf"
    return seeds


def gguf_kv() -> list[tuple[str, object, str]]:
    """The seed GGUF's keys as data: (key, value, GGUFValueType name)."""
    tokens = ["a", "b", "c", "ab", "abc"] + [f"t{i}" for i in range(5, VOCAB)]
    return [("general.architecture", "llama", "STRING"), ("general.name", "seed", "STRING"),
            ("llama.context_length", 256, "UINT32"), ("llama.embedding_length", DIM, "UINT32"),
            ("llama.block_count", 1, "UINT32"), ("llama.feed_forward_length", FFN, "UINT32"),
            ("llama.attention.head_count", N_HEADS, "UINT32"), ("llama.attention.head_count_kv", N_KV, "UINT32"),
            ("llama.rope.dimension_count", HEAD_DIM, "UINT32"), ("llama.rope.freq_base", 500000.0, "FLOAT32"),
            ("llama.attention.layer_norm_rms_epsilon", 1e-5, "FLOAT32"), ("llama.vocab_size", VOCAB, "UINT32"),
            ("general.alignment", 32, "UINT32"),
            ("tokenizer.ggml.model", "gpt2", "STRING"), ("tokenizer.ggml.pre", "llama-bpe", "STRING"),
            ("tokenizer.ggml.tokens", tokens, "ARRAY"), ("tokenizer.ggml.token_type", [1] * VOCAB, "ARRAY"),
            ("tokenizer.ggml.merges", ["a b", "ab c"], "ARRAY"), ("tokenizer.ggml.bos_token_id", 1, "UINT32"),
            ("tokenizer.ggml.eos_token_id", 2, "UINT32"), ("tokenizer.chat_template", "{{ x }}", "STRING")]


def write_gguf(path: Path, kv, tensors: dict[str, torch.Tensor]):
    import gguf
    w = gguf.GGUFWriter(path, "llama", use_temp_file=False)
    w.kv_data[0].clear()  # the architecture key comes from kv, like every other key
    for key, value, vtype in kv:
        sub = None
        if vtype == "ARRAY":
            sub = gguf.GGUFValueType.STRING if value and isinstance(value[0], str) else gguf.GGUFValueType.INT32
        w.add_key_value(key, value, gguf.GGUFValueType[vtype], sub_type=sub)
    for name, x in tensors.items():
        qtype = gguf.GGMLQuantizationType[GGUF_TYPES.get(name.split(".")[-2], "F32")]
        arr = x.float().numpy()
        data = gguf.quants.quantize(arr, qtype) if qtype != gguf.GGMLQuantizationType.F32 else arr
        w.add_tensor(name, data, raw_dtype=qtype)
    freqs = layout.llama3_rope_factors(HEAD_DIM, 500000.0, {"rope_type": "llama3", "factor": 8.0,
                                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                              "original_max_position_embeddings": 8192})
    w.add_tensor("rope_freqs.weight", freqs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- mutations -----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from(INTERESTING + [-1, -(2**63), 10**30, 0.5, 1e300])
    | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def int_slots(blob: bytes, fmt: str) -> list[tuple[int, int]]:
    """(offset, width) of the integer fields a format keeps its counts, lengths and offsets in."""
    if fmt == "safetensors":
        return [(0, 8)]
    if fmt == "gguf":
        import gguf
        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(blob)
            f.flush()
            r = gguf.GGUFReader(f.name)
            base = r.data.ctypes.data
            slots = [(p.ctypes.data - base, p.nbytes) for fld in list(r.fields.values()) + [t.field for t in r.tensors]
                     for p in fld.parts if p.dtype != np.uint8 and p.nbytes in (4, 8) and p.size == 1]
            del r
        return slots
    return []


def mutate_bytes(data, blob: bytes, slots: list[tuple[int, int]], log: list) -> bytes:
    b = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 3))):
        n = len(b)
        op = data.draw(st.sampled_from(["truncate", "byte", "int", "int", "splice", "delete", "append"]))
        if op == "truncate":
            at = data.draw(st.integers(0, max(n - 1, 0)))
            del b[at:]
            log.append(f"truncate at {at}")
        elif op == "byte" and n:
            at = data.draw(st.integers(0, n - 1))
            b[at] = data.draw(st.integers(0, 255))
            log.append(f"byte {at} = {b[at]}")
        elif op == "int" and n >= 8:
            at, width = data.draw(st.sampled_from(slots)) if slots and data.draw(st.booleans()) else \
                (data.draw(st.integers(0, n - 8)), data.draw(st.sampled_from([1, 2, 4, 8])))
            old = int.from_bytes(b[at:at + width], "little")
            v = data.draw(st.sampled_from(INTERESTING + [n, n - 1, n + 1, old + 1, old - 1, old * 2 + 1])
                          | st.integers(0, 2**64 - 1)) % (1 << (8 * width))
            b[at:at + width] = v.to_bytes(width, "little")
            log.append(f"u{8 * width} at {at} = {v}")
        elif op == "splice" and n:
            at = data.draw(st.integers(0, n - 1))
            junk = data.draw(st.binary(min_size=1, max_size=16))
            b[at:at + len(junk)] = junk
            log.append(f"splice at {at}: {junk!r}")
        elif op == "delete" and n:
            at = data.draw(st.integers(0, n - 1))
            k = data.draw(st.integers(1, 64))
            del b[at:at + k]
            log.append(f"delete {k} at {at}")
        else:
            junk = data.draw(st.binary(min_size=1, max_size=64))
            b += junk
            log.append(f"append {len(junk)} bytes")
    return bytes(b)


def mutate_json(data, obj, log: list, depth_keys=()):
    """A JSON document with one or two things changed: a value replaced or deleted, or the whole document."""
    for _ in range(data.draw(st.integers(1, 2))):
        op = data.draw(st.sampled_from(["set", "set", "delete", "add", "whole"]))
        if op == "whole" or not isinstance(obj, dict) or not obj:
            obj = data.draw(json_values)
            log.append(f"document = {obj!r}"[:200])
            continue
        key = data.draw(st.sampled_from(sorted(obj)))
        if op == "set":
            target = obj
            while isinstance(target.get(key), dict) and target[key] and data.draw(st.booleans()):
                target = target[key]  # descend into a nested object (a safetensors entry, the weight_map)
                key = data.draw(st.sampled_from(sorted(target)))
            target[key] = data.draw(json_values)
            log.append(f"{key} = {target[key]!r}"[:200])
        elif op == "delete":
            del obj[key]
            log.append(f"delete {key}")
        else:
            k, v = data.draw(st.text(max_size=12)), data.draw(json_values)
            obj[k] = v
            log.append(f"add {k!r} = {v!r}"[:200])
    return obj


def dump_json(data, obj) -> bytes:
    text = json.dumps(obj, allow_nan=True)
    return text.encode() if data.draw(st.integers(0, 9)) else text.encode()[: data.draw(st.integers(0, len(text)))]


def mutate_safetensors(data, blob: bytes, log: list) -> bytes:
    if data.draw(st.booleans()):
        return mutate_bytes(data, blob, int_slots(blob, "safetensors"), log)
    (n,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8:8 + n])
    body = dump_json(data, mutate_json(data, header, log))
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + blob[8 + n:]


def mutate_pth(data, path: Path, log: list) -> bytes:
    blob = path.read_bytes()
    op = data.draw(st.sampled_from(["bytes", "pickle", "record", "state_dict", "state_dict"]))
    if op == "bytes":
        return mutate_bytes(data, blob, [], log)
    if op == "state_dict":
        sd = torch.load(path, weights_only=True)
        key = data.draw(st.sampled_from(sorted(sd)))
        change = data.draw(st.sampled_from(["dtype", "shape", "drop", "add", "value", "transpose", "view"]))
        if change == "dtype":
            sd[key] = sd[key].to(data.draw(st.sampled_from(
                [torch.float64, torch.int64, torch.int8, torch.bool, torch.complex64, torch.uint8, torch.float16])))
        elif change == "shape":
            sd[key] = sd[key].reshape(-1)[: data.draw(st.integers(0, sd[key].numel()))]
        elif change == "drop":
            del sd[key]
        elif change == "add":
            sd[data.draw(st.sampled_from(["layers.1.attention.wq.weight", "output.weight", "junk", key + ".x"]))] = \
                torch.zeros(data.draw(st.lists(st.integers(0, 40), max_size=3)))
        elif change == "value":
            sd[key] = data.draw(st.sampled_from([1, "x", None, [1, 2], {"a": torch.zeros(2)}]))
        elif change == "transpose":
            sd[key] = sd[key].t() if sd[key].dim() == 2 else sd[key][::2]
        else:
            other = data.draw(st.sampled_from(sorted(sd)))
            sd[key] = sd[other].view(-1)[: sd[key].numel()] if sd[other].numel() >= sd[key].numel() else sd[other]
        log.append(f"state dict: {change} {key}")
        buf = io.BytesIO()
        torch.save(sd, buf)
        return buf.getvalue()
    # rewrite the zip with one member damaged: the pickle itself, or a tensor's storage record
    src = zipfile.ZipFile(io.BytesIO(blob))
    members = src.namelist()
    pick = [m for m in members if m.endswith("data.pkl")] if op == "pickle" else \
        [m for m in members if "/data/" in m]
    victim = data.draw(st.sampled_from(pick))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for m in members:
            content = src.read(m)
            if m == victim:
                sub = [f"{m}:"]
                content = mutate_bytes(data, content, [], sub)
                log.append(" ".join(sub))
            z.writestr(m, content)
    return out.getvalue()


def mutate_gguf(data, blob: bytes, log: list) -> bytes:
    if data.draw(st.integers(0, 3)):
        return mutate_bytes(data, blob, int_slots(blob, "gguf"), log)
    # a key/value of the wrong type or value, or dropped: the metadata readers and the tokenizer see it
    kv = gguf_kv()
    i = data.draw(st.integers(0, len(kv) - 1))
    key = kv[i][0]
    if data.draw(st.integers(0, 4)) == 0:
        del kv[i]
        log.append(f"drop {key}")
    else:
        vtype, value = data.draw(st.sampled_from([
            ("UINT32", st.integers(0, 2**32 - 1)), ("INT32", st.integers(-2**31, 2**31 - 1)),
            ("UINT64", st.sampled_from(INTERESTING)), ("FLOAT32", st.floats(width=32)), ("BOOL", st.booleans()),
            ("STRING", st.text(max_size=20)), ("ARRAY", st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=70)),
            ("ARRAY", st.lists(st.text(max_size=5), min_size=1, max_size=70))]))
        kv[i] = (key, data.draw(value), vtype)
        log.append(f"{key} = {kv[i][1]!r} ({vtype})"[:200])
    buf = Path(tempfile.mkdtemp()) / "m.gguf"
    try:
        write_gguf(buf, kv, seed_tensors())
        return buf.read_bytes()
    finally:
        shutil.rmtree(buf.parent)


def mutate_case(data, fmt: str, seeds: dict[str, Path], case: Path, log: list) -> Path:
    """Copy a seed of the format to case/ and damage one or two of its files; returns the path to open."""
    name = data.draw(st.sampled_from([s for s in seeds if s.split("-")[0] == fmt]))
    src = seeds[name]
    log.append(name)
    if src.is_file():
        target = case / src.name
        target.write_bytes(mutate_gguf(data, src.read_bytes(), log))
        return target
    shutil.copytree(src, case, dirs_exist_ok=True)
    files = sorted(p.name for p in case.iterdir())
    for fname in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2, unique=True)):
        f = case / fname
        log.append(f"[{fname}]")
        if fname.endswith(".json"):
            f.write_bytes(dump_json(data, mutate_json(data, json.loads(f.read_text()), log)))
        elif fname.endswith(".safetensors"):
            f.write_bytes(mutate_safetensors(data, f.read_bytes(), log))
        elif fname.endswith(".pth"):
            f.write_bytes(mutate_pth(data, f, log))
    return case


# ---- running -------------------------------------------------------------------------------------------------

def exercise(path: Path) -> str:
    """What `inspect` and `convert` do with a source: open it, report it, read every tensor. A warning is a failure
    too: printed on stderr, it would break the one-line `error:` contract."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ck = formats.open_checkpoint(path)
            d = inspect.as_dict(ck)
            json.dumps(d, indent=2)
            inspect.render(d)
            for t in ck.tensors:
                t.load()
                if t.raw is not None:
                    t.raw()
            ck.vocab  # what convert writes the tokenizer from (a GGUF's is decoded on first use)
            if ck.integrity_check:
                ck.integrity_check()
    except WeightsmithError:
        return "error"
    return "ok"


class Stats:
    def __init__(self):
        self.outcomes = collections.Counter()
        self.bugs: dict[str, dict] = {}

    def bug(self, e: BaseException, log: list):
        tb = traceback.extract_tb(e.__traceback__)
        ours = [f for f in tb if "/weightsmith/" in f.filename]
        where = ours[-1] if ours else tb[-1]
        key = f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}"
        b = self.bugs.setdefault(key, {"count": 0, "message": str(e)[:300], "mutation": " ; ".join(log),
                                       "traceback": "".join(traceback.format_exception(e))[-3000:]})
        b["count"] += 1


def fuzz(fmt: str, cases: int, seed: int, work: Path, stats: Stats | None = None) -> Stats:
    stats = stats or Stats()
    root = Path(tempfile.mkdtemp(dir=work))
    seeds = build_seeds(root)

    @hseed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        d = Path(tempfile.mkdtemp(dir=root))  # a fresh directory: a file still mapped is never rewritten
        log = []
        try:
            path = mutate_case(data, fmt, seeds, d, log)
            try:
                stats.outcomes[exercise(path)] += 1
            except Exception as e:  # noqa: BLE001 - the point: anything but WeightsmithError is a finding
                stats.outcomes["bug"] += 1
                stats.bug(e, log)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    try:
        case()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=FORMATS, action="append", help="Format(s) to fuzz (default: all).")
    ap.add_argument("--cases", type=int, default=10000, help="Cases per format.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=tempfile.gettempdir(), help="Scratch directory.")
    ap.add_argument("--max-memory-gb", type=float, default=8.0,
                    help="Address-space limit: a case that would allocate more fails with MemoryError (a finding) "
                         "instead of taking the machine down.")
    args = ap.parse_args()
    limit = int(args.max_memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    failed = False
    for fmt in args.format or FORMATS:
        t0 = time.time()
        stats = fuzz(fmt, args.cases, args.seed, Path(args.work))
        n = sum(stats.outcomes.values())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{fmt}: {n} cases in {time.time() - t0:.0f}s: {stats.outcomes['ok']} still valid, "
              f"{stats.outcomes['error']} clean errors, {stats.outcomes['bug']} other exceptions "
              f"(peak RSS so far {peak:.1f} GB)", flush=True)
        for key, b in sorted(stats.bugs.items(), key=lambda kv: -kv[1]["count"]):
            failed = True
            print(f"  BUG {key} x{b['count']}: {b['message']}\n    mutation: {b['mutation']}\n"
                  + "    " + b["traceback"].replace("\n", "\n    "), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
