"""llama-quantize's type mixtures: which ggml type each tensor of a Llama gets for a --type, as
llama_tensor_get_type (llama.cpp src/llama-quant.cpp) decides it, with or without an importance matrix, and with
llama-quantize's overrides (--output-tensor-type, --token-embedding-type, --tensor-type, --pure,
--leave-output-tensor).

Only the rules that can fire for a dense (non-MoE, non-Falcon) Llama and the types weightsmith writes are here; the
rest of that function concerns other architectures, MoE and the IQ1/IQ2/IQ3 types.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..convert import mapping
from ..errors import BadInput, Unsupported
from . import types


@dataclass(frozen=True)
class Preset:
    base: str        # the type of every matrix no rule changes
    file_type: int   # llama_ftype, what llama-quantize records as general.file_type


PRESETS = {
    "q8_0": Preset("Q8_0", 7), "q4_0": Preset("Q4_0", 2), "q4_1": Preset("Q4_1", 3),
    "q5_0": Preset("Q5_0", 8), "q5_1": Preset("Q5_1", 9), "q6_k": Preset("Q6_K", 18),
    "q2_k": Preset("Q2_K", 10), "q2_k_s": Preset("Q2_K", 21),
    "q3_k_s": Preset("Q3_K", 11), "q3_k_m": Preset("Q3_K", 12), "q3_k_l": Preset("Q3_K", 13),
    "q4_k_s": Preset("Q4_K", 14), "q4_k_m": Preset("Q4_K", 15), "q5_k_s": Preset("Q5_K", 16),
    "q5_k_m": Preset("Q5_K", 17), "iq4_nl": Preset("IQ4_NL", 25), "iq4_xs": Preset("IQ4_XS", 30),
}
ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}  # llama-quantize's own aliases


def get(name: str) -> tuple[str, Preset] | None:
    key = ALIASES.get(name.lower(), name.lower())
    return (key, PRESETS[key]) if key in PRESETS else None


def use_more_bits(i: int, n: int) -> bool:
    """The layers llama-quantize gives more bits: the first and last eighth, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass(frozen=True)
class Facts:
    """What a rule looks at. i is llama-quantize's running count of tensors of this role it has chosen a type for
    so far (the layer, unless --tensor-type took some of them out of the rules), n how many there are."""
    i: int
    n: int
    gqa: int           # query heads per kv head
    imatrix: bool      # an importance matrix is given

    @property
    def more_bits(self) -> bool:
        return use_more_bits(self.i, self.n)


def _when(cond: Callable[[Facts], bool], then: str, otherwise: str | None = None):
    return lambda f: then if cond(f) else otherwise


