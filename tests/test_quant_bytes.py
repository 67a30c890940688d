"""Every quantized type weightsmith writes, byte for byte against libggml's ggml_quantize_chunk."""
import numpy as np
import pytest
import torch

import ggml_ref
from test_gguf_read import SMOL
from weightsmith.quant import types


def rows(kind: str, n_rows=64, n=512, seed=0) -> np.ndarray:
    g = np.random.default_rng(seed)
    if kind == "normal":
        return g.standard_normal((n_rows, n)).astype(np.float32) * 0.02
    if kind == "uniform":
        return g.uniform(-1, 1, (n_rows, n)).astype(np.float32)
    if kind == "heavy":  # outliers, as real attention/FFN weights have
        return (g.standard_t(2, (n_rows, n)) * 0.05).astype(np.float32)
    if kind == "positive":
        return g.uniform(0, 3, (n_rows, n)).astype(np.float32)
    if kind == "edge":  # all-zero, constant, huge, tiny, one spike, sign ties, halves
        x = g.standard_normal((n_rows, n)).astype(np.float32)
        x[0] = 0
        x[1] = 0.7
        x[2] = -3.25
        x[3, ::2], x[3, 1::2] = 1e30, -1e30
        x[4] *= 1e-20
        x[5] = 0
        x[5, 7] = 5.0
        x[6] = np.tile(np.array([1.0, -1.0], np.float32), n // 2)
        x[7] = (np.arange(n) % 17 - 8).astype(np.float32) / 2  # exact halves after scaling
        x[8] *= 60000.0
        return x
    if kind == "extreme":  # subnormal and near-FLT_MAX blocks: scales whose inverse overflows, fp16 under/overflow
        x = g.uniform(-1, 1, (n_rows, n)).astype(np.float32)
        for r, s in enumerate([1e-38, 3e-39, 1e-40, 1e-42, 1e-44, 1e-30, 3e38, 1e38, 6.6e4, 6e-8, 2.0 ** -127]):
            x[r] *= np.float32(s)
        x[11] = np.float32(3.4e38)
        x[11, ::3] = np.float32(-3.4e38)
        x[12] = np.float32(1.4e-45)
        x[12, 1::2] = np.float32(-1.4e-45)
        x[13] = -0.0
        x[14] = np.float32(1e20)
        x[14, 1::2] = np.float32(1e20 * (1 - 2 ** -22))
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("type_name", list(types.REGISTRY))
@pytest.mark.parametrize("kind", ["normal", "uniform", "heavy", "positive", "edge", "extreme"])
def test_bytes_equal_libggml(type_name, kind):
    x = rows(kind)
    want = ggml_ref.quantize(x, type_name)
    got = types.quantize(torch.from_numpy(x), type_name)
    mismatch = np.nonzero((got != want).any(axis=1))[0]
    assert mismatch.size == 0, f"rows {mismatch[:10].tolist()} differ"


@pytest.mark.parametrize("type_name", list(types.REGISTRY))
@pytest.mark.parametrize("kind", ["normal", "edge"])
def test_dequantize_matches_gguf_py(type_name, kind):
    """types.dequantize is gguf-py's; the error the log prints comes from the quantizer's own dequantized values,
    which must be the same ones."""
    import gguf
    x = rows(kind, seed=3)
    x[3] = np.clip(x[3], -3e4, 3e4)  # scales within f16 range: ggml stores inf otherwise, which dequantizes to NaN
    q, err = types.quantize_with_error(torch.from_numpy(x), type_name)
    ours = types.dequantize(q, type_name, x.shape)
    theirs = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[type_name])
    assert np.array_equal(ours.numpy(), theirs)
    xd = x.astype(np.float64)
    assert err == pytest.approx(np.sqrt(((theirs - xd) ** 2).sum() / (xd ** 2).sum()), rel=1e-5)
    if kind == "edge":
        return
    rel = np.sqrt(((theirs - x) ** 2).mean() / (x ** 2).mean())
    assert rel < {"Q8_0": 0.01, "Q6_K": 0.02, "Q5_0": 0.05, "Q5_1": 0.05, "Q5_K": 0.05, "Q4_0": 0.1, "Q4_1": 0.1,
                  "Q4_K": 0.1, "IQ4_NL": 0.1, "IQ4_XS": 0.1, "Q3_K": 0.2, "Q2_K": 0.35}[type_name]


def test_nan_is_named(tmp_path):
    from weightsmith.errors import BadInput
    x = torch.zeros(4, 64)
    x[2, 5] = float("nan")
    with pytest.raises(BadInput, match="blk.3.attn_q.weight.*NaN"):
        types.quantize(x, "Q8_0", "blk.3.attn_q.weight")


