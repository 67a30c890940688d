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


LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def legacy_edges() -> np.ndarray:
    """Blocks of 32 for the legacy kernels' fast path (a normal scale) and its edges, a block a case: signed zeros,
    ties of the largest magnitude, scales at the normal/subnormal boundary, quants landing on 15/16 and 31/32
    before the clamp, blocks of one sign."""
    g = np.random.default_rng(5)
    tiny = np.float32(2.0 ** -126)  # FLT_MIN
    blocks = []

    def block(*head, fill=None):
        b = g.uniform(-1, 1, 32).astype(np.float32) if fill is None else np.full(32, fill, np.float32)
        b[:len(head)] = np.array(head, np.float32)
        blocks.append(b)
        return b

    block(fill=-0.0)                                  # all -0.0: Q4_0's max is +0.0, d = -0.0
    block(fill=0.0)
    block(-0.0, 0.0, fill=0.0)                        # zeros of both signs, the first negative
    block(0.0, -0.0, fill=-0.0)
    block(-0.0, 1.0, 2.0, fill=0.5)                   # min a zero (the first: -0.0), the rest positive
    block(0.0, -0.0, 1.0, fill=0.25)
    block(-1.0, -0.0, 0.0, fill=-0.5)                 # max a zero (the first: -0.0), the rest negative
    block(-1.0, 0.0, -0.0, fill=-0.5)
    block(-3.0, 3.0)                                  # largest magnitude twice, opposite signs: the first
    block(3.0, -3.0)
    block(0.5, -3.0, 2.0, 3.0)
    block(0.5, 3.0, -1.0, 3.0, -3.0)
    b = block(fill=0.0)
    b[::2], b[1::2] = -2.0, 2.0
    for m in (8 * tiny, 16 * tiny, 8 * tiny * np.float32(1 - 2 ** -24), 16 * tiny * np.float32(1 - 2 ** -24)):
        for sign in (1, -1):                          # Q4_0/Q5_0's d = max / -8, -16 at FLT_MIN and just below
            b = block(sign * m)
            b[1:] *= m
    for span in (15 * tiny, 31 * tiny, 15 * tiny * np.float32(1 - 2 ** -23), 31 * tiny * np.float32(1 + 2 ** -23)):
        b = block(0.0, span, fill=0.0)                # Q4_1/Q5_1's d = (max - min) / 15, 31 at FLT_MIN
        b[2:] = g.uniform(0, 1, 30).astype(np.float32) * span
        block(-span, 0.0, fill=-span / 2)
    block(8.0, -7.5, -6.5, 7.5, -8.0, 0.5, -0.5)      # Q4_0, d = -1: x * id + 8.5 = 0.5, 16.0, 15.0, 1.0, 16.5
    block(16.0, -15.5, -14.5, 15.5, -16.0, 0.5)       # Q5_0, d = -1: 32.0, 31.0, 1.0, 32.5
    block(0.0, 15.0, 14.5, 13.5, 0.5, 7.5, fill=7.0)  # Q4_1, d = 1: (x - min) * id + 0.5 = 15.5, 15.0, 14.0, 1.0
    block(0.0, 31.0, 30.5, 29.5, 15.5, fill=7.0)      # Q5_1, d = 1: 31.5, 31.0, 30.0, 16.0
    block(fill=0.0)[:] = g.uniform(0.5, 2, 32)        # one sign: Q4_1/Q5_1's min and max from one end
    block(fill=0.0)[:] = -g.uniform(0.5, 2, 32)
    block(np.float32(2.0 ** -120), fill=0.0)[1:] = g.uniform(-1, 1, 31) * np.float32(3e-39)  # subnormals, d normal
    block(fill=0.0)[:] = g.uniform(-1, 1, 32) * np.float32(1e6)   # d past fp16's range: inf bytes
    block(fill=0.0)[:] = g.uniform(-1, 1, 32) * np.float32(1e-6)  # d fp16-subnormal
    while len(blocks) % 16:
        block()
    return np.concatenate(blocks).reshape(-1, 512)


@pytest.mark.parametrize("type_name", LEGACY)
def test_legacy_edges_equal_libggml(type_name):
    x = legacy_edges()
    got = types.quantize(torch.from_numpy(x), type_name)
    want = ggml_ref.quantize(x, type_name)
    bad = np.nonzero((got.reshape(-1, got.shape[1] // 16) != want.reshape(-1, want.shape[1] // 16)).any(axis=1))[0]
    assert bad.size == 0, f"blocks {bad[:10].tolist()} differ"


def _bits(v: float) -> int:
    return int(np.float64(v).view(np.int64))


@pytest.mark.parametrize("type_name", LEGACY)
def test_legacy_sums_are_block_sums(type_name):
    """A kernel's (err2, norm2, bad): the sums of legacy.block_err2 (of the block as gguf-py dequantizes it) and of
    legacy.block_norm2, block after block, bit for bit; up to the first non-finite block, whose index it names."""
    import gguf
    from weightsmith.quant import legacy
    qt = types.get(type_name)
    size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][1]
    xs = [rows(kind).reshape(-1, 32) for kind in ("normal", "heavy", "positive", "edge", "extreme")]
    xs.append(legacy_edges().reshape(-1, 32))
    g = np.random.default_rng(6)
    for lo, hi in ((-1, 1), (0, 1), (-1, 0)):  # blocks of both signs, of one sign (the min and max found apart)
        bad = g.uniform(lo, hi, (40, 32)).astype(np.float32)
        for k, v in enumerate([np.nan, np.inf, -np.inf, -np.nan, np.uint32(0xFF800001).view(np.float32)]):
            c = bad.copy()
            c[10 + 5 * k, (7 * k + 31) % 32] = v
            c[36, 0] = np.nan
            xs.append(c)
    for x in xs:
        out = np.zeros((x.shape[0], size), np.uint8)
        err2, norm2, first = qt.kernel(x, out)
        finite = np.isfinite(x).all(axis=1)
        stop = x.shape[0] if finite.all() else int(np.argmin(finite))
        assert first == (-1 if finite.all() else stop * 32 + int(np.argmin(np.isfinite(x[stop]))))
        with np.errstate(all="ignore"):  # scales of inf (fp16's range passed) times zero quants
            back = gguf.quants.dequantize(out[:stop], gguf.GGMLQuantizationType[type_name]).reshape(-1, 32)
        e = n = 0.0
        for i in range(stop):
            e += legacy.block_err2(back[i], x[i])
            n += legacy.block_norm2(x[i])
        assert (_bits(err2), _bits(norm2)) == (_bits(e), _bits(n))


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
