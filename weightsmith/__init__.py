"""weightsmith: convert, quantize, inspect and verify Llama-family checkpoints."""
__version__ = "0.1.0"

from .convert.pipeline import convert  # noqa: E402
from .errors import WeightsmithError  # noqa: E402
from .formats import open_checkpoint as open  # noqa: E402,A001

__all__ = ["__version__", "convert", "open", "WeightsmithError"]
