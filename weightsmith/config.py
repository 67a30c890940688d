"""ModelConfig: the canonical hyperparameters, and their Meta params.json / HF config.json spellings."""
from dataclasses import dataclass, field

from .errors import BadInput, Unsupported

LLAMA3_ROPE = "llama3"


@dataclass
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_dim: int
    head_dim: int
    norm_eps: float
    rope_theta: float
    rope_scaling: dict | None = None   # HF's rope_scaling dict ({"rope_type": "llama3", "factor": 8.0, ...})
    tied_embeddings: bool = False
    max_seq_len: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    # Meta's way to spell ffn_dim; kept so Meta -> X -> Meta gives back the same params.json
    multiple_of: int | None = None
    ffn_dim_multiplier: float | None = None
    hf_extra: dict = field(default_factory=dict)  # config.json keys weightsmith does not own, carried HF -> HF

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def size(self, symbol: str) -> int:
        return getattr(self, symbol)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "hf_extra"}


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FeedForward width: int(2*4*dim/3), times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def meta_ffn_params(dim: int, ffn_dim: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that make Meta's formula give ffn_dim: the simplest that works."""
    powers = [p for p in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if ffn_dim % p == 0]
    for mo in powers:
        if meta_ffn_dim(dim, mo, None) == ffn_dim:
            return mo, None
    base = int(8 * dim / 3)
    for digits in range(1, 7):
        mult = round(ffn_dim / base, digits)
        for mo in powers:
            if meta_ffn_dim(dim, mo, mult) == ffn_dim:
                return mo, mult
    raise Unsupported(f"no multiple_of/ffn_dim_multiplier reproduces ffn width {ffn_dim} for dim {dim} in Meta's formula")


# ---- reading helpers ---------------------------------------------------------------------------------------

def _get(d: dict, key: str, kinds, source: str, default=...):
    if key not in d or d[key] is None:
        if default is ...:
            raise BadInput(f"{source}: missing field {key!r}")
        return default
    v = d[key]
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise BadInput(f"{source}: field {key!r} has value {v!r}, expected {' or '.join(k.__name__ for k in kinds)}")
    if (int in kinds or float in kinds) and not isinstance(v, bool) and v < 0:
        raise BadInput(f"{source}: field {key!r} has value {v!r}, expected a positive number")
    return v


NUM = (int, float)


def _from_shapes(shapes: dict, name: str, axis: int, source: str) -> int:
    if name not in shapes:
        raise BadInput(f"{source}: checkpoint has no {name} tensor")
    if len(shapes[name]) != 2:
        raise BadInput(f"{source}: tensor {name} has shape {list(shapes[name])}, expected a matrix")
    return shapes[name][axis]


def _agree(claimed, found, what: str, source: str, tensor: str):
    if claimed is not None and claimed != found:
        raise BadInput(f"{source} says {what}={claimed} but tensor {tensor} implies {what}={found}: "
                       f"{source} is wrong or belongs to another model")


def from_meta_params(params: dict, shapes: dict, source="params.json") -> ModelConfig:
    """params.json + canonical tensor shapes -> ModelConfig. Shapes decide vocab and FFN width; params must agree."""
    if not isinstance(params, dict):
        raise BadInput(f"{source}: expected a JSON object")
    dim = _get(params, "dim", (int,), source)
    n_layers = _get(params, "n_layers", (int,), source)
    n_heads = _get(params, "n_heads", (int,), source)
    if dim <= 0 or n_heads <= 0 or dim % n_heads:
        raise BadInput(f"{source}: dim={dim} is not a multiple of n_heads={n_heads}")
    head_dim = dim // n_heads
    n_kv_claim = _get(params, "n_kv_heads", (int,), source, None)
    multiple_of = _get(params, "multiple_of", (int,), source, 256)
    mult = _get(params, "ffn_dim_multiplier", NUM, source, None)
    if multiple_of <= 0 or mult is not None and not 0 < mult < 1e6:
        raise BadInput(f"{source}: multiple_of={multiple_of}, ffn_dim_multiplier={mult} are not a valid FFN width")
    vocab_claim = _get(params, "vocab_size", (int,), source, -1) if params.get("vocab_size", -1) != -1 else None
    use_scaled = _get(params, "use_scaled_rope", (bool,), source, False)
    theta = float(_get(params, "rope_theta", NUM, source, 10000.0))  # absent in Llama 1/2: their code used 1e4

    _agree(dim, _from_shapes(shapes, "token_embd.weight", 1, source), "dim", source, "token_embd.weight")
    kv_rows = _from_shapes(shapes, "blk.0.attn_k.weight", 0, source)
    n_kv = kv_rows // head_dim
    if n_kv <= 0 or n_heads % n_kv:
        raise BadInput(f"{source}: tensor blk.0.attn_k.weight has {kv_rows} rows, which is not a whole number of "
                       f"key/value heads of {head_dim} dividing n_heads={n_heads}")
    _agree(n_kv_claim, n_kv, "n_kv_heads", source, "blk.0.attn_k.weight")
    vocab = _from_shapes(shapes, "token_embd.weight", 0, source)
    _agree(vocab_claim, vocab, "vocab_size", source, "token_embd.weight")
    ffn = _from_shapes(shapes, "blk.0.ffn_gate.weight", 0, source)
    formula = meta_ffn_dim(dim, multiple_of, mult)
    if formula != ffn:
        raise BadInput(f"{source}: multiple_of={multiple_of}, ffn_dim_multiplier={mult} give an FFN width of {formula} "
                       f"but tensor blk.0.ffn_gate.weight has {ffn}: {source} is wrong or belongs to another model")
    scaling = None
    if use_scaled:
        scaling = {"rope_type": LLAMA3_ROPE, "factor": float(_get(params, "rope_scaling_factor", NUM, source, 8.0)),
                   "low_freq_factor": 1.0,
                   "high_freq_factor": float(_get(params, "rope_high_freq_factor", NUM, source, 4.0)),
                   "original_max_position_embeddings": 8192}
    llama3 = vocab >= 128000
    return ModelConfig(
        dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab, ffn_dim=ffn,
        head_dim=head_dim, norm_eps=float(_get(params, "norm_eps", NUM, source, 1e-5)), rope_theta=theta,
        rope_scaling=scaling, tied_embeddings="output.weight" not in shapes,
        # Meta's params.json has no context length (it is a run-time argument): the families' trained lengths
        max_seq_len=131072 if use_scaled else 8192 if theta >= 500000 else 4096,
        bos_token_id=128000 if llama3 else 1, eos_token_id=128001 if llama3 else 2,
        multiple_of=multiple_of, ffn_dim_multiplier=mult)


def to_meta_params(cfg: ModelConfig) -> dict:
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        raise Unsupported(f"Meta's reference code needs head_dim = dim / n_heads; this model has head_dim={cfg.head_dim}, "
                          f"dim={cfg.dim}, n_heads={cfg.n_heads}")
    mo, mult = cfg.multiple_of, cfg.ffn_dim_multiplier
    if mo is None or meta_ffn_dim(cfg.dim, mo, mult) != cfg.ffn_dim:
        mo, mult = meta_ffn_params(cfg.dim, cfg.ffn_dim)
    p = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
         "vocab_size": cfg.vocab_size, "multiple_of": mo, "ffn_dim_multiplier": mult, "norm_eps": cfg.norm_eps,
         "rope_theta": cfg.rope_theta, "use_scaled_rope": cfg.rope_scaling is not None}
    if mult is None:
        del p["ffn_dim_multiplier"]
    if cfg.rope_scaling is not None:
        rs = cfg.rope_scaling
        if rs.get("rope_type", rs.get("type")) != LLAMA3_ROPE or rs.get("low_freq_factor", 1.0) != 1.0 \
                or rs.get("original_max_position_embeddings", 8192) != 8192:
            raise Unsupported(f"rope scaling {rs} has no Meta params.json spelling (only Llama 3.1-style llama3 scaling)")
        if rs["factor"] != 8.0:
            p["rope_scaling_factor"] = rs["factor"]
        if rs.get("high_freq_factor", 4.0) != 4.0:
            p["rope_high_freq_factor"] = rs["high_freq_factor"]
    return p


