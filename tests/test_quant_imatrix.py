"""Quantizing with an importance matrix: every weighted type's bytes against libggml's ggml_quantize_chunk with
quant_weights (the call llama-quantize makes), for the row families of test_quant_bytes and several importances."""
import numpy as np
import pytest
import torch

import ggml_ref
from test_quant_bytes import real_rows, rows
from weightsmith.errors import Unsupported
from weightsmith.quant import types


def _weighted(name):
    """A weighted type; one whose weighted kernel does not exist yet is an expected, visible failure (xfail)."""
    try:
        types.get(name).weighted_kernel
        return name
    except Unsupported:
        return pytest.param(name, marks=pytest.mark.xfail(raises=Unsupported, strict=True,
                                                          reason="weighted kernel not implemented yet"))


WEIGHTED = [_weighted(name) for name, t in types.REGISTRY.items() if t.weighted]


def importance(kind: str, n: int, seed=0) -> np.ndarray:
    g = np.random.default_rng(seed)
    if kind == "lognormal":  # what calibration gives: positive, a few columns far above the rest
        return g.lognormal(0, 1.5, n).astype(np.float32)
    if kind == "uniform":
        return np.ones(n, np.float32)
    if kind == "zeros":  # columns never activated, and whole blocks of them
        w = g.lognormal(0, 1, n).astype(np.float32)
        w[g.random(n) < 0.3] = 0
        w[32:64] = 0
        return w
    if kind == "huge_range":
        return (10.0 ** g.uniform(-20, 20, n)).astype(np.float32)
    raise ValueError(kind)


def check(x, type_name, w):
    want = ggml_ref.quantize(x, type_name, imatrix=w)
    got = types.quantize(torch.from_numpy(x), type_name, imatrix=w)
    mismatch = np.nonzero((got != want).any(axis=1))[0]
    assert mismatch.size == 0, f"rows {mismatch[:10].tolist()} differ"


@pytest.mark.parametrize("type_name", WEIGHTED)
@pytest.mark.parametrize("kind", ["normal", "uniform", "heavy", "positive", "edge", "extreme"])
@pytest.mark.parametrize("imp", ["lognormal", "uniform", "zeros", "huge_range"])
def test_weighted_bytes_equal_libggml(type_name, kind, imp):
    x = rows(kind, n_rows=32)
    check(x, type_name, importance(imp, x.shape[1]))


@pytest.mark.parametrize("type_name", WEIGHTED)
def test_real_model_rows_weighted(type_name):
    x = real_rows()
    check(x, type_name, importance("lognormal", x.shape[1], seed=1))


@pytest.mark.parametrize("type_name", WEIGHTED)
@pytest.mark.parametrize("shape", [(1, 512), (7, 768), (3, 256)])
def test_row_lengths(type_name, shape):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    check(x, type_name, importance("lognormal", shape[1], seed=2))


@pytest.mark.parametrize("type_name", WEIGHTED)
def test_weighted_error_matches_gguf_py(type_name):
    """The error sums come from the kernel's own dequantized values: the same ones gguf-py reads back."""
    import gguf
    x = rows("normal", n_rows=16, seed=3)
    q, err = types.quantize_with_error(torch.from_numpy(x), type_name, imatrix=importance("zeros", x.shape[1]))
    back = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[type_name]).astype(np.float64)
    xd = x.astype(np.float64)
    assert err == pytest.approx(np.sqrt(((back - xd) ** 2).sum() / (xd ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("type_name", WEIGHTED)
def test_row_chunks_equal_whole_tensor(type_name, monkeypatch):
    x = torch.randn(21, 768, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    w = importance("lognormal", 768, seed=4)
    whole, err = types.quantize_with_error(x, type_name, imatrix=w)
    monkeypatch.setattr(types, "CHUNK", 2000)  # tasks of 2 rows (at least one row each), the last one short
    out = np.empty_like(whole)
    sums = [types.quantize_into(x[r:r + 5], type_name, out[r:r + 5], imatrix=w) for r in range(0, 21, 5)]
    assert np.array_equal(out, whole)
    assert types.relative(sum(e for e, _ in sums), sum(n for _, n in sums)) == pytest.approx(err, rel=1e-12)


def test_unweighted_types_ignore_the_importance():
    x = rows("normal", n_rows=8)
    for name, t in types.REGISTRY.items():
        if not t.weighted:
            assert np.array_equal(types.quantize(x, name, imatrix=importance("lognormal", 512)),
                                  ggml_ref.quantize(x, name, imatrix=importance("lognormal", 512)))


@pytest.mark.parametrize("type_name", WEIGHTED)
def test_first_bad_value_is_named_with_importance(type_name, monkeypatch):
    from weightsmith.errors import BadInput
    monkeypatch.setattr(types, "CHUNK", 1024)
    x = torch.randn(16, 512)
    x[9, 3] = float("nan")
    x[5, 300] = float("inf")
    with pytest.raises(BadInput, match=r"holds NaN or Inf \(first at index \[5, 300\]\)"):
        types.quantize(x, type_name, imatrix=importance("uniform", 512))


def test_importance_of_wrong_length_is_refused():
    from weightsmith.errors import BadInput
    with pytest.raises(BadInput, match="importance matrix has 256 values, the rows 512"):
        types.quantize(torch.zeros(2, 512), "Q4_0", imatrix=np.ones(256, np.float32))


def test_ggml_types_with_an_importance_matrix_are_refused_cleanly(built, ws, tmp_path):
    """quantize/convert --calibrate with a ggml type: the importance-matrix collector is not in yet, so a clear
    error (exit 2, nothing written), never a traceback or a silently uncalibrated file."""
    from conftest import assert_clean_error
    text = tmp_path / "text.txt"
    text.write_text("some calibration text " * 50, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    r = ws("convert", built.hf("llama1"), out / "q.gguf", "--type", "q4_k_m", "--calibrate", text, "-q")
    assert_clean_error(r, out, must_mention="importance matrix")
