"""The tokenizer carried across formats, in one internal form (GGUF's vocabulary model).

Sources: a GGUF vocabulary (tokenizer.ggml.*), an HF byte-level BPE tokenizer.json (+ tokenizer_config.json), a
SentencePiece tokenizer.model (Llama 1/2, GGUF model "llama") and Meta's Llama 3 tiktoken tokenizer.model (GGUF
model "gpt2", pre-tokenizer "llama-bpe").
Targets: GGUF key/values; HF tokenizer.json + tokenizer_config.json (BPE) or tokenizer.model + tokenizer_config.json
(SentencePiece); Meta's tokenizer.model in whichever of its two forms the vocabulary has.
The pre-tokenizer is the easy thing to get wrong: llama.cpp knows it only by name (tokenizer.ggml.pre), HF
only by its JSON. PRE_TOKENIZERS pairs the two; anything else is an error that says how to name it.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput, Unsupported

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The regex Llama 3's tokenizer.json splits with (llama.cpp: LLAMA_VOCAB_PRE_TYPE_LLAMA3)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


# llama.cpp pre-tokenizer name -> the HF pre_tokenizer JSON that splits text the same way
PRE_TOKENIZERS = {
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        _byte_level(False)]},
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _byte_level(True)]},
    "gpt-2": _byte_level(True),
}
# llama.cpp reads these names as the same pre-tokenizer
PRE_ALIASES = {"llama3": "llama-bpe", "llama-v3": "llama-bpe", "gpt2": "gpt-2"}


def _canon_pre(pre: dict) -> str:
    """Fingerprint of an HF pre_tokenizer: its JSON without the flags that do not change how text splits."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("trim_offsets", "prepend_scheme")}
        if isinstance(d, list):
            return [strip(x) for x in d]
        return d
    if isinstance(pre, dict) and pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    return json.dumps(strip(pre), sort_keys=True)


_PRE_BY_JSON = {_canon_pre(v): k for k, v in PRE_TOKENIZERS.items()}


@dataclass
class Vocab:
    model: str                          # llama.cpp's names: "gpt2" byte-level BPE, "llama" SentencePiece
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    scores: list[float] | None = None
    add_space_prefix: bool | None = None  # SentencePiece's leading "▁"; GGUF files record it even for BPE

    def padded(self, n: int) -> "Vocab":
        """The vocabulary grown to the embedding's row count, as llama.cpp's converter pads it."""
        if len(self.tokens) > n:
            raise BadInput(f"tokenizer has {len(self.tokens)} tokens but the model's vocabulary is {n}")
        extra = n - len(self.tokens)
        if not extra:
            return self
        v = Vocab(**{**self.__dict__})
        v.tokens = self.tokens + [f"[PAD{i}]" for i in range(len(self.tokens), n)]
        v.types = self.types + [UNUSED] * extra
        if self.scores is not None:
            v.scores = self.scores + [-1000.0] * extra
        return v


# ---- GGUF --------------------------------------------------------------------------------------------------

# The tokenizer keys of a GGUF file and the types their values must have (a list type: of what items).
GGUF_KEY_TYPES = {
    "tokenizer.ggml.model": str, "tokenizer.ggml.pre": str, "tokenizer.chat_template": str,
    "tokenizer.ggml.tokens": (list, str), "tokenizer.ggml.merges": (list, str), "tokenizer.ggml.token_type": (list, int),
    "tokenizer.ggml.scores": (list, (int, float)),
    "tokenizer.ggml.bos_token_id": int, "tokenizer.ggml.eos_token_id": int, "tokenizer.ggml.unknown_token_id": int,
    "tokenizer.ggml.padding_token_id": int,
    "tokenizer.ggml.add_bos_token": bool, "tokenizer.ggml.add_eos_token": bool, "tokenizer.ggml.add_space_prefix": bool,
}


