"""verify: drift of a candidate checkpoint against a reference, llama-perplexity --kl-divergence style, with a
layer-streaming reference forward pass; generate: greedy decoding with the same forward pass."""
import torch

from ..errors import BadInput
from ..formats import open_checkpoint
from . import metrics, text
from .model import Model, Weights, lockstep, logits

DEFAULT_CTX = 512


def check_compatible(ref, cand):
    for field in ("vocab_size", "n_layers", "dim", "n_heads", "n_kv_heads"):
        a, b = getattr(ref.config, field), getattr(cand.config, field)
        if a != b:
            raise BadInput(f"the checkpoints are different models: reference {field}={a}, candidate {field}={b}")


def start_token(ck) -> int:
    bos = ck.config.bos_token_id
    if bos is None and ck.vocab is not None:
        bos = ck.vocab.bos_id
    return int(bos) if isinstance(bos, int) else 0


def verify(reference, candidate, text_file=None, ctx: int = DEFAULT_CTX, device=None, seed: int = 0) -> dict:
    if ctx < 4:
        raise BadInput(f"--ctx {ctx}: need at least 4 tokens per chunk (the second half is scored)")
    ref, cand = open_checkpoint(reference), open_checkpoint(candidate)
    check_compatible(ref, cand)
    if text_file is not None:
        tok = text.TextTokenizer(ref)
        tokens = text.chunks(tok.encode(text.read_text(text_file)), ctx, tok.bos_id if tok.add_bos else None)
    else:  # no text: one chunk the reference model writes itself (whole model in memory)
        tokens = text.sample(Model(ref, device), ctx, start_token(ref), seed)
    return compare(ref, cand, tokens, device)


@torch.no_grad()
def compare(ref, cand, tokens: torch.Tensor, device=None) -> dict:
    """Statistics over tokens [n_chunks, ctx]: positions ctx/2 .. ctx-2 of each chunk predict the next token,
    as llama-perplexity scores them."""
    models = [Weights(ref, device), Weights(cand, device)]
    hs, drift = lockstep(models, tokens)
    first = tokens.shape[1] // 2
    heads = [m.head() for m in models]  # loaded once, after the last block is gone
    acc = metrics.Accumulator()
    for c in range(tokens.shape[0]):
        lr = logits(hs[0][c, first:-1], heads[0], ref.config)
        lc = logits(hs[1][c, first:-1], heads[1], cand.config)
        acc.add(lr, lc, tokens[c, first + 1:])
    r = acc.result()
    r.update(n_chunks=tokens.shape[0], ctx=tokens.shape[1],
             layers=[{"layer": i, "rel_err": d[0]} for i, d in enumerate(drift)])
    return r


@torch.no_grad()
def stream_logits(ck, tokens: torch.Tensor, device=None) -> torch.Tensor:
    """Logits of one checkpoint over tokens [n_chunks, ctx], one block in memory at a time."""
    w = Weights(ck, device)
    (h,), _ = lockstep([w], tokens)
    return logits(h, w.head(), ck.config)


@torch.no_grad()
def greedy(model: Model, ids: list[int], max_tokens: int, eos=None) -> list[int]:
    """Argmax decoding with the model's KV cache; stops after max_tokens or at an end-of-sequence token."""
    stop = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    model.reset()
    out = []
    logits_ = model.forward(torch.tensor([ids]))
    while len(out) < max_tokens:
        out.append(int(logits_[0, -1].argmax()))
        if out[-1] in stop:
            break
        logits_ = model.forward(torch.tensor([[out[-1]]]))
    return out


def generate(path, prompt: str, max_tokens: int = 32, device=None) -> str:
    ck = open_checkpoint(path)
    tok = text.TextTokenizer(ck)
    ids = tok.encode(prompt)
    eos = ck.config.eos_token_id if ck.config.eos_token_id is not None else tok.eos_id
    new = greedy(Model(ck, device), ids, max_tokens, eos)
    # decode prompt and continuation together: SentencePiece decoders strip a leading space from a lone piece
    return tok.decode(ids + new)[len(tok.decode(ids)):]
