"""libggml's reference quantizer, ggml_quantize_chunk, called through ctypes from llama-cpp-python's
libggml-base.so, with or without an importance matrix: the oracle for every quantized type's bytes."""
import ctypes
import importlib.util
from pathlib import Path

import numpy as np


def _lib():
    libdir = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    lib = ctypes.CDLL(str(libdir / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


LIB = _lib()


def quantize(x: np.ndarray, type_name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml's bytes of rows x [rows, n]; imatrix: float32 [n], the quant_weights llama-quantize passes."""
    import gguf
    qtype = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.zeros((rows, n // block * size), dtype=np.uint8)
    LIB.ggml_quantize_init(int(qtype))
    w = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    assert w is None or w.shape == (n,)
    written = LIB.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, n,
                                      None if w is None else w.ctypes.data)
    assert written == out.nbytes
    return out
