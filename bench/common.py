"""What the side-by-side benchmarks share: llama.cpp's tools, timing a command with its own peak RSS, and comparing
two GGUF files tensor by tensor.

llama.cpp comes from the sources inside the llama-cpp-python sdist (the version the tests use), built once by hand:
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp && cd /tmp/lcp && tar xzf *.tar.gz
    cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build build -j2 --target llama-quantize llama-perplexity
and found through LLAMA_CPP_DIR (default /tmp/lcp): bin/ under LLAMA_CPP_DIR/build, sources under its sdist.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR", "/tmp/lcp"))
WS = [sys.executable, "-m", "weightsmith.cli"]


SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # the kernels' speed depends on which are there


def cpu_model() -> str:
    """The CPU as a benchmark should name it: model, logical cores, and which of SIMD_FLAGS it has."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform
    has = [f for f in SIMD_FLAGS if f in flags]
    return (f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} logical cores; "
            f"{', '.join(has) if has else 'no AVX2'}{'' if 'avx512f' in flags else ', no AVX-512'})")


def llama_bin(name: str) -> Path:
    p = LLAMA_CPP_DIR / "build" / "bin" / name
    if not p.exists():
        sys.exit(f"{p} not found: build llama.cpp as bench/common.py's docstring says, or set LLAMA_CPP_DIR")
    return p


def llama_src() -> Path:
    found = sorted(LLAMA_CPP_DIR.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not found:
        sys.exit(f"no llama_cpp_python-*/vendor/llama.cpp under {LLAMA_CPP_DIR}")
    return found[-1]


def run(cmd, env=None, quiet=True) -> dict:
    """Run cmd; its wall time and its own peak RSS.

    Linux starts a child's peak RSS at its parent's RSS when it forks (and keeps it across exec), so a command
    started from this process (which may hold torch and transformers, ~300 MB) could never report less. It is
    started instead by a small launcher (this file with --run, a bare Python of ~10 MB) that times it and takes its
    rusage from wait4."""
    import json
    import tempfile
    with tempfile.TemporaryFile() as log, tempfile.NamedTemporaryFile("r") as result:
        launcher = [sys.executable, __file__, "--run", result.name, *map(str, cmd)]
        p = subprocess.run(launcher, env=env, stdout=subprocess.DEVNULL if quiet else None, stderr=log)
        log.seek(0)
        err = log.read().decode(errors="replace")
        out = json.loads(result.read() or "{}")
    if p.returncode != 0 or out.get("rc") != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return {"wall": out["wall"], "rss_mb": out["rss_kb"] / 1024}


def _launch(result: str, cmd: list[str]):
    """--run: start cmd from this small process; write its exit code, wall time and peak RSS (KB) to result."""
    import json
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    with open(result, "w") as f:
        json.dump({"rc": os.waitstatus_to_exitcode(status), "wall": wall, "rss_kb": usage.ru_maxrss}, f)


def peer_venv(venv: Path, module: str, packages: list[str], remove: tuple[str, ...] = ()) -> Path:
    """The python of a peer tool's own virtual environment (its pins clash with ours), made and filled with
    `packages` unless `module` already imports there; `remove`: packages it pulls that must go again."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode == 0:
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    print(f"installing {' '.join(packages)} into {venv} (minutes) ...", flush=True)
    subprocess.run([py, "-m", "pip", "install", "-q", *packages], check=True)
    if remove:
        subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", *remove], check=True)
    return py


def size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def gguf_tensors_equal(a: Path, b: Path) -> str:
    """'identical' when both files hold the same tensors (name, type, shape, bytes); else the first difference.
    Compared in a child process: reading both files through mappings would raise this process's RSS, and Linux
    hands a parent's peak on to every child it starts afterwards, spoiling their RSS figures."""
    r = subprocess.run([sys.executable, __file__, str(a), str(b)], capture_output=True, text=True)
    return r.stdout.strip() or f"comparison failed: {r.stderr[-500:]}"


def _compare(a: Path, b: Path) -> str:
    import numpy as np
    from gguf import GGUFReader
    ta = {t.name: t for t in GGUFReader(a).tensors}
    tb = {t.name: t for t in GGUFReader(b).tensors}
    if set(ta) != set(tb):
        return f"different tensor names: {sorted(set(ta) ^ set(tb))[:5]}"
    for name, x in ta.items():
        y = tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            return f"{name}: {x.tensor_type.name} {list(x.shape)} vs {y.tensor_type.name} {list(y.shape)}"
        if not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            return f"{name}: bytes differ"
    return f"identical ({len(ta)} tensors)"


def table(rows: list[list], head: list[str]):
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--run":
        _launch(sys.argv[2], sys.argv[3:])
    else:
        print(_compare(Path(sys.argv[1]), Path(sys.argv[2])))
