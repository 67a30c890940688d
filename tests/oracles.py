"""Outside oracles: transformers' LlamaForCausalLM and Meta's reference model (llama-models), driven in
subprocesses for model parallelism. Nothing here uses weightsmith."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from families import ROPE_31, is_llama3, is_tied, meta_params

HERE = Path(__file__).parent
TOKENS = [[1, 5, 77, 300, 9, 31999, 2, 64, 1000, 12]]


def meta_ffn(p):
    hidden = int(2 * 4 * p["dim"] / 3)
    if p.get("ffn_dim_multiplier"):
        hidden = int(p["ffn_dim_multiplier"] * hidden)
    return p["multiple_of"] * ((hidden + p["multiple_of"] - 1) // p["multiple_of"])


def hf_config(family: str, dtype=torch.float32):
    from transformers import LlamaConfig
    p = meta_params(family)
    kw = dict(hidden_size=p["dim"], intermediate_size=meta_ffn(p), num_hidden_layers=p["n_layers"],
              num_attention_heads=p["n_heads"], num_key_value_heads=p.get("n_kv_heads", p["n_heads"]),
              vocab_size=p["vocab_size"], rms_norm_eps=p["norm_eps"], rope_theta=p.get("rope_theta", 10000.0),
              tie_word_embeddings=is_tied(family), dtype=dtype,
              max_position_embeddings=131072 if p.get("use_scaled_rope") else 8192)
    if p.get("use_scaled_rope"):
        kw["rope_scaling"] = {"rope_type": "llama3", **ROPE_31}
    if is_llama3(family):
        kw.update(bos_token_id=128000, eos_token_id=128001)
    return LlamaConfig(**kw)


def make_hf(family: str, out: Path, dtype=torch.float32, seed=0, **save_kw) -> Path:
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(family, dtype))
    with torch.no_grad():  # larger than the default 0.02 init so logits carry signal through every layer
        for name, prm in model.named_parameters():
            prm.copy_(1 + 0.1 * torch.randn_like(prm) if prm.dim() == 1 else torch.randn_like(prm) / prm.shape[-1] ** 0.5)
    model.to(dtype).save_pretrained(out, **save_kw)
    return out


def hf_logits(path: Path, tokens=TOKENS) -> torch.Tensor:
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits[0].float()


def hf_state(path: Path) -> dict:
    """Every tensor of an HF directory, by name, as stored."""
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        sd.update(load_file(f))
    return sd


def meta_state(path: Path) -> list[dict]:
    return [torch.load(f, weights_only=True) for f in sorted(Path(path).glob("consolidated.*.pth"))]


def _meta(cmd: str, path: Path, family_or_none: str, mp: int, extra=()):
    env = dict(os.environ, PYTHONPATH=str(HERE))
    r = subprocess.run([sys.executable, str(HERE / "meta_ref.py"), cmd, str(path), family_or_none, str(mp), *extra],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"meta_ref {cmd} failed:\n{r.stdout}\n{r.stderr}")


def make_meta(family: str, out: Path, mp: int = 1, seed=0) -> Path:
    """A Meta checkpoint written by Meta's reference model (llama-models), mp model-parallel ranks."""
    out.mkdir(parents=True, exist_ok=True)
    _meta("build", out, family, mp, [str(seed)])
    return out


def meta_logits(path: Path, tokens=TOKENS) -> torch.Tensor:
    """Logits of Meta's reference model loading `path` (strict state-dict load, all its ranks)."""
    mp = len(list(Path(path).glob("consolidated.*.pth")))
    out = Path(path).parent / f"logits-{Path(path).name}.pt"
    _meta("logits", path, "-", mp, [str(out), json.dumps(tokens)])
    return torch.load(out, weights_only=True)[0].float()