# (preset, role) -> the rule: Facts -> a type, or None to keep the preset's base. llama_tensor_get_type_impl is one
# else-if chain per role, each branch naming one ftype, so at most one rule applies to a tensor: a table.
RULES: dict[tuple[str, str], Callable[[Facts], str | None]] = {
    ("q2_k", "attn_v"): _when(lambda f: f.gqa >= 4, "Q4_K", "Q3_K"),
    ("q2_k_s", "attn_v"): _when(lambda f: f.gqa >= 4, "Q4_K"),
    ("q3_k_m", "attn_v"): _when(lambda f: f.i < 2, "Q5_K", "Q4_K"),
    ("q3_k_l", "attn_v"): lambda f: "Q5_K",
    ("iq4_nl", "attn_v"): _when(lambda f: f.gqa >= 4, "Q5_K"),
    ("iq4_xs", "attn_v"): _when(lambda f: f.gqa >= 4, "Q5_K"),
    ("q4_k_m", "attn_v"): _when(lambda f: f.more_bits, "Q6_K"),
    ("q5_k_m", "attn_v"): _when(lambda f: f.more_bits, "Q6_K"),
    ("q4_k_s", "attn_v"): _when(lambda f: f.i < 4, "Q5_K"),
    ("q2_k", "ffn_down"): lambda f: "Q3_K",
    ("q2_k_s", "ffn_down"): _when(lambda f: f.i < f.n // 8, "Q4_K"),
    ("q3_k_m", "ffn_down"): _when(lambda f: f.i < f.n // 16, "Q5_K", "Q4_K"),
    ("q3_k_l", "ffn_down"): lambda f: "Q5_K",
    ("q4_k_m", "ffn_down"): _when(lambda f: f.more_bits, "Q6_K"),
    ("iq4_nl", "ffn_down"): _when(lambda f: f.i < f.n // 8 and not f.imatrix, "Q5_K"),
    ("iq4_xs", "ffn_down"): _when(lambda f: f.i < f.n // 8 and not f.imatrix, "Q5_K"),
    ("q5_k_m", "ffn_down"): _when(lambda f: f.more_bits, "Q6_K"),
    ("q4_k_s", "ffn_down"): _when(lambda f: f.i < f.n // 8, "Q5_K"),
    # guards the first ffn_down layers, only with an imatrix (so that without one the old mixtures stay)
    ("q4_0", "ffn_down"): _when(lambda f: f.imatrix and f.i < f.n // 8, "Q4_1"),
    ("q5_0", "ffn_down"): _when(lambda f: f.imatrix and f.i < f.n // 8, "Q5_1"),
    ("q2_k", "attn_output"): lambda f: "Q3_K",
    ("q3_k_m", "attn_output"): lambda f: "Q4_K",
    ("q3_k_l", "attn_output"): lambda f: "Q5_K",
}
COUNTED = ("attn_v", "ffn_down")  # the roles whose rules read Facts.i (llama-quantize's i_attention_wv, i_ffn_down)


def ggml_type(name: str, what: str) -> str:
    """A ggml type name as llama-quantize parses it (case-insensitive), limited to the types weightsmith writes."""
    t = name.strip().upper()
    if t in ("F32", "F16", "BF16") or t in types.REGISTRY:
        return t
    raise Unsupported(f"{what}: {name!r} is not a ggml type weightsmith writes "
                      f"(f32, f16, bf16, {', '.join(n.lower() for n in types.REGISTRY)})")


def requires_imatrix(preset_name: str, canonical: str, t: str) -> bool:
    """llama-quantize's tensor_requires_imatrix for the types weightsmith writes: Q2_K matrices of a q2_k_s file
    (token_embd and output excepted) are written only with their importance-matrix entry."""
    return t == "Q2_K" and preset_name == "q2_k_s" and canonical not in ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class Overrides:
    """llama-quantize's per-tensor options."""
    output: str | None = None           # --output-tensor-type
    token_embd: str | None = None       # --token-embedding-type
    patterns: tuple[tuple[str, str], ...] = ()  # --tensor-type PATTERN=TYPE, first match wins
    pure: bool = False                  # --pure: the base type for every matrix, no mixture rules
    leave_output: bool = False          # --leave-output-tensor: output.weight not quantized

    @classmethod
    def parse(cls, output=None, token_embd=None, tensor_types=(), pure=False, leave_output=False) -> "Overrides":
        pats = []
        for spec in tensor_types:
            pat, sep, t = spec.partition("=")
            if not sep or not pat or not t:
                raise BadInput(f"--tensor-type {spec!r}: expected PATTERN=TYPE, e.g. attn_v=q8_0")
            try:
                re.compile(pat.lower())
            except re.error as e:
                raise BadInput(f"--tensor-type {spec!r}: bad pattern ({e})") from None
            pats.append((pat.lower(), ggml_type(t, "--tensor-type")))  # llama-quantize lower-cases the name part
        return cls(ggml_type(output, "--output-tensor-type") if output else None,
                   ggml_type(token_embd, "--token-embedding-type") if token_embd else None,
                   tuple(pats), pure, leave_output)


@dataclass
class Mixture:
    """The type of each tensor under a preset, asked in the file's tensor order (llama-quantize counts attn_v and
    ffn_down tensors as it goes)."""
    preset_name: str
    config: object
    imatrix: bool = False
    overrides: Overrides = field(default_factory=Overrides)
    counts: Counter = field(default_factory=Counter)

    def choose(self, canonical: str, shape: tuple[int, ...]) -> str | None:
        """The ggml type of tensor `canonical`; None when llama-quantize leaves it unquantized (norms and other
        vectors, output.weight with --leave-output-tensor): it keeps the source's type."""
        if len(shape) < 2:
            return None
        role = mapping.canonical(canonical).row.canonical.replace("blk.{i}.", "").removesuffix(".weight")
        ov, base = self.overrides, PRESETS[self.preset_name].base
        if role == "output" and ov.leave_output:
            return None
        if role == "token_embd" and ov.token_embd:
            return ov.token_embd                  # as given: llama-quantize applies no fallback here
        if role == "output" and ov.output:
            return ov.output
        manual = next((t for pat, t in ov.patterns if re.search(pat, canonical)), None)
        if manual:
            t = manual
        elif ov.pure:
            t = base
        else:
            t = self._rules(role, shape, base)
        t = types.for_row_length(t, shape[-1])
        if not self.imatrix and requires_imatrix(self.preset_name, canonical, t):
            # llama-quantize refuses the whole file before writing anything
            raise BadInput(f"--type {self.preset_name}: {canonical} would be {t}, which llama-quantize writes only "
                           f"with an importance matrix (--imatrix FILE or --calibrate TEXT)")
        return t

    def _rules(self, role: str, shape, base: str) -> str:
        cfg = self.config
        if role == "output" or (role == "token_embd" and cfg.tied_embeddings):
            if self.overrides.output:
                return self.overrides.output
            if shape[-1] % types.get(base).block:
                return "Q8_0"
            return base if base == "Q8_0" else "Q6_K"
        facts = Facts(self.counts[role], cfg.n_layers, cfg.n_heads // cfg.n_kv_heads, self.imatrix)
        if role in COUNTED:
            self.counts[role] += 1
        rule = RULES.get((self.preset_name, role))
        t = (rule(facts) if rule else None) or base
        if role == "attn_v" and _is_70b(cfg) and t in ("Q3_K", "Q4_K"):
            t = "Q5_K"                            # 8 heads share attn_v: more bits for little size
        return t


def _is_70b(config) -> bool:
    """llama.cpp's LLM_TYPE_70B for a Llama: 80 layers with grouped-query attention."""
    return config.n_layers == 80 and config.n_kv_heads != config.n_heads
