"""Streaming in pieces: a conversion that reads, converts and writes each tensor in many small row ranges gives
byte-for-byte the files it gives when every tensor is one piece. The piece size cuts rope tensors at every head
and everything else at ranges that straddle model-parallel shard boundaries (5 rows of llama3's 128)."""
from pathlib import Path

import pytest

from weightsmith.convert import pipeline

WHOLE = 1 << 40           # every tensor one piece
SMALL = [5 * 128]         # rows of 128 (llama3) or 256 (llama2_70b): five or two rows a piece, q/k one head a piece

CASES = {  # id: (source, family, convert() arguments)
    "hf-gguf-f16": ("hf", "llama3", dict(to="gguf", type_="f16")),
    "hf-gguf-q8_0": ("hf", "llama3", dict(to="gguf", type_="q8_0")),
    "hf-gguf-q4_k_m": ("hf", "llama2_70b", dict(to="gguf", type_="q4_k_m")),
    "hf-meta-mp2": ("hf", "llama3", dict(to="meta", mp=2)),
    "meta-mp2-hf": ("meta", "llama3", dict(to="hf")),
    "hf-hf-gqa": ("hf", "llama2_70b", dict(to="hf", type_="bf16")),
    "gguf-q8_0-gguf-q4_k_m": ("gguf q8_0", "llama2_70b", dict(to="gguf", type_="q4_k_m")),
    "gguf-q8_0-meta-mp2": ("gguf q8_0", "llama3", dict(to="meta", mp=2)),
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from test_gguf_write import tok_dir as make
    return make.__wrapped__(tmp_path_factory)


def files(root: Path) -> dict[str, bytes]:
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_pieces_give_the_same_bytes_as_whole_tensors(built, tok_dir, tmp_path, monkeypatch, case):
    kind, family, kw = CASES[case]
    if kw["to"] == "gguf":
        kw = dict(kw, tokenizer=tok_dir)
    if kind == "gguf q8_0":  # a quantized GGUF source: rows of blocks dequantized piece by piece
        src = tmp_path / "src.gguf"
        pipeline.convert(built.hf(family), src, to="gguf", type_="q8_0", tokenizer=tok_dir, quiet=True)
    else:
        src = built.meta(family, mp=2) if kind == "meta" else built.hf(family)
    suffix = ".gguf" if kw["to"] == "gguf" else ""
    outs = {}
    for piece in [WHOLE, *SMALL]:
        monkeypatch.setattr(pipeline, "PIECE_VALUES", piece)
        (tmp_path / str(piece)).mkdir()
        dst = tmp_path / str(piece) / f"out{suffix}"
        pipeline.convert(src, dst, quiet=True, **kw)
        outs[piece] = files(dst)
    whole = outs[WHOLE]
    assert whole
    for piece in SMALL:
        assert outs[piece].keys() == whole.keys()
        for name, data in whole.items():
            assert outs[piece][name] == data, (case, piece, name)


def test_hf_and_gguf_conversions_never_import_torch(built, tok_dir, tmp_path):
    """HF -> GGUF (float casts, block quantization, Llama 3.1's rope_freqs), GGUF -> GGUF, GGUF -> HF and HF -> HF
    run on numpy and the numba kernels alone: importing torch would cost a second and ~100 MB of every conversion
    (Meta files are torch pickles; int8/int4 packing without torch: tests/test_int_stream.py)."""
    import subprocess
    import sys
    code = ("import sys; from weightsmith.convert.pipeline import convert; src, out, tok = sys.argv[1:]; "
            "[convert(src, f'{out}/{t}.gguf', type_=t, tokenizer=tok, quiet=True) "
            "for t in ('f16', 'q8_0', 'q4_k_m', 'bf16', 'f32')]; "
            "convert(f'{out}/q8_0.gguf', f'{out}/q4_0.gguf', type_='q4_0', quiet=True); "
            "convert(f'{out}/q4_k_m.gguf', f'{out}/hf', to='hf', quiet=True); "
            "convert(f'{out}/hf', f'{out}/hf-f16', to='hf', type_='f16', quiet=True); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(built.hf("llama31")), str(tmp_path), str(tok_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    assert len(list(tmp_path.glob("*.gguf"))) == 6 and (tmp_path / "hf-f16" / "model.safetensors").is_file()
