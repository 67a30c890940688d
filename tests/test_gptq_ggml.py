"""GPTQ inside the ggml block types (quant.ggml_grid): each block's stored fields fixed by the type's own quantizer
when GPTQ reaches the block, each column rounded to that block's grid with GPTQ's error feedback.

The bytes are checked by code nobody here wrote: gguf-py's dequantizer turns them into exactly the values GPTQ
rounded to, and llama.cpp loads a whole model quantized this way and computes what weightsmith computes from it.
GPTQ's output error on its calibration inputs is below that of the importance matrix alone (the same weights, the
same importance, weightsmith's byte-identical-with-libggml quantizer) for every type.
"""
import gguf
import numpy as np
import pytest
import torch

from test_gptq import hessian_of, layer
from weightsmith.errors import BadInput
from weightsmith.quant import ggml_grid, gptq
from weightsmith.quant import types as quant

TYPES = list(ggml_grid.KINDS)


def _run(t, n_out=24, n_in=512, seed=0):
    W, X = layer(n_out, n_in, n_tok=768, seed=seed)
    H = hessian_of(X)
    importance = X.double().pow(2).mean(0).float().numpy()  # llama-imatrix's entry: sum x^2 / N
    r = gptq.quantize(W, H, ggml_grid.Grid(t, n_out, n_in, importance), actorder="none")
    return W, H, importance, r


@pytest.mark.parametrize("t", TYPES)
def test_bytes_are_the_values_gptq_rounded_to_and_beat_the_imatrix_alone(t):
    W, H, importance, r = _run(t)
    got = gguf.quants.dequantize(r.data, gguf.GGMLQuantizationType[t]).reshape(W.shape)
    assert np.array_equal(got, r.values.numpy())
    base = np.empty_like(r.data)
    quant.quantize_into(W.numpy(), t, base, "w", importance)
    base_w = quant.dequantize(base, t, W.shape)
    g, b = gptq.output_loss(W - r.values, H), gptq.output_loss(W - base_w, H)
    assert g < b, (t, g, b)


@pytest.mark.parametrize("t", ["Q4_0", "Q4_K", "IQ4_XS"])
def test_first_block_fields_are_the_quantizers(t):
    """Nothing has moved the first block when GPTQ reaches it: its grid is the one the type's quantizer gives the
    original weights (the integers then differ: GPTQ rounds against the error it carries)."""
    W, _, importance, r = _run(t)
    G, ts = quant.get(t).block, quant.get(t).type_size
    own = np.empty_like(r.data)  # the whole rows: Q4_0's weights take the row's mean square
    quant.quantize_into(W.numpy(), t, own, "w", importance)
    grids = []
    for data in (own[:, :ts], r.data[:, :ts]):
        A, B = np.empty((W.shape[0], G), np.float32), np.empty((W.shape[0], G), np.float32)
        ggml_grid._grids(ggml_grid.KINDS[t], np.ascontiguousarray(data), A, B)
        grids.append((A, B))
    assert np.array_equal(grids[0][0], grids[1][0]) and np.array_equal(grids[0][1], grids[1][1])


def test_nearest_is_exact_on_ties_and_edges():
    levels = ggml_grid.LEVELS["IQ4_NL"]
    a, b = np.float32(0.37), np.float32(-0.01)
    vals = np.float32(a) * levels + b
    for w in np.concatenate([vals, (vals[1:] + vals[:-1]) / 2, [vals[0] - 5, vals[-1] + 5]]).astype(np.float32):
        k, v = ggml_grid.nearest(w, a, b, levels)
        errs = np.abs(w - vals)
        assert v == vals[k] and errs[k] == errs.min() and k == int(np.argmax(errs == errs.min()))
    assert ggml_grid.nearest(np.float32(1.0), np.float32(0.0), np.float32(0.5), levels)[1] == np.float32(0.5)


