"""weightsmith against llama.cpp's own tools on a 1.1B-parameter Llama (TinyLlama's shape), side by side in one run.

Builds (once, under --work) a 2-shard HF checkpoint with random bf16 weights: dim 2048, 22 layers, 32 heads, 4 kv
heads, ffn 5632, vocab 32000, with a real Llama-2 SentencePiece tokenizer.model (mistral-common's). Then:
- HF bf16 -> GGUF f16 and -> q8_0: weightsmith convert vs llama.cpp's convert_hf_to_gguf.py (from the sources in
  the llama-cpp-python sdist, with its own gguf-py). Targets: <= 0.25x its wall time, <= 0.5x its peak RSS.
- f16 GGUF -> q4_k_m: weightsmith quantize vs llama-quantize (2 threads). Target: <= 1.5x, identical bytes.
- HF bf16 -> int8 (per channel) and -> int4 (groups of 128), compressed-tensors pack-quantized round-to-nearest:
  weightsmith convert --type int8|int4 vs llm-compressor's oneshot QuantizationModifier with the same explicit
  scheme (its W8A16 preset is group 128, so int8 is given as strategy "channel"), in llm-compressor's own venv
  (--llmc-venv; bench/llmcompressor_check.py's pins). Target: <= 0.2x its wall time and peak RSS, identical tensors.
- inspect of the HF directory, of the GGUF and of a GGUF with a 128K-token vocabulary: target < 1 s.
- a plain copy of the same input bytes (shutil.copyfile of the shards) as the bandwidth yardstick.
Output files are compared tensor by tensor. Files are read from the page cache after the first run (24 GB RAM).

    python bench/convert_bench.py [--work /tmp/ws-bench] [--layers 22] [--skip f16,q8_0,q4_k_m,int8,int4]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, gguf_tensors_equal, llama_bin, llama_src, peer_venv, run, size, table  # noqa: E402

# llm-compressor's QuantizationModifier config group for weightsmith's --type (weightsmith's INT8 / INT4 schemes)
LLMC_SCHEMES = {
    "int8": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                                "strategy": "channel"}},
    "int4": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                                "group_size": 128}},
}

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
             rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def build(out: Path, layers: int):
    """Random bf16 weights under transformers' names, two safetensors shards + index, config and tokenizer."""
    import importlib.util
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    if (out / "model.safetensors.index.json").exists():
        return
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, dtype=torch.bfloat16,
                      architectures=["LlamaForCausalLM"])  # convert_hf_to_gguf.py picks its converter by this
    cfg.save_pretrained(tmp)
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_layer = {"input_layernorm.weight": (d,), "self_attn.q_proj.weight": (d, d), "self_attn.k_proj.weight": (kv, d),
                 "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, d),
                 "post_attention_layernorm.weight": (d,), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
                 "mlp.down_proj.weight": (d, f)}
    names = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    names.update({f"model.layers.{i}.{k}": s for i in range(layers) for k, s in per_layer.items()})
    names.update({"model.norm.weight": (d,), "lm_head.weight": (cfg.vocab_size, d)})
    g = torch.Generator().manual_seed(0)
    items = list(names.items())
    half = len(items) // 2
    weight_map = {}
    for k, part in enumerate((items[:half], items[half:])):
        fname = f"model-{k + 1:05d}-of-00002.safetensors"
        sd = {n: (torch.randn(s, generator=g) * (0.02 if len(s) > 1 else 1)).to(torch.bfloat16) for n, s in part}
        save_file(sd, tmp / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in sd})
        del sd
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sp = Path(importlib.util.find_spec("mistral_common").origin).parent / "data" / "tokenizer.model.v1"
    shutil.copyfile(sp, tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True}))
    tmp.rename(out)


def plain_copy(src: Path, work: Path) -> dict:
    dst = work / "copy"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    t = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        shutil.copyfile(f, dst / f.name)
    wall = time.perf_counter() - t
    shutil.rmtree(dst)
    return {"wall": wall}


