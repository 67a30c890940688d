"""GPTQ for int4/int8 (compressed-tensors pack-quantized).

One Linear with known inputs: weightsmith's GPTQ (lazy batches of 128 columns, Cholesky inverse) equals a GPTQ
written here from the paper's Algorithm 1 (one column at a time over the whole matrix, an explicit inverse), with
compressed-tensors' own calculate_qparams for the scales: the same integers and the same scales, with and without
groups and activation order; dead and rank-deficient inputs are handled.
"""
import pytest
import torch

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

from weightsmith import dtypes  # noqa: E402
from weightsmith.errors import BadInput  # noqa: E402
from weightsmith.quant import compressed, gptq  # noqa: E402


# ---- a reference GPTQ, from the paper ---------------------------------------------------------------------------

def _qparams(x: torch.Tensor, bits: int, group) -> torch.Tensor:
    """compressed-tensors' symmetric min-max scale of each row of each group of x [out, n_groups, g]."""
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, group_size=group,
                            strategy="group" if group else "channel")
    scale, _ = calculate_qparams(x.amin(-1), x.amax(-1), args)
    return scale


# the mse observer's candidates, from its definition: the min-max scale times 1, then 1.09, 1.08, ... 0.70
SHRINK = [1.0] + [p / 100 for p in range(109, 69, -1) if p != 100]


