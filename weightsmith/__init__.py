"""weightsmith: convert, quantize, inspect and verify Llama-family checkpoints."""
__version__ = "0.1.0"

__all__ = ["__version__", "convert", "open", "WeightsmithError"]


def __getattr__(name):
    # Lazy: `import weightsmith` (and the CLI's start) stays fast and interruptible until torch is needed.
    if name == "convert":
        from .convert.pipeline import convert
        return convert
    if name == "open":
        from .formats import open_checkpoint
        return open_checkpoint
    if name == "WeightsmithError":
        from .errors import WeightsmithError
        return WeightsmithError
    raise AttributeError(name)
