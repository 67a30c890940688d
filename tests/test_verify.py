"""verify and generate: the reference forward pass against transformers and llama.cpp, the drift statistics on
checkpoints that must agree exactly and on ones that must not, layer streaming against the all-in-memory pass,
greedy decoding against transformers."""
import json

import pytest
import torch

import llamacpp
from families import FAMILIES
from oracles import TOKENS, hf_logits
from test_gguf_read import SMOL
from test_gguf_write import tok_dir  # noqa: F401  (fixture: a small byte-level BPE tokenizer.json)
from weightsmith.cli import run
from weightsmith.formats import open_checkpoint
from weightsmith.verify import compare, greedy, metrics, stream_logits, text
from weightsmith.verify.model import Model

TEXT = ("weightsmith converts llama checkpoints between formats. The quick brown fox jumps over the lazy dog. "
        "Numbers 1234567 and 3.14159; can't won't I'm. ") * 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy CI machine OpenMP workers waiting for a core made
    decoding 30x slower (measured); the product keeps torch's default."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ws(capsys, *args) -> tuple[int, str, str]:
    """The command line in this process (run() is what the console script calls): exit code, stdout, stderr."""
    capsys.readouterr()
    rc = run([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def ws_json(capsys, *args) -> dict:
    rc, out, err = ws(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reference_pass_equals_transformers_and_streaming(built, family):
    ck = open_checkpoint(built.hf(family))
    ours = Model(ck).forward(torch.tensor(TOKENS))[0]
    assert (ours - hf_logits(built.hf(family))).abs().max().item() <= 1e-4
    # one block at a time through the same arithmetic: the same logits
    assert (stream_logits(ck, torch.tensor(TOKENS))[0] - ours).abs().max().item() <= 1e-6


@pytest.fixture(scope="module")
def ggufs(built, tmp_path_factory, tok_dir):  # noqa: F811
    """f32 and q4_0 GGUF files of the tiny Llama 2 70B-style model (GQA 8:1), with a tokenizer."""
    d = tmp_path_factory.mktemp("verify-gguf")
    for t in ("f32", "q4_0"):
        assert run(["convert", str(built.hf("llama2_70b")), str(d / f"{t}.gguf"), "--type", t, "--tokenizer",
                    str(tok_dir), "-q"]) == 0
    (d / "text.txt").write_text(TEXT)
    return d


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reference_pass_close_to_llamacpp(built, tmp_path, tok_dir, family):  # noqa: F811
    """llama.cpp on an f32 GGUF of the same model. Its attention keeps K and V in an f16 cache, so its logits carry
    f16 rounding: measured max |dlogit| 2.5e-3..4.0e-3 (logits up to ~5), max KLD 1.6e-7..4.1e-7, for us and for
    transformers alike (the two gaps agree to 2e-6). Tolerances: 2.5x the worst measured, and the same gap as
    transformers' own, which pins the difference on llama.cpp's rounding rather than on this forward pass."""
    gg = tmp_path / "m.gguf"
    assert run(["convert", str(built.hf(family)), str(gg), "--type", "f32", "--tokenizer", str(tok_dir), "-q"]) == 0
    ours = Model(open_checkpoint(gg)).forward(torch.tensor(TOKENS))[0].double()
    theirs = llamacpp.logits(gg, TOKENS[0])
    gap = (ours - theirs).abs().max().item()
    assert gap <= 1e-2 and llamacpp.max_kld(ours, theirs) <= 1e-6
    assert abs(gap - (hf_logits(built.hf(family)).double() - theirs).abs().max().item()) <= 1e-4


def test_verify_self_and_conversions_is_exact(built, tmp_path, capsys, tok_dir):  # noqa: F811
    """Against itself and against its own f32 conversion to each other format: zero drift, every layer."""
    src = built.hf("llama32")
    for fmt, dst in (("meta", tmp_path / "meta"), ("gguf", tmp_path / "m.gguf")):
        assert run(["convert", str(src), str(dst), "--to", fmt, "--type", "f32", "-q"]
                   + (["--tokenizer", str(tok_dir)] if fmt == "gguf" else [])) == 0, fmt
    for cand in (src, tmp_path / "meta", tmp_path / "m.gguf"):
        r = ws_json(capsys, "verify", src, cand, "--ctx", "16")
        assert set(r) >= {"n_tokens", "mean_kld", "max_kld", "kld_p99", "top1_agreement", "rms_dp", "ppl_reference",
                          "ppl_candidate", "max_abs_logit_diff", "layers"}
        assert r["n_tokens"] == 16 - 1 - 8 and r["max_kld"] <= 1e-9 and r["top1_agreement"] == 1.0, cand
        assert [d["layer"] for d in r["layers"]] == [0, 1] and all(d["rel_err"] <= 1e-6 for d in r["layers"])


def test_verify_quantized_exceeds_max_kld(ggufs, capsys, run_cli):
    p = run_cli("verify", ggufs / "f32.gguf", ggufs / "q4_0.gguf", "--text", ggufs / "text.txt", "--ctx", "32",
                "--json", "--max-kld", "1e-6")  # the real command line, in its own process
    assert p.returncode == 1 and "above --max-kld" in p.stderr
    r = json.loads(p.stdout)
    assert r["mean_kld"] > 1e-6 and r["top1_agreement"] < 1.0 or r["mean_kld"] > 1e-4
    assert r["n_chunks"] >= 2 and r["n_tokens"] == r["n_chunks"] * (32 - 1 - 16)
    assert r["layers"][-1]["rel_err"] > 0 and r["ppl_candidate"] != r["ppl_reference"]
    rc, out, _ = ws(capsys, "verify", ggufs / "f32.gguf", ggufs / "f32.gguf", "--text", ggufs / "text.txt",
                    "--ctx", "32", "--max-kld", "1e-6")
    assert rc == 0 and "Mean    KLD:   0.000000" in out


def test_streaming_equals_in_memory_statistics(ggufs):
    ref, cand = open_checkpoint(ggufs / "f32.gguf"), open_checkpoint(ggufs / "q4_0.gguf")
    tok = text.TextTokenizer(ref)
    tokens = text.chunks(tok.encode(TEXT), 32, tok.bos_id)
    loaded = []  # block indices in load order: every block i of both models before any block i+1
    for ck in (ref, cand):
        for t in ck.tensors:
            t.load = (lambda f, n: lambda: (loaded.append(n), f())[1])(t.load, t.canonical)
    streamed = compare(ref, cand, tokens)
    blocks = [int(n.split(".")[1]) for n in loaded if n.startswith("blk.")]
    assert blocks == sorted(blocks) and len(blocks) == 2 * 2 * 9
    acc = metrics.Accumulator()
    lr, lc = Model(ref).forward(tokens), Model(cand).forward(tokens)
    for c in range(tokens.shape[0]):
        acc.add(lr[c, 16:-1], lc[c, 16:-1], tokens[c, 17:])
    whole = acc.result()
    for k, v in whole.items():
        assert streamed[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_chunks_like_llama_perplexity():
    t = text.chunks(list(range(100, 135)), 8, bos_id=1)
    assert t.shape == (4, 8) and t[:, 0].tolist() == [1] * 4 and t[1, 1:].tolist() == list(range(109, 116))
    assert text.chunks(list(range(16)), 8, None)[1, 0] == 8
    x = torch.tensor([3.0, 1.0, 2.0, 4.0])
    assert metrics.percentile(x, 0.5) == 2.5 and metrics.percentile(x, 0.99) == pytest.approx(3.97)


@pytest.mark.parametrize("family", ["llama1", "llama3"])
def test_text_tokenized_by_the_checkpoint_tokenizer(built, tmp_path, family):
    """--text goes through the reference's own tokenizer with BOS first: a Meta checkpoint with a real
    SentencePiece (Llama 2 style) or tiktoken (Llama 3) tokenizer.model against that tokenizer's own library."""
    import importlib.util
    import shutil
    from pathlib import Path
    d = tmp_path / family
    shutil.copytree(built.meta(family), d)
    sample = "Hello world, the quick brown fox. café 1234567\n  indented"
    if family == "llama1":
        import sentencepiece
        model = Path(importlib.util.find_spec("mistral_common").origin).parent / "data" / "tokenizer.model.v1"
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
        want = [sp.bos_id()] + sp.encode(sample)
    else:
        from llama_models.llama3.tokenizer import Tokenizer
        model = Path(importlib.util.find_spec("llama_models").origin).parent / "llama3" / "tokenizer.model"
        want = Tokenizer(model).encode(sample, bos=True, eos=False)
    shutil.copy(model, d / "tokenizer.model")
    assert text.TextTokenizer(open_checkpoint(d)).encode(sample) == want


def test_greedy_equals_transformers_generate(built):
    from transformers import LlamaForCausalLM
    path = built.hf("llama31")
    ids = TOKENS[0][:5]
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    want = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                       pad_token_id=0)[0][len(ids):].tolist()
    assert greedy(Model(open_checkpoint(path)), ids, 12) == want


def test_generate_cli_smollm2(capsys):
    """The real model end to end: its GGUF vocabulary tokenizes the prompt, Q4_1/Q8_0 tensors dequantize, 30 blocks
    with GQA 9/3 and a tied head decode. (Token-exact agreement is the tiny-model test's job: llama.cpp rounds
    activations to 8 bits and parts from f32 arithmetic after a few tokens here.)"""
    rc, out, err = ws(capsys, "generate", SMOL, "--prompt", "The capital of France is", "--max-tokens", "4")
    assert rc == 0, err
    assert out.startswith(" Paris"), out


def test_verify_bad_input(built, tmp_path, capsys):
    rc, _, err = ws(capsys, "verify", built.hf("llama1"), built.hf("llama3"))
    assert rc == 2 and err.startswith("error:") and "vocab_size" in err and len(err.splitlines()) == 1
    (tmp_path / "t.txt").write_text(TEXT)
    rc, _, err = ws(capsys, "verify", built.hf("llama1"), built.hf("llama1"), "--text", tmp_path / "t.txt")
    assert rc == 2 and "no tokenizer" in err
    rc, _, err = ws(capsys, "verify", built.hf("llama1"), built.hf("llama1"), "--device", "cuda:0")
    assert rc == 2 and err.startswith("error:") if not torch.cuda.is_available() else True
