"""Q2_K and Q3_K files weightsmith writes, run by llama.cpp: its logits agree with weightsmith's own forward pass on
the weights as the file dequantizes them (the bytes themselves are checked against libggml in test_quant_bytes,
the mixtures against llama-quantize in test_presets)."""
import collections

import pytest
import torch

import llamacpp
from test_gguf_write import tok_dir  # noqa: F401  (fixture: a small byte-level BPE tokenizer.json)
from test_presets import hf_model
from weightsmith.cli import run
from weightsmith.formats import open_checkpoint
from weightsmith.verify.model import Model

IDS = [1, 5, 77, 300, 9, 999, 2, 64, 1000, 12, 500, 3, 700, 42, 8, 256]  # within the tiny model's 1024


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ours(path) -> torch.Tensor:
    return Model(open_checkpoint(path)).forward(torch.tensor([IDS]))[0].double()


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory, tok_dir):  # noqa: F811
    """The 8-layer model of test_presets (rows of 256 and 768: the k-quants themselves, no substitutes), as f32."""
    d = tmp_path_factory.mktemp("lowbit")
    out = d / "f32.gguf"
    assert run(["convert", str(hf_model(d / "hf", False)), str(out), "--type", "f32", "--tokenizer", str(tok_dir),
                "-q"]) == 0
    return out


def quantized(f32_file, preset) -> tuple[torch.Tensor, torch.Tensor, collections.Counter]:
    """weightsmith's and llama.cpp's logits of the preset's file, and the file's tensor types."""
    import gguf
    path = f32_file.parent / f"{preset}.gguf"
    if not path.exists():
        assert run(["quantize", str(f32_file), str(path), preset, "-q"]) == 0
    kinds = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
    return ours(path), llamacpp.logits(path, IDS), kinds


@pytest.fixture(scope="module")
def q4_k_m_gap(f32_file):
    """The same gap for a type whose llama.cpp kernels the other tests already trust: measured max KLD 4.1e-4."""
    a, b, _ = quantized(f32_file, "q4_k_m")
    return llamacpp.max_kld(a, b)


@pytest.mark.parametrize("preset,main", [("q2_k", "Q2_K"), ("q3_k_s", "Q3_K"), ("q3_k_m", "Q3_K")])
def test_llamacpp_runs_lowbit_files_as_weightsmith_reads_them(f32_file, q4_k_m_gap, preset, main):
    """llama.cpp rounds each matmul's activations to Q8_K for the k-quant dot products, so its logits are not
    ours exactly: measured max KLD 7.1e-4 (q2_k), 4.4e-4 (q3_k_s), 5.3e-4 (q3_k_m), 4.1e-4 for q4_k_m, while the
    quantization itself moves the logits by KLD 0.38 / 0.21 / 0.16 (f32 -> the file, our pass). Both read the same
    bytes (whose correctness is test_quant_bytes' business), so this shows llama.cpp takes the file as written --
    types, shapes, offsets -- and dequantizes it to what gguf-py does. (No top-1 check: a random model's logits
    are nearly flat, and this gap flips 2 of q2_k's 16 argmaxes.)"""
    mine, theirs, kinds = quantized(f32_file, preset)
    assert kinds[main] >= 24, kinds  # most matrices are of the type under test
    gap = llamacpp.max_kld(mine, theirs)
    drift = llamacpp.max_kld(ours(f32_file), mine)
    assert gap <= 2e-3 and gap <= 3 * q4_k_m_gap and gap <= 0.01 * drift, (gap, q4_k_m_gap, drift)