def llmc_worker(src: str, out: str, type_: str):
    """In llm-compressor's environment: round-to-nearest of every Linear but lm_head, saved compressed."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    oneshot(model=model, recipe=QuantizationModifier(config_groups={"group_0": LLMC_SCHEMES[type_]},
                                                     ignore=["lm_head"]))
    model.save_pretrained(out, save_compressed=True)


def hf_outputs_equal(ours: Path, theirs: Path) -> str:
    """bench/llmcompressor_check.compare (tensors by name, dtype, shape, bytes; quantization_config), in a child
    process: loading both outputs here would raise this process's RSS and so every later command's figure."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from llmcompressor_check import compare; "
            "t, c = compare(__import__('pathlib').Path(sys.argv[2]), __import__('pathlib').Path(sys.argv[3])); "
            "print(t + '; quantization_config ' + c)")
    r = subprocess.run([sys.executable, "-c", code, Path(__file__).parent, ours, theirs], capture_output=True,
                       text=True)
    return r.stdout.strip() or f"comparison failed: {r.stderr[-500:]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ws-bench"))
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: f16,q8_0,q4_k_m,int8,int4")
    ap.add_argument("--llmc-venv", type=Path, default=Path("/tmp/venv-llmc"),
                    help="llm-compressor's venv (made there if absent)")
    ap.add_argument("--llmc-worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llmc_worker:
        return llmc_worker(*a.llmc_worker)
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    hf = work / f"tinyllama-{a.layers}l-bf16"
    build(hf, a.layers)
    in_bytes = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    print(f"# {hf}: {in_bytes / 1e9:.2f} GB bf16 in 2 shards; {os.cpu_count()} cores", flush=True)
    src = llama_src()
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"), NO_LOCAL_GGUF="")
    copy = plain_copy(hf, work)
    rows = [["plain copy of the input", f"{copy['wall']:.2f}", "", "", "", "", f"{in_bytes / copy['wall'] / 1e9:.2f}", ""]]
    skip = set(a.skip.split(","))
    for t in ("f16", "q8_0"):
        if t in skip:
            continue
        ours, theirs = work / f"ws-{t}.gguf", work / f"cv-{t}.gguf"
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        w = run([*WS, "convert", hf, ours, "--type", t, "-q"])
        c = run([sys.executable, src / "convert_hf_to_gguf.py", hf, "--outtype", t, "--outfile", theirs], env=env)
        rows.append([f"HF bf16 -> GGUF {t}", f"{w['wall']:.2f}", f"{c['wall']:.2f}", f"{w['wall'] / c['wall']:.2f}x",
                     f"{w['rss_mb']:.0f}", f"{c['rss_mb']:.0f} ({w['rss_mb'] / c['rss_mb']:.2f}x)",
                     f"{in_bytes / w['wall'] / 1e9:.2f}", gguf_tensors_equal(ours, theirs)])
    if "q4_k_m" not in skip:
        f16 = work / "ws-f16.gguf"
        if not f16.exists():
            run([*WS, "convert", hf, f16, "--type", "f16", "-q"])
        ours, theirs = work / "ws-q4_k_m.gguf", work / "lq-q4_k_m.gguf"
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        w = run([*WS, "quantize", f16, ours, "q4_k_m", "-q"])
        q = run([llama_bin("llama-quantize"), f16, theirs, "Q4_K_M", 2])
        rows.append(["GGUF f16 -> q4_k_m", f"{w['wall']:.2f}", f"{q['wall']:.2f}", f"{w['wall'] / q['wall']:.2f}x",
                     f"{w['rss_mb']:.0f}", f"{q['rss_mb']:.0f} ({w['rss_mb'] / q['rss_mb']:.2f}x)",
                     f"{size(f16) / w['wall'] / 1e9:.2f}", gguf_tensors_equal(ours, theirs)])
    for t in ("int8", "int4"):
        if t in skip:
            continue
        from llmcompressor_check import LLMC
        py = peer_venv(a.llmc_venv, "llmcompressor", LLMC)
        ours, theirs = work / f"ws-{t}", work / f"llmc-{t}"
        for p in (ours, theirs):
            shutil.rmtree(p, ignore_errors=True)
        w = run([*WS, "convert", hf, ours, "--type", t, "-q"])
        c = run([py, __file__, "--llmc-worker", hf, theirs, t])
        rows.append([f"HF bf16 -> {t} (compressed-tensors)", f"{w['wall']:.2f}", f"{c['wall']:.2f}",
                     f"{w['wall'] / c['wall']:.2f}x", f"{w['rss_mb']:.0f}",
                     f"{c['rss_mb']:.0f} ({w['rss_mb'] / c['rss_mb']:.2f}x)", f"{in_bytes / w['wall'] / 1e9:.2f}",
                     hf_outputs_equal(ours, theirs)])
    table(rows, ["job", "weightsmith s", "peer s", "time ratio", "ws RSS MB", "peer RSS MB (ratio)", "ws GB/s in",
                 "output tensors"])
    print("\n# inspect (wall time of the whole command, including Python start-up)")
    big = work / "big-vocab-128k.gguf"  # Llama 3's vocabulary size: 128256 tokens, 239616 merges, tiny tensors
    if not big.exists():
        import big_vocab_gguf
        big_vocab_gguf.write(big)
    for p in [hf, work / "ws-f16.gguf", big]:
        if p.exists():
            r = run([*WS, "inspect", p])
            print(f"{p.name}: {r['wall']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
