"""THE tensor-name table. Canonical names are GGUF's; every format module translates through this table.

Columns:
  canonical  GGUF name ({i} = block index)
  meta       name in Meta's consolidated.NN.pth
  hf         name in a transformers LlamaForCausalLM state dict
  rope       "q" / "k" when the rows carry rotary pairs (HF stores them half-split, Meta/GGUF interleaved)
  mp         Meta model-parallel split axis: 0 column-parallel, 1 row-parallel, None replicated,
             "embed" = tok_embeddings (dim 1 in Llama 1/2, dim 0 in Llama 3; decided from shard shapes)
  shape      PyTorch-order shape in terms of ModelConfig fields
"""
import re
from dataclasses import dataclass

from ..errors import BadInput


@dataclass(frozen=True)
class Row:
    canonical: str
    meta: str
    hf: str
    rope: str | None
    mp: int | str | None
    shape: tuple[str, ...]


TABLE = [
    Row("token_embd.weight", "tok_embeddings.weight", "model.embed_tokens.weight", None, "embed", ("vocab_size", "dim")),
    Row("blk.{i}.attn_norm.weight", "layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight", None, None, ("dim",)),
    Row("blk.{i}.attn_q.weight", "layers.{i}.attention.wq.weight", "model.layers.{i}.self_attn.q_proj.weight", "q", 0, ("q_dim", "dim")),
    Row("blk.{i}.attn_k.weight", "layers.{i}.attention.wk.weight", "model.layers.{i}.self_attn.k_proj.weight", "k", 0, ("kv_dim", "dim")),
    Row("blk.{i}.attn_v.weight", "layers.{i}.attention.wv.weight", "model.layers.{i}.self_attn.v_proj.weight", None, 0, ("kv_dim", "dim")),
    Row("blk.{i}.attn_output.weight", "layers.{i}.attention.wo.weight", "model.layers.{i}.self_attn.o_proj.weight", None, 1, ("dim", "q_dim")),
    Row("blk.{i}.ffn_norm.weight", "layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", None, None, ("dim",)),
    Row("blk.{i}.ffn_gate.weight", "layers.{i}.feed_forward.w1.weight", "model.layers.{i}.mlp.gate_proj.weight", None, 0, ("ffn_dim", "dim")),
    Row("blk.{i}.ffn_down.weight", "layers.{i}.feed_forward.w2.weight", "model.layers.{i}.mlp.down_proj.weight", None, 1, ("dim", "ffn_dim")),
    Row("blk.{i}.ffn_up.weight", "layers.{i}.feed_forward.w3.weight", "model.layers.{i}.mlp.up_proj.weight", None, 0, ("ffn_dim", "dim")),
    Row("output_norm.weight", "norm.weight", "model.norm.weight", None, None, ("dim",)),
    Row("output.weight", "output.weight", "lm_head.weight", None, 0, ("vocab_size", "dim")),
]

# Tensors some checkpoints carry that hold nothing the model needs: recomputed from the config.
IGNORED = {
    # Llama 3.1 rope-scaling factors: the GGUF reader turns them into ModelConfig.rope_scaling
    "canonical": [r"rope_freqs\.weight"],
    "meta": [r"rope\.freqs"],  # Llama 1/2 consolidated.*.pth: 1/theta^(2i/d), derivable from rope_theta
    "hf": [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"],  # old transformers saved this buffer
}

FORMATS = ("canonical", "meta", "hf")


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


# (format, compiled pattern, row) for name -> row lookups
_PATTERNS = {fmt: [(_pattern(getattr(r, fmt)), r) for r in TABLE] for fmt in FORMATS}
_IGNORED = {fmt: [re.compile(p + "$") for p in pats] for fmt, pats in IGNORED.items()}


@dataclass(frozen=True)
class Name:
    row: Row
    layer: int | None

    @property
    def canonical(self) -> str:
        return self.name("canonical")

    def name(self, fmt: str) -> str:
        template = getattr(self.row, fmt)
        return template.format(i=self.layer) if self.layer is not None else template


def lookup(fmt: str, name: str) -> Name | None:
    """Row and layer of a tensor name in format `fmt`; None for a name the table ignores on purpose."""
    for pat, row in _PATTERNS[fmt]:
        m = pat.match(name)
        if m:
            return Name(row, int(m.group("i")) if "i" in pat.groupindex else None)
    if any(p.match(name) for p in _IGNORED.get(fmt, [])):
        return None
    raise BadInput(f"unknown tensor {name!r}: not a Llama tensor weightsmith knows")


def canonical(name: str) -> Name:
    return lookup("canonical", name)


def rename(canonical_name: str, fmt: str) -> str:
    return canonical(canonical_name).name(fmt)


def is_block_matrix(canonical_name: str) -> bool:
    """A transformer block's Linear weight: what int8/int4 quantize (embeddings, norms and the head stay float)."""
    row = canonical(canonical_name).row
    return "{i}" in row.canonical and len(row.shape) == 2


def canonical_order(n_layers: int, tied: bool) -> list[str]:
    """Every canonical tensor a Llama with this many layers has, in writing order (embeddings, blocks, head)."""
    names = []
    for row in TABLE:
        if row.canonical == "output.weight" and tied:
            continue
        if "{i}" in row.canonical:
            continue
        names.append(row.canonical)
    per_block = [r.canonical for r in TABLE if "{i}" in r.canonical]
    blocks = [t.format(i=i) for i in range(n_layers) for t in per_block]
    return names[:1] + blocks + names[1:]
