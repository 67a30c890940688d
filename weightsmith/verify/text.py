"""Tokens to evaluate: a text file tokenized by the reference checkpoint's own tokenizer and cut into chunks the
way llama-perplexity cuts them, or a sequence sampled from the reference model."""
import tempfile
from pathlib import Path

import torch

from ..convert.tokenizer import to_hf, vocab_for
from ..errors import BadInput


class TextTokenizer:
    """The checkpoint's tokenizer (whatever form it is stored in) run by the tokenizers library, through the same
    tokenizer.json writer convert uses."""

    def __init__(self, ck):
        from tokenizers import Tokenizer
        vocab = vocab_for(ck, None)
        if vocab is None:
            raise BadInput(f"{ck.path}: the checkpoint has no tokenizer (no tokenizer.json / tokenizer.model / GGUF "
                           f"vocabulary) to cut text into tokens with; add the tokenizer files to it")
        with tempfile.TemporaryDirectory() as d:
            to_hf(vocab, Path(d), ck.config.max_seq_len)
            self.tk = Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.add_bos = bool(vocab.add_bos) and vocab.bos_id is not None

    def encode(self, text: str) -> list[int]:
        """Token ids, with BOS first when the vocabulary says to add it (llama.cpp's common_tokenize(.., true))."""
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if self.add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return self.tk.decode(ids, skip_special_tokens=False)


def read_text(path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{p}: no such file") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def chunks(ids: list[int], ctx: int, bos_id: int | None) -> torch.Tensor:
    """[n_chunks, ctx] as llama-perplexity evaluates them: consecutive ctx-token slices (the remainder dropped),
    each one's first token replaced by BOS when the vocabulary adds BOS (bos_id not None)."""
    n = len(ids) // ctx
    if n < 1:
        raise BadInput(f"the text tokenizes to {len(ids)} tokens, fewer than one --ctx {ctx} chunk")
    t = torch.tensor(ids[: n * ctx], dtype=torch.long).view(n, ctx)
    if bos_id is not None:
        t[:, 0] = bos_id
    return t


@torch.no_grad()
def sample(model, n: int, start: int, seed: int = 0) -> torch.Tensor:
    """[1, n] tokens: `start`, then n-1 tokens drawn from the model's own distribution (temperature 1) with a
    seeded generator, so the same checkpoint always gives the same sequence."""
    gen = torch.Generator().manual_seed(seed)
    model.reset()
    out = [start]
    logits = model.forward(torch.tensor([[start]]))
    while len(out) < n:
        probs = logits[0, -1].double().softmax(-1).cpu()
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
        logits = model.forward(torch.tensor([[out[-1]]]))
    return torch.tensor([out])
