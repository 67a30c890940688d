"""Real tokenizers carried between formats, each checked against its own library and against llama.cpp:
Meta's Llama 3 tiktoken tokenizer.model (llama-models), a Llama-2-style SentencePiece model (mistral-common's
tokenizer.model.v1)."""
import importlib.util
import shutil
from pathlib import Path

import pytest

import llamacpp

LLAMA3_MODEL = Path(importlib.util.find_spec("llama_models").origin).parent / "llama3" / "tokenizer.model"
SP_MODEL = Path(importlib.util.find_spec("mistral_common").origin).parent / "data" / "tokenizer.model.v1"
SPECIAL_TEXTS = ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "<s>special</s> in text"]


def conversions(root, meta_src, tokenizer_model, steps):
    """A Meta checkpoint with a real tokenizer.model, then each (src, dst, args...) conversion under root."""
    from conftest import cli
    shutil.copytree(meta_src, root / "meta")
    shutil.copy(tokenizer_model, root / "meta" / "tokenizer.model")
    for src, dst, *args in steps:
        cli("convert", root / src, root / dst, *args, "-q", check=0)
    return root


@pytest.fixture(scope="module")
def llama3_dirs(built, tmp_path_factory):
    return conversions(tmp_path_factory.mktemp("tk3"), built.meta("llama3"), LLAMA3_MODEL, [
        ("meta", "m.gguf"), ("m.gguf", "hf"), ("m.gguf", "meta2", "--to", "meta"), ("hf", "meta3", "--to", "meta"),
        ("meta", "hf_direct")])


def test_llama3_tiktoken_every_direction(llama3_dirs):
    from llama_models.llama3.tokenizer import Tokenizer
    from transformers import AutoTokenizer
    d = llama3_dirs
    meta = Tokenizer(LLAMA3_MODEL)
    hf, hf_direct = AutoTokenizer.from_pretrained(d / "hf"), AutoTokenizer.from_pretrained(d / "hf_direct")
    for text in llamacpp.HARD_TEXTS + SPECIAL_TEXTS:
        want = meta.encode(text, bos=False, eos=False, allowed_special="all")
        assert llamacpp.tokenize(d / "m.gguf", text) == want, text
        assert hf(text, add_special_tokens=False).input_ids == want, text
        assert hf_direct(text, add_special_tokens=False).input_ids == want, text
    assert hf("hi").input_ids == meta.encode("hi", bos=True, eos=False)
    # back to Meta's own file, byte for byte, from GGUF and from HF
    assert (d / "meta2" / "tokenizer.model").read_bytes() == LLAMA3_MODEL.read_bytes()
    assert (d / "meta3" / "tokenizer.model").read_bytes() == LLAMA3_MODEL.read_bytes()


@pytest.fixture(scope="module")
def sp_dirs(built, tmp_path_factory):
    return conversions(tmp_path_factory.mktemp("sp"), built.meta("llama1"), SP_MODEL, [
        ("meta", "m.gguf"), ("m.gguf", "hf"), ("m.gguf", "meta2", "--to", "meta"), ("hf", "m2.gguf")])


def test_sentencepiece_every_direction(sp_dirs):
    import sentencepiece as spm
    from transformers import AutoTokenizer
    d = sp_dirs
    src = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    back = spm.SentencePieceProcessor(model_file=str(d / "meta2" / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(d / "hf")
    for text in llamacpp.HARD_TEXTS + SPECIAL_TEXTS:
        want = src.encode(text)  # SentencePiece reads "<s>" in text as characters
        assert llamacpp.load(d / "m.gguf", vocab_only=True).tokenize(text.encode(), add_bos=False, special=False) == want
        assert llamacpp.load(d / "m2.gguf", vocab_only=True).tokenize(text.encode(), add_bos=False, special=False) == want
        assert back.encode(text) == want, text
        # transformers, like llama.cpp with special=True, reads "<s>" in text as the control token
        assert hf(text, add_special_tokens=False).input_ids == llamacpp.tokenize(d / "m.gguf", text), text
        if text not in SPECIAL_TEXTS:  # after a control token, SentencePiece-style decoding adds a space
            assert hf.decode(hf(text, add_special_tokens=False).input_ids) == text
    assert hf("hi").input_ids == [src.bos_id()] + src.encode("hi")


def test_unknown_pre_tokenizer_is_a_clear_error(built, tmp_path, run_cli):
    import json
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel()])
    tok.save(str(tmp_path / "tokenizer.json"))
    r = run_cli("convert", built.hf("llama1"), tmp_path / "m.gguf", "--tokenizer", tmp_path / "tokenizer.json")
    assert r.returncode == 2 and "--tokenizer-pre" in r.stderr and not (tmp_path / "m.gguf").exists()
    r = run_cli("convert", built.hf("llama1"), tmp_path / "m.gguf", "--tokenizer", tmp_path / "tokenizer.json",
                "--tokenizer-pre", "gpt-2", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(run_cli("inspect", tmp_path / "m.gguf", "--json").stdout)["metadata"]["tokenizer.ggml.pre"] == "gpt-2"
