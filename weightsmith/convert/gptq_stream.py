"""GPTQ inside a conversion: a producer thread runs the calibration text through the source one block at a time
(verify.calibrate.stream), GPTQ-quantizes each block's matrices once every chunk has been through it (quant.gptq,
q/k/v on one input Hessian, gate/up on another), hands the packed tensors to the pipeline, and gives the stream
the dequantized block, so each later block is calibrated on the errors the earlier ones make (llm-compressor's
sequential pipeline). Int4/int8: compressed-tensors' scheme; the ggml types: each matrix in the type a preset chose
for it (quant.ggml_grid), its blocks' fields fixed by the type's quantizer with the importance matrix the Hessian's
diagonal gives (diag(H) / 2 = the per-column mean of x^2, what llama-imatrix collects), the log comparing GPTQ's
output error with that of the imatrix-only quantization of the same weights. The pipeline writes tensors in block order and takes each block's packed tensors from a
bounded hand-off, so memory holds about one block of weights, one block's Hessians and the hidden states.
"""
from __future__ import annotations

import functools
import queue
import sys
import threading
from dataclasses import dataclass

from ..errors import BadInput
from .log import warn

METHODS = ("gptq", "rtn")


@dataclass
class Options:
    text: str                 # the calibration text file
    samples: int = 128        # chunks of ctx tokens
    ctx: int = 512
    damp: float = 0.01
    actorder: str = "static"
    device: str | None = None


@dataclass
class Stats:
    """What GPTQ did to one matrix, for the log line and the summary."""
    loss: float               # tr(dW H dW^T) / 2 on the calibration inputs (mean squared output error)
    rtn_loss: float           # the same for the baseline: round-to-nearest (ggml: imatrix-only) of the same weights
    ref: float                # tr(W H W^T) / 2: the output's own mean square, for relative figures
    baseline: str = "rtn"     # "imatrix" for the ggml types

    def note(self) -> str:
        return (f" | gptq out err {(self.loss / self.ref) ** 0.5:.2%} ({self.baseline} "
                f"{(self.rtn_loss / self.ref) ** 0.5:.2%}) | gptq loss {self.loss:.4g}")


def calibration_tokens(ck, opts: Options, quiet: bool = False):
    """--samples chunks of --ctx tokens of the text, tokenized by the source's own tokenizer (BOS first)."""
    from ..verify import text
    if opts.samples < 1 or opts.ctx < 2:
        raise BadInput(f"--samples {opts.samples} --ctx {opts.ctx}: need at least one chunk of at least 2 tokens")
    tok = text.TextTokenizer(ck)
    t = text.chunks(tok.encode(text.read_text(opts.text)), opts.ctx, tok.bos_id if tok.add_bos else None)
    if t.shape[0] < opts.samples and not quiet:
        print(f"calibration: the text gives {t.shape[0]} chunks of {opts.ctx} tokens, fewer than --samples "
              f"{opts.samples}: using {t.shape[0]}", file=sys.stderr, flush=True)
    return t[:opts.samples]


