"""llama.cpp (llama-cpp-python) as an oracle: logits, tokenization and greedy generation from a GGUF file."""
import numpy as np
import torch

HARD_TEXTS = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "  leading spaces and\ttabs\n\nnewlines\r\n",
    "café naïve Ærø façade", "日本語のテキストと中文", "emoji 🤗🚀 done 👍🏽", "def f(x):\n    return x**2  # code {}[]",
    "numbers 1234567 and 3.14159, 1,000,000", "a  b   c    d     e", "can't won't I'm they'll we'd",
    "<|im_start|>user\nhi<|im_end|>", "<s>special</s> in text",
]


def _no_extra_buffer_types():
    """llama.cpp built natively on an AMX machine repacks quantized weights for AMX tiles, and that path segfaults
    in this sandbox (seen: ggml_backend_amx_mul_mat, SIGSEGV). Loading without extra buffer types uses the
    ordinary CPU kernels, which is also what an oracle should use."""
    from llama_cpp import llama_cpp as lc
    default = lc.llama_model_default_params
    if getattr(default, "_weightsmith", False):
        return

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    params._weightsmith = True
    lc.llama_model_default_params = params


def load(path, **kw):
    from llama_cpp import Llama
    _no_extra_buffer_types()
    return Llama(model_path=str(path), verbose=False, n_threads=2, **kw)


def logits(path, ids) -> torch.Tensor:
    llm = load(path, n_ctx=64, logits_all=True)
    llm.eval(ids)
    return torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float64)


def tokenize(path, text: str) -> list[int]:
    return load(path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)


def greedy(path, ids, n) -> list[int]:
    """Argmax decoding over llama.cpp's own logits, one token at a time (its KV cache carries the context)."""
    llm = load(path, n_ctx=128, logits_all=True)
    llm.eval(list(ids))
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def max_kld(ref: torch.Tensor, cand: torch.Tensor) -> float:
    lp, lq = ref.double().log_softmax(-1), cand.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).max().item()


def quantize(src, dst, ftype: int, nthread: int = 2, output_type: str | None = None, token_embd_type: str | None = None,
             tensor_types=(), pure: bool = False, leave_output: bool = False, imatrix: dict | None = None,
             imatrix_file: str = "", datasets=(), chunk_count: int = -1):
    """llama-quantize itself (llama_model_quantize); its options as llama-quantize's command line sets them:
    --output-tensor-type, --token-embedding-type, --tensor-type (pattern, type) pairs, --pure, --leave-output-tensor.

    imatrix: name -> float32 importance (what tools/quantize's load_imatrix makes of a file: sums / count), handed
    over as its array of llama_model_imatrix_data ending in a null name; with it, the quantize.imatrix.* kv
    overrides tools/quantize adds from the file's name, its datasets and its chunk count (above 0 only). An empty
    dict: no imatrix at all, as tools/quantize passes none."""
    import ctypes

    import gguf
    from llama_cpp import llama_cpp as lc
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    if output_type:
        params.output_tensor_type = gguf.GGMLQuantizationType[output_type.upper()].value
    if token_embd_type:
        params.token_embedding_type = gguf.GGMLQuantizationType[token_embd_type.upper()].value
    params.pure = pure
    params.quantize_output_tensor = not leave_output
    keep = []  # every ctypes buffer a pointer in params points into, alive until llama_model_quantize returns
    if tensor_types:  # terminated by a null pattern, as tools/quantize passes them
        overrides = (lc.llama_model_tensor_override * (len(tensor_types) + 1))(
            *[lc.llama_model_tensor_override(p.encode(), gguf.GGMLQuantizationType[t.upper()].value)
              for p, t in tensor_types], lc.llama_model_tensor_override(None, 0))
        keep.append(overrides)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(lc.llama_model_tensor_override))
    if imatrix:
        arrays = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in imatrix.items()}
        names = {name: name.encode() for name in arrays}
        data = (lc.llama_model_imatrix_data * (len(arrays) + 1))(
            *[lc.llama_model_imatrix_data(names[k], a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), a.size)
              for k, a in arrays.items()], lc.llama_model_imatrix_data(None, None, 0))
        keep += [arrays, names, data]
        params.imatrix = ctypes.cast(data, ctypes.POINTER(lc.llama_model_imatrix_data))
        kv = [_kv_str("quantize.imatrix.file", imatrix_file)]
        if datasets:
            kv.append(_kv_str("quantize.imatrix.dataset", datasets[0]))
        kv.append(_kv_int("quantize.imatrix.entries_count", len(arrays)))
        if chunk_count > 0:
            kv.append(_kv_int("quantize.imatrix.chunks_count", chunk_count))
        kvs = (lc.llama_model_kv_override * (len(kv) + 1))(*kv)  # the last one zeroed: an empty key ends the list
        keep.append(kvs)
        params.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(lc.llama_model_kv_override))
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed ({rc})"


def _kv_str(key: str, value: str):
    """A string kv override as tools/quantize fills one: strncpy of 127 bytes, the 128th a NUL."""
    from llama_cpp import llama_cpp as lc
    o = lc.llama_model_kv_override()
    o.key = key.encode()
    o.tag = lc.LLAMA_KV_OVERRIDE_TYPE_STR
    o.value.val_str = value.encode()[:127]
    return o


def _kv_int(key: str, value: int):
    from llama_cpp import llama_cpp as lc
    o = lc.llama_model_kv_override()
    o.key = key.encode()
    o.tag = lc.LLAMA_KV_OVERRIDE_TYPE_INT
    o.value.val_i64 = value
    return o
