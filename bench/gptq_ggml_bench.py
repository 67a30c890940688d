"""GPTQ inside the ggml block types (`quantize --calibrate TEXT --method gptq`) against the importance matrix alone
(issue 14), on bench/drift_table.py's model, texts and imatrix: run drift_table.py first (same --ctx and
--calib-chunks); its results.json holds the imatrix-only figures this compares with.

For each TYPE: `weightsmith quantize REF OUT TYPE --calibrate CALIB --ctx C --samples N --method gptq` (the same
calibration text and chunks the imatrix was collected from), scored against the reference on the held-out text by
`weightsmith verify --json` and `llama-perplexity --kl-divergence` (llama.cpp runs the file: the bytes are ordinary
ggml blocks). Prints one table: mean KLD and same-top-1 of no imatrix / imatrix / GPTQ, GPTQ's KLD as a fraction
of the imatrix-only one, and the quantizing wall times.

    python bench/gptq_ggml_bench.py [--types q4_0,q4_k_m,...] [--ctx 512] [--calib-chunks 16]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, run, table  # noqa: E402
from drift_table import cpu_model, lcp_kld, tensor_types, ws_verify  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="q4_0,q4_k_m,q3_k_m,iq4_xs")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=16)
    ap.add_argument("--work", type=Path, default=Path("bench/out/drift"))
    a = ap.parse_args()
    work = a.work
    ref, calib, held_out, base = work / "smollm2-f16.gguf", work / "calib.txt", work / "eval.txt", work / "base.kld"
    params = json.loads((work / "params.json").read_text()) if (work / "params.json").exists() else {}
    if params.get("ctx") != a.ctx or params.get("calib_chunks") != a.calib_chunks:
        sys.exit(f"run bench/drift_table.py --ctx {a.ctx} --calib-chunks {a.calib_chunks} first ({work}: {params})")
    drift = json.loads((work / "results.json").read_text())
    res_path = work / "gptq-results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    for t in a.types.split(","):
        if t not in drift:
            sys.exit(f"{t}: not in {work}/results.json (run drift_table.py --types {t})")
        if t in results:
            continue
        out = work / f"ws-gptq-{t}.gguf"
        out.unlink(missing_ok=True)
        log = work / f"gptq-{t}.log"
        q = run(["sh", "-c", f'exec "$0" "$@" > "{log}" 2>&1', *WS, "quantize", ref, out, t, "--calibrate", calib,
                 "--ctx", a.ctx, "--samples", a.calib_chunks, "--method", "gptq"])
        summary = [ln for ln in log.read_text().splitlines() if ln.startswith("GPTQ:")]
        r = {"ws_s": q["wall"], "rss_mb": q["rss_mb"], "types": tensor_types(out),
             "summary": summary[-1] if summary else "",
             "ws": ws_verify(ref, out, held_out, a.ctx, work / f"verify-gptq-{t}.log"),
             "lcp": lcp_kld(out, base, work / f"lcp-gptq-{t}.log")}
        out.unlink()
        results[t] = r
        res_path.write_text(json.dumps(results, indent=1))
        print(f"{t} gptq: {json.dumps(r)}", flush=True)

    rows = []
    for t in a.types.split(","):
        d, g = drift[t], results[t]
        rows.append({
            "type": t, "tensors": g["types"],
            "none": f"{d['none']['ws']['mean_kld']:.5f} / {d['none']['lcp']['mean_kld']:.5f}",
            "imatrix": f"{d['imatrix']['ws']['mean_kld']:.5f} / {d['imatrix']['lcp']['mean_kld']:.5f}",
            "gptq": f"{g['ws']['mean_kld']:.5f} / {g['lcp']['mean_kld']:.5f}",
            "ratio": f"{g['ws']['mean_kld'] / d['imatrix']['ws']['mean_kld']:.2f}x / "
                     f"{g['lcp']['mean_kld'] / d['imatrix']['lcp']['mean_kld']:.2f}x",
            "top1": f"{100 * d['imatrix']['ws']['top1']:.1f} / {100 * g['ws']['top1']:.1f}",
            "time": f"{d['imatrix']['ws_s']:.1f} / {g['ws_s']:.1f} s",
        })
    print(f"\nCPU: {cpu_model()}; reference {ref.name}; GPTQ and the imatrix on the same {a.calib_chunks} chunks of "
          f"{a.ctx} tokens; mean KLD as weightsmith verify / llama-perplexity\n")
    keys = ("type", "tensors", "none", "imatrix", "gptq", "ratio", "top1", "time")
    table([[r[k] for k in keys] for r in rows],
          ["type", "tensor types", "KLD no imatrix", "KLD imatrix", "KLD GPTQ", "GPTQ / imatrix",
           "top-1 % imatrix / GPTQ", "quantize s imatrix (file) / GPTQ (with calibration)"])


if __name__ == "__main__":
    main()
