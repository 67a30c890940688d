"""W8A8 int8 and FP8 (dynamic) HF output, as compressed-tensors' `int-quantized` / `float-quantized`, against
compressed-tensors itself and transformers.

The reference is built here with compressed-tensors' own APIs, the way llm-compressor builds it: the preset scheme
(`W8A8`, `FP8_DYNAMIC`) applied to the transformers model's Linear layers but lm_head, each weight's scale from
calculate_qparams on its rows' min/max (llm-compressor's memoryless min-max observer, channel strategy) with the zero
point the scheme registers, then ModelCompressor compressing the model and writing config.json. weightsmith's
stored tensors must equal its state dict byte for byte, and its quantization_config must be the same config.
transformers (with compressed-tensors) loads weightsmith's output and, with activation quantization off, computes
what weightsmith's own dequantization computes; with it on (as vLLM runs these), the drift is measured.
"""
import json

import pytest
import torch
from conftest import assert_clean_error
from oracles import TOKENS, hf_state
from test_gguf_write import tok_dir  # noqa: F401  (fixture: a small tokenizer, which GGUF output needs)

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors import BaseCompressor  # noqa: E402
from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor  # noqa: E402
from compressed_tensors.quantization import (QuantizationConfig, QuantizationScheme,  # noqa: E402
                                             apply_quantization_config, preset_name_to_scheme)
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

from weightsmith.formats import open_checkpoint  # noqa: E402
from weightsmith.verify.model import Model  # noqa: E402
from weightsmith.quant import compressed  # noqa: E402

PRESET = {"w8a8": "W8A8", "fp8": "FP8_DYNAMIC"}  # weightsmith --type -> llm-compressor's preset scheme
DTYPE_NAME = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
CASES = [
    ("llama1", torch.bfloat16, "w8a8"),
    ("llama1", torch.bfloat16, "fp8"),
    ("llama2_70b", torch.float16, "fp8"),   # GQA 8:1
    ("llama32", torch.float32, "w8a8"),     # tied embeddings: lm_head ignored, not stored
]


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes (float8 has no equality on CPU; -0.0 and +0.0 differ here, as on disk)."""
    return t.contiguous().view(-1).view(torch.uint8)


def _observe(module):
    """llm-compressor's memoryless min-max weight observer (channel strategy): per-row min and max."""
    w = module.weight.data
    scale, zp = calculate_qparams(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True),
                                  module.quantization_scheme.weights)
    module.weight_scale.data.copy_(scale)
    module.weight_zero_point.data.copy_(zp)


def reference(src, type_: str, tmp) -> tuple[dict, dict]:
    """(state dict, config.json quantization_config) of compressed-tensors' compression of src with the preset."""
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(src, dtype="auto")
    scheme = preset_name_to_scheme(PRESET[type_], ["Linear"])
    scheme.weights.observer = "memoryless_minmax"  # what llm-compressor 0.14 sets (and writes) for these weights
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is not None:
            _observe(m)
    mc = ModelCompressor.from_pretrained_model(model)
    mc.compress_model(model)
    model.config.save_pretrained(tmp)
    mc.update_config(tmp)
    return model.state_dict(), json.loads((tmp / "config.json").read_text())["quantization_config"]


def kld(p_logits, q_logits) -> float:
    lp, lq = p_logits.double().log_softmax(-1), q_logits.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).mean().item()


def logits(path, act_quant: bool = True) -> torch.Tensor:
    """transformers' logits for the directory (f32); act_quant False: compressed-tensors' run-time quantization of
    the input activations switched off (the weights stay as decompressed)."""
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is not None:
            assert m.quantization_scheme.input_activations.dynamic is True
            m.quantization_enabled = act_quant
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits[0].float()


