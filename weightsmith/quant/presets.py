"""llama-quantize's type mixtures: which ggml type each tensor of a Llama gets for a --type, as
llama_tensor_get_type (llama.cpp src/llama-quant.cpp) decides it without an importance matrix.

Only the rules that can fire for a dense (non-MoE) Llama and these types are here; the rest of that function
concerns other architectures, MoE and the IQ/Q2/Q3 types weightsmith does not write.
"""
from dataclasses import dataclass

from ..convert import mapping
from . import types


@dataclass(frozen=True)
class Preset:
    base: str        # the type of every matrix no rule changes
    file_type: int   # llama_ftype, what llama-quantize records as general.file_type


PRESETS = {
    "q8_0": Preset("Q8_0", 7), "q4_0": Preset("Q4_0", 2), "q4_1": Preset("Q4_1", 3),
    "q5_0": Preset("Q5_0", 8), "q5_1": Preset("Q5_1", 9), "q6_k": Preset("Q6_K", 18),
    "q4_k_s": Preset("Q4_K", 14), "q4_k_m": Preset("Q4_K", 15), "q5_k_s": Preset("Q5_K", 16),
    "q5_k_m": Preset("Q5_K", 17),
}
ALIASES = {"q4_k": "q4_k_m", "q5_k": "q5_k_m"}  # llama-quantize's own aliases


def get(name: str) -> tuple[str, Preset] | None:
    key = ALIASES.get(name.lower(), name.lower())
    return (key, PRESETS[key]) if key in PRESETS else None


def use_more_bits(i: int, n: int) -> bool:
    """The layers llama-quantize gives more bits: the first and last eighth, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def choose(preset_name: str, canonical: str, shape: tuple[int, ...], config) -> str:
    """The type llama-quantize gives tensor `canonical` under preset `preset_name` (a key of PRESETS)."""
    preset = PRESETS[preset_name]
    if len(shape) < 2:
        return "F32"                              # norms and other vectors are never quantized
    name = mapping.canonical(canonical)
    role, layer, n = name.row.canonical, name.layer, config.n_layers
    t = preset.base
    if role == "output.weight" or (role == "token_embd.weight" and config.tied_embeddings):
        if shape[-1] % types.get(t).block:
            t = "Q8_0"
        elif t != "Q8_0":
            t = "Q6_K"
    elif role == "blk.{i}.attn_v.weight":
        if preset_name in ("q4_k_m", "q5_k_m") and use_more_bits(layer, n):
            t = "Q6_K"
        elif preset_name == "q4_k_s" and layer < 4:
            t = "Q5_K"
        if _is_70b(config) and t == "Q4_K":        # 8 heads share attn_v: more bits for little size
            t = "Q5_K"
    elif role == "blk.{i}.ffn_down.weight":
        if preset_name in ("q4_k_m", "q5_k_m") and use_more_bits(layer, n):
            t = "Q6_K"
        elif preset_name == "q4_k_s" and layer < n // 8:
            t = "Q5_K"
    return types.for_row_length(t, shape[-1])


def _is_70b(config) -> bool:
    """llama.cpp's LLM_TYPE_70B for a Llama: 80 layers with grouped-query attention."""
    return config.n_layers == 80 and config.n_kv_heads != config.n_heads