def _check_gguf_types(kv: dict, source: str):
    for key, kind in GGUF_KEY_TYPES.items():
        v = kv.get(key)
        kind, item = kind if isinstance(kind, tuple) else (kind, None)
        if v is None:
            continue
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
        if ok and item is not None:
            ok = all(isinstance(x, item) and not isinstance(x, bool) for x in v)
        if not ok:
            raise BadInput(f"{source}: {key} holds a {type(v).__name__}, not the {kind.__name__}"
                           f"{' of ' + getattr(item, '__name__', 'numbers') if item else ''} GGUF specifies")
    n = len(kv.get("tokenizer.ggml.tokens") or [])
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in kv and len(kv[key]) != n:
            raise BadInput(f"{source}: {key} has {len(kv[key])} entries for {n} tokens")
    for key in ("bos", "eos", "unknown", "padding"):
        i = kv.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and n and not 0 <= i < n:
            raise BadInput(f"{source}: tokenizer.ggml.{key}_token_id {i} is not one of the {n} tokens")
    if any(" " not in m for m in kv.get("tokenizer.ggml.merges") or []):
        raise BadInput(f"{source}: tokenizer.ggml.merges has an entry that is not two tokens joined by a space")


def from_gguf(kv: dict, source: str) -> Vocab | None:
    model = kv.get("tokenizer.ggml.model")
    if model is None:
        return None
    _check_gguf_types(kv, source)
    if model not in ("gpt2", "llama"):
        raise Unsupported(f"{source}: tokenizer.ggml.model {model!r}: weightsmith carries 'gpt2' (byte-level BPE) and "
                          f"'llama' (SentencePiece) vocabularies")
    pre = PRE_ALIASES.get(kv.get("tokenizer.ggml.pre", "default"), kv.get("tokenizer.ggml.pre", "default"))
    tokens = kv.get("tokenizer.ggml.tokens") or []
    return Vocab(
        model=model, tokens=list(tokens), types=list(kv.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)),
        merges=list(kv.get("tokenizer.ggml.merges") or []), pre=pre, scores=kv.get("tokenizer.ggml.scores"),
        bos_id=kv.get("tokenizer.ggml.bos_token_id"), eos_id=kv.get("tokenizer.ggml.eos_token_id"),
        unk_id=kv.get("tokenizer.ggml.unknown_token_id"), pad_id=kv.get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(kv.get("tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(kv.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=kv.get("tokenizer.chat_template"), add_space_prefix=kv.get("tokenizer.ggml.add_space_prefix"))


def to_gguf(writer, vocab: Vocab):
    """Add the vocabulary's keys to a gguf.GGUFWriter."""
    if vocab.model == "gpt2" and vocab.pre not in PRE_TOKENIZERS:
        raise Unsupported(f"pre-tokenizer {vocab.pre!r} is not one weightsmith can carry ({', '.join(PRE_TOKENIZERS)})")
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for fn, value in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                      (writer.add_unk_token_id, vocab.unk_id), (writer.add_pad_token_id, vocab.pad_id)):
        if value is not None:
            fn(int(value))
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ---- Hugging Face ------------------------------------------------------------------------------------------

def _token_text(t) -> str | None:
    return t.get("content") if isinstance(t, dict) else t


def from_hf(files: dict[str, Path], config, source: str, pre_name: str | None = None) -> Vocab | None:
    if "tokenizer.json" not in files:
        return None
    try:
        tj = json.loads(files["tokenizer.json"].read_text(encoding="utf-8"))
        tc = json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8")) \
            if "tokenizer_config.json" in files else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{source}: tokenizer files are not valid JSON ({e})") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise Unsupported(f"{source}: tokenizer.json is not a byte-level BPE; only those are carried to GGUF so far")
    pre = pre_name or _PRE_BY_JSON.get(_canon_pre(tj.get("pre_tokenizer")))
    if pre is None:
        raise Unsupported(f"{source}: tokenizer.json's pre-tokenizer is not one llama.cpp is known to share "
                          f"({', '.join(PRE_TOKENIZERS)}); name it with --tokenizer-pre NAME if you know it")
    pre = PRE_ALIASES.get(pre, pre)
    ids = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for text, t in added.items():
        ids[text] = t["id"]
    n = max(ids.values()) + 1
    tokens, types = [None] * n, [NORMAL] * n
    for text, i in ids.items():
        tokens[i] = text
        if text in added:
            types[i] = CONTROL if added[text].get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def tid(key, fallback):
        text = _token_text(tc.get(key))
        return ids.get(text, fallback) if text is not None else fallback

    template = tc.get("chat_template")
    if "chat_template.jinja" in files:
        template = files["chat_template.jinja"].read_text(encoding="utf-8")
    return Vocab(model="gpt2", tokens=tokens, types=types, merges=merges, pre=pre,
                 bos_id=tid("bos_token", config.bos_token_id), eos_id=tid("eos_token", _first(config.eos_token_id)),
                 unk_id=tid("unk_token", None), pad_id=tid("pad_token", None),
                 add_bos=bool(tc.get("add_bos_token", _post_adds_bos(tj))), add_eos=bool(tc.get("add_eos_token", False)),
                 chat_template=template if isinstance(template, str) else None)


