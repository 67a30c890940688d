"""Atomic output: everything is written under a temporary name beside the destination and renamed at the end."""
import os
import shutil
from pathlib import Path

from .errors import BadInput


class AtomicOutput:
    """`with AtomicOutput(dst, is_dir) as tmp:` write into tmp; on success tmp becomes dst, on any error it is removed.

    An existing dst is refused unless force; with force it is replaced only once the new output is complete.
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
        if self.is_dir:
            self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            _remove(self.tmp)
            return False
        try:
            if self.dst.exists():
                old = self.dst.parent / f".{self.dst.name}.weightsmith-old-{os.getpid()}"
                os.replace(self.dst, old)
                os.replace(self.tmp, self.dst)
                _remove(old)
            else:
                os.replace(self.tmp, self.dst)
        except BaseException:
            _remove(self.tmp)
            raise
        return False


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
