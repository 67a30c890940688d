"""Quantization: the type registry (types.py) and the quantizers, bit-exact with libggml's reference code."""