class Producer:
    """Runs GPTQ over ck's blocks on a thread; take(name) gives block matrix `name`'s Packed value (ggml: its bytes
    and the values they dequantize to) and Stats. scheme: int4/int8's; or, for the ggml types, targets: each block
    matrix's type (GGUF name -> Q4_K, ...; matrices not in it keep their weights: written float)."""

    def __init__(self, ck, scheme, float_dtype: str, opts: Options, quiet: bool = False, targets=None, tokens=None):
        from ..verify.model import device_for
        self.ck, self.scheme, self.float_dtype, self.opts, self.quiet = ck, scheme, float_dtype, opts, quiet
        self.targets = targets
        device_for(opts.device)  # a bad --device fails here, before anything runs
        self.tokens = calibration_tokens(ck, opts, quiet) if tokens is None else tokens
        self.ready: dict[str, tuple] = {}
        self.block, self.hessians = None, {}
        self.hand = queue.Queue(maxsize=1)  # one block ahead of the writer at most
        self.stop = threading.Event()
        self.bar = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="gptq")
        self.thread.start()

    # ---- the producer thread --------------------------------------------------------------------------------
    def _run(self):
        try:
            import torch
            from ..verify import calibrate
            from tqdm import tqdm
            self.bar = tqdm(total=self.ck.config.n_layers, desc="gptq blocks", unit="blk", file=sys.stderr,
                            disable=self.quiet or not sys.stderr.isatty(), leave=False)
            with torch.no_grad():
                calibrate.stream(self.ck, self.tokens, self._observe, replace=self._replace, output=False,
                                 device=self.opts.device, progress=lambda i, n: self.bar.update(1))
            self._put(None)
        except BaseException as e:  # handed to the writer, which raises it
            self._put(e)
        finally:
            if self.bar is not None:
                self.bar.close()

    def _observe(self, i, names, x):
        from ..quant import gptq
        if i != self.block:
            self.block, self.hessians = i, {}
        if names not in self.hessians:
            self.hessians[names] = gptq.Hessian(x.shape[-1], x.device)
        self.hessians[names].add(x)

    def _replace(self, i, w):
        from ..quant import compressed, gptq
        from ..verify.model import fuse_gate_up
        out, packed = dict(w), {}
        for names, h in self.hessians.items():
            H = h.matrix()
            # factored once, when first needed, for the weights that share this input (ggml types: natural order)
            f = functools.cache(lambda H=H: gptq.factor(H, self.opts.damp,
                                                        "none" if self.targets is not None else self.opts.actorder))
            for k in names:
                name = f"blk.{i}.{k}.weight"
                W = w[k]
                if self.targets is not None:
                    out[k], packed[name] = self._ggml(name, W, H, f, h)
                    continue
                r = gptq.quantize(W, f(), self.scheme, self.float_dtype)
                if r.damp != self.opts.damp:
                    warn(f"{name}: its input Hessian could not be factored with --damp {self.opts.damp:g}; "
                         f"GPTQ used {r.damp:g}")
                p = r.packed(self.scheme)  # packed once: handed to the writer, and dequantized for the stream
                deq = compressed.dequantize(p.packed, p.scale, self.scheme).to(W.device, W.dtype)
                rtn = compressed.quantize(W.cpu(), self.scheme, self.float_dtype)
                rtn_w = compressed.dequantize(rtn.packed, rtn.scale, self.scheme).to(W.device, W.dtype)
                stats = Stats(r.output_loss(W, deq), *gptq.output_losses(H, W - rtn_w, W))
                packed[name] = (p, stats)
                out[k] = deq
        self.hessians = {}
        self._put({k: v for k, v in packed.items() if v is not None})
        return fuse_gate_up(out)

    def _ggml(self, name, W, H, f, h):
        """GPTQ of one block matrix in its ggml type: (the weights the stream goes on with, (bytes and values,
        Stats) or None for a matrix written float)."""
        import numpy as np
        import torch
        from .. import dtypes
        from ..quant import ggml_grid, gptq
        from ..quant import types as quant
        t = self.targets.get(name)
        if t is None or dtypes.is_float(t):  # written float: the stream goes on with those values
            dt = dtypes.torch_dtype(t) if t else W.dtype
            return W.to(dt).to(W.dtype), None
        # the imatrix entry llama-imatrix would collect from these inputs: sum x^2 / N = diag(H) / 2
        importance = (torch.diagonal(h.sum).double() / h.count).float().cpu().numpy()
        Wc = W.detach().float().cpu()
        grid = ggml_grid.Grid(t, *Wc.shape, importance)
        r = gptq.quantize(Wc, f(), grid)
        if r.damp != self.opts.damp:
            warn(f"{name}: its input Hessian could not be factored with --damp {self.opts.damp:g}; "
                 f"GPTQ used {r.damp:g}")
        # the baseline: the imatrix path's quantization of the same weights with the same importance
        base = np.empty_like(r.data)
        quant.quantize_into(Wc.numpy(), t, base, name, importance)
        base_w = quant.dequantize(base, t, Wc.shape)
        stats = Stats(r.output_loss(Wc, r.values), *gptq.output_losses(H, Wc - base_w, Wc), baseline="imatrix")
        return r.values.to(W.device, W.dtype), ((r.data, r.values), stats)

    def _put(self, item):
        while not self.stop.is_set():
            try:
                self.hand.put(item, timeout=0.2)
                return
            except queue.Full:
                pass
        if item is not None and not isinstance(item, BaseException):
            raise _Stopped()

    # ---- the writer's side ----------------------------------------------------------------------------------
    def take(self, name: str):
        """(Packed, Stats) of block matrix `name` (blocks come in order; an earlier one's tensors wait here)."""
        while name not in self.ready:
            item = self.hand.get()
            if item is None:
                raise RuntimeError(f"GPTQ finished without {name}")
            if isinstance(item, BaseException):
                self.close()
                if isinstance(item, _Stopped):
                    raise RuntimeError("GPTQ stopped")
                raise item
            self.ready.update(item)
        return self.ready.pop(name)

    def close(self):
        self.stop.set()
        try:
            while True:
                self.hand.get_nowait()
        except queue.Empty:
            pass
        self.thread.join(timeout=5)


class _Stopped(Exception):
    """The writer gave up (an error elsewhere): the producer thread ends."""


def summary(stats: list[Stats]) -> str:
    g = sum(s.loss for s in stats)
    r = sum(s.rtn_loss for s in stats)
    ratio = r / g if g > 0 else float("inf")
    base = "the imatrix-only quantization's" if stats and stats[0].baseline == "imatrix" else "round-to-nearest's"
    how = f"{ratio:.2f}x lower" if ratio >= 1 else f"{1 / ratio:.2f}x higher"
    return (f"GPTQ: {len(stats)} matrices; summed output error on the calibration text {g:.4g} against "
            f"{base} {r:.4g}: {how}")