def _mse_scales(x: torch.Tensor, imp: torch.Tensor, bits: int, group) -> torch.Tensor:
    """The scale of each row of each group of x [out, n_groups, g] (dt values) among the candidates whose
    integers lose least, sum_j imp_j (x_j - q_j s)^2 in float64 (imp [n_groups, g]); the first on a tie."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    base = x.float().abs().amax(-1) / ((qmax - qmin) / 2)  # the min-max scale in float32, before rounding to dt
    best, best_err = None, None
    for p in SHRINK:
        c = (base * torch.tensor(p, dtype=torch.float32)).to(x.dtype)
        q = torch.clamp(torch.round(x.double() / c.double().unsqueeze(-1)), qmin, qmax)
        err = (imp.double() * (x.double() - q * c.double().unsqueeze(-1)) ** 2).sum(-1)
        if best is None:
            best, best_err = c.clone(), err
        else:
            better = err < best_err
            best, best_err = torch.where(better, c, best), torch.where(better, err, best_err)
    return best


def reference_gptq(W, X, bits, group, actorder, damp, dt, observer="minmax"):
    """Frantar et al., Algorithm 1 without lazy batches, float64. X [N, in]: the layer's inputs. observer mse:
    each scale chosen by _mse_scales, columns weighted by diag(H)."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    n_out, n_in = W.shape
    X = X.double()
    H = 2 * X.T @ X / X.shape[0]
    W0 = W.to(dt)
    diag = torch.diag(H).clone()

    def observe(x, cols):  # x [out, n_groups, g] (dt values), cols: their original column indices
        if observer == "mse":
            return _mse_scales(x, diag[cols].view(x.shape[1:]), bits, group)
        return _qparams(x, bits, group)
    if group is None:
        scale = observe(W0.unsqueeze(1), torch.arange(n_in))                     # [out, 1]
    elif actorder == "static":
        scale = observe(W0.view(n_out, n_in // group, group), torch.arange(n_in))
    else:
        scale = torch.zeros(n_out, n_in // group, dtype=dt)
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if actorder == "static" else torch.arange(n_in)
    W, H = W.double()[:, perm].clone(), H[perm][:, perm].clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(n_in, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    Q = torch.zeros(n_out, n_in, dtype=torch.int16)
    for j in range(n_in):
        c = int(perm[j])
        if group and actorder != "static" and j % group == 0:
            scale[:, j // group] = observe(W[:, j:j + group].to(dt).unsqueeze(1), perm[j:j + group])[:, 0]
        sc = scale[:, c // group if group else 0].double()
        q = torch.clamp(torch.round(W[:, j] / sc), qmin, qmax)
        err = (W[:, j] - q * sc) / U[j, j]
        W[:, j:] -= err[:, None] * U[j, j:][None, :]
        Q[:, c] = q.to(torch.int16)
    return Q, scale


def layer(n_out=48, n_in=256, n_tok=512, seed=0):
    """A weight and inputs whose columns differ in scale (so activation order matters) and correlate."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
    mix = torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g) / n_in ** 0.5
    X = (torch.randn(n_tok, n_in, generator=g) @ mix) * torch.rand(n_in, generator=g).mul(3).exp()
    return W, X


def hessian_of(X, batch=100):
    h = gptq.Hessian(X.shape[1])
    for i in range(0, X.shape[0], batch):  # in batches, as the forward pass hands them over
        h.add(X[i:i + batch].unsqueeze(0))
    return h.matrix()


def test_hessian_is_two_over_n_xtx():
    _, X = layer()
    want = 2 * X.double().T @ X.double() / X.shape[0]
    H = hessian_of(X)  # 256 columns: two bands of the upper triangle, mirrored
    torch.testing.assert_close(H.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.equal(H, H.T)


SCHEMES = [("INT4", None), ("INT4-G64", None), ("INT4-G32", None), ("INT8", None), ("INT8-G128", None)]


@pytest.mark.parametrize("name", [s for s, _ in SCHEMES])
@pytest.mark.parametrize("actorder", ["static", "none"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_equals_reference_gptq(name, actorder, dt):
    s = compressed.get(name)
    W, X = layer()
    H = 2 * X.double().T @ X.double() / X.shape[0]
    r = gptq.quantize(W, H, s, dt, damp=0.01, actorder=actorder, dtype=torch.float64)
    q, scale = reference_gptq(W, X, s.bits, compressed.group_size(s, W.shape[1]), actorder, 0.01, dt)
    assert torch.equal(r.scale, scale)
    assert r.scale.dtype == dt
    assert torch.equal(r.q, q), (r.q != q).sum()
    assert r.damp == 0.01 and r.dead == 0
    # GPTQ's loss is the damped Hessian's quadratic form of the change it made (the Cholesky identity)
    Hd = H + 0.01 * torch.diag(H).mean() * torch.eye(W.shape[1], dtype=H.dtype)
    dw = W.double() - r.dequantized(s).double()
    assert r.loss == pytest.approx(gptq.output_loss(dw, Hd), rel=1e-6)  # dequantized in f32
    # and it beats round-to-nearest on the layer's own inputs
    rtn = compressed.quantize(W, s, "F32" if dt == torch.float32 else "BF16")
    dw_rtn = W.double() - compressed.dequantize(rtn.packed, rtn.scale, s).double()
    assert gptq.output_loss(dw, H) < 0.8 * gptq.output_loss(dw_rtn, H)


@pytest.mark.parametrize("name", ["INT4-G64", "INT4", "INT8"])
@pytest.mark.parametrize("actorder", ["static", "none"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_mse_observer_equals_reference(name, actorder, dt):
    """--observer mse: each scale the candidate that rounds its group with the least diag(H)-weighted squared
    error (the reference searches in float64), GPTQ on those scales the reference's integers; it loses less than
    min-max scales on these inputs, and config.json names the observer."""
    s = compressed.observed(compressed.get(name), "mse")
    assert s.name == f"{name}-MSE" and compressed.get(s.name) == s and s.observer == "memoryless_mse"
    W, X = layer()
    H = 2 * X.double().T @ X.double() / X.shape[0]
    r = gptq.quantize(W, H, s, dt, damp=0.01, actorder=actorder, dtype=torch.float64)
    q, scale = reference_gptq(W, X, s.bits, compressed.group_size(s, W.shape[1]), actorder, 0.01, dt, "mse")
    assert torch.equal(r.scale, scale), (r.scale != scale).sum()
    assert torch.equal(r.q, q), (r.q != q).sum()
    minmax = gptq.quantize(W, H, compressed.get(name), dt, damp=0.01, actorder=actorder, dtype=torch.float64)
    assert not torch.equal(r.scale, minmax.scale)
    loss = [gptq.output_loss(W.double() - x.dequantized(s).double(), H) for x in (r, minmax)]
    assert loss[0] < loss[1], loss
    cfg = compressed.quantization_config(s, {compressed.group_size(s, 256): {"q_proj"}}, ["lm_head"])
    assert cfg["config_groups"]["group_0"]["weights"]["observer"] == "memoryless_mse"


@pytest.mark.parametrize("name", ["INT4-G32-MSE", "INT8-MSE", "W8A8-MSE"])
@pytest.mark.parametrize("dt", ["F32", "BF16", "F16"])
def test_mse_round_to_nearest_streamed_equals_whole(name, dt):
    """Without calibration the mse observer weighs every column 1: the streamed row kernel (quantize_rows) gives
    the bytes and scales of the whole-tensor path, each scale the reference's, and less error than min-max."""
    import numpy as np
    s = compressed.get(name)
    W, _ = layer(n_out=40, n_in=128)
    W[::5, ::7] *= 8  # outliers: clipping them pays
    W = W.to(dtypes.torch_dtype(dt))
    whole = compressed.quantize(W, s, dt)
    rows, _, _ = compressed.quantize_rows(W.float().numpy(), s, dt)
    assert np.array_equal(np.asarray(rows.packed).view(np.uint8), whole.packed.numpy().view(np.uint8))
    assert torch.equal(dtypes.to_torch(np.asarray(rows.scale)), whole.scale)
    g = compressed.group_size(s, 128) or 128
    want = _mse_scales(W.view(40, 128 // g, g), torch.ones(128 // g, g), s.bits, g)
    assert torch.equal(whole.scale, want)
    base = s.name.removesuffix("-MSE")
    err = [(compressed.dequantize(p.packed, p.scale, t) - W.float()).norm()
           for p, t in ((whole, s), (compressed.quantize(W, compressed.get(base), dt), compressed.get(base)))]
    assert err[0] < err[1], err


def test_float32_close_to_float64():
    """The working precision GPTQ runs in (llm-compressor's float32) changes few integers, by one step."""
    s = compressed.get("INT4")
    W, X = layer()
    H = hessian_of(X)
    a = gptq.quantize(W, H, s, torch.float32)
    b = gptq.quantize(W, H, s, torch.float32, dtype=torch.float64)
    assert torch.equal(a.scale, b.scale)
    diff = (a.q - b.q).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    assert a.loss == pytest.approx(b.loss, rel=1e-3)


@pytest.mark.parametrize("actorder", ["static", "none"])
def test_rows_split_over_threads_change_nothing(monkeypatch, actorder):
    """The column kernel's row ranges (one per core on large matrices; forced here, uneven) give the same result."""
    s = compressed.get("INT4-G64")
    W, X = layer(n_out=50)
    H = hessian_of(X)
    one = gptq.quantize(W, H, s, torch.float32, actorder=actorder)
    monkeypatch.setattr(gptq, "ROW_WORK", 1)
    monkeypatch.setattr(gptq, "_cores", lambda: 3)
    assert gptq._row_tasks(50, 64) == 3
    split = gptq.quantize(W, H, s, torch.float32, actorder=actorder)
    assert torch.equal(one.q, split.q) and torch.equal(one.scale, split.scale) and one.loss == split.loss


def test_packed_round_trip_is_the_integers():
    s = compressed.get("INT4-G64")
    W, X = layer()
    r = gptq.quantize(W, hessian_of(X), s, torch.bfloat16)
    p = r.packed(s)
    assert torch.equal(compressed.unpack(p.packed, s), r.q)
    assert p.scale.shape == (W.shape[0], W.shape[1] // 64) and p.shape == tuple(W.shape)


@pytest.mark.parametrize("actorder", ["static", "none"])
def test_dead_and_rank_deficient_inputs(actorder):
    """Columns no token activates, and fewer tokens than columns (H singular): handled as llm-compressor does, and
    equal to the reference; with no dampening asked the factorization needs some, and says how much."""
    s = compressed.get("INT4-G64")
    W, X = layer(n_tok=40)
    X[:, [3, 100, 255]] = 0
    H = 2 * X.double().T @ X.double() / X.shape[0]
    r = gptq.quantize(W, H, s, torch.float32, actorder=actorder, dtype=torch.float64)
    q, scale = reference_gptq(W, X, 4, 64, actorder, 0.01, torch.float32)
    assert r.dead == 3 and torch.equal(r.q, q) and torch.equal(r.scale, scale)
    assert (r.q[:, [3, 100, 255]] == 0).all()
    r0 = gptq.quantize(W, H.float(), s, torch.float32, damp=0.0, actorder=actorder)
    assert r0.damp > 0 and torch.isfinite(r0.dequantized(s)).all()
    assert r0.q.min() >= s.qmin and r0.q.max() <= s.qmax


@pytest.mark.parametrize("target", ["INT4-G64", "INT8", "Q4_K", "Q4_0", "IQ4_NL"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_output_loss_from_gptqs_own_is_the_quadratic_form(target, dtype):
    """Result.output_loss (GPTQ's loss less the dampening's and the dead columns' parts: what the log prints) equals
    tr(dw H dw^T) / 2 computed by a matmul, with dead columns; a ggml grid may round a dead column's zero to a
    point that is not 0."""
    from weightsmith.quant import ggml_grid
    W, X = layer(n_tok=400)
    X[:, [3, 100, 255]] = 0
    H = hessian_of(X).to(dtype)
    if target.startswith("INT"):
        r = gptq.quantize(W, H, compressed.get(target), torch.float32, dtype=dtype)
        deq = r.dequantized(compressed.get(target))
    else:
        importance = X.double().pow(2).mean(0).float().numpy()
        r = gptq.quantize(W, H, ggml_grid.Grid(target, *W.shape, importance), actorder="none", dtype=dtype)
        deq = r.values
    want = gptq.output_loss(W.double() - deq.double(), H.double())
    assert r.dead == 3
    assert r.output_loss(W, deq) == pytest.approx(want, rel=1e-6 if dtype == torch.float64 else 1e-4)  # deq in f32


def test_bad_hessians():
    s = compressed.get("INT4")
    W, X = layer()
    H = hessian_of(X)
    H[0, 0] = float("nan")
    with pytest.raises(BadInput, match="not finite"):
        gptq.quantize(W, H, s, torch.float32)
    with pytest.raises(BadInput, match="actorder"):
        gptq.quantize(W, hessian_of(X), s, torch.float32, actorder="group")
    with pytest.raises(BadInput, match="no.*tokens|none reached"):
        gptq.Hessian(4).matrix()


# ---- whole tiny models through convert --calibrate ----------------------------------------------------------------

import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402

from conftest import assert_clean_error  # noqa: E402
from oracles import hf_logits  # noqa: E402
from test_compressed import PROJ, _args  # noqa: E402
from test_gguf_write import tok_dir  # noqa: E402,F401  (fixture: a small byte-level BPE tokenizer.json)

from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme  # noqa: E402

WORDS = ("weightsmith converts llama checkpoints between formats while the quick brown fox jumps over lazy dogs "
         "and numbers like 42 or 1999 appear").split()


def words(n, seed):
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    (d / "calib.txt").write_text(words(3000, 0))
    (d / "held.txt").write_text(words(1500, 1))
    return d


def with_tokenizer(src, tok_dir, dst):  # noqa: F811
    shutil.copytree(src, dst)
    for f in tok_dir.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize("family,dtype,type_,observer", [
    ("llama1", torch.bfloat16, "int4", None),      # 64-wide inputs get group 64, down_proj 128: two config groups
    ("llama2_70b", torch.float32, "int8", None),   # GQA 8:1, per channel
    ("llama32", torch.bfloat16, "int4", None),     # tied embeddings, rope scaling
    ("llama32", torch.bfloat16, "int4", "mse"),    # the mse observer's scales
])
def test_gptq_checkpoint_loads_and_drifts_less_than_rtn(built, tmp_path, ws, tok_dir, texts, family, dtype,  # noqa: F811
                                                        type_, observer):
    from safetensors.torch import load_file
    from weightsmith.verify import verify
    src = with_tokenizer(built.hf(family, dtype=dtype), tok_dir, tmp_path / "src")
    out, rtn = tmp_path / "gptq", tmp_path / "rtn"
    obs = ["--observer", observer] if observer else []
    r = ws("convert", src, out, "--type", type_, "--calibrate", texts / "calib.txt", "--samples", "8", "--ctx", "64",
           *obs)
    assert r.returncode == 0, r.stderr
    assert "| gptq out err" in r.stdout and "x lower" in r.stdout
    assert ws("convert", src, rtn, "--type", type_, "-q", *obs).returncode == 0

    cfg = json.loads((out / "config.json").read_text())
    QuantizationConfig.model_validate(cfg["quantization_config"])
    for d in (out, rtn):  # config.json names the observer the scales came from
        groups = json.loads((d / "config.json").read_text())["quantization_config"]["config_groups"]
        assert {g["weights"]["observer"] for g in groups.values()} == {f"memoryless_{observer or 'minmax'}"}
    sd = load_file(out / "model.safetensors")
    s = compressed.SCHEMES[type_.upper()]
    for i in range(cfg["num_hidden_layers"]):
        for p in PROJ:
            m = f"model.layers.{i}.{p}"
            parts = {k: sd[f"{m}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape")}
            got = PackedQuantizationCompressor.decompress(
                parts | {"weight_scale": parts["weight_scale"].float()},
                QuantizationScheme(targets=["Linear"], weights=_args(cfg["quantization_config"], m)))
            assert torch.equal(got["weight"], compressed.dequantize(parts["weight_packed"], parts["weight_scale"], s))
    # transformers (with compressed-tensors) computes what weightsmith's dequantized float copy computes
    deq = tmp_path / "deq"
    assert ws("convert", out, deq, "--type", "f32", "-q").returncode == 0
    assert (hf_logits(out) - hf_logits(deq)).abs().max() <= 1e-5
    # calibrated drift on held-out text is lower than round-to-nearest's
    kg = verify(src, out, text_file=texts / "held.txt", ctx=64)["mean_kld"]
    kr = verify(src, rtn, text_file=texts / "held.txt", ctx=64)["mean_kld"]
    assert kg < 0.8 * kr, (kg, kr)


def test_group_size_without_calibration_matches_compressed_tensors(built, tmp_path, ws):
    from test_compressed import _check_against_compressed_tensors
    src = built.hf("llama2_70b")
    out = tmp_path / "g32"
    r = ws("convert", src, out, "--type", "int4", "--group-size", "32")
    assert r.returncode == 0 and "type INT4-G32" in r.stdout, r.stderr
    _check_against_compressed_tensors(src, out)
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert [g["weights"]["group_size"] for g in groups.values()] == [32]


def test_gptq_bad_input(built, tmp_path, ws, tok_dir, texts):  # noqa: F811
    src = with_tokenizer(built.hf("llama1"), tok_dir, tmp_path / "src")
    area = tmp_path / "area"
    area.mkdir()
    (tmp_path / "short.txt").write_text("too short")
    cases = [
        (["--type", "int4", "--method", "gptq"], "--calibrate"),
        (["--type", "int4", "--calibrate", tmp_path / "short.txt", "--ctx", "64"], "fewer than one"),
        (["--type", "int4", "--calibrate", tmp_path / "missing.txt"], "no such file"),
        (["--type", "int4", "--group-size", "24"], "power of two"),
        (["--type", "f16", "--group-size", "64"], "int4 / int8"),
        (["--type", "w8a8", "--calibrate", texts / "calib.txt"], "--calibrate"),
        (["--type", "fp8", "--observer", "mse"], "integer schemes only"),
        (["--type", "q4_k_m", "--observer", "mse"], "--observer applies"),
        (["--type", "f16", "--observer", "minmax"], "--observer applies"),
    ]
    for args, msg in cases:
        assert_clean_error(ws("convert", src, area / "out", *args), area, msg)
    # a source without a tokenizer cannot be calibrated
    assert_clean_error(ws("convert", built.hf("llama1"), area / "out", "--type", "int4", "--calibrate",
                          texts / "calib.txt"), area, "tokenizer")
