"""Type mixtures against llama-quantize itself (llama_model_quantize in llama-cpp-python): for each preset, the
file weightsmith writes has the same tensors, the same type for each, the same bytes and the same file_type."""
import json

import numpy as np
import pytest
import torch

import llamacpp
from test_gguf_read import SMOL
from weightsmith.quant.presets import PRESETS

PRESET_NAMES = ["q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q8_0", "q4_0", "q5_1", "iq4_nl", "iq4_xs",
                "q2_k", "q3_k_s", "q3_k_m", "q3_k_l"]
LOW_BIT = ["q2_k", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l"]


def hf_model(path, tied: bool, dim=256, ffn=768, heads=4, kv=2, seed=1):
    """8 layers (so llama-quantize's first/last-eighth rules split them), rows of 256 and 768: k-quant friendly
    (dim 384, ffn 1152: no row splits into 256s, every k-quant takes its substitute)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=dim, intermediate_size=ffn, num_hidden_layers=8, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=1024, tie_word_embeddings=tied, dtype=torch.float32)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5 if p.dim() > 1 else 1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tok_dir):
    from conftest import cli
    root = tmp_path_factory.mktemp("presets")
    out = {}
    for tied in (False, True):
        src = hf_model(root / f"hf-{tied}", tied)
        out[f"tiny-tied{tied}"] = root / f"tiny-{tied}.gguf"
        cli("convert", src, out[f"tiny-tied{tied}"], "--type", "f16", "--tokenizer", tok_dir, "-q", check=0)
    out["tiny-384"] = root / "tiny-384.gguf"
    cli("convert", hf_model(root / "hf-384", False, dim=384, ffn=1152, heads=6), out["tiny-384"], "--type", "f16",
        "--tokenizer", tok_dir, "-q", check=0)
    out["smollm2"] = root / "smollm2-f16.gguf"
    cli("convert", SMOL, out["smollm2"], "--type", "f16", "-q", check=0)
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from test_gguf_write import tok_dir as make
    return make.__wrapped__(tmp_path_factory)


# every preset on the tiny models; on the real model (30 layers, rows of 576 that take the fallbacks) the two
# mixtures with the most rules, to keep CI short: weightsmith's k-quants take ~25 s on it (llama-quantize ~3 s)
CASES = [(m, p) for m in ("tiny-tiedFalse", "tiny-tiedTrue") for p in PRESET_NAMES] + \
    [("smollm2", "q4_k_m"), ("smollm2", "q4_k_s"), ("smollm2", "iq4_xs")] + \
    [("tiny-384", p) for p in LOW_BIT] + [("smollm2", "q2_k"), ("smollm2", "q3_k_m")]
# iq4_xs: SmolLM2's rows of 576 take IQ4_NL; q2_k/q3_k: its rows of 576 take Q4_0 and its ffn_down (1536) stays
# Q3_K/Q4_K/Q5_K; q2_k_s only where no matrix is Q2_K (tiny-384): llama-quantize refuses it elsewhere without an imatrix


@pytest.mark.parametrize("model,preset", CASES)
def test_preset_equals_llama_quantize(sources, tmp_path, run_cli, model, preset):
    src = sources[model]
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    run_cli("quantize", src, ours, preset, "-q", check=0)
    llamacpp.quantize(src, theirs, PRESETS[preset].file_type)
    assert_same_tensors(theirs, ours)


def assert_same_tensors(theirs, ours):
    """The same tensors, each of the same type with the same bytes, and the same general.file_type."""
    import gguf
    a = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    b = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    assert sorted(a) == sorted(b)
    types = {k: (a[k].tensor_type.name, b[k].tensor_type.name) for k in a}
    assert all(x == y for x, y in types.values()), {k: v for k, v in types.items() if v[0] != v[1]}
    assert all(np.array_equal(a[k].data, b[k].data) for k in a), [k for k in a if not np.array_equal(a[k].data, b[k].data)]
    fa, fb = gguf.GGUFReader(theirs).fields, gguf.GGUFReader(ours).fields
    assert fa["general.file_type"].contents() == fb["general.file_type"].contents()


def test_preset_straight_from_hf_and_meta(built, tmp_path, run_cli, sources):
    """convert ANY -> GGUF --type q4_k_m in one step equals converting to f16 first and quantizing that
    (the values reach the quantizer as the f16 file holds them)."""
    import gguf
    run_cli("convert", SMOL, tmp_path / "hf", "--type", "f16", "-q", check=0)
    run_cli("convert", tmp_path / "hf", tmp_path / "direct.gguf", "--type", "q4_k_m", "-q", check=0)
    run_cli("quantize", sources["smollm2"], tmp_path / "two-step.gguf", "q4_k_m", "-q", check=0)
    a = {t.name: t for t in gguf.GGUFReader(tmp_path / "direct.gguf").tensors}
    b = {t.name: t for t in gguf.GGUFReader(tmp_path / "two-step.gguf").tensors}
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k].data, b[k].data) for k in a)
    r = json.loads(run_cli("inspect", tmp_path / "direct.gguf", "--json", check=0).stdout)
    assert r["metadata"]["general.file_type"] == 15


# llama-quantize's per-tensor options on the tiny models (8 layers): the attn_v / ffn_down rules count the tensors
# the rules see, so overriding blk.0's shifts the more-bits layers of q4_k_m; a tied model's token_embd is also its
# output (the output type applies to it unless the token-embedding type is given).
OVERRIDES = [
    ("tiny-tiedFalse", "q4_k_m", dict(tensor_types=[(r"blk\.0\.attn_v", "q8_0"), ("ffn_down", "q5_k")])),
    ("tiny-tiedFalse", "q4_k_m", dict(output_type="q8_0", token_embd_type="q4_0")),
    ("tiny-tiedTrue", "q4_k_m", dict(output_type="q5_k")),
    ("tiny-tiedTrue", "q4_k_s", dict(output_type="q5_k", token_embd_type="q8_0")),
    ("tiny-tiedFalse", "q5_k_m", dict(pure=True)),
    ("tiny-tiedFalse", "iq4_xs", dict(leave_output=True, tensor_types=[("attn_(q|k)", "f16")])),
]


@pytest.mark.parametrize("model,preset,options", OVERRIDES)
def test_overrides_equal_llama_quantize(sources, tmp_path, model, preset, options):
    import gguf
    from weightsmith.convert.pipeline import convert
    from weightsmith.quant.presets import Overrides
    src, ours, theirs = sources[model], tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    convert(src, ours, to="gguf", type_=preset, quiet=True, overrides=Overrides.parse(
        options.get("output_type"), options.get("token_embd_type"),
        [f"{p}={t}" for p, t in options.get("tensor_types", [])], options.get("pure", False),
        options.get("leave_output", False)))
    llamacpp.quantize(src, theirs, PRESETS[preset].file_type, **options)
    assert_same_tensors(theirs, ours)
    llamacpp.quantize(src, tmp_path / "plain.gguf", PRESETS[preset].file_type)
    plain = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "plain.gguf").tensors}
    assert {t.name: t.tensor_type for t in gguf.GGUFReader(ours).tensors} != plain  # the options changed something


@pytest.mark.parametrize("model", ["tiny-tiedFalse", "smollm2"])
def test_q2_k_s_without_an_importance_matrix_is_refused(sources, tmp_path, ws, model):
    """q2_k_s where some matrix (not token_embd / output) would be Q2_K: llama-quantize refuses the file without an
    importance matrix, and so does weightsmith: exit 2, one error line, nothing written."""
    from conftest import assert_clean_error
    with pytest.raises(AssertionError, match="llama_model_quantize failed"):
        llamacpp.quantize(sources[model], tmp_path / "theirs.gguf", PRESETS["q2_k_s"].file_type)
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_error(ws("quantize", sources[model], out / "q.gguf", "q2_k_s", "-q"), out,
                       must_mention="importance matrix")
