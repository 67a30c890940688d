"""int8/int4 HF output (compressed-tensors pack-quantized) against compressed-tensors itself and transformers.

Bytes: compressed-tensors' calculate_qparams on each group's min/max and its PackedQuantizationCompressor give
exactly weightsmith's weight_packed and weight_scale. Values: its decompression equals weightsmith's reading.
Model: transformers (with compressed-tensors installed) loads the directory and its logits equal those of the
float model weightsmith dequantizes it to.
"""
import json

import pytest
import torch
from conftest import cli
from oracles import TOKENS, hf_logits, hf_state

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

from weightsmith.quant import compressed  # noqa: E402

PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")


def _args(qconfig: dict, module: str) -> QuantizationArgs:
    kind = module.split(".", 3)[-1]
    for g in qconfig["config_groups"].values():
        t = g["targets"][0]
        if t == "Linear" or kind in t.replace("\\", ""):
            return QuantizationArgs(**g["weights"])
    raise AssertionError(f"no group for {module}")


def _oracle_compress(w: torch.Tensor, args: QuantizationArgs) -> dict:
    """What llm-compressor stores for weight w: min-max observer per group (or row), then the compressor."""
    g = args.group_size or w.shape[1]
    x = w.reshape(w.shape[0], -1, g)
    scale, zp = calculate_qparams(x.amin(-1), x.amax(-1), args)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    return PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp},
                                                 scheme)


def _check_against_compressed_tensors(src, out):
    cfg = json.loads((out / "config.json").read_text())
    QuantizationConfig.model_validate(cfg["quantization_config"])  # compressed-tensors accepts it as written
    before, after = hf_state(src), hf_state(out)
    n_layers = cfg["num_hidden_layers"]
    for i in range(n_layers):
        for p in PROJ:
            m = f"model.layers.{i}.{p}"
            args = _args(cfg["quantization_config"], m)
            if args.group_size:
                assert before[m + ".weight"].shape[1] % args.group_size == 0
            want = _oracle_compress(before[m + ".weight"], args)
            for k in ("weight_packed", "weight_scale", "weight_shape"):
                assert torch.equal(after[f"{m}.{k}"], want[k]), (m, k)
            got = PackedQuantizationCompressor.decompress(
                {k: after[f"{m}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape")} |
                {"weight_scale": after[m + ".weight_scale"].float()}, QuantizationScheme(targets=["Linear"], weights=args))
            mine = compressed.dequantize(after[m + ".weight_packed"], after[m + ".weight_scale"],
                                         compressed.SCHEMES[f"INT{args.num_bits}"])
            assert torch.equal(got["weight"], mine), m
    # embeddings, norms and lm_head stay float, untouched
    for k, v in before.items():
        if not any(p in k for p in PROJ):
            assert torch.equal(after[k], v), k


@pytest.mark.parametrize("family,dtype,type_", [
    ("llama1", torch.bfloat16, "int4"),      # dim 64: q/k/v/o/gate/up need group 64, down_proj (256) gets 128
    ("llama1", torch.float16, "int8"),
    ("llama2_70b", torch.bfloat16, "int8"),  # GQA 8:1, every width divisible by 128: one config group
    ("llama2_70b", torch.float32, "int4"),
    ("llama32", torch.bfloat16, "int4"),     # tied embeddings
])
def test_bytes_and_model_match_compressed_tensors_and_transformers(built, tmp_path, family, dtype, type_):
    src = built.hf(family, dtype=dtype)
    out = tmp_path / type_
    r = cli("convert", src, out, "--type", type_, check=0)
    assert f"type {type_.upper()} | rel rms err" in r.stdout
    _check_against_compressed_tensors(src, out)
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert len(groups) == (2 if family == "llama1" and type_ == "int4" else 1)

    # transformers loads it (compressed-tensors decompresses on CPU) and computes what weightsmith's own
    # dequantization to a float checkpoint computes
    deq = tmp_path / "dequantized"
    cli("convert", out, deq, "--type", "f32", check=0)
    quantized, dequantized, original = hf_logits(out), hf_logits(deq), hf_logits(src)
    assert (quantized - dequantized).abs().max() <= 1e-5
    # and stays close to the float model (a sanity bound, not an oracle: int4 of random weights drifts)
    lp, lq = original.double().log_softmax(-1), quantized.double().log_softmax(-1)
    kld = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    assert kld < (0.01 if type_ == "int8" else 0.2), kld


def test_edge_blocks_match_compressed_tensors():
    """All-zero groups (scale eps), constant rows, huge and tiny magnitudes, exact ties at half steps."""
    torch.manual_seed(1)
    w = torch.randn(8, 256)
    w[0] = 0
    w[1] = 3.0
    w[2, :128] = 0
    w[3] *= 1e30
    w[4] *= 1e-30
    w[5] = torch.arange(256) % 16 - 8.0   # integers: x/scale lands on .5 ties for int4
    w[6, ::2] = -w[6, 1::2]
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        x = w.to(dt)
        x[3] = x[3].nan_to_num(posinf=6e4, neginf=-6e4) if dt == torch.float16 else x[3]
        # pack-quantized only (W8A8 / FP8: tests/test_w8a8_fp8.py)
        for s in (s for s in compressed.SCHEMES.values() if s.format == compressed.FORMAT):
            args = QuantizationArgs(num_bits=s.bits, type="int", symmetric=True, group_size=s.group,
                                    strategy="group" if s.group else "channel")
            want = _oracle_compress(x, args)
            got = compressed.quantize(x, s, {torch.float32: "F32", torch.bfloat16: "BF16",
                                             torch.float16: "F16"}[dt])
            assert torch.equal(got.packed, want["weight_packed"]), (dt, s)
            assert torch.equal(got.scale, want["weight_scale"]), (dt, s)


def test_int_types_only_for_hf_output(built, tmp_path):
    r = cli("convert", built.hf("llama1"), tmp_path / "x.gguf", "--type", "int4", check=2)
    assert r.stderr.startswith("error:") and "HF output only" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
