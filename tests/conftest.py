import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from oracles import make_hf, make_meta  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Built:
    """Checkpoints built once per test session by the outside libraries (reused read-only by many tests)."""

    def __init__(self, root: Path):
        self.root = root

    def meta(self, family: str, mp: int = 1) -> Path:
        p = self.root / f"meta-{family}-mp{mp}"
        if not p.exists():
            make_meta(family, p, mp=mp)
        return p

    def hf(self, family: str, dtype=None, **kw) -> Path:
        import torch
        dtype = dtype or torch.float32
        tag = str(dtype).split(".")[-1] + "".join(f"-{k}{v}" for k, v in sorted(kw.items()))
        p = self.root / f"hf-{family}-{tag}"
        if not p.exists():
            make_hf(family, p, dtype=dtype, **kw)
        return p


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return Built(tmp_path_factory.mktemp("built"))


def cli(*args, check=None):
    """Run the installed command line in a fresh process: what users and scripts see."""
    r = subprocess.run([sys.executable, "-m", "weightsmith.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    if check is not None:
        assert r.returncode == check, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


@pytest.fixture
def run_cli():
    return cli
