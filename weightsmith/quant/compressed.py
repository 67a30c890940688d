"""int8 / int4 / fp8 weights for GPUs in compressed-tensors' formats, as llm-compressor writes them and vLLM and
transformers load them: `pack-quantized` (W8A16 int8, W4A16 int4: weight-only), `int-quantized` (W8A8: int8 weights
and dynamic per-token int8 input activations) and `float-quantized` (FP8_DYNAMIC: float8 e4m3 weights and dynamic
per-token fp8 input activations). The schemes differ only in the table below (SCHEMES, FORMATS).

Per quantized Linear `X`: `X.weight_packed` int32 [out, in * bits / 32] (values q + 2^(bits-1), element i at bit
i * bits, so int4 packs 8 per int32 low nibble first and int8 4 per int32 low byte first), `X.weight_scale`
[out, in / group] (one column for per-channel) in the model's float dtype, `X.weight_shape` int64 [out, in].
`int-quantized` / `float-quantized`: `X.weight` int8 / float8_e4m3fn [out, in] and `X.weight_scale` [out, 1].
Symmetric: scale = amax / ((qmax - qmin) / 2), q = round(clamp(w / scale, qmin, qmax)), half to even, all in the
scale's dtype, exactly as compressed-tensors' calculate_qparams and quantize compute them (fp8: qmax = 448, so
scale = amax / 448, and q = clamp(w / scale + 0, -448, 448) cast to e4m3, nearest even; the + 0 is the zero point
compressed-tensors adds, which turns -0.0 into +0.0). Activation scales are computed at run time: none stored.
Only the transformer blocks' matrices are quantized; embeddings, norms and lm_head stay float.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from ..lazy import torch

from .. import dtypes
from ..errors import BadInput, Unsupported

FORMAT = "pack-quantized"
SUFFIXES = ("weight_packed", "weight_scale", "weight_shape")


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]   # the tensors that replace X.weight, in writing order: values, scales[, shape]
    storage: str                # the values tensor's dtype (pack-quantized: int32 words of 32 / bits values each)


FORMATS = {f.name: f for f in [
    Format(FORMAT, SUFFIXES, "I32"),
    Format("int-quantized", ("weight", "weight_scale"), "I8"),
    Format("float-quantized", ("weight", "weight_scale"), "F8_E4M3"),
]}
# names that mark a module as quantized (a plain `.weight` does not)
MARKERS = {sfx for f in FORMATS.values() for sfx in f.suffixes} - {"weight"}
FP8_MAX = 448.0  # float8 e4m3fn's largest finite value: compressed-tensors' FP8 range is [-448, 448]


@dataclass(frozen=True)
class Scheme:
    name: str               # weightsmith's type name (--type int8 -> INT8)
    bits: int
    group: int | None       # None: one scale per output channel
    type: str = "int"       # "int", or "float" (e4m3)
    format: str = FORMAT
    acts: bool = False      # dynamic per-token symmetric input activations of the same type and bits (WxAx)
    # the weights' observer as config.json names it: llm-compressor 0.14 writes memoryless_minmax for every scheme
    # here (its QuantizationModifier and GPTQModifier; bench/llmcompressor_check.py, bench/convert_bench.py)
    observer: str | None = "memoryless_minmax"

    @property
    def qmin(self) -> float:
        return -FP8_MAX if self.type == "float" else -(1 << (self.bits - 1))

    @property
    def qmax(self) -> float:
        return FP8_MAX if self.type == "float" else (1 << (self.bits - 1)) - 1

    @property
    def per_word(self) -> int:
        """Values per stored element (pack-quantized packs 32 / bits per int32)."""
        return dtypes.itemsize(FORMATS[self.format].storage) * 8 // self.bits


SCHEMES = {s.name: s for s in [
    Scheme("INT8", 8, None),                                                  # W8A16
    Scheme("INT4", 4, 128),                                                   # W4A16
    Scheme("W8A8", 8, None, "int", "int-quantized", acts=True),                # llm-compressor's W8A8
    Scheme("FP8", 8, None, "float", "float-quantized", acts=True),            # and FP8_DYNAMIC
]}
MIN_GROUP = 16  # smaller groups than this gain nothing over int8; such a width is refused


def get(name: str) -> Scheme | None:
    """A scheme by type name; `INT4-G64` / `INT8-G128` name one of them with that group size (--group-size), a
    `-MSE` suffix one with the mse observer (--observer mse): the name carries both to the writers."""
    name = name.upper()
    if name.endswith("-MSE"):
        s = get(name.removesuffix("-MSE"))
        return observed(s, "mse") if s is not None and s.type == "int" else None
    m = re.fullmatch(r"(INT[48])-G(\d+)", name)
    if m and m.group(1) in SCHEMES:
        return grouped(SCHEMES[m.group(1)], int(m.group(2)))
    return SCHEMES.get(name)


def grouped(s: Scheme, group: int) -> Scheme:
    """s with `group` columns per scale (named INT4-G64; the scheme's own group keeps its plain name)."""
    if group < MIN_GROUP or group & (group - 1):
        raise BadInput(f"--group-size {group}: a power of two of at least {MIN_GROUP}")
    base = s.name.split("-")[0]
    return SCHEMES[base] if SCHEMES[base].group == group else dataclasses.replace(s, name=f"{base}-G{group}",
                                                                                    group=group)


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
    per_word = s.per_word
    if n_in % per_word:
        raise Unsupported(f"input width {n_in} is not a multiple of {per_word}, which {s.name} packs per int32")
    g = group_size(s, n_in)
    fmt = FORMATS[s.format]
    return list(zip(fmt.suffixes, (fmt.storage, float_dtype, "I64"),
                    ((out, n_in // per_word), (out, n_in // g if g else 1), (2,))))


@dataclass
class Packed:
    """One quantized weight, or a piece of its rows, as stored; rows in the caller's order (a row permutation
    commutes with quantization). packed: the values (int32 words, or the int8 / float8 weight itself, by format);
    torch tensors (quantize, GPTQ) or numpy arrays (quantize_rows; fp8 as uint8 bits, a BF16 scale as uint16)."""
    packed: torch.Tensor | np.ndarray
    scale: torch.Tensor | np.ndarray
    shape: tuple[int, int]
    format: str = FORMAT

    def parts(self) -> dict[str, torch.Tensor]:
        return dict(zip(FORMATS[self.format].suffixes,
                        (self.packed, self.scale, torch.tensor(self.shape, dtype=torch.int64))))

    @property
    def nbytes(self) -> int:
        """The values' and scales' bytes (the stored shape adds shape_nbytes once per weight)."""
        return self.packed.nbytes + self.scale.nbytes


def shape_nbytes(s: Scheme) -> int:
    """The bytes a weight stores besides values and scales: pack-quantized's int64 weight_shape [out, in]."""
    return 16 if "weight_shape" in FORMATS[s.format].suffixes else 0


def scales(x: torch.Tensor, s: Scheme, dt: torch.dtype) -> torch.Tensor:
    """The scale of each group of x [..., group] (its last axis), in dt: calculate_qparams' symmetric min-max."""
    amax = x.to(dt).abs().amax(-1)                           # = max(|min(x, 0)|, max(x, 0))
    scale = amax / torch.tensor((s.qmax - s.qmin) / 2, dtype=dt)
    return torch.where(scale == 0, torch.tensor(torch.finfo(dt).eps, dtype=dt), scale)


# --observer: how a weight's scales are chosen, and config.json's name for it (compressed-tensors' observer field)
OBSERVERS = {"minmax": "memoryless_minmax", "mse": "memoryless_mse"}
# the mse observer's candidates, as fractions of the min-max scale: 1 first (kept on a tie), then from 1.09 (int4's
# +amax maps to 7.5 and clips to 7: 1.07 keeps it whole) down to 0.70, in steps of 0.01
MSE_SHRINK = np.array([1.0] + [p / 100 for p in range(109, 69, -1) if p != 100], np.float32)


def observed(s: Scheme, observer: str) -> Scheme:
    """s with --observer's scale choice (minmax, mse)."""
    if observer not in OBSERVERS:
        raise BadInput(f"--observer {observer}: one of {', '.join(OBSERVERS)}")
    if observer == "mse" and s.type != "int":
        raise BadInput(f"--observer mse: integer schemes only (int4, int8, w8a8), not --type {s.name.lower()}")
    base = s.name.removesuffix("-MSE")
    return dataclasses.replace(s, name=base if observer == "minmax" else f"{base}-MSE", observer=OBSERVERS[observer])


def observed_scales(x: torch.Tensor, s: Scheme, dt: torch.dtype, g: int,
                    importance: torch.Tensor | None = None) -> torch.Tensor:
    """The scales of x [rows, n] in groups of g columns ([rows, n / g], in dt) by the scheme's observer: min-max
    (scales()), or mse: per group the candidate scale (MSE_SHRINK times the min-max one) that rounds the group
    with the least squared error, each column weighted by importance [n] (GPTQ: diag(H); default 1)."""
    rows, n = x.shape
    if s.observer != OBSERVERS["mse"]:
        return scales(x.reshape(rows, n // g, g), s, dt)
    from . import compressed_rows as k
    from .types import _cores, parallel_map
    xf = np.ascontiguousarray(x.detach().cpu().float().numpy())
    imp = np.ones(n, np.float32) if importance is None else np.ascontiguousarray(
        importance.detach().cpu().float().numpy())
    out = np.empty((rows, n // g), np.float32)
    code = k.DT[dtypes.type_name(dt)]
    args = (g, code, np.float32(s.qmin), np.float32(s.qmax), np.float32(k.EPS[code]), MSE_SHRINK)
    step = -(-rows // _cores())
    parallel_map(lambda r: k.mse_scales(xf[r:r + step], imp, *args, out[r:r + step]), range(0, rows, step))
    return torch.from_numpy(out).to(x.device, dt)


def quantize(w: torch.Tensor, s: Scheme, float_dtype: str) -> Packed:
    out, n_in = w.shape
    dt = dtypes.torch_dtype(float_dtype)
    g = group_size(s, n_in) or n_in
    wd = w.to(dt)
    x = wd.reshape(out, n_in // g, g)
    scale = observed_scales(wd, s, dt, g)
    if s.type == "float":  # the cast rounds (nearest even); + 0: compressed-tensors' zero point, -0.0 -> +0.0
        q = torch.clamp(x / scale.unsqueeze(-1) + 0, s.qmin, s.qmax).to(torch.float8_e4m3fn)
    else:
        q = torch.round(torch.clamp(x / scale.unsqueeze(-1), s.qmin, s.qmax))
    return pack(q.reshape(out, n_in), scale, s)


def quantize_rows(x: np.ndarray, s: Scheme, float_dtype: str, name: str = "tensor") -> tuple[Packed, float, float]:
    """quantize() of rows x [rows, in] (a numpy float array, BF16 as uint16 bits) without torch, in a numba kernel
    on all cores: the same bytes, as numpy arrays (Packed.shape: these rows'), and |dequantized - x|^2, |x|^2 (float64)
    for the log's error figure. Rows are independent (a scale covers part of one row), so a tensor can be quantized
    a piece of rows at a time. NaN or Inf is refused, as the ggml types refuse it."""
    from . import compressed_rows as k
    from .types import CHUNK, _float32_slices, parallel_map
    rows, n = x.shape
    g = group_size(s, n) or n
    fmt = FORMATS[s.format]
    out = np.empty((rows, n * s.bits // 8), np.uint8)
    scale = np.empty((rows, n // g), np.float32)
    dt = k.DT[float_dtype]
    store = k.FP8 if s.type == "float" else k.PACKED if s.format == FORMAT else k.INT8
    x = np.ascontiguousarray(dtypes.to_numpy(x))
    exact = dtypes.of_array(x) == float_dtype  # its values are the scale dtype's: no rounding to it first
    args = (g, dt, exact, s.bits, store, np.float32(s.qmin), np.float32(s.qmax), np.float32(k.EPS[dt]),
            MSE_SHRINK if s.observer == OBSERVERS["mse"] else MSE_SHRINK[:0])
    floats = _float32_slices(x.reshape(-1))
    step = max(CHUNK // n, 1)

    def task(r0):
        r1 = min(r0 + step, rows)
        e2, n2, bad = k.quantize_rows(floats(r0 * n, r1 * n).reshape(-1, n), *args, out[r0:r1], scale[r0:r1])
        return e2, n2, r0 * n + bad if bad >= 0 else -1

    sums = parallel_map(task, range(0, rows, step))
    bad = [b for _, _, b in sums if b >= 0]
    if bad:
        raise BadInput(f"{name}: holds NaN or Inf (first at index {list(divmod(min(bad), n))}); refusing to quantize "
                       f"it")
    values = out.view(dtypes.numpy_dtype(fmt.storage))
    return (Packed(values, dtypes.cast(scale, float_dtype), (rows, n), s.format),
            sum(e for e, _, _ in sums), sum(v for _, v, _ in sums))


def pack(q: torch.Tensor, scale: torch.Tensor, s: Scheme) -> Packed:
    """Integers q [out, in] (any int or integral float dtype, within qmin..qmax; fp8: float8_e4m3fn values) and
    their scales, as stored."""
    if s.format != FORMAT:  # the values as they are, int8 or float8
        return Packed(q.to(torch.float8_e4m3fn if s.type == "float" else torch.int8), scale, tuple(q.shape),
                      s.format)
    u = (q.to(torch.int16) - s.qmin).to(torch.uint8)        # offset into 0 .. 2^bits - 1
    if s.bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return Packed(u.contiguous().view(torch.int32), scale, tuple(q.shape))


def unpack(packed: torch.Tensor, s: Scheme) -> torch.Tensor:
    """int32 words -> the signed integers q, [out, in] (int8 / float8 values: as they are)."""
    if s.format != FORMAT:
        return packed
    u = packed.contiguous().view(torch.uint8)
    if s.bits == 4:
        u = torch.stack([u & 15, u >> 4], -1).reshape(u.shape[0], -1)
    return u.to(torch.int16) + s.qmin


def dequantize(packed: torch.Tensor, scale: torch.Tensor, s: Scheme) -> torch.Tensor:
    q = unpack(packed, s)
    out, n_in = q.shape
    # q * scale is exact in f32 (a 4/8-bit integer or a 4-significant-bit fp8 value times a 16-bit float);
    # compressed-tensors gives the same values with the scale in f32 (transformers loading in float32), or these
    # rounded to a 16-bit scale's dtype. A per-tensor scale ([1]) applies to every row.
    scale = scale.reshape(-1, 1) if scale.ndim == 1 else scale
    g = n_in // scale.shape[1]
    w = q.reshape(out, -1, g).float() * scale.float().unsqueeze(-1)  # [out|1, groups, 1] broadcasts
    return w.reshape(out, n_in)


# ---- config.json ------------------------------------------------------------------------------------------

def _args(s: Scheme, group: int | None, strategy: str, dynamic: bool, observer: str | None) -> dict:
    """One QuantizationArgs as compressed-tensors 0.19 (llm-compressor 0.14's) serializes it: every field."""
    return {"num_bits": s.bits, "type": s.type, "symmetric": True, "group_size": group, "strategy": strategy,
            "block_structure": None, "dynamic": dynamic, "actorder": None, "scale_dtype": None, "zp_dtype": None,
            "observer": observer, "observer_kwargs": {}}


def _weights_args(s: Scheme, group: int | None) -> dict:
    return _args(s, group, "group" if group else "channel", False, s.observer)


def _input_args(s: Scheme) -> dict | None:
    """Dynamic per-token activations: a scale per token computed at run time, no observer."""
    return _args(s, None, "token", True, None) if s.acts else None


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
            "weights": _weights_args(s, g), "input_activations": _input_args(s), "output_activations": None,
            "format": s.format}
    return {"quant_method": "compressed-tensors", "format": s.format, "quantization_status": "compressed",
            "config_groups": groups, "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
            "sparsity_config": {}, "transform_config": {}}


def scheme_of(qconfig: dict, module: str, source: str) -> Scheme:
    """The scheme config.json declares for one module of a compressed-tensors checkpoint, as far as reading its
    weights goes (format, type, bits; symmetric only; group sizes come from the stored scales' shape)."""
    if not isinstance(qconfig, dict) or qconfig.get("quant_method") != "compressed-tensors":
        raise BadInput(f"{source}: {module} is stored packed but config.json has no compressed-tensors "
                       f"quantization_config")
    for grp in (qconfig.get("config_groups") or {}).values():
        targets = grp.get("targets", []) if isinstance(grp, dict) else []
        if any(_matches(t, module) for t in targets):
            w = grp.get("weights") or {}
            fmt = grp.get("format") or qconfig.get("format")
            found = [s for s in SCHEMES.values() if (s.format, s.type, s.bits) == (fmt, w.get("type"),
                                                                                     w.get("num_bits"))]
            if not found or not w.get("symmetric", True):
                known = ", ".join(f"{s.bits}-bit {s.type} {s.format}" for s in SCHEMES.values())
                raise Unsupported(f"{source}: {module}: compressed-tensors scheme {fmt} {w.get('num_bits')}-bit "
                                  f"{w.get('type')} symmetric={w.get('symmetric')}; weightsmith reads symmetric "
                                  f"{known}")
            return found[0]
    raise BadInput(f"{source}: no quantization_config group targets {module}")


def _matches(target: str, module: str) -> bool:
    if not isinstance(target, str):
        return False
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target in ("Linear", module)
