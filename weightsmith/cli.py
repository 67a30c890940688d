"""Command line: thin click commands over the Python API. Errors become one `error:` line and exit code 2."""
import json
import os
import re
import signal
import sys

import click

from . import __version__
from .errors import WeightsmithError

EXIT_DRIFT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

SIZE_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
              "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text or "")
    if not m or m.group(2).upper() not in SIZE_UNITS or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a size like 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).upper()])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightsmith")
def main():
    """Convert, quantize, inspect and verify Llama-family checkpoints (Meta .pth, HF safetensors, GGUF).

    Every SRC/PATH may also be a Hugging Face repo, ORG/NAME[@REV] or hf://ORG/NAME[@REV][/PATH] (a local path
    wins): read from the Hugging Face cache when it holds the files, else downloaded (HF_HUB_OFFLINE=1: cache
    only). hf://ORG/NAME/original reads Meta's checkpoint; a GGUF repo's file is named: hf://ORG/NAME/FILE.gguf."""


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(path, as_json):
    """Show what a checkpoint holds: config, tensors, sizes (reads headers only)."""
    from .inspect import render, report
    d = report(path)
    click.echo(json.dumps(d, indent=2) if as_json else render(d))


def ggml_options(f):
    """llama-quantize's options, on convert and quantize: an importance matrix and the per-tensor types."""
    for opt in reversed([
        click.option("--imatrix", type=click.Path(), help="ggml types: an importance matrix (llama-imatrix's or "
                     "weightsmith imatrix's GGUF, or a legacy .dat) to quantize with, as llama-quantize --imatrix."),
        click.option("--output-tensor-type", metavar="TYPE", help="ggml types: output.weight's type (a tied model's "
                     "token_embd too, unless --token-embedding-type)."),
        click.option("--token-embedding-type", metavar="TYPE", help="ggml types: token_embd.weight's type."),
        click.option("--tensor-type", "tensor_types", metavar="PATTERN=TYPE", multiple=True, help="ggml types: the "
                     "type of the tensors whose name matches the regex PATTERN (repeatable, the first match wins), "
                     "e.g. attn_v=q8_0."),
        click.option("--pure", is_flag=True, help="ggml types: the preset's base type for every matrix (no mixture "
                     "rules)."),
        click.option("--leave-output-tensor", is_flag=True, help="ggml types: output.weight not quantized."),
    ]):
        f = opt(f)
    return f


def overrides(output_tensor_type, token_embedding_type, tensor_types, pure, leave_output_tensor):
    from .quant.presets import Overrides
    return Overrides.parse(output_tensor_type, token_embedding_type, tensor_types, pure, leave_output_tensor)


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "to", type=click.Choice(["hf", "gguf", "meta"]), help="Target format (default from DST).")
@click.option("--type", "type_", help="Tensor type: f32, f16, bf16; GGUF: llama.cpp's types and presets (q8_0, "
              "q4_k_m, ...); HF, as compressed-tensors: int8, int4 (W8A16, W4A16), w8a8 (int8 weights and "
              "activations), fp8 (FP8 dynamic) (default: keep the source's).")
@click.option("--shard-size", default="5GB", show_default=True, help="Largest HF shard.")
@click.option("--split-max-size", help="GGUF output: split into files of at most this size (gguf-split naming).")
@click.option("--mp", default=1, show_default=True, type=int, help="Meta output: model-parallel shards.")
@click.option("--tokenizer", type=click.Path(), help="Tokenizer file or directory to carry into the output.")
@click.option("--tokenizer-pre", help="GGUF output: llama.cpp's name for the pre-tokenizer (llama-bpe, smollm, gpt-2) "
                                      "when weightsmith cannot tell it from tokenizer.json.")
@click.option("--no-check", is_flag=True, help="Skip checklist.chk md5 verification of a Meta source.")
@click.option("--force", is_flag=True, help="Replace DST if it exists (only once the new output is complete).")
@click.option("-q", "--quiet", is_flag=True, help="No per-tensor log and no progress bar.")
@click.option("--calibrate", type=click.Path(), help="UTF-8 calibration text, tokenized by SRC's tokenizer: int4/int8 "
              "are quantized by GPTQ on it; ggml types with an importance matrix collected from it in the same run.")
