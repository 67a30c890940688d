"""Atomic output: everything is written under a temporary name beside the destination and renamed at the end."""
import contextlib
import errno
import glob
import os
import shutil
import signal
import threading
from pathlib import Path

from .errors import BadInput, WeightsmithError

# OSErrors that mean the destination cannot take the output (reported as such, naming the destination)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


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
        with _signals_deferred() as pending:  # never leave the staging directory behind a Ctrl-C
            try:
                self._remove_stale()
                _remove(self.tmp)
                self.tmp.mkdir()
            except OSError as e:
                raise WeightsmithError(f"cannot write {self.dst}: {e.strerror or e}") from None
            if pending:
                _remove(self.tmp)
        return self.tmp if self.is_dir else self.tmp / self.dst.name

    def __exit__(self, exc_type, exc, tb):
        # A signal while the finished output is moved into place (or the partial one removed) waits until that is
        # done: a half-moved split or a replaced output without its replacement would be worse than a late stop.
        # On success it is dropped (the output is complete); on failure it is delivered after the cleanup.
        with _signals_deferred(deliver=exc_type is not None):
            reason = self._write_failure(exc)  # before the cleanup frees the space
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
        if reason:
            raise WeightsmithError(f"cannot write {self.dst}: {reason}; nothing was written") from None
        return False

    def _remove_stale(self):
        """Staging left by an earlier run for this destination that was killed outright (SIGKILL, a crash), which no
        cleanup could run in: its process is gone. A live process's staging (a concurrent run) is left alone."""
        for p in self.dst.parent.glob(f".{glob.escape(self.dst.name)}.weightsmith-partial-*"):
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(p)

    def _write_failure(self, exc) -> str | None:
        """Why writing failed, when it is the destination's fault (disk full, quota, read-only, permissions).
        torch's zip writer (the only OSError without an errno here; readers' carry one) reports a failed write
        without saying why: then the free space tells whether the disk is full."""
        if not isinstance(exc, OSError) or exc.filename and not str(exc.filename).startswith(str(self.tmp)):
            return None  # not an error, or one about another file (an unreadable source says so itself)
        if exc.errno in WRITE_ERRNOS:
            return exc.strerror or str(exc)
        if exc.errno is not None:
            return None
        try:
            st = os.statvfs(self.tmp)
        except OSError:
            return str(exc)
        return "No space left on device" if st.f_bavail * st.f_frsize < 2**20 else str(exc)


@contextlib.contextmanager
def _signals_deferred(deliver: bool = True):
    """SIGINT and SIGTERM are held until the block ends, then delivered (or dropped with deliver=False).
    Yields the list of signals held so far. Outside the main thread (where Python runs no handlers) a no-op."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in held}
    try:
        yield pending
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending and deliver:
            signal.raise_signal(pending[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


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
