"""HF sharding, dtypes, tokenizer carry-over, the per-tensor log and inspect --json, checked against the files
and against transformers."""
import json
import re

import pytest
import torch
from safetensors import safe_open

from oracles import hf_logits, hf_state, meta_state

LOG_LINE = re.compile(r"^\[ *(\d+)/(\d+)\] Writing tensor (\S+) \| size (\d+(?: x \d+)*) \| type (F32|F16|BF16)$")


def log_lines(stdout: str):
    return [LOG_LINE.match(line) for line in stdout.splitlines() if line.startswith("[")]


def safetensors_header(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                out[k] = (sl.get_shape(), sl.get_dtype())
    return out


def test_sharded_output_reloads_in_transformers(built, tmp_path, run_cli):
    src = built.hf("llama3")
    run_cli("convert", src, tmp_path / "out", "--shard-size", "20MB", "-q", check=0)
    files = sorted((tmp_path / "out").glob("model-*-of-*.safetensors"))
    assert len(files) >= 3
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in hf_state(src).values())
    for f in files[:-1]:
        assert f.stat().st_size < 20_000_000 + 70_000_000  # at most one oversized tensor on its own
    assert torch.equal(hf_logits(tmp_path / "out"), hf_logits(src))


def test_sharded_input_written_by_transformers(built, tmp_path, run_cli):
    src = built.hf("llama2_70b", max_shard_size="10MB")
    assert (src / "model.safetensors.index.json").exists()
    run_cli("convert", src, tmp_path / "meta", "--to", "meta", "-q", check=0)
    run_cli("convert", tmp_path / "meta", tmp_path / "hf", "-q", check=0)
    a, b = hf_state(src), hf_state(tmp_path / "hf")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_single_safetensors_file_input(built, tmp_path, run_cli):
    src = built.hf("llama1")
    run_cli("convert", src / "model.safetensors", tmp_path / "out", "-q", check=0)
    assert torch.equal(hf_logits(tmp_path / "out"), hf_logits(src))


@pytest.mark.parametrize("src_dtype,type_,want", [
    (torch.bfloat16, None, torch.bfloat16), (torch.bfloat16, "f16", torch.float16),
    (torch.bfloat16, "f32", torch.float32), (torch.float32, "bf16", torch.bfloat16), (torch.float16, "bf16", torch.bfloat16)])
def test_dtypes_cast_like_torch(built, tmp_path, run_cli, src_dtype, type_, want):
    src = built.hf("llama1", dtype=src_dtype)
    args = ["--type", type_] if type_ else []
    r = run_cli("convert", src, tmp_path / "out", *args, check=0)
    assert all(m.group(5) == {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[want]
               for m in log_lines(r.stdout))
    a, b = hf_state(src), hf_state(tmp_path / "out")
    for k in a:
        assert b[k].dtype == want and torch.equal(b[k], a[k].to(want)), k
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == str(want).split(".")[-1]


def test_meta_dtype_kept_and_cast(built, tmp_path, run_cli):
    src = built.meta("llama1")
    run_cli("convert", src, tmp_path / "bf16", "--to", "meta", "--type", "bf16", "-q", check=0)
    (a,), (b,) = meta_state(src), meta_state(tmp_path / "bf16")
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(b[k], a[k].bfloat16()) for k in a)
    run_cli("convert", tmp_path / "bf16", tmp_path / "hf", "-q", check=0)
    assert all(v.dtype == torch.bfloat16 for v in hf_state(tmp_path / "hf").values())


def test_log_lines_name_every_written_tensor(built, tmp_path, run_cli):
    src = built.meta("llama31")
    r = run_cli("convert", src, tmp_path / "hf", check=0)
    lines = log_lines(r.stdout)
    assert all(lines), r.stdout
    header = safetensors_header(tmp_path / "hf")
    assert [int(m.group(1)) for m in lines] == list(range(1, len(header) + 1))
    assert {int(m.group(2)) for m in lines} == {len(header)}
    for m in lines:
        shape, dtype = header[m.group(3)]
        assert m.group(4) == " x ".join(map(str, shape)) and m.group(5) == dtype
    assert re.search(r"^Wrote \d+ tensors to .*GB in, .*GB out, .* s, .* GB/s$", r.stdout, re.M)
    # width follows the count, as llama.cpp prints it: "[ 1/21]"
    assert r.stdout.startswith(f"[{'1':>{len(str(len(header)))}}/{len(header)}] Writing tensor model.embed_tokens.weight")
    quiet = run_cli("convert", src, tmp_path / "hf2", "-q", check=0)
    assert quiet.stdout == "" and quiet.stderr == ""


