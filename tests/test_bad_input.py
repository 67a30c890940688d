"""Bad input: exit 2, exactly one `error:` line, no traceback, nothing left behind."""
import json
import os
import pickle
import shutil

import pytest
import torch


def assert_clean_error(r, out=None, *, must_mention=""):
    """Exit 2, one `error:` line, no traceback; `out` (the destination, if any) and its partials do not exist."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert must_mention.lower() in lines[0].lower(), lines[0]
    if out is not None:
        assert not out.exists()
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def meta1(built, tmp_path):
    return copy(built.meta("llama2_70b"), tmp_path / "meta")


@pytest.fixture
def hf1(built, tmp_path):
    return copy(built.hf("llama1"), tmp_path / "hf")


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_missing_params_json(meta1, tmp_path, run_cli):
    (meta1 / "params.json").unlink()
    assert_clean_error(run_cli("convert", meta1, tmp_path / "out"), tmp_path / "out", must_mention="params.json")


@pytest.mark.parametrize("field,value,mention", [
    ("n_kv_heads", 8, "n_kv_heads"), ("multiple_of", 1024, "ffn"), ("vocab_size", 32001, "vocab_size"),
    ("dim", 128, "dim=128"), ("n_layers", 3, "layers.2"), ("n_heads", "32", "n_heads"), ("norm_eps", -1, "norm_eps")])
def test_params_disagreeing_with_tensors(meta1, tmp_path, run_cli, field, value, mention):
    edit_json(meta1 / "params.json", **{field: value})
    assert_clean_error(run_cli("convert", meta1, tmp_path / "out"), tmp_path / "out", must_mention=mention)
    assert_clean_error(run_cli("inspect", meta1), must_mention=mention)


@pytest.mark.parametrize("field,value,mention", [
    ("num_key_value_heads", 2, "k_proj"), ("intermediate_size", 100, "gate_proj"), ("num_hidden_layers", 1, "layers.1"),
    ("hidden_size", "wide", "hidden_size"), ("tie_word_embeddings", True, "")])
def test_hf_config_disagreeing_with_tensors(hf1, tmp_path, run_cli, field, value, mention):
    edit_json(hf1 / "config.json", **{field: value})
    r = run_cli("convert", hf1, tmp_path / "out")
    if field == "tie_word_embeddings":  # a stored lm_head beside tie=true is what transformers ignores: not an error
        assert r.returncode == 0
        return
    assert_clean_error(r, tmp_path / "out", must_mention=mention)


@pytest.mark.parametrize("cut", [0, 5, 100, 0.5, -1])
def test_truncated_safetensors(hf1, tmp_path, run_cli, cut):
    f = hf1 / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:int(len(data) * cut) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut])
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out"), tmp_path / "out", must_mention="model.safetensors")


@pytest.mark.parametrize("cut", [10, 0.5, -30])
def test_truncated_pth(meta1, tmp_path, run_cli, cut):
    f = meta1 / "consolidated.00.pth"
    data = f.read_bytes()
    f.write_bytes(data[:int(len(data) * cut) if isinstance(cut, float) else cut if cut >= 0 else len(data) + cut])
    assert_clean_error(run_cli("convert", meta1, tmp_path / "out"), tmp_path / "out", must_mention="consolidated.00.pth")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(meta1, tmp_path, run_cli):
    marker = tmp_path / "pwned"
    sd = torch.load(meta1 / "consolidated.00.pth", weights_only=True)
    sd["evil"] = Evil(marker)
    torch.save(sd, meta1 / "consolidated.00.pth", pickle_module=pickle)
    assert_clean_error(run_cli("convert", meta1, tmp_path / "out"), tmp_path / "out", must_mention="unsafe")
    assert_clean_error(run_cli("inspect", meta1), must_mention="unsafe")
    assert not marker.exists()


def test_unknown_tensor_named(hf1, tmp_path, run_cli):
    from safetensors.torch import load_file, save_file
    sd = load_file(hf1 / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(sd, hf1 / "model.safetensors")
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out"), tmp_path / "out", must_mention="q_proj.bias")


@pytest.mark.parametrize("setup", ["missing", "empty_dir", "text_file", "bad_json"])
def test_not_a_checkpoint(tmp_path, hf1, run_cli, setup):
    src = tmp_path / "src"
    if setup == "empty_dir":
        src.mkdir()
    elif setup == "text_file":
        src = tmp_path / "model.safetensors"
        src.write_text("hello, I am not a checkpoint\n" * 10)
    elif setup == "bad_json":
        src = hf1
        (hf1 / "config.json").write_text("{not json")
    assert_clean_error(run_cli("convert", src, tmp_path / "out"), tmp_path / "out")
    assert_clean_error(run_cli("inspect", src))


def test_index_pointing_outside(hf1, tmp_path, run_cli):
    (hf1 / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../../etc/passwd"}}))
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out"), tmp_path / "out", must_mention="outside")


def test_bad_usage(hf1, tmp_path, run_cli):
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out", "--type", "q3_z"), tmp_path / "out", must_mention="q3_z")
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out", "--shard-size", "lots"), tmp_path / "out")
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out", "--mp", "2"), tmp_path / "out", must_mention="--mp")
    assert_clean_error(run_cli("convert", hf1, tmp_path / "out", "--to", "meta", "--mp", "3"), tmp_path / "out",
                       must_mention="split")
    assert_clean_error(run_cli("frobnicate"))


def test_existing_output_needs_force(built, hf1, tmp_path, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("convert", hf1, out)
    assert r.returncode == 2 and "--force" in r.stderr and (out / "keep.txt").read_text() == "mine"
    run_cli("convert", hf1, out, "--force", "-q", check=0)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checklist(meta1, tmp_path, run_cli):
    import hashlib
    names = ["consolidated.00.pth", "params.json"]
    (meta1 / "checklist.chk").write_text("".join(
        f"{hashlib.md5((meta1 / n).read_bytes()).hexdigest()}  {n}\n" for n in names))
    d = json.loads(run_cli("inspect", meta1, "--json", check=0).stdout)
    assert d["checklist"] == sorted(names)
    run_cli("convert", meta1, tmp_path / "out", "-q", check=0)
    with open(meta1 / "consolidated.00.pth", "r+b") as f:  # flip one byte inside tensor data
        f.seek(os.path.getsize(meta1 / "consolidated.00.pth") // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))
    assert_clean_error(run_cli("convert", meta1, tmp_path / "out2"), tmp_path / "out2", must_mention="md5")
    run_cli("convert", meta1, tmp_path / "out3", "--no-check", "-q", check=0)
