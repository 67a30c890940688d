"""Reference forward pass of a Llama-family model in plain torch, Meta's formulation on canonical tensors.

Weights come from the checkpoint's lazy refs (quantized GGUF tensors arrive dequantized) and are cast to one
compute dtype (f32 by default). Two ways to run it:
  - Model: every weight in memory, with a KV cache (generate, sampling);
  - lockstep(): two checkpoints streamed one transformer block at a time, so peak weight memory is one block per
    model plus the embedding/output matrix, and the hidden states of every chunk are compared after each block.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..convert import layout
from ..errors import BadInput, Unsupported

BLOCK = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def device_for(name: str | None) -> torch.device:
    try:
        dev = torch.device(name or "cpu")
    except RuntimeError as e:
        raise BadInput(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return dev


class Weights:
    """Loads canonical tensors of one checkpoint on demand, cast to the compute dtype on the compute device."""

    def __init__(self, ck, device=None, dtype=torch.float32):
        self.ck, self.cfg, self.device, self.dtype = ck, ck.config, device_for(device), dtype
        self.refs = {t.canonical: t for t in ck.tensors}

    def get(self, name: str) -> torch.Tensor:
        return self.refs[name].load().to(device=self.device, dtype=self.dtype)

    def block(self, i: int) -> dict:
        return fuse_gate_up({k: self.get(f"blk.{i}.{k}.weight") for k in BLOCK})

    def embed(self, tokens: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        # rows picked from the stored tensor before the cast: a 128K-row embedding is never copied whole
        emb = self.refs["token_embd.weight"].load() if emb is None else emb
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= emb.shape[0]):
            raise BadInput(f"token id out of range for a vocabulary of {emb.shape[0]}")
        return emb[tokens.cpu()].to(device=self.device, dtype=self.dtype)

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(output norm, output matrix); a tied model's output matrix is its embedding."""
        out = "token_embd.weight" if self.cfg.tied_embeddings else "output.weight"
        return self.get("output_norm.weight"), self.get(out)


def rope_inv_freq(cfg) -> torch.Tensor:
    """Rotary frequencies in float64, with Llama 3.1 (llama3) or linear scaling applied."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.rope_scaling
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "llama3":
            inv = inv / torch.from_numpy(layout.llama3_rope_factors(hd, cfg.rope_theta, rs)).double()
        elif kind == "linear":
            inv = inv / rs["factor"]
        else:
            raise Unsupported(f"rope scaling {kind!r} is not implemented in the reference forward pass")
    return inv


@dataclass
class Rope:
    cos: torch.Tensor   # [T, hd/2]
    sin: torch.Tensor

    @classmethod
    def make(cls, cfg, n: int, device, dtype, start: int = 0):
        pos = torch.arange(start, start + n, dtype=torch.float64)
        ang = torch.outer(pos, rope_inv_freq(cfg))
        return cls(ang.cos().to(device, dtype), ang.sin().to(device, dtype))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, hd] with interleaved pairs (x0, x1), (x2, x3), ... rotated as complex numbers."""
        xr = x.unflatten(-1, (-1, 2))
        a, b = xr[..., 0], xr[..., 1]
        c, s = self.cos[:, None, :], self.sin[:, None, :]
        return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Every weight matmul goes through here (a single seam for experiments such as activation rounding)."""
    return x @ w.T


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def fuse_gate_up(w: dict) -> dict:
    """w with ffn_gate and ffn_up made the two halves of one [2 x ffn, dim] tensor (block_forward then multiplies
    the input by both at once: one matmul of twice the width, 17% faster for SmolLM2's than two, the same values).
    The block's other weights are as given; the dict is w itself."""
    g, u = w["ffn_gate"], w["ffn_up"]
    if not _gate_up(g, u):
        both = torch.cat((g, u))
        w["ffn_gate"], w["ffn_up"] = both[:g.shape[0]], both[g.shape[0]:]
    return w


def _gate_up(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor | None:
    """The [2 x ffn, dim] tensor whose halves g and u are (fuse_gate_up's), or None."""
    if g.shape != u.shape or not (g.is_contiguous() and u.is_contiguous()) or g.dtype != u.dtype \
            or g.device != u.device or g.untyped_storage().data_ptr() != u.untyped_storage().data_ptr() \
            or u.storage_offset() != g.storage_offset() + g.numel():
        return None
    return g.new_empty(0).set_(g.untyped_storage(), g.storage_offset(), (2 * g.shape[0], g.shape[1]))


# Which matmul weights of a block read the same input: what calibration observes once per input (block_forward's
# tap), in the order the forward pass reaches them
SHARED_INPUTS = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))