def test_inspect_json_matches_files(built, run_cli):
    src = built.hf("llama32", dtype=torch.bfloat16)
    d = json.loads(run_cli("inspect", src, "--json", check=0).stdout)
    header = safetensors_header(src)
    assert d["format"] == "hf"
    assert {t["name"]: (t["shape"], t["dtype"]) for t in d["tensors"]} == header
    assert d["nbytes"] == sum(t["nbytes"] for t in d["tensors"]) == sum(
        v.numel() * v.element_size() for v in hf_state(src).values())
    assert d["n_params"] == sum(v.numel() for v in hf_state(src).values())
    cfg = json.loads((src / "config.json").read_text())
    assert d["config"]["dim"] == cfg["hidden_size"] and d["config"]["tied_embeddings"] is True
    assert d["config"]["rope_scaling"]["factor"] == 8.0
    assert {t["canonical"] for t in d["tensors"]} >= {"token_embd.weight", "blk.1.ffn_down.weight", "output_norm.weight"}


def test_inspect_meta_sharded(built, run_cli):
    src = built.meta("llama2_70b", 2)
    d = json.loads(run_cli("inspect", src, "--json", check=0).stdout)
    shards = meta_state(src)
    assert d["format"] == "meta" and d["model_parallel"] == 2
    emb = next(t for t in d["tensors"] if t["name"] == "tok_embeddings.weight")
    assert emb["shape"] == [32000, 256] == [shards[0]["tok_embeddings.weight"].shape[0],
                                            2 * shards[0]["tok_embeddings.weight"].shape[1]]
    text = run_cli("inspect", src, check=0).stdout
    assert "tok_embeddings.weight" in text and "token_embd.weight" in text and "parameters" in text


def test_tokenizer_files_carried(built, tmp_path, run_cli):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    src = tmp_path / "src"
    import shutil
    shutil.copytree(built.hf("llama1"), src)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["hello world", "weightsmith converts checkpoints"],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    run_cli("convert", src, tmp_path / "out", "-q", check=0)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()
    d = json.loads(run_cli("inspect", src, "--json", check=0).stdout)
    assert d["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json"]