def test_grid_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="blocks of 256"):
        ggml_grid.Grid("Q4_K", 4, 320)
    with pytest.raises(ValueError, match="importance of 10"):
        ggml_grid.Grid("Q4_K", 4, 256, np.ones(10, np.float32))
    W, X = layer(8, 256)
    with pytest.raises(BadInput, match="natural column order"):
        gptq.quantize(W, hessian_of(X), ggml_grid.Grid("Q4_K", 8, 256), actorder="static")


# ---- a whole model through the command line ------------------------------------------------------------------------
from conftest import assert_clean_error  # noqa: E402
from test_gguf_write import tok_dir  # noqa: E402,F401  (fixture: a small byte-level BPE tokenizer.json)
from test_gptq import texts  # noqa: E402,F401  (fixture: calibration and held-out text)
from test_presets import hf_model  # noqa: E402
from test_presets_lowbit import IDS, ours  # noqa: E402


@pytest.fixture(scope="module")
def f16_file(tmp_path_factory, tok_dir):  # noqa: F811
    from conftest import cli
    d = tmp_path_factory.mktemp("gptq-ggml")
    out = d / "f16.gguf"
    cli("convert", hf_model(d / "hf", False), out, "--type", "f16", "--tokenizer", tok_dir, "-q", check=0)
    return out


def test_gptq_q4_k_m_runs_in_llamacpp_and_drifts_less_than_the_imatrix_alone(f16_file, texts, tmp_path, ws):  # noqa: F811
    import llamacpp
    from weightsmith.verify import verify
    calib = ["--calibrate", texts / "calib.txt", "--ctx", "64", "--samples", "8"]
    g, im = tmp_path / "gptq.gguf", tmp_path / "imatrix.gguf"
    r = ws("quantize", f16_file, g, "q4_k_m", *calib, "--method", "gptq")
    assert r.returncode == 0, r.stderr
    assert "| gptq out err" in r.stdout and "(imatrix " in r.stdout and "x lower" in r.stdout, r.stdout
    assert ws("quantize", f16_file, im, "q4_k_m", *calib, "-q").returncode == 0
    # the same tensor types as the imatrix path (the preset's rules with an imatrix), other bytes
    tg, ti = ({t.name: t for t in gguf.GGUFReader(p).tensors} for p in (g, im))
    assert {n: t.tensor_type for n, t in tg.items()} == {n: t.tensor_type for n, t in ti.items()}
    assert not np.array_equal(tg["blk.0.attn_q.weight"].data, ti["blk.0.attn_q.weight"].data)
    keys = {f.name for f in gguf.GGUFReader(g).fields.values()}
    assert {"quantize.imatrix.dataset", "quantize.imatrix.chunks_count"} <= keys
    # llama.cpp runs it as weightsmith reads it (the gap of test_presets_lowbit: its Q8_K activations)
    assert llamacpp.max_kld(ours(g), llamacpp.logits(g, IDS)) <= 2e-3
    kg = verify(f16_file, g, text_file=texts / "held.txt", ctx=64)["mean_kld"]
    ki = verify(f16_file, im, text_file=texts / "held.txt", ctx=64)["mean_kld"]
    assert kg < ki, (kg, ki)


def test_gptq_ggml_bad_input(f16_file, texts, tmp_path, ws):  # noqa: F811
    area = tmp_path / "area"
    area.mkdir()
    calib = ["--calibrate", texts / "calib.txt", "--ctx", "64", "--samples", "2"]
    assert_clean_error(ws("quantize", f16_file, area / "o.gguf", "q4_k_m", "--method", "gptq"), area, "--calibrate")
    assert_clean_error(ws("convert", f16_file, area / "o.gguf", "--type", "q4_k_m", *calib, "--method", "gptq",
                          "--actorder", "static"), area, "natural column order")
    assert_clean_error(ws("convert", f16_file, area / "o.gguf", "--type", "f16", *calib, "--method", "gptq"), area,
                       "--method")