def block_forward(h: torch.Tensor, w: dict, cfg, rope: Rope, cache: dict | None = None, tap=None,
                  tap_only: bool = False) -> torch.Tensor | None:
    """One transformer block on h [B, T, dim]. cache (generate) holds this block's past k/v and grows by T.
    tap(names, x), when given, sees each matmul input x [B, T, in] once, with the SHARED_INPUTS entry it feeds;
    tap_only: the output is not wanted (GPTQ's observing pass), so the last matmul, a quarter of a Llama block's
    multiply-adds, is skipped and None returned."""
    B, T, _ = h.shape
    x = rms_norm(h, w["attn_norm"], cfg.norm_eps)
    if tap:
        tap(SHARED_INPUTS[0], x)
    q = rope.apply(linear(x, w["attn_q"]).view(B, T, cfg.n_heads, cfg.head_dim))
    k = rope.apply(linear(x, w["attn_k"]).view(B, T, cfg.n_kv_heads, cfg.head_dim))
    v = linear(x, w["attn_v"]).view(B, T, cfg.n_kv_heads, cfg.head_dim)
    past = 0
    if cache is not None:
        if "k" in cache:
            past = cache["k"].shape[1]
            k, v = torch.cat((cache["k"], k), 1), torch.cat((cache["v"], v), 1)
        cache["k"], cache["v"] = k, v
    rep = cfg.n_heads // cfg.n_kv_heads  # grouped-query: kv head j serves query heads j*rep .. j*rep+rep-1
    q, k, v = q.transpose(1, 2), k.repeat_interleave(rep, 2).transpose(1, 2), v.repeat_interleave(rep, 2).transpose(1, 2)
    if past and T > 1:  # causal mask offset by the cached positions
        mask = torch.ones(T, past + T, dtype=torch.bool, device=h.device).tril(past)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
    o = o.transpose(1, 2).reshape(B, T, cfg.q_dim)
    if tap:
        tap(SHARED_INPUTS[1], o)
    h = h + linear(o, w["attn_output"])
    x = rms_norm(h, w["ffn_norm"], cfg.norm_eps)
    if tap:
        tap(SHARED_INPUTS[2], x)
    gu = _gate_up(w["ffn_gate"], w["ffn_up"])
    if gu is None:
        a = F.silu(linear(x, w["ffn_gate"])) * linear(x, w["ffn_up"])
    else:
        y = linear(x, gu)
        a = F.silu(y[..., :cfg.ffn_dim]) * y[..., cfg.ffn_dim:]
    if tap:
        tap(SHARED_INPUTS[3], a)
    if tap_only:
        return None
    return h + linear(a, w["ffn_down"])


def logits(h: torch.Tensor, head: tuple, cfg) -> torch.Tensor:
    norm, out = head
    return linear(rms_norm(h, norm, cfg.norm_eps), out)


class Model:
    """The whole model in memory; forward() keeps a KV cache across calls (greedy decoding, sampling)."""

    def __init__(self, ck, device=None, dtype=torch.float32):
        self.w = Weights(ck, device, dtype)
        self.cfg = ck.config
        self.blocks = [self.w.block(i) for i in range(self.cfg.n_layers)]
        self.head = self.w.head()
        self.emb = self.w.refs["token_embd.weight"].load()  # as stored (dequantized): read once, not per step
        self.reset()

    def reset(self):
        self.caches = [{} for _ in self.blocks]
        self.pos = 0

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] following what was fed before -> logits [B, T, vocab]."""
        h = self.w.embed(tokens, self.emb)
        rope = Rope.make(self.cfg, tokens.shape[1], h.device, h.dtype, self.pos)
        for w, cache in zip(self.blocks, self.caches):
            h = block_forward(h, w, self.cfg, rope, cache)
        self.pos += tokens.shape[1]
        return logits(h, self.head, self.cfg)


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def chunk_batch(cfg, ctx: int, budget: int = 2**26) -> int:
    """How many chunks go through a block at once: as many as keep one FFN activation [tokens, ffn_dim] within
    `budget` values (256 MB in f32), so an 8B/70B block's activations stay a fraction of its weights."""
    return max(1, budget // (cfg.ffn_dim * ctx))


@torch.no_grad()
def lockstep(models: list, tokens: torch.Tensor):
    """Run every model over tokens [n_chunks, ctx], one block at a time: all chunks go through block i of every
    model before any block i+1 is loaded, and each block's weights are dropped after use. Returns the final
    hidden states (one [n_chunks, ctx, dim] per model) and, per block, the relative error of each model's hidden
    state against the first model's."""
    cfg = models[0].cfg
    n, ctx = tokens.shape
    rope = Rope.make(cfg, ctx, models[0].device, models[0].dtype)
    hs = [m.embed(tokens) for m in models]
    drift = []
    for i in range(cfg.n_layers):
        for j, m in enumerate(models):
            w = m.block(i)
            for s in _batches(n, chunk_batch(cfg, ctx)):
                hs[j][s] = block_forward(hs[j][s], w, cfg, rope)
            del w
        drift.append([rel_err(h, hs[0]) for h in hs[1:]])
    return hs, drift


def rel_err(h: torch.Tensor, ref: torch.Tensor) -> float:
    """||h - ref|| / ||ref|| over every chunk and position, summed chunk by chunk in float64 (no full-size copy)."""
    num = den = 0.0
    for a, b in zip(h, ref):
        num += (a.double() - b.double()).pow(2).sum().item()
        den += b.double().pow(2).sum().item()
    return (num / den) ** 0.5 if den else 0.0