# ---- Hugging Face config.json ------------------------------------------------------------------------------

# The config.json keys this module reads and writes; everything else is carried HF -> HF untouched.
HF_OWNED = {"architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
            "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "hidden_act",
            "bos_token_id", "eos_token_id", "torch_dtype", "dtype", "transformers_version",
            "attention_bias", "mlp_bias", "quantization_config"}


def from_hf_config(d: dict, shapes: dict, source="config.json") -> ModelConfig:
    if not isinstance(d, dict):
        raise BadInput(f"{source}: expected a JSON object")
    mtype, archs = d.get("model_type"), d.get("architectures") or []
    if not isinstance(archs, list):
        raise BadInput(f"{source}: field 'architectures' has value {archs!r}, expected a list")
    if mtype not in ("llama", None) and "LlamaForCausalLM" not in archs:
        raise Unsupported(f"{source}: model_type {mtype!r} is not a Llama-family model")
    if d.get("hidden_act", "silu") != "silu" or d.get("attention_bias") or d.get("mlp_bias"):
        raise Unsupported(f"{source}: hidden_act/attention_bias/mlp_bias differ from Llama's (silu, no biases)")
    dim = _get(d, "hidden_size", (int,), source)
    n_heads = _get(d, "num_attention_heads", (int,), source)
    head_dim = _get(d, "head_dim", (int,), source, dim // n_heads if n_heads else 0)
    if n_heads <= 0 or head_dim <= 0 or head_dim % 2:
        raise BadInput(f"{source}: num_attention_heads={n_heads} / head_dim={head_dim} are not a valid attention shape")
    n_kv = _get(d, "num_key_value_heads", (int,), source, n_heads)
    if n_kv <= 0 or n_heads % n_kv:
        raise BadInput(f"{source}: num_key_value_heads={n_kv} does not divide num_attention_heads={n_heads}")
    rope = d.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise BadInput(f"{source}: field 'rope_parameters' is not an object")
    theta = float(_get(d, "rope_theta", NUM, source, None) or _get(rope, "rope_theta", NUM, source + " rope_parameters",
                                                                     10000.0))
    scaling = d.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"}
                                        if rope.get("rope_type", "default") != "default" else None)
    if scaling is not None and (not isinstance(scaling, dict) or not isinstance(scaling.get("factor"), NUM)
                                or any(isinstance(v, NUM) and not 0 <= v < float("inf") for v in scaling.values())):
        raise BadInput(f"{source}: field 'rope_scaling' is malformed: {scaling!r}")
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    cfg = ModelConfig(
        dim=dim, n_layers=_get(d, "num_hidden_layers", (int,), source), n_heads=n_heads, n_kv_heads=n_kv,
        vocab_size=_get(d, "vocab_size", (int,), source), ffn_dim=_get(d, "intermediate_size", (int,), source),
        head_dim=head_dim, norm_eps=float(_get(d, "rms_norm_eps", NUM, source, 1e-6)), rope_theta=theta,
        rope_scaling=scaling, tied_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_seq_len=_get(d, "max_position_embeddings", (int,), source, 4096),
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
        hf_extra={k: v for k, v in d.items() if k not in HF_OWNED})
    # transformers ties only when told; a checkpoint that says untied but has no lm_head is broken
    if not cfg.tied_embeddings and shapes and "output.weight" not in shapes:
        raise BadInput(f"{source}: tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    return cfg


def to_hf_config(cfg: ModelConfig, dtype_name: str) -> dict:
    from . import dtypes
    torch_dtype = dtypes.torch_name(dtype_name)
    d = dict(cfg.hf_extra)
    d.update({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        # rope_theta/rope_scaling: the spelling every transformers release, vLLM and llama.cpp's converter read
        "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling,
        "tie_word_embeddings": cfg.tied_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "torch_dtype": torch_dtype,
    })
    return d


def check_shapes(cfg: ModelConfig, shapes: dict, names, source: str):
    """Every tensor the config implies is present with the shape the config implies; nothing else is."""
    from .convert import mapping
    # every layer has tensors, so a config claiming more layers than there are tensors (10**12 from a hostile
    # file) fails at layer len(shapes) at the latest: never build more names than that
    expected = mapping.canonical_order(min(cfg.n_layers, len(shapes) + 1), cfg.tied_embeddings)
    for name in expected:
        if name not in shapes:
            raise BadInput(f"{source}: the config implies tensor {names(name)} but the checkpoint has none "
                           f"(n_layers={cfg.n_layers}, tied_embeddings={cfg.tied_embeddings})")
        want = tuple(cfg.size(s) for s in mapping.canonical(name).row.shape)
        if tuple(shapes[name]) != want:
            raise BadInput(f"{source}: tensor {names(name)} has shape {list(shapes[name])}, the config implies "
                           f"{list(want)}")
    extra = set(shapes) - set(expected)
    if extra - {"output.weight"}:
        raise BadInput(f"{source}: tensor {names(sorted(extra)[0])} is beyond what the config implies "
                       f"(n_layers={cfg.n_layers})")


# ---- GGUF metadata ---------------------------------------------------------------------------------------

def _f32(v) -> float:
    """GGUF stores floats as float32: give back the shortest decimal that rounds to it (1e-05, not 9.9999997e-06)."""
    import numpy as np
    return float(str(np.float32(v)))


def from_gguf_metadata(kv: dict, shapes: dict, source: str) -> ModelConfig:
    arch = kv.get("general.architecture")
    if arch != "llama":
        raise Unsupported(f"{source}: general.architecture is {arch!r}; weightsmith handles llama")

    def key(name, kinds=(int,), default=...):
        return _get(kv, f"llama.{name}", kinds, source, default)

    dim = key("embedding_length")
    n_heads = key("attention.head_count")
    if n_heads <= 0:
        raise BadInput(f"{source}: llama.attention.head_count is 0")
    head_dim = key("attention.key_length", default=dim // n_heads)
    n_layers = key("block_count")
    scaling = None
    stype = kv.get("llama.rope.scaling.type")
    if stype not in (None, "none"):
        if stype not in ("linear", "yarn"):
            raise Unsupported(f"{source}: llama.rope.scaling.type {stype!r}")
        scaling = {"rope_type": stype, "factor": _f32(key("rope.scaling.factor", NUM))}
        if kv.get("llama.rope.scaling.original_context_length"):
            scaling["original_max_position_embeddings"] = key("rope.scaling.original_context_length")
    vocab = _from_shapes(shapes, "token_embd.weight", 0, source)
    _agree(kv.get("llama.vocab_size"), vocab, "llama.vocab_size", source, "token_embd.weight")
    n_kv = key("attention.head_count_kv", default=n_heads)
    if n_kv <= 0 or n_heads % n_kv:
        raise BadInput(f"{source}: llama.attention.head_count_kv={n_kv} does not divide head_count={n_heads}")
    return ModelConfig(
        dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
        vocab_size=vocab, ffn_dim=key("feed_forward_length"), head_dim=head_dim,
        norm_eps=_f32(key("attention.layer_norm_rms_epsilon", NUM, 1e-5)),
        rope_theta=_f32(key("rope.freq_base", NUM, 10000.0)), rope_scaling=scaling,
        tied_embeddings="output.weight" not in shapes, max_seq_len=key("context_length", default=4096),
        bos_token_id=_get(kv, "tokenizer.ggml.bos_token_id", (int,), source, None),
        eos_token_id=_get(kv, "tokenizer.ggml.eos_token_id", (int,), source, None))
