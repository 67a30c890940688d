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


from test_gguf_write import tok_dir  # noqa: E402,F401  (fixture: a small byte-level BPE tokenizer.json)


def test_ggml_types_calibrate_in_the_same_run(built, ws, tmp_path, tok_dir):  # noqa: F811
    """convert --type T --calibrate TEXT with a ggml type: an importance matrix collected over the source in the same
    run, every block matrix quantized with its entry (the log says so), the weighted bytes differ from the plain
    ones, and the file records where the importance came from as llama-quantize does (quantize.imatrix.*)."""
    import gguf
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"some calibration text {i}" for i in range(300)), encoding="utf-8")
    from test_gptq import with_tokenizer
    src = with_tokenizer(built.hf("llama1"), tok_dir, tmp_path / "src")
    weighted, plain = tmp_path / "w.gguf", tmp_path / "p.gguf"
    r = ws("convert", src, weighted, "--type", "q4_0", "--calibrate", text, "--ctx", 32, "--samples", 3)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if " Writing tensor blk." in line and "_norm" not in line]
    assert len(lines) == 2 * 7 and all(line.endswith(" | imatrix") for line in lines), lines
    assert ws("convert", src, plain, "--type", "q4_0", "-q").returncode == 0
    a = {t.name: t for t in gguf.GGUFReader(weighted).tensors}
    b = {t.name: t for t in gguf.GGUFReader(plain).tensors}
    assert not np.array_equal(a["blk.0.attn_q.weight"].data, b["blk.0.attn_q.weight"].data)
    assert np.array_equal(a["token_embd.weight"].data, b["token_embd.weight"].data)  # a lookup: no entry
    fields = gguf.GGUFReader(weighted).fields
    kv = {k: f.contents() for k, f in fields.items() if k.startswith("quantize.imatrix.")}
    assert kv == {"quantize.imatrix.file": str(text), "quantize.imatrix.dataset": str(text),
                  "quantize.imatrix.entries_count": 2 * 7, "quantize.imatrix.chunks_count": 3}
