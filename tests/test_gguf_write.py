"""Writing GGUF that llama.cpp loads: logits against transformers and Meta's reference model, tokenization
against the source tokenizer, bit-exact round trips, and the real model (SmolLM2) end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import llamacpp
from families import FAMILIES
from oracles import TOKENS, hf_logits, hf_state, meta_logits, meta_state
from test_gguf_read import SMOL

IDS = TOKENS[0]


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    """A small byte-level BPE (GPT-2 pre-tokenizer) trained by the tokenizers library; GGUF pads it to the model's
    vocabulary size as llama.cpp's converter does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    d = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["weightsmith converts llama checkpoints between formats"] * 10 + llamacpp.HARD_TEXTS,
                            trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    return d


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("type_,tol", [("f32", 1e-4), ("f16", 2e-3)])
def test_hf_to_gguf_llamacpp_matches_transformers(built, tmp_path, run_cli, tok_dir, family, type_, tol):
    src = built.hf(family)
    out = tmp_path / "m.gguf"
    run_cli("convert", src, out, "--type", type_, "--tokenizer", tok_dir, "-q", check=0)
    assert llamacpp_kld(out, hf_logits(src)) <= tol


def llamacpp_kld(path, ref):
    return llamacpp.max_kld(ref, llamacpp.logits(path, IDS))


