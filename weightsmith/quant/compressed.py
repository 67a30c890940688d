"""int8 / int4 weights for GPUs: compressed-tensors' `pack-quantized` format, as llm-compressor writes it and vLLM
and transformers load it.

Per quantized Linear `X`: `X.weight_packed` int32 [out, in * bits / 32] (values q + 2^(bits-1), element i at bit
i * bits, so int4 packs 8 per int32 low nibble first and int8 4 per int32 low byte first), `X.weight_scale`
[out, in / group] (one column for per-channel) in the model's float dtype, `X.weight_shape` int64 [out, in].
Symmetric: scale = amax / ((qmax - qmin) / 2), q = round(clamp(w / scale, qmin, qmax)), half to even, all in the
scale's dtype, exactly as compressed-tensors' calculate_qparams and quantize compute them.
Only the transformer blocks' matrices are quantized; embeddings, norms and lm_head stay float.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..lazy import torch

from .. import dtypes
from ..errors import BadInput, Unsupported

FORMAT = "pack-quantized"
SUFFIXES = ("weight_packed", "weight_scale", "weight_shape")


@dataclass(frozen=True)
class Scheme:
    name: str               # weightsmith's type name (--type int8 -> INT8)
    bits: int
    group: int | None       # None: one scale per output channel

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


SCHEMES = {s.name: s for s in [Scheme("INT8", 8, None), Scheme("INT4", 4, 128)]}
MIN_GROUP = 16  # smaller groups than this gain nothing over int8; such a width is refused


def get(name: str) -> Scheme | None:
    """A scheme by type name; `INT4-G64` / `INT8-G128` name one of them with that group size (--group-size)."""
    m = re.fullmatch(r"(INT[48])-G(\d+)", name.upper())
    if m and m.group(1) in SCHEMES:
        return grouped(SCHEMES[m.group(1)], int(m.group(2)))
    return SCHEMES.get(name.upper())


def grouped(s: Scheme, group: int) -> Scheme:
    """s with `group` columns per scale (named INT4-G64; the scheme's own group keeps its plain name)."""
    if group < MIN_GROUP or group & (group - 1):
        raise BadInput(f"--group-size {group}: a power of two of at least {MIN_GROUP}")
    base = s.name.split("-")[0]
    return SCHEMES[base] if SCHEMES[base].group == group else Scheme(f"{base}-G{group}", s.bits, group)


def group_size(s: Scheme, n_in: int) -> int | None:
    """The scheme's group where it divides the input width, else the largest power of two below it that does
    (SmolLM2's 576 gets 64): compressed-tensors' forward fails on a width its group does not divide."""
    if s.group is None:
        return None
    g = s.group
    while n_in % g:
        g //= 2
    if g < MIN_GROUP:
        raise Unsupported(f"input width {n_in} has no group size between {MIN_GROUP} and {s.group} for {s.name}")
    return g


def stored(s: Scheme, shape, float_dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(suffix, safetensors dtype, shape) of the tensors that replace one [out, in] weight, in writing order."""
    out, n_in = shape
    per_word = 32 // s.bits
    if n_in % per_word:
        raise Unsupported(f"input width {n_in} is not a multiple of {per_word}, which {s.name} packs per int32")
    g = group_size(s, n_in)
    return [("weight_packed", "I32", (out, n_in // per_word)),
            ("weight_scale", float_dtype, (out, n_in // g if g else 1)),
            ("weight_shape", "I64", (2,))]


@dataclass
class Packed:
    """One quantized weight as stored; rows in the caller's order (a row permutation commutes with quantization)."""
    packed: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, int]

    def parts(self) -> dict[str, torch.Tensor]:
        return {"weight_packed": self.packed, "weight_scale": self.scale,
                "weight_shape": torch.tensor(self.shape, dtype=torch.int64)}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.parts().values())


def scales(x: torch.Tensor, s: Scheme, dt: torch.dtype) -> torch.Tensor:
    """The scale of each group of x [..., group] (its last axis), in dt: calculate_qparams' symmetric min-max."""
    amax = x.to(dt).abs().amax(-1)                           # = max(|min(x, 0)|, max(x, 0))
    scale = amax / torch.tensor((s.qmax - s.qmin) / 2, dtype=dt)
    return torch.where(scale == 0, torch.tensor(torch.finfo(dt).eps, dtype=dt), scale)


