"""A tiny Llama GGUF with a Llama 3-sized byte-level BPE vocabulary, written by gguf-py's GGUFWriter (not weightsmith):
what `inspect` of a 128K-vocabulary model has to walk through, without 16 GB of weights.

Tokens: 256 one-character pieces, every pair of the first 128 of them, then three-character pieces abc (each with
the two merges "ab c" and "a bc"), until n_tokens. The merges are all consistent (both halves and the merged piece
are tokens), so the vocabulary also converts to a tokenizers BPE. Tensors: one layer, dim 64, f32.

    python bench/big_vocab_gguf.py OUT.gguf [--tokens 128256]    # 128256 tokens, 239616 merges, 72 MB
"""
import argparse
from pathlib import Path

import numpy as np

DIM, N_HEADS, N_KV, FFN = 64, 4, 2, 128


def vocabulary(n_tokens: int) -> tuple[list[str], list[str]]:
    base = [chr(0x100 + i) for i in range(256)]  # any 256 distinct characters will do
    tokens, merges = list(base), []
    low = base[:128]
    for a in low:
        for b in low:
            if len(tokens) == n_tokens:
                return tokens, merges
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    for a in low:
        for b in low:
            for c in low:
                if len(tokens) == n_tokens:
                    return tokens, merges
                tokens.append(a + b + c)
                merges += [f"{a}{b} {c}", f"{a} {b}{c}"]
    raise ValueError(f"at most {len(tokens)} tokens")


def write(path: Path, n_tokens: int = 128256, name: str = "big-vocab") -> tuple[list[str], list[str]]:
    import gguf
    tokens, merges = vocabulary(n_tokens)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(8192)
    w.add_embedding_length(DIM)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(DIM // N_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)
    w.add_vocab_size(n_tokens)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * n_tokens)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    rng = np.random.default_rng(0)
    hd = DIM // N_HEADS
    shapes = {"token_embd.weight": (n_tokens, DIM), "output_norm.weight": (DIM,), "output.weight": (n_tokens, DIM),
              "blk.0.attn_norm.weight": (DIM,), "blk.0.attn_q.weight": (DIM, DIM),
              "blk.0.attn_k.weight": (N_KV * hd, DIM), "blk.0.attn_v.weight": (N_KV * hd, DIM),
              "blk.0.attn_output.weight": (DIM, DIM), "blk.0.ffn_norm.weight": (DIM,),
              "blk.0.ffn_gate.weight": (FFN, DIM), "blk.0.ffn_up.weight": (FFN, DIM),
              "blk.0.ffn_down.weight": (DIM, FFN)}
    for tname, shape in shapes.items():
        w.add_tensor(tname, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens, merges


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokens", type=int, default=128256)
    a = ap.parse_args()
    tokens, merges = write(a.out, a.tokens)
    print(f"{a.out}: {len(tokens)} tokens, {len(merges)} merges, {a.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
