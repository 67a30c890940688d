"""Atomic output: everything is written under a temporary name beside the destination and renamed at the end."""
import os
import shutil
from pathlib import Path

from .errors import BadInput


class AtomicOutput:
    """`with AtomicOutput(dst, is_dir) as path:` write at path; on success it becomes dst, on any error it is removed.

    A directory output is written as a hidden sibling directory and renamed. A file output is written inside a
    hidden staging directory, which may also receive the other files of a split (model-00001-of-00003.gguf ...);
    all of them are moved beside dst at the end. An existing output is refused unless force; with force it is
    replaced only once the new output is complete.
    """

    def __init__(self, dst: Path, is_dir: bool, force: bool = False):
        self.dst, self.is_dir, self.force = Path(dst), is_dir, force
        self.tmp = self.dst.parent / f".{self.dst.name}.weightsmith-partial-{os.getpid()}"

    def __enter__(self) -> Path:
        if self.dst.exists() and not self.force:
            raise BadInput(f"{self.dst} already exists (use --force to replace it)")
        if not self.dst.parent.is_dir():
            raise BadInput(f"output directory {self.dst.parent} does not exist")
        _remove(self.tmp)
        self.tmp.mkdir()
        return self.tmp if self.is_dir else self.tmp / self.dst.name

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                moves = [(self.tmp, self.dst)] if self.is_dir else \
                    [(f, self.dst.parent / f.name) for f in sorted(self.tmp.iterdir())]
                taken = [str(d) for _, d in moves if d.exists()]
                if taken and not self.force:
                    raise BadInput(f"{taken[0]} already exists (use --force to replace it)")
                for src, dst in moves:
                    _replace(src, dst)
        finally:
            _remove(self.tmp)
        return False


def _replace(src: Path, dst: Path):
    if dst.exists():
        old = dst.parent / f".{dst.name}.weightsmith-old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        _remove(old)
    else:
        os.replace(src, dst)


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
