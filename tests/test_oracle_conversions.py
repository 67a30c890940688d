"""Meta <-> HF against the two outside oracles: Meta's reference model (llama-models) and transformers."""
import pytest
import torch

from families import FAMILIES
from oracles import hf_logits, hf_state, meta_logits, meta_state

FAMILY_NAMES = list(FAMILIES)
TOL = 1e-4


def assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_meta_to_hf_matches_meta_reference(built, tmp_path, run_cli, family):
    src = built.meta(family)
    run_cli("convert", src, tmp_path / "hf", "-q", check=0)
    diff = (hf_logits(tmp_path / "hf") - meta_logits(src)).abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_hf_to_meta_matches_transformers(built, tmp_path, run_cli, family):
    src = built.hf(family)
    run_cli("convert", src, tmp_path / "meta", "--to", "meta", "-q", check=0)
    diff = (meta_logits(tmp_path / "meta") - hf_logits(src)).abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_roundtrip_meta_hf_meta_bit_exact(built, tmp_path, run_cli, family):
    src = built.meta(family)
    run_cli("convert", src, tmp_path / "hf", "-q", check=0)
    run_cli("convert", tmp_path / "hf", tmp_path / "back", "--to", "meta", "-q", check=0)
    (a,), (b,) = meta_state(src), meta_state(tmp_path / "back")
    assert_same_state(a, b)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_roundtrip_hf_meta_hf_bit_exact(built, tmp_path, run_cli, family):
    src = built.hf(family)
    run_cli("convert", src, tmp_path / "meta", "--to", "meta", "-q", check=0)
    run_cli("convert", tmp_path / "meta", tmp_path / "back", "-q", check=0)
    assert_same_state(hf_state(src), hf_state(tmp_path / "back"))
    if FAMILIES[family].get("tied"):
        assert "lm_head.weight" not in hf_state(tmp_path / "back")


@pytest.mark.parametrize("family,mp", [("llama2_70b", 2), ("llama2_70b", 4), ("llama3", 2), ("llama3", 4)])
def test_model_parallel_shards(built, tmp_path, run_cli, family, mp):
    """Meta's reference model run over mp ranks (fairscale, gloo) is the oracle for merging and splitting:
    Llama 2's ParallelEmbedding splits tok_embeddings along dim, Llama 3's VocabParallelEmbedding along vocab."""
    src = built.meta(family, mp)
    ref = meta_logits(src)
    run_cli("convert", src, tmp_path / "hf", "-q", check=0)
    assert (hf_logits(tmp_path / "hf") - ref).abs().max().item() <= TOL
    run_cli("convert", tmp_path / "hf", tmp_path / "back", "--to", "meta", "--mp", mp, "-q", check=0)
    assert len(list((tmp_path / "back").glob("consolidated.*.pth"))) == mp
    for a, b in zip(meta_state(src), meta_state(tmp_path / "back"), strict=True):
        assert_same_state(a, b)
    assert (meta_logits(tmp_path / "back") - ref).abs().max().item() <= TOL