@click.option("--samples", default=128, show_default=True, type=int, help="Calibration chunks (--calibrate).")
@click.option("--ctx", default=512, show_default=True, type=int, help="Tokens per calibration chunk.")
@click.option("--group-size", type=int, help="int4/int8: input columns per scale (int4 default 128; int8 default "
              "per channel).")
@click.option("--method", type=click.Choice(["gptq", "rtn"]), help="int4/int8: GPTQ (the default with --calibrate) "
              "or round-to-nearest. ggml types with --calibrate: gptq adds GPTQ's error feedback inside the "
              "preset's block types; rtn (the default) quantizes with the importance matrix alone.")
@click.option("--damp", default=0.01, show_default=True, type=float, help="GPTQ dampening, times the Hessian's mean "
              "diagonal.")
@click.option("--actorder", type=click.Choice(["static", "none"]),
              help="GPTQ column order: by decreasing activation (scales from the original weights; int4/int8's "
              "default) or as stored (none; the only order for the ggml types, whose block scales are fixed before "
              "their columns are rounded: static is refused there).")
@click.option("--observer", type=click.Choice(["minmax", "mse"]), help="int4/int8/w8a8: how each scale is chosen: "
              "minmax (the default: the group's largest magnitude, as compressed-tensors' default observer) or mse "
              "(the candidate from 1.09x down to 0.70x of it that rounds the group with the least squared error, "
              "each input column weighted by its mean square with --calibrate; config.json says memoryless_mse).")
@click.option("--device", help="torch device for the calibration forward pass and GPTQ (default cpu; e.g. cuda).")
@ggml_options
def convert(src, dst, to, type_, shard_size, split_max_size, mp, tokenizer, tokenizer_pre, no_check, force, quiet,
            calibrate, samples, ctx, group_size, method, damp, actorder, observer, device, imatrix,
            output_tensor_type, token_embedding_type, tensor_types, pure, leave_output_tensor):
    """Convert SRC to DST (Meta, HF, GGUF in any direction), streaming each tensor in pieces."""
    from .convert.pipeline import convert as run
    run(src, dst, to=to, type_=type_, shard_size=parse_size(shard_size), mp=mp, tokenizer=tokenizer,
        tokenizer_pre=tokenizer_pre, split_max_size=parse_size(split_max_size) if split_max_size else 0, quiet=quiet,
        force=force, check=not no_check, imatrix=imatrix, calibrate=calibrate, samples=samples, ctx=ctx,
        overrides=overrides(output_tensor_type, token_embedding_type, tensor_types, pure, leave_output_tensor),
        group_size=group_size, method=method, damp=damp, actorder=actorder, device=device, observer=observer)


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.argument("type_", metavar="TYPE")
@click.option("--force", is_flag=True, help="Replace DST if it exists (only once the new output is complete).")
@click.option("-q", "--quiet", is_flag=True, help="No per-tensor log and no progress bar.")
@ggml_options
@click.option("--calibrate", type=click.Path(), help="UTF-8 calibration text, tokenized by SRC's tokenizer: an "
              "importance matrix is collected from it in the same run and quantized with (int4/int8: GPTQ on it).")
@click.option("--samples", default=128, show_default=True, type=int, help="Calibration chunks (--calibrate).")
@click.option("--ctx", default=512, show_default=True, type=int, help="Tokens per calibration chunk.")
@click.option("--method", type=click.Choice(["gptq", "rtn"]), help="With --calibrate: gptq adds GPTQ's error feedback "
              "inside the block types (natural column order); rtn (the default) quantizes with the importance matrix "
              "alone.")
@click.option("--damp", default=0.01, show_default=True, type=float, help="GPTQ dampening, times the Hessian's mean "
              "diagonal.")
@click.option("--device", help="torch device for the calibration forward pass (default cpu; e.g. cuda).")
def quantize(src, dst, type_, force, quiet, imatrix, output_tensor_type, token_embedding_type, tensor_types, pure,
             leave_output_tensor, calibrate, samples, ctx, method, damp, device):
    """Quantize SRC into DST of the same format (llama-quantize style): weightsmith quantize in.gguf out.gguf q8_0"""
    from .convert.pipeline import convert as run
    from .formats import detect
    run(src, dst, to=detect(src), type_=type_, quiet=quiet, force=force, imatrix=imatrix, calibrate=calibrate,
        samples=samples, ctx=ctx, method=method, damp=damp, device=device,
        overrides=overrides(output_tensor_type, token_embedding_type, tensor_types, pure, leave_output_tensor))