def test_hf_bf16_to_gguf_bf16(built, tmp_path, run_cli, tok_dir):
    src = built.hf("llama3", dtype=torch.bfloat16)
    out = tmp_path / "m.gguf"
    run_cli("convert", src, out, "--tokenizer", tok_dir, "-q", check=0)
    import gguf
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == "BF16" and types["blk.0.attn_norm.weight"] == "F32"
    # llama.cpp multiplies bf16 weights with bf16-rounded activations: looser than f32, measured not assumed
    assert llamacpp_kld(out, hf_logits(src)) <= 2e-2


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_roundtrip_hf_gguf_hf_bit_exact(built, tmp_path, run_cli, tok_dir, family, dtype):
    src = built.hf(family, dtype=dtype)
    run_cli("convert", src, tmp_path / "m.gguf", "--tokenizer", tok_dir, "-q", check=0)
    run_cli("convert", tmp_path / "m.gguf", tmp_path / "back", "-q", check=0)
    a, b = hf_state(src), hf_state(tmp_path / "back")
    assert sorted(a) == sorted(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(tmp_path / "back").rope_parameters == AutoConfig.from_pretrained(src).rope_parameters


@pytest.mark.parametrize("family,mp", [("llama2_70b", 2), ("llama31", 1), ("llama32", 1)])
def test_meta_gguf_meta(built, tmp_path, run_cli, tok_dir, family, mp):
    """Meta -> GGUF (with --tokenizer): llama.cpp agrees with Meta's reference model; GGUF -> Meta: Meta's model
    agrees with llama.cpp; and the round trip is bit-exact."""
    src = built.meta(family, mp)
    ref = meta_logits(src, TOKENS)
    gg = tmp_path / "m.gguf"
    run_cli("convert", src, gg, "--tokenizer", tok_dir, "-q", check=0)
    assert llamacpp_kld(gg, ref) <= 1e-4
    run_cli("convert", gg, tmp_path / "back", "--to", "meta", "--mp", mp, "-q", check=0)
    assert llamacpp.max_kld(llamacpp.logits(gg, IDS), meta_logits(tmp_path / "back", TOKENS)) <= 1e-4
    for a, b in zip(meta_state(src), meta_state(tmp_path / "back"), strict=True):
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_carried_hf_to_gguf(tok_dir, built, tmp_path, run_cli):
    from transformers import AutoTokenizer
    out = tmp_path / "m.gguf"
    run_cli("convert", built.hf("llama1"), out, "--tokenizer", tok_dir, "-q", check=0)
    hf = AutoTokenizer.from_pretrained(tok_dir)
    for text in llamacpp.HARD_TEXTS:
        assert llamacpp.tokenize(out, text) == hf(text, add_special_tokens=False).input_ids, text
    assert llamacpp.load(out, vocab_only=True).tokenize(b"hi", add_bos=True)[0] == hf.bos_token_id


@pytest.fixture(scope="module")
def smol_hf_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smolw") / "hf"
    subprocess.run([sys.executable, "-m", "weightsmith.cli", "convert", SMOL, out, "-q"], check=True)
    return out


def test_smollm2_tokenizer_every_direction(smol_hf_dir, tmp_path, run_cli):
    """SmolLM2's BPE (pre-tokenizer 'smollm'): GGUF -> HF tokenizer.json tokenizes as llama.cpp does on the
    original file, and HF -> GGUF gives llama.cpp the same vocabulary back."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(smol_hf_dir)
    out = tmp_path / "f16.gguf"
    run_cli("convert", smol_hf_dir, out, "--type", "f16", "-q", check=0)
    for text in llamacpp.HARD_TEXTS:
        want = llamacpp.tokenize(SMOL, text)
        assert hf(text, add_special_tokens=False).input_ids == want, text
        assert llamacpp.tokenize(out, text) == want, text
    from weightsmith.formats.gguf import metadata
    a, b = metadata(SMOL), metadata(out)
    # add_space_prefix is a SentencePiece setting with no tokenizer.json spelling for a BPE; llama.cpp's BPE
    # tokenizer ignores it, so it cannot survive GGUF -> HF -> GGUF and need not
    keys = {k for k in a if k.startswith("tokenizer.")} - {"tokenizer.ggml.add_space_prefix"}
    assert keys <= set(b) and all(a[k] == b[k] for k in keys)


def test_smollm2_gguf_hf_gguf_greedy_generation(smol_hf_dir, tmp_path, run_cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "f16.gguf"
    run_cli("convert", smol_hf_dir, out, "--type", "f16", "-q", check=0)
    tok = AutoTokenizer.from_pretrained(smol_hf_dir)
    ids = tok("The capital of France is").input_ids
    model = AutoModelForCausalLM.from_pretrained(smol_hf_dir, dtype=torch.float32)
    want = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0][len(ids):].tolist()
    assert llamacpp.greedy(out, ids, 16) == want


def test_gguf_passthrough_is_byte_identical(tmp_path, run_cli):
    import gguf
    out = tmp_path / "same.gguf"
    run_cli("convert", SMOL, out, "-q", check=0)
    a = {t.name: t for t in gguf.GGUFReader(SMOL).tensors}
    b = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].tensor_type == b[k].tensor_type and np.array_equal(a[k].data, b[k].data), k


def test_split_gguf_written_and_read(tmp_path, run_cli):
    """--split-max-size writes gguf-split's naming; llama.cpp loads the split; weightsmith reads it back whole."""
    import gguf
    out = tmp_path / "smol.gguf"
    run_cli("convert", SMOL, out, "--split-max-size", "40MB", "-q", check=0)
    files = sorted(tmp_path.glob("smol-*-of-00003.gguf"))
    assert [f.name for f in files] == [f"smol-0000{i}-of-00003.gguf" for i in (1, 2, 3)] and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert torch.equal(llamacpp.logits(files[0], IDS[:6]), llamacpp.logits(SMOL, IDS[:6]))
    run_cli("convert", files[0], tmp_path / "whole.gguf", "-q", check=0)
    a = {t.name: t for t in gguf.GGUFReader(SMOL).tensors}
    b = {t.name: t for t in gguf.GGUFReader(tmp_path / "whole.gguf").tensors}
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k].data, b[k].data) for k in a)
    (tmp_path / files[2].name).unlink()
    r = run_cli("inspect", files[0])
    assert r.returncode == 2 and "missing" in r.stderr


def test_roundtrip_meta_bf16_gguf_meta(built, tmp_path, run_cli, tok_dir):
    run_cli("convert", built.meta("llama3"), tmp_path / "bf16", "--to", "meta", "--type", "bf16", "-q", check=0)
    run_cli("convert", tmp_path / "bf16", tmp_path / "m.gguf", "--tokenizer", tok_dir, "-q", check=0)
    run_cli("convert", tmp_path / "m.gguf", tmp_path / "back", "--to", "meta", "-q", check=0)
    (a,), (b,) = meta_state(tmp_path / "bf16"), meta_state(tmp_path / "back")
    assert sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