@pytest.mark.parametrize("family,dtype,type_", CASES)
def test_bytes_config_and_model_match_compressed_tensors(built, tmp_path, ws, tok_dir, family, dtype,  # noqa: F811
                                                         type_):
    src = built.hf(family, dtype=dtype)
    out = tmp_path / type_
    r = ws("convert", src, out, "--type", type_)
    assert r.returncode == 0, r.stderr
    assert f"type {type_.upper()} | rel rms err" in r.stdout
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    want, want_cfg = reference(src, type_, ref_dir)

    # every stored tensor, byte for byte: int8 / float8 weights, scales [out, 1] in the model's dtype, and the
    # float tensors (embeddings, norms, lm_head) untouched; nothing else (no zero points, no activation scales)
    got = hf_state(out)
    tied_copy = {"lm_head.weight"} if family == "llama32" else set()
    assert set(got) == set(want) - tied_copy
    scheme = compressed.get(type_)
    for k, v in got.items():
        assert v.dtype == want[k].dtype and v.shape == want[k].shape, k
        assert torch.equal(bits(v), bits(want[k])), k
        if k.endswith(".weight_scale"):
            assert v.dtype == dtype and v.shape[1] == 1
            assert got[k.replace("_scale", "")].dtype == (torch.int8 if scheme.type == "int" else torch.float8_e4m3fn)

    # config.json: the same quantization_config as compressed-tensors' (compared as compressed-tensors reads
    # both: 0.20 serializes unset fields away, llm-compressor's 0.19 writes them all, as weightsmith does)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    # not ours to write: compressed-tensors' own version, and 0.20's new field (None) that 0.19 does not know
    assert set(cfg) <= set(want_cfg) and set(want_cfg) - set(cfg) <= {"version", "moe_sparsity_config"}
    assert (QuantizationConfig.model_validate(cfg).model_dump()
            == QuantizationConfig.model_validate({k: v for k, v in want_cfg.items() if k != "version"}).model_dump())
    assert cfg["format"] == compressed.FORMATS[scheme.format].name == want_cfg["format"]

    # weightsmith reads it back: inspect names the scheme; f32 HF and GGUF conversions hold compressed-tensors'
    # decompression (with an f32 scale) exactly
    info = json.loads(ws("inspect", out, "--json").stdout)
    q_rows = [t for t in info["tensors"] if t["dtype"] == type_.upper()]
    assert len(q_rows) == 7 * 2 and all(len(t["shape"]) == 2 for t in q_rows)
    deq = tmp_path / "f32"
    assert ws("convert", out, deq, "--type", "f32").returncode == 0
    assert ws("convert", out, tmp_path / "f32.gguf", "--type", "f32", "--tokenizer", tok_dir).returncode == 0
    compressor = BaseCompressor.get_value_from_registry(scheme.format)
    ct_scheme = QuantizationScheme.model_validate(cfg["config_groups"]["group_0"])
    back, gguf = hf_state(deq), open_checkpoint(tmp_path / "f32.gguf")
    gguf_t = {t.canonical: t for t in gguf.tensors}
    ours = {t.name: t for t in open_checkpoint(out).tensors}
    for k in got:
        if not k.endswith(".weight_scale"):
            continue
        m = k.removesuffix("_scale")
        values = compressor.decompress({"weight": got[m], "weight_scale": got[k].float()}, ct_scheme)["weight"]
        assert torch.equal(back[m], values), m
        assert torch.equal(ours[m].load(), _canonical_rows(values, ours[m].canonical, info["config"])), m
        assert torch.equal(torch.as_tensor(gguf_t[ours[m].canonical].load()).float(), ours[m].load()), m

    # transformers loads it (decompressing on CPU): without activation quantization it computes what weightsmith's
    # dequantized checkpoint computes; with it (as vLLM runs W8A8 / FP8), it drifts a little further
    plain, with_acts, dequantized = logits(out, act_quant=False), logits(out), logits(deq)
    assert (plain - dequantized).abs().max() <= 1e-5
    # and what weightsmith's own reference pass (verify's) computes on the quantized directory
    assert (Model(open_checkpoint(out)).forward(torch.tensor(TOKENS))[0] - plain).abs().max() <= 1e-4
    source = logits(src)
    drift_w, drift_wa = kld(source, dequantized), kld(source, with_acts)
    v = json.loads(ws("verify", src, out, "--ctx", "128", "--json").stdout)
    print(f"\n{family} {str(dtype)[6:]} {type_}: mean KLD vs source: weights only {drift_w:.2e} (transformers), "
          f"{v['mean_kld']:.2e} (weightsmith verify, top-1 {v['top1_agreement']:.3f}); weights + dynamic "
          f"activations {drift_wa:.2e} (transformers)")
    assert drift_w < 0.01 and drift_wa < 0.02 and v["mean_kld"] < 0.01, (drift_w, drift_wa)  # sanity bounds


def _canonical_rows(w: torch.Tensor, canonical: str, config: dict) -> torch.Tensor:
    """An HF weight in weightsmith's canonical (Meta) row order: q/k rows un-half-split."""
    from weightsmith.convert import layout
    heads = {"attn_q": config["n_heads"], "attn_k": config["n_kv_heads"]}.get(canonical.split(".")[2])
    return layout.rope_from_hf(w, heads) if heads else w


def test_edge_rows_match_compressed_tensors():
    """All-zero rows (scale eps), -0.0 entries, constant rows, huge and tiny magnitudes, exact halfway ties."""
    torch.manual_seed(2)
    w = torch.randn(10, 96)
    w[0] = 0
    w[1] = -0.0
    w[2, ::3] = -0.0
    w[3] = 3.0
    w[4] *= 1e30
    w[5] *= 1e-30
    w[6] = torch.arange(96) % 16 - 8.0
    w[7, ::2] = -w[7, 1::2]
    w[8, 0], w[8, 1:] = 448.0, torch.linspace(-448, 448, 95)  # scale exactly 1: q = w on the fp8 grid's edges
    for dt, name in DTYPE_NAME.items():
        x = w.to(dt)
        if dt == torch.float16:
            x[4] = x[4].nan_to_num(posinf=6e4, neginf=-6e4)
        for type_, preset in PRESET.items():
            s = compressed.get(type_)
            ct_scheme = preset_name_to_scheme(preset, ["Linear"])
            scale, zp = calculate_qparams(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), ct_scheme.weights)
            want = BaseCompressor.get_value_from_registry(s.format).compress(
                {"weight": x, "weight_scale": scale, "weight_zero_point": zp}, ct_scheme)
            got = compressed.quantize(x, s, name)
            assert set(got.parts()) == set(want), (dt, type_)
            for k, v in got.parts().items():
                assert v.dtype == want[k].dtype and torch.equal(bits(v), bits(want[k])), (dt, type_, k)


def test_only_for_hf_output_and_bad_directories(built, tmp_path, ws):
    src = built.hf("llama1", dtype=torch.bfloat16)
    (tmp_path / "out").mkdir()
    r = ws("convert", src, tmp_path / "out" / "x.gguf", "--type", "fp8")
    assert_clean_error(r, tmp_path / "out", "HF output only")
    out = tmp_path / "w8a8"
    assert ws("convert", src, out, "--type", "w8a8").returncode == 0

    # a config whose scheme weightsmith does not read (asymmetric int8): one error line, nothing written
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = False
    (out / "config.json").write_text(json.dumps(cfg))
    dst = tmp_path / "dst"
    dst.mkdir()
    assert_clean_error(ws("convert", out, dst / "f32", "--type", "f32"), dst, "symmetric")
    assert_clean_error(ws("inspect", out), None, "symmetric")