def _first(x):
    return x[0] if isinstance(x, list) and x else x


def _post_adds_bos(tj: dict) -> bool:
    post = json.dumps(tj.get("post_processor") or {})
    return "TemplateProcessing" in post and '"SpecialToken"' in post.split('"single"')[-1].split("]")[0]


def _hf_config(vocab: Vocab, max_len: int, cls: str) -> dict:
    cfg = {"tokenizer_class": cls, "model_max_length": max_len, "clean_up_tokenization_spaces": False,
           "add_bos_token": vocab.add_bos, "add_eos_token": vocab.add_eos}
    for key, i in (("bos_token", vocab.bos_id), ("eos_token", vocab.eos_id), ("unk_token", vocab.unk_id),
                   ("pad_token", vocab.pad_id)):
        if i is not None:
            cfg[key] = vocab.tokens[i]
    if vocab.chat_template:
        cfg["chat_template"] = vocab.chat_template
    return cfg


def split_merges(pieces: dict, priority) -> list[tuple]:
    """BPE merges from a vocabulary that has no merge list (SentencePiece scores, tiktoken ranks): every split of
    every piece into two pieces of the vocabulary, ordered by the merged piece's priority (lowest first), ties in
    vocabulary order. This is how transformers' converters derive the tokenizer.json merges llama.cpp also uses."""
    merges = []
    for piece, i in pieces.items():
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in pieces and piece[k:] in pieces]
        local.sort(key=lambda p: (pieces[p[0]], pieces[p[1]]))
        merges += [(priority(piece, i), a, b) for a, b in local]
    merges.sort(key=lambda m: m[0])  # stable
    return [(a, b) for _, a, b in merges]


def _sentencepiece_merges(vocab: Vocab) -> list[tuple[str, str]]:
    """SentencePiece merges the pair whose result scores highest."""
    ids = {t: i for i, t in enumerate(vocab.tokens) if vocab.types[i] == NORMAL}
    return split_merges(ids, lambda piece, i: -vocab.scores[i])


