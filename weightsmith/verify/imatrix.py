"""`weightsmith imatrix`: the importance matrix of a checkpoint on a calibration text, as llama-imatrix computes it,
collected on the reference forward pass one block at a time (calibrate.stream).

What llama-imatrix does, and so this: the text is tokenized with BOS first (when the vocabulary adds one) and cut
into consecutive --ctx token chunks, each chunk's first token replaced by BOS, the remainder dropped, at most
--chunks of them; every chunk is one sequence from position 0. For every blk.* matmul weight the sum over all
tokens of each input column's square and the token count are kept (weights reading the same input -- q/k/v,
gate/up -- get the same numbers); output.weight, with --process-output, from the output norm's result over every
token. A tied model's output matrix is token_embd.weight, which llama-imatrix never collects: no entry then.
The running perplexity (positions ctx/2 .. ctx-2 of each chunk predict the next token) is printed as llama-imatrix
prints it, "[1]12.3456,[2]...", but only once the last block has run: here all chunks go through block i before
block i+1, so no chunk has logits before then.

Where it differs from llama-imatrix: one chunk of text is enough (llama-imatrix wants two chunks' worth of
tokens); llama-imatrix skips matmuls over fewer than 16 tokens (so with a --ctx whose last micro-batch is that
short, e.g. 1030 = 512 + 512 + 6, it drops those tokens from its counts), this counts every token; and its sums
are float32 running sums, token after token.

Precision: each batch's column sums are float32 sums of float32 squares (torch's cascade reduction, error ~1e-7
relative whatever the batch size), added into float64 accumulators across batches and blocks, and stored float32
as the file holds them. llama-imatrix's sequential float32 sums drift by up to ~n_tokens * 6e-8 relative; float64
across batches keeps ours at the float32 rounding of the result even for millions of tokens, at the cost of one
[in] vector per matmul input, not a copy of the activations.

Memory: one block of weights, the hidden states of every chunk (calibrate.hidden_store) and one [in] sum per
matmul input; the output head is loaded after the last block is gone.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInput
from ..quant import imatrix as fmt
from . import calibrate, text
from .model import Weights, device_for, linear, rms_norm

DEFAULT_CTX = 512


def tokens_for(ck, text_file, ctx: int = DEFAULT_CTX, chunks: int | None = None) -> torch.Tensor:
    """[n_chunks, ctx] tokens of the text, cut as llama-imatrix cuts them (see the module docstring)."""
    check_options(ctx, chunks)
    if not ck.tokenizer_files and ck.format != "gguf":  # (a GGUF's vocabulary is checked by TextTokenizer)
        raise BadInput(f"{ck.path}: the checkpoint has no tokenizer (no tokenizer.json / tokenizer.model) to cut "
                       f"the text into tokens; add the tokenizer files to it")
    s = text.read_text(text_file)
    if not s:
        raise BadInput(f"{text_file}: empty text")
    tok = text.TextTokenizer(ck)
    t = text.chunks(tok.encode(s), ctx, tok.bos_id if tok.add_bos else None)
    return t if chunks is None else t[:chunks]


def check_options(ctx: int, chunks: int | None):
    if ctx < 2:
        raise BadInput(f"--ctx {ctx}: a chunk needs at least 2 tokens")
    if chunks is not None and chunks < 1:
        raise BadInput(f"--chunks {chunks}: need at least one chunk")


class _Sums:
    """Per matmul input (block, SHARED_INPUTS entry): float64 column sums of x^2 and the tokens seen."""

    def __init__(self):
        self.sums: dict[tuple, torch.Tensor] = {}
        self.tokens: dict[tuple, int] = {}

    def add(self, key, x: torch.Tensor):
        s = (x * x).sum(dim=tuple(range(x.dim() - 1))).cpu().double()  # float64 on the CPU (MPS has none)
        if key in self.sums:
            self.sums[key] += s
        else:
            self.sums[key] = s
        self.tokens[key] = self.tokens.get(key, 0) + x[..., 0].numel()

    def entry(self, key) -> fmt.Entry:
        return fmt.Entry(self.sums[key].numpy().astype(np.float32), np.array([self.tokens[key]], np.float32))


class Perplexity:
    """llama-imatrix's running perplexity: nll summed in float64 over positions ctx/2 .. ctx-2 of each chunk."""

    def __init__(self):
        self.nll = self.nll2 = 0.0
        self.count = 0
        self.running: list[float] = []

    def add(self, logits: torch.Tensor, targets: torch.Tensor):
        lp = logits.float().log_softmax(-1).gather(-1, targets[:, None].to(logits.device))[:, 0].cpu().double()
        self.nll -= lp.sum().item()
        self.nll2 += lp.pow(2).sum().item()
        self.count += targets.numel()
        self.running.append(math.exp(self.nll / self.count) if self.count else math.nan)

    def line(self) -> str:
        return "".join(f"[{i + 1}]{p:.4f}," for i, p in enumerate(self.running))

    def final(self) -> str | None:
        """'Final estimate: PPL = x +/- y' as llama-imatrix prints it (None without two scored tokens)."""
        if self.count < 2:
            return None
        nll, nll2 = self.nll / self.count, self.nll2 / self.count
        ppl, var = math.exp(nll), nll2 - nll * nll
        if var <= 0:
            return "Unexpected negative standard deviation of log(prob)"
        return f"Final estimate: PPL = {ppl:.4f} +/- {math.sqrt(var / (self.count - 1)) * ppl:.5f}"


