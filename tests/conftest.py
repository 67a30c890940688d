import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from oracles import make_hf, make_meta  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A shell's background job (`nohup bash scripts/test.sh &`) starts with SIGINT ignored, and so would every command
# the tests start: the interrupt tests need Python's own handler here (children inherit a handled signal as default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def ws(capsys):
    """The command line in this process (weightsmith.cli.run): much cheaper than run_cli, same exit code and
    output. A traceback cannot show here: an unexpected exception fails the test."""
    from weightsmith import cli as ws_cli

    def run(*args):
        capsys.readouterr()
        code = ws_cli.run([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    return run


def assert_clean_error(r, out_area: Path | None = None, must_mention=""):
    """Exit 2, exactly one `error:` line, no traceback; nothing at all left in out_area (where outputs went)."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert must_mention.lower() in lines[0].lower(), lines[0]
    if out_area is not None:
        assert sorted(p.name for p in out_area.iterdir()) == []