def to_hf(vocab: Vocab, out: Path, max_len: int):
    """tokenizer.json (+ tokenizer_config.json) that transformers' AutoTokenizer loads. A SentencePiece vocabulary
    also gets its tokenizer.model, as Llama 2 repositories ship both."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    from ..formats.common import write_json  # here: formats imports this module
    special = {i for i, t in enumerate(vocab.types) if t in (CONTROL, UNKNOWN)}
    user = {i for i, t in enumerate(vocab.types) if t == USER_DEFINED}
    base = {t: i for i, t in enumerate(vocab.tokens)}  # added tokens stay in the model's vocab too, as HF has them
    if vocab.model == "llama":
        unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
        tk = Tokenizer(models.BPE(vocab=base, merges=_sentencepiece_merges(vocab), unk_token=unk, fuse_unk=True,
                                  byte_fallback=BYTE in vocab.types))
        steps = [normalizers.Replace(" ", "\u2581")]
        if vocab.add_space_prefix is not False:
            steps.insert(0, normalizers.Prepend("\u2581"))
        tk.normalizer = normalizers.Sequence(steps)
        tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1 if vocab.add_space_prefix is not False else 0, 0)])
        (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
    else:
        if vocab.pre not in PRE_TOKENIZERS:
            raise Unsupported(f"pre-tokenizer {vocab.pre!r} has no HF equivalent weightsmith knows "
                              f"({', '.join(PRE_TOKENIZERS)})")
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
        try:
            tk = Tokenizer(models.BPE(vocab=base, merges=merges, ignore_merges=vocab.pre == "llama-bpe"))
        except Exception as e:  # tokenizers raises plain Exception: a merge of tokens the vocabulary lacks
            raise BadInput(f"the vocabulary's merges do not fit its tokens ({e})") from None
        tk.pre_tokenizer = Tokenizer.from_str(json.dumps(_skeleton(PRE_TOKENIZERS[vocab.pre]))).pre_tokenizer
        tk.decoder = decoders.ByteLevel()
    # added tokens keep their ids: tokenizers reuses the model's id for a token it already has
    for i in sorted(special | user):
        tk.add_tokens([AddedToken(vocab.tokens[i], special=i in special, normalized=False)])
    for i in sorted(special | user):
        if tk.token_to_id(vocab.tokens[i]) != i:
            raise Unsupported(f"added token {vocab.tokens[i]!r} cannot keep id {i} in tokenizer.json")
    name = {i: vocab.tokens[i] for i in (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) if i is not None}
    if vocab.add_bos and vocab.bos_id is not None:
        bos = name[vocab.bos_id]
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, vocab.bos_id)])
    elif vocab.model == "gpt2":
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", _hf_config(vocab, max_len, "PreTrainedTokenizerFast"))


def _skeleton(pre: dict) -> dict:
    """The smallest tokenizer.json carrying `pre`, to let the tokenizers library build the pre-tokenizer object."""
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "vocab": {}, "merges": []}}


def vocab_for(ck, files: dict[str, Path] | None, pre_name: str | None = None) -> Vocab | None:
    """The vocabulary to write: from the tokenizer files given (--tokenizer), else the checkpoint's own.
    A tokenizer.model (SentencePiece or tiktoken) is the tokenizer's own definition and wins over a tokenizer.json
    derived from it."""
    files = ck.tokenizer_files if files is None else files
    if "tokenizer.model" in files:
        return from_tokenizer_model(files["tokenizer.model"], files, ck.config)
    if "tokenizer.json" in files:
        return from_hf(files, ck.config, str(files["tokenizer.json"]), pre_name)
    return ck.vocab


# ---- tokenizer.model: SentencePiece (Llama 1/2) or tiktoken ranks (Llama 3) ---------------------------------

def _is_tiktoken(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(256)
    first = head.split(b"\n", 1)[0].split()
    return len(first) == 2 and first[1].isdigit() and all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                          b"0123456789+/=" for c in first[0])


def from_tokenizer_model(path: Path, files: dict, config) -> Vocab:
    vocab = from_tiktoken(path) if _is_tiktoken(path) else from_sentencepiece(path)
    tc = {}
    if "tokenizer_config.json" in files:  # an HF directory's settings (chat template) apply to its tokenizer.model
        try:
            tc = json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInput(f"{files['tokenizer_config.json']}: not valid JSON ({e})") from None
    if isinstance(tc.get("chat_template"), str):
        vocab.chat_template = tc["chat_template"]
    return vocab


def _sp_proto():
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # sentencepiece ships the proto module; protobuf runs it
        raise Unsupported("reading or writing a SentencePiece tokenizer.model needs the sentencepiece and protobuf "
                          "packages") from None
    return sentencepiece_model_pb2


def from_sentencepiece(path: Path) -> Vocab:
    pb = _sp_proto()
    m = pb.ModelProto()
    try:
        m.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError, or garbage
        raise BadInput(f"{path}: not a SentencePiece model ({type(e).__name__})") from None
    if not m.pieces:
        raise BadInput(f"{path}: SentencePiece model has no pieces")
    if m.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise Unsupported(f"{path}: SentencePiece model type {m.trainer_spec.model_type} (Llama uses BPE)")
    ts = m.trainer_spec

    def opt(i):
        return i if i >= 0 else None
    # SentencePiece piece types use llama.cpp's token type numbers (NORMAL=1 ... BYTE=6)
    return Vocab(model="llama", tokens=[p.piece for p in m.pieces], types=[int(p.type) for p in m.pieces],
                 scores=[float(p.score) for p in m.pieces], merges=[], pre="default",
                 bos_id=opt(ts.bos_id), eos_id=opt(ts.eos_id), unk_id=opt(ts.unk_id), pad_id=opt(ts.pad_id),
                 add_bos=True, add_eos=False, add_space_prefix=bool(m.normalizer_spec.add_dummy_prefix))


def sentencepiece_model(vocab: Vocab) -> bytes:
    """A SentencePiece BPE model proto that encodes as the vocabulary does (scores order the merges)."""
    pb = _sp_proto()
    m = pb.ModelProto()
    scores = vocab.scores or [0.0] * len(vocab.tokens)
    for text, score, kind in zip(vocab.tokens, scores, vocab.types):
        p = m.pieces.add()
        p.piece, p.score, p.type = text, score, kind
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(vocab.tokens)
    ts.byte_fallback = BYTE in vocab.types
    for field_, value in (("unk_id", vocab.unk_id), ("bos_id", vocab.bos_id), ("eos_id", vocab.eos_id),
                          ("pad_id", vocab.pad_id)):
        setattr(ts, field_, -1 if value is None else value)
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = vocab.add_space_prefix if vocab.add_space_prefix is not None else True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m.SerializeToString()


# Meta's Llama 3 code appends 256 special tokens to the tiktoken ranks (llama_models.llama3.tokenizer)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA3_N_SPECIAL = 256


def llama3_special_tokens() -> list[str]:
    return LLAMA3_SPECIAL + [f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_N_SPECIAL - len(LLAMA3_SPECIAL))]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


BYTE_CHARS = _bytes_to_unicode()
CHAR_BYTES = {c: b for b, c in BYTE_CHARS.items()}


def _to_text(b: bytes) -> str:
    return "".join(BYTE_CHARS[x] for x in b)


def _to_bytes(text: str) -> bytes | None:
    try:
        return bytes(CHAR_BYTES[c] for c in text)
    except KeyError:
        return None


def from_tiktoken(path: Path) -> Vocab:
    import base64
    import binascii
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (IndexError, ValueError, binascii.Error):
            raise BadInput(f"{path}:{n}: expected 'base64-token rank', found {line[:60]!r}") from None
    by_rank = sorted(ranks, key=ranks.get)
    if [ranks[t] for t in by_rank] != list(range(len(by_rank))):
        raise BadInput(f"{path}: token ranks are not 0..{len(by_rank) - 1}")
    merges = [f"{_to_text(a)} {_to_text(b)}" for a, b in split_merges(ranks, lambda piece, rank: rank)]
    special = llama3_special_tokens()
    n = len(by_rank)
    return Vocab(model="gpt2", tokens=[_to_text(t) for t in by_rank] + special,
                 types=[NORMAL] * n + [CONTROL] * len(special), merges=merges, pre="llama-bpe",
                 bos_id=n + special.index("<|begin_of_text|>"), eos_id=n + special.index("<|end_of_text|>"),
                 add_bos=True)


def to_tiktoken(vocab: Vocab) -> bytes:
    """Meta's Llama 3 tokenizer.model: base64 token bytes and rank per line, special tokens left to the code."""
    import base64
    lines = []
    for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types)):
        if kind in (CONTROL, UNUSED):
            continue
        b = _to_bytes(text)
        if b is None or kind != NORMAL:
            raise Unsupported(f"token {i} {text!r} has no tiktoken spelling")
        lines.append(f"{base64.b64encode(b).decode()} {i}")
    return ("\n".join(lines) + "\n").encode()


def to_meta(vocab: Vocab, out: Path):
    """tokenizer.model as Meta's code reads it: SentencePiece for Llama 1/2, tiktoken ranks for Llama 3."""
    if vocab.model == "llama":
        (out / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
    elif vocab.pre == "llama-bpe":
        (out / "tokenizer.model").write_bytes(to_tiktoken(vocab))
    else:
        raise Unsupported(f"a {vocab.model}/{vocab.pre} vocabulary has no Meta tokenizer.model form (Meta's code reads "
                          f"SentencePiece or Llama 3 tiktoken); HF and GGUF outputs carry it")
