"""Bad usage and configs that disagree with real checkpoints (built by transformers / Meta's code): each error names
the field or tensor that is wrong. Damaged files, unsafe pickles, full disks and signals: tests/test_hostile.py."""
import json
import os
import shutil

import pytest
import torch

from conftest import assert_clean_error


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def meta1(built, tmp_path):
    return copy(built.meta("llama2_70b"), tmp_path / "meta")


@pytest.fixture
def hf1(built, tmp_path):
    return copy(built.hf("llama1"), tmp_path / "hf")


@pytest.fixture
def area(tmp_path):
    (tmp_path / "area").mkdir()
    return tmp_path / "area"


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("field,value,mention", [
    ("n_kv_heads", 8, "n_kv_heads"), ("multiple_of", 1024, "ffn"), ("vocab_size", 32001, "vocab_size"),
    ("dim", 128, "dim=128"), ("n_layers", 3, "layers.2"), ("n_heads", "32", "n_heads"), ("norm_eps", -1, "norm_eps")])
def test_params_disagreeing_with_tensors(meta1, area, ws, field, value, mention):
    edit_json(meta1 / "params.json", **{field: value})
    assert_clean_error(ws("convert", meta1, area / "out"), area, must_mention=mention)
    assert_clean_error(ws("inspect", meta1), must_mention=mention)


@pytest.mark.parametrize("field,value,mention", [
    ("num_key_value_heads", 2, "k_proj"), ("intermediate_size", 100, "gate_proj"), ("num_hidden_layers", 1, "layers.1"),
    ("hidden_size", "wide", "hidden_size"), ("tie_word_embeddings", True, "")])
def test_hf_config_disagreeing_with_tensors(hf1, area, ws, field, value, mention):
    edit_json(hf1 / "config.json", **{field: value})
    r = ws("convert", hf1, area / "out", "-q")
    if field == "tie_word_embeddings":  # a stored lm_head beside tie=true is what transformers ignores: not an error
        assert r.returncode == 0
        return
    assert_clean_error(r, area, must_mention=mention)


def test_unknown_tensor_named(hf1, area, ws):
    from safetensors.torch import load_file, save_file
    sd = load_file(hf1 / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(sd, hf1 / "model.safetensors")
    assert_clean_error(ws("convert", hf1, area / "out"), area, must_mention="q_proj.bias")


def test_bad_usage(hf1, area, ws, run_cli):
    assert_clean_error(ws("convert", hf1, area / "out", "--type", "q3_z"), area, must_mention="q3_z")
    assert_clean_error(ws("convert", hf1, area / "out", "--shard-size", "lots"), area)
    assert_clean_error(ws("convert", hf1, area / "out", "--mp", "2"), area, must_mention="--mp")
    assert_clean_error(ws("convert", hf1, area / "out", "--to", "meta", "--mp", "3"), area, must_mention="split")
    assert_clean_error(ws("convert", hf1, area / "nowhere" / "out"), area, must_mention="does not exist")
    assert_clean_error(run_cli("frobnicate"))  # click's own usage error, end to end


def test_checklist(meta1, area, ws):
    import hashlib
    names = ["consolidated.00.pth", "params.json"]
    (meta1 / "checklist.chk").write_text("".join(
        f"{hashlib.md5((meta1 / n).read_bytes()).hexdigest()}  {n}\n" for n in names))
    r = ws("inspect", meta1, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["checklist"] == sorted(names)
    assert ws("convert", meta1, area / "out", "-q").returncode == 0
    with open(meta1 / "consolidated.00.pth", "r+b") as f:  # flip one byte inside tensor data
        f.seek(os.path.getsize(meta1 / "consolidated.00.pth") // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    assert_clean_error(ws("convert", meta1, area / "out2"), must_mention="md5")
    assert not (area / "out2").exists()
    assert ws("convert", meta1, area / "out3", "--no-check", "-q").returncode == 0
    (meta1 / "checklist.chk").write_text(f"{'0' * 32}  ../params.json\n")  # a checklist naming files outside
    assert_clean_error(ws("convert", meta1, area / "out4"), must_mention="outside")


def test_replicas_that_differ_between_shards(built, area, ws, tmp_path):
    """Norms are replicated in every model-parallel shard: a copy that differs is an error, not shard 0's values."""
    from oracles import meta_state
    src = copy(built.meta("llama2_70b", 2), tmp_path / "mp2")
    shards = meta_state(src)
    shards[1]["norm.weight"] = shards[1]["norm.weight"] + 1
    torch.save(shards[1], src / "consolidated.01.pth")
    for to in ("hf", "meta"):
        assert_clean_error(ws("convert", src, area / f"out-{to}", "--to", to, "-q"), area,
                           must_mention="norm.weight: replicated tensor differs")