def quantize(w: torch.Tensor, s: Scheme, float_dtype: str) -> Packed:
    out, n_in = w.shape
    dt = dtypes.torch_dtype(float_dtype)
    g = group_size(s, n_in) or n_in
    x = w.to(dt).reshape(out, n_in // g, g)
    scale = scales(x, s, dt)
    q = torch.round(torch.clamp(x / scale.unsqueeze(-1), s.qmin, s.qmax))
    return pack(q.reshape(out, n_in), scale, s)


def pack(q: torch.Tensor, scale: torch.Tensor, s: Scheme) -> Packed:
    """Integers q [out, in] (any int or integral float dtype, within qmin..qmax) and their scales, as stored."""
    u = (q.to(torch.int16) - s.qmin).to(torch.uint8)        # offset into 0 .. 2^bits - 1
    if s.bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return Packed(u.contiguous().view(torch.int32), scale, tuple(q.shape))


def unpack(packed: torch.Tensor, s: Scheme) -> torch.Tensor:
    """int32 words -> the signed integers q, [out, in]."""
    u = packed.contiguous().view(torch.uint8)
    if s.bits == 4:
        u = torch.stack([u & 15, u >> 4], -1).reshape(u.shape[0], -1)
    return u.to(torch.int16) + s.qmin


def dequantize(packed: torch.Tensor, scale: torch.Tensor, s: Scheme) -> torch.Tensor:
    q = unpack(packed, s)
    out, n_in = q.shape
    g = n_in // scale.shape[1]
    # q * scale is exact in f32 (a 4/8-bit integer times a 16-bit float); compressed-tensors gives the same values
    # with the scale in f32 (transformers loading in float32), or these rounded to a 16-bit scale's dtype
    w = q.reshape(out, -1, g).float() * scale.float().unsqueeze(-1)
    return w.reshape(out, n_in)


# ---- config.json ------------------------------------------------------------------------------------------

def _weights_args(s: Scheme, group: int | None) -> dict:
    return {"num_bits": s.bits, "type": "int", "symmetric": True, "group_size": group,
            "strategy": "group" if group else "channel", "block_structure": None, "dynamic": False,
            "actorder": None, "scale_dtype": None, "zp_dtype": None, "observer": "minmax", "observer_kwargs": {}}


def quantization_config(s: Scheme, kinds_by_group: dict[int | None, set[str]], ignore: list[str]) -> dict:
    """config.json's quantization_config. One group size for all: a single group targeting every Linear but the
    ignored lm_head, as llm-compressor writes it. Several (a width the group does not divide): one config group per
    size, targeting its projections (`self_attn.q_proj`, ...) by module-name regex."""
    sizes = sorted(kinds_by_group, key=lambda g: -(g or 0))
    groups = {}
    for i, g in enumerate(sizes):
        kinds = "|".join(re.escape(k) for k in sorted(kinds_by_group[g]))
        groups[f"group_{i}"] = {
            "targets": ["Linear"] if len(sizes) == 1 else [f"re:.*\\.({kinds})$"],
            "weights": _weights_args(s, g), "input_activations": None, "output_activations": None,
            "format": FORMAT}
    return {"quant_method": "compressed-tensors", "format": FORMAT, "quantization_status": "compressed",
            "config_groups": groups, "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
            "sparsity_config": {}, "transform_config": {}}


def scheme_of(qconfig: dict, module: str, source: str) -> Scheme:
    """The scheme config.json declares for one module of a pack-quantized checkpoint (symmetric int only)."""
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "compressed-tensors":
        raise BadInput(f"{source}: {module} is stored packed but config.json has no compressed-tensors "
                       f"quantization_config")
    for grp in (qconfig.get("config_groups") or {}).values():
        targets = grp.get("targets", []) if isinstance(grp, dict) else []
        if any(_matches(t, module) for t in targets):
            w = grp.get("weights") or {}
            fmt = grp.get("format") or qconfig.get("format")
            if fmt != FORMAT or w.get("type") != "int" or not w.get("symmetric", True) \
                    or w.get("num_bits") not in (4, 8):
                raise Unsupported(f"{source}: {module}: compressed-tensors scheme {fmt} {w.get('num_bits')}-bit "
                                  f"{w.get('type')} symmetric={w.get('symmetric')}; weightsmith reads symmetric "
                                  f"int4/int8 {FORMAT}")
            return SCHEMES[f"INT{w['num_bits']}"]
    raise BadInput(f"{source}: no quantization_config group targets {module}")


def _matches(target: str, module: str) -> bool:
    if not isinstance(target, str):
        return False
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target in ("Linear", module)