@torch.no_grad()
def collect(ck, tokens: torch.Tensor, process_output: bool = False, progress=None, device=None,
            ppl: Perplexity | None = None, datasets=()) -> fmt.Imatrix:
    """The importance matrix of ck over tokens [n_chunks, ctx]; ppl, when given, receives each chunk's logits."""
    cfg = ck.config
    sums = _Sums()
    h = calibrate.stream(ck, tokens, lambda i, names, x: sums.add((i, names), x), device=device, progress=progress)
    n, ctx = tokens.shape
    out_key = ("output", ("output",))
    collect_output = process_output and not cfg.tied_embeddings
    if collect_output or ppl is not None:
        w = Weights(ck, device)
        norm, head = w.head()
        first = ctx // 2
        for c in range(n):
            x = rms_norm(h[c].to(w.device), norm, cfg.norm_eps)
            if collect_output:
                sums.add(out_key, x)
            if ppl is not None:
                ppl.add(linear(x[first:-1], head), tokens[c, first + 1:])
        del head
    entries = {}
    for key in sums.sums:
        i, names = key
        for k in names:
            entries[fmt.OUTPUT if key == out_key else f"blk.{i}.{k}.weight"] = sums.entry(key)
    return fmt.Imatrix(dict(sorted(entries.items())), list(datasets), chunk_count=n, chunk_size=ctx)


def run(model, text_file, out, ctx: int = DEFAULT_CTX, chunks: int | None = None, process_output: bool = False,
        output_format: str = "gguf", device=None, quiet: bool = False, force: bool = False) -> fmt.Imatrix:
    """weightsmith imatrix: collect over the text and write the file (every check before the forward pass)."""
    from tqdm import tqdm
    from ..formats import open_checkpoint
    from ..formats.common import map_large_allocations
    map_large_allocations()  # else glibc's heap grows by about a block's weights per block (measured: 2.4 GB peak)
    check_options(ctx, chunks)
    if output_format not in fmt.FORMATS:
        raise BadInput(f"--output-format {output_format!r}: one of {', '.join(fmt.FORMATS)}")
    dst = Path(out)
    if dst.exists() and not force:
        raise BadInput(f"{dst} already exists (use --force to replace it)")
    if not dst.parent.is_dir():
        raise BadInput(f"output directory {dst.parent} does not exist")
    device_for(device)  # a bad --device fails here, before anything runs
    ck = open_checkpoint(model)
    tokens = tokens_for(ck, text_file, ctx, chunks)
    n = tokens.shape[0]
    say = (lambda *a: None) if quiet else (lambda s: print(s, flush=True))
    say(f"imatrix: {n} chunks of {ctx} tokens from {text_file}, {ck.config.n_layers} blocks"
        + (" + output.weight" if process_output and not ck.config.tied_embeddings else ""))
    if process_output and ck.config.tied_embeddings:
        say("imatrix: the output matrix is tied to token_embd.weight, which llama-imatrix never collects: "
            "no output.weight entry")
    bar = tqdm(total=ck.config.n_layers, desc="imatrix blocks", unit="blk", file=sys.stderr,
               disable=quiet or not sys.stderr.isatty(), leave=False)
    ppl = Perplexity()
    try:
        im = collect(ck, tokens, process_output, progress=lambda i, k: bar.update(1), device=device, ppl=ppl,
                     datasets=[str(text_file)])
    finally:
        bar.close()
    say(ppl.line())
    if ppl.final():
        say(ppl.final())
    fmt.write(dst, im, output_format, force=force)
    say(f"imatrix: wrote {len(im.entries)} entries ({n} chunks of {ctx} tokens) to {dst} ({output_format})")
    return im