@main.command()
@click.argument("model", type=click.Path())
@click.option("--text", "text_file", required=True, type=click.Path(), help="UTF-8 calibration text, tokenized by "
              "MODEL's tokenizer.")
@click.option("-o", "--output", "out", default="imatrix.gguf", show_default=True, type=click.Path(),
              help="Importance matrix file to write.")
@click.option("--ctx", default=512, show_default=True, type=int, help="Tokens per chunk (BOS first).")
@click.option("--chunks", type=int, help="At most this many chunks (default: all the text holds).")
@click.option("--process-output", is_flag=True, help="Collect output.weight too (from the output norm's result).")
@click.option("--output-format", default="gguf", show_default=True, type=click.Choice(["gguf", "dat"]),
              help="llama-imatrix's GGUF form, or its legacy .dat.")
@click.option("--device", help="torch device for the forward pass (default cpu; e.g. cuda).")
@click.option("--force", is_flag=True, help="Replace the output if it exists (only once the new one is complete).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no perplexity, no summary.")
def imatrix(model, text_file, out, ctx, chunks, process_output, output_format, device, force, quiet):
    """Importance matrix of MODEL on a text, as llama-imatrix computes it, for quantize --imatrix."""
    from .verify.imatrix import run
    run(model, text_file, out, ctx=ctx, chunks=chunks, process_output=process_output, output_format=output_format,
        device=device, quiet=quiet, force=force)


@main.command()
@click.argument("reference", type=click.Path())
@click.argument("candidate", type=click.Path())
@click.option("--text", "text_file", type=click.Path(), help="UTF-8 text to score (default: a sequence sampled "
              "from REFERENCE with a fixed seed, the whole model in memory).")
@click.option("--ctx", default=512, show_default=True, type=int, help="Tokens per chunk; the second half is scored.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--max-kld", type=float, help="Exit 1 when the mean KL divergence is above this.")
@click.option("--device", help="torch device for the forward passes (default cpu; e.g. cuda).")
def verify(reference, candidate, text_file, ctx, as_json, max_kld, device):
    """Drift of CANDIDATE against REFERENCE: KL divergence, top-1 agreement, perplexities, per-layer error."""
    from .verify import metrics, verify as run
    r = run(reference, candidate, text_file=text_file, ctx=ctx, device=device)
    click.echo(json.dumps(r, indent=2) if as_json else metrics.render(r))
    if max_kld is not None and r["mean_kld"] > max_kld:
        click.echo(f"drift: mean KLD {r['mean_kld']:.6g} is above --max-kld {max_kld:g}", err=True)
        return EXIT_DRIFT
    return 0


@main.command()
@click.argument("ckpt", type=click.Path())
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(min=1), help="Tokens to generate.")
@click.option("--device", help="torch device (default cpu; e.g. cuda).")
def generate(ckpt, prompt, max_tokens, device):
    """Greedy continuation of PROMPT by CKPT (reference forward pass, the checkpoint's own tokenizer)."""
    from .verify import generate as run
    click.echo(run(ckpt, prompt, max_tokens=max_tokens, device=device))


class Interrupted(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every `with` block cleans up its partial output."""


def _on_sigterm(signum, frame):
    raise Interrupted()


def run(argv=None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:  # everything heavy (torch, formats) is imported inside, so an early Ctrl-C is handled here too
        rc = main.main(args=argv, prog_name="weightsmith", standalone_mode=False)
        return rc if isinstance(rc, int) else 0  # a command may return an exit code (verify: EXIT_DRIFT)
    except WeightsmithError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        return 0
    except click.ClickException as e:
        return _fail(e.format_message(), EXIT_BAD_INPUT)
    except OSError as e:  # disk full, permission denied, ...: the user's environment, not a bug
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}", EXIT_BAD_INPUT)
    except (KeyboardInterrupt, Interrupted, click.exceptions.Abort):
        return _fail("interrupted; partial output removed", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def entry():
    code = run()
    # The outcome is decided, reported and on disk (outputs are closed and moved into place before run returns).
    # Skip the interpreter's teardown: with torch and numba loaded it takes a third of a second, and a Ctrl-C
    # during it would kill the process by SIGINT and hide a successful exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can be said there
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