def test_inspect_reads_headers_without_importing_torch(built):
    """inspect of HF, GGUF and Meta checkpoints reads headers (a .pth's zip directory and pickle) only and never
    imports torch (over a second on its own); a tied Meta checkpoint is recognized from its stored bytes."""
    import subprocess
    import sys
    from test_gguf_read import SMOL
    metas = [built.meta("llama1"), built.meta("llama2_70b", 2), built.meta("llama32"), built.meta("llama32", 2)]
    code = ("import sys, json; from weightsmith.inspect import report; "
            "print(json.dumps([report(p)['config']['tied_embeddings'] for p in sys.argv[1:]])); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(built.hf("llama1")), str(SMOL), *map(str, metas)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tied, imported = r.stdout.split("\n")[:2]
    assert json.loads(tied) == [False, True, False, False, True, True]
    assert imported == "False"


def pth_variants(built, tmp_path):
    """Meta checkpoints as Meta's reference code writes them (f32, mp 1 and 2), as weightsmith's writer does (bf16),
    and as torch.save does with bf16/f16 tensors, an nn.Parameter, views sharing a storage and a transposed one."""
    out = [*sorted(built.meta("llama1").glob("*.pth")), *sorted(built.meta("llama2_70b", 2).glob("*.pth"))]
    for i, (a, dtype) in enumerate([(meta_state(built.meta("llama2_70b", 2)), torch.bfloat16),
                                    (meta_state(built.meta("llama1")), torch.float16)]):
        for rank, sd in enumerate(a):
            f = tmp_path / f"v{i}" / f"consolidated.{rank:02d}.pth"
            f.parent.mkdir(exist_ok=True)
            torch.save({k: v.to(dtype) for k, v in sd.items()}, f)
            out.append(f)
    big = torch.randn(64, 8)
    odd = tmp_path / "odd.pth"
    torch.save({"p": torch.nn.Parameter(torch.randn(4, 4)), "top": big[:32], "bottom": big[32:], "t": big.t(),
                "row": big[5], "scalar": torch.tensor(2.0, dtype=torch.bfloat16), "empty": torch.ones(0, 3)}, odd)
    return out + [odd]


def test_pth_table_agrees_with_torch_load(built, tmp_path, run_cli):
    """The tensor table read without torch says what torch.load says: names in order, dtypes, shapes, strides, and
    where the bytes of each contiguous tensor lie."""
    from weightsmith.formats import pth_file
    run_cli("convert", built.meta("llama1"), tmp_path / "bf16", "--to", "meta", "--type", "bf16", "-q", check=0)
    files = pth_variants(built, tmp_path) + [tmp_path / "bf16" / "consolidated.00.pth"]
    seen = set()
    for f in files:
        table = pth_file.read_table(f)
        sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        assert list(table.tensors) == list(sd), f
        raw = f.read_bytes()
        for k, t in sd.items():
            e = table.tensors[k]
            seen.add(e.dtype)
            assert (f"torch.{e.dtype}", e.shape, e.stride, e.offset, e.itemsize) == \
                (str(t.dtype), tuple(t.shape), t.stride(), t.storage_offset(), t.element_size()), (f, k)
            assert e.contiguous == t.is_contiguous(), (f, k)
            if e.contiguous:
                assert raw[e.data_start:e.data_start + e.nbytes] == t.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert seen == {"float32", "bfloat16", "float16"}


def test_meta_tied_by_stored_bytes(built, tmp_path, run_cli):
    """A Llama-2 layout (embeddings split along dim, output along vocab) whose output copies the embeddings is tied;
    one value changed in the last row of one shard's output makes it untied again. A change in a row the read does
    not sample is caught when the embeddings are loaded: the conversion, planned without output.weight, stops."""
    import shutil
    from weightsmith.formats.meta import TIED_SAMPLE
    src = tmp_path / "tied"
    shutil.copytree(built.meta("llama2_70b", 2), src)
    shards = meta_state(src)
    emb = torch.cat([sd["tok_embeddings.weight"] for sd in shards], dim=1)
    for rank, (sd, out) in enumerate(zip(shards, emb.chunk(2, dim=0))):
        sd["output.weight"] = out.clone()
        torch.save(sd, src / f"consolidated.{rank:02d}.pth")
    d = json.loads(run_cli("inspect", src, "--json", check=0).stdout)
    assert d["config"]["tied_embeddings"] is True and "output.weight" not in {t["name"] for t in d["tensors"]}
    run_cli("convert", src, tmp_path / "hf", "-q", check=0)
    assert "lm_head.weight" not in hf_state(tmp_path / "hf")

    assert 1 not in {i * emb.shape[0] // TIED_SAMPLE for i in range(TIED_SAMPLE)}
    shards[0]["output.weight"][1, 3] += 1
    torch.save(shards[0], src / "consolidated.00.pth")
    assert json.loads(run_cli("inspect", src, "--json", check=0).stdout)["config"]["tied_embeddings"] is True
    r = run_cli("convert", src, tmp_path / "hf2", "-q", check=2)
    assert "differs within rows [0, " in r.stderr and not (tmp_path / "hf2").exists()

    shards[1]["output.weight"][-1, -1] += 1
    torch.save(shards[1], src / "consolidated.01.pth")
    d = json.loads(run_cli("inspect", src, "--json", check=0).stdout)
    assert d["config"]["tied_embeddings"] is False and "output.weight" in {t["name"] for t in d["tensors"]}