def real_rows() -> np.ndarray:
    """Rows of a real model: SmolLM2's layer-0 and layer-29 weights as llama.cpp stored them, dequantized."""
    import gguf
    tensors = {t.name: t for t in gguf.GGUFReader(SMOL).tensors}
    out = []
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.0.attn_v.weight"):
        t = tensors[name]
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1, 576 if name != "blk.29.ffn_down.weight" else 1536)
        out.append(x[:64, :512])
    return np.concatenate(out).astype(np.float32)


@pytest.mark.parametrize("type_name", list(types.REGISTRY))
def test_real_model_rows_equal_libggml(type_name):
    x = real_rows()
    assert np.array_equal(types.quantize(torch.from_numpy(x), type_name), ggml_ref.quantize(x, type_name))


@pytest.fixture(scope="module")
def smol_tokenizer(tmp_path_factory):
    """SmolLM2's tokenizer as weightsmith writes it from the GGUF; GGUF output pads it to a tiny model's vocab."""
    from conftest import cli
    d = tmp_path_factory.mktemp("smoltok")
    cli("convert", SMOL, d / "hf", "-q", check=0)
    return d / "hf" / "tokenizer.json"


@pytest.fixture(scope="module")
def f32_gguf(built, tmp_path_factory, smol_tokenizer):
    """The f32 GGUF every quantized conversion below is compared with, and llama.cpp's logits of it."""
    import llamacpp
    from conftest import cli
    from oracles import TOKENS
    out = tmp_path_factory.mktemp("f32") / "f32.gguf"
    cli("convert", built.hf("llama3"), out, "--tokenizer", smol_tokenizer, "-q", check=0)
    return out, llamacpp.logits(out, TOKENS[0])


@pytest.mark.parametrize("type_name", list(types.REGISTRY))
def test_convert_to_quantized_gguf(built, tmp_path, run_cli, smol_tokenizer, f32_gguf, type_name):
    """HF -> GGUF TYPE: every matrix is libggml's quantization of the same canonical f32 tensor, norms stay f32,
    and llama.cpp runs the file. (The tiny model's rows of 128 take the k-quants' substitutes.)"""
    import gguf
    import llamacpp
    from oracles import TOKENS
    src = built.hf("llama3")
    f32, f32_logits = f32_gguf
    r = run_cli("convert", src, tmp_path / "q.gguf", "--type", type_name.lower(), "--tokenizer", smol_tokenizer, check=0)
    assert "rel rms err" in r.stdout
    ref = {t.name: t for t in gguf.GGUFReader(f32).tensors}
    got = {t.name: t for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    assert sorted(ref) == sorted(got)
    for name, t in got.items():
        if len(t.shape) == 1:
            assert t.tensor_type.name == "F32"
            continue
        # which type each matrix gets is llama-quantize's choice (test_presets); its bytes are libggml's
        want = ggml_ref.quantize(np.asarray(ref[name].data).reshape(-1, int(t.shape[0])), t.tensor_type.name)
        assert np.array_equal(np.asarray(t.data).reshape(want.shape), want), name
    assert {t.tensor_type.name for t in got.values()} & {type_name, *types.FALLBACK.values()}
    kld = llamacpp.max_kld(f32_logits, llamacpp.logits(tmp_path / "q.gguf", TOKENS[0]))
    assert kld < 0.5  # a sanity bound: llama.cpp ran the quantized file and its logits still track the f32 file's


def test_quantize_command_requantizes_through_f32(tmp_path, run_cli):
    import gguf
    r = run_cli("quantize", SMOL, tmp_path / "q8.gguf", "q8_0", check=0)
    assert "requantized from Q4_1 through f32" in r.stdout
    src = {t.name: t for t in gguf.GGUFReader(SMOL).tensors}
    out = {t.name: t for t in gguf.GGUFReader(tmp_path / "q8.gguf").tensors}
    name = "blk.3.ffn_up.weight"
    x = gguf.quants.dequantize(src[name].data, src[name].tensor_type)
    assert np.array_equal(np.asarray(out[name].data), ggml_ref.quantize(x, "Q8_0"))


def test_block_types_need_gguf_output(built, tmp_path, run_cli):
    r = run_cli("convert", built.hf("llama1"), tmp_path / "out", "--type", "q8_0")
    assert r.returncode == 2 and "GGUF" in r.stderr and not (tmp_path / "out").exists()
