"""Shape-faithful tiny configs of every seed family, in Meta params.json terms (the HF config is derived by
transformers' own conventions in oracles.hf_config)."""

ROPE_31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

FAMILIES = {
    # Llama 1: no GQA, theta 1e4 (absent from params.json), SentencePiece 32K vocab, eps 1e-6
    "llama1": dict(dim=64, n_layers=2, n_heads=4, vocab_size=32000, multiple_of=256, norm_eps=1e-6),
    # Llama 2 70B-style: GQA 8:1, ffn_dim_multiplier 1.3
    "llama2_70b": dict(dim=256, n_layers=2, n_heads=32, n_kv_heads=4, vocab_size=32000, multiple_of=128,
                       ffn_dim_multiplier=1.3, norm_eps=1e-5),
    # Llama 3: GQA 4:1 (4 kv heads, so 4-way model parallel works), theta 5e5, 128256 vocab
    "llama3": dict(dim=128, n_layers=2, n_heads=16, n_kv_heads=4, vocab_size=128256, multiple_of=64,
                   ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0),
    # Llama 3.1: + rope scaling (Meta: use_scaled_rope; HF: rope_scaling llama3 factor 8)
    "llama31": dict(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=128256, multiple_of=64,
                    ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
    # Llama 3.2: tied embeddings, rope scaling
    "llama32": dict(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=128256, multiple_of=64,
                    ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True, tied=True),
}


def meta_params(family: str) -> dict:
    return {k: v for k, v in FAMILIES[family].items() if k != "tied"}


def is_tied(family: str) -> bool:
    return FAMILIES[family].get("tied", False)


def is_llama3(family: str) -> bool:
    return FAMILIES[family]["vocab_size"] >= 128000
