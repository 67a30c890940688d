"""torch, imported on first use: `import torch` alone takes over a second, and inspect reads headers only."""
import importlib


class _Module:
    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


torch = _Module("torch")
