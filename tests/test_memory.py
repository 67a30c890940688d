"""Streaming: a conversion's peak RSS does not grow with the number of layers (tensors stream in pieces)."""
import subprocess
import sys

import pytest
import torch

# Peak RSS of the conversion alone: the high-water mark is reset (clear_refs 5) after the imports, whose own
# transient peak would otherwise hide everything below it.
MEASURE = """
import sys, weightsmith
from torch._subclasses.fake_tensor import FakeTensorMode
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
weightsmith.convert(sys.argv[1], sys.argv[2], to=sys.argv[3], quiet=True, mp=int(sys.argv[4]))
print(status("VmHWM:") - before)
"""


def peak_rss(src, dst, to, mp=1) -> int:
    r = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(dst), to, str(mp)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


def build(path, n_layers):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=n_layers, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=1000, dtype=torch.float32)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    return {n: build(root / f"hf{n}", n) for n in (2, 8)}


LARGEST = 2816 * 1024 * 4  # one f32 FFN matrix
LAYER = (2 * 1024 * 1024 + 2 * 256 * 1024 + 3 * 2816 * 1024) * 4
# Tensors stream in pieces of a few MB from glibc's heap, whose high-water mark settles, run to run, anywhere within
# ~30 MB over the first layer or two (which pieces happen to be alive together, with the read-ahead thread's timing).
NOISE = 32 * 2**20


def test_peak_rss_independent_of_depth(models, tmp_path):
    for to, mp in (("meta", 2), ("hf", 1)):
        small = peak_rss(models[2], tmp_path / f"{to}2", to, mp)
        big = peak_rss(models[8], tmp_path / f"{to}8", to, mp)
        # holding the model would add 6 layers (~270 MB); streaming adds allocator noise only
        assert big - small <= 2 * LARGEST + NOISE, (to, small, big, LAYER)
    # and reading the (model-parallel) Meta output back streams too
    small = peak_rss(tmp_path / "meta2", tmp_path / "back2", "hf")
    big = peak_rss(tmp_path / "meta8", tmp_path / "back8", "hf")
    assert big - small <= 2 * LARGEST + NOISE, (small, big)
