"""formats.common.DirectFile, the GGUF writer's data section through O_DIRECT: the same bytes as plain writes,
from any start offset and in pieces of any size, with O_DIRECT, without it, and when the device refuses it."""
import errno
import os

import numpy as np
import pytest

from weightsmith.formats import common


def _write(path, start: int, pieces, size: int):
    path.write_bytes(b"H" * start)  # the header, written and flushed before the data section
    sink = common.DirectFile(path, start, size=size)
    at = [sink.write(p) for p in pieces]
    sink.close()
    return at, sink.direct


def _takes_o_direct(folder) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        return True
    except OSError:  # tmpfs: EINVAL
        return False


def _pieces(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 31, 4095, 4096, 4097, 12345, 70000, 3, 65536]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


@pytest.mark.parametrize("start", [0, 7, 4096, 10000])
@pytest.mark.parametrize("mode", ["direct", "no O_DIRECT", "EINVAL on write"])
def test_same_bytes_as_plain_writes(tmp_path, monkeypatch, start, mode):
    pieces = _pieces(start)
    if mode == "no O_DIRECT":
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    elif mode == "EINVAL on write":  # a device whose blocks are larger than 4096: refused, then page cache
        real = common.pwrite_all

        def refuse(fd, data, offset):
            if os.get_blocking(fd) and os.O_DIRECT & _flags(fd):
                raise OSError(errno.EINVAL, "Invalid argument")
            real(fd, data, offset)
        monkeypatch.setattr(common, "pwrite_all", refuse)
    path = tmp_path / "out"
    written, direct = _write(path, start, pieces, size=16384)  # small buffers: many hand-overs between the two
    assert written == [len(p) for p in pieces]
    assert direct == (mode == "direct" and _takes_o_direct(tmp_path))
    assert path.read_bytes() == b"H" * start + b"".join(pieces)


def _flags(fd: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_write_errors_surface(tmp_path, monkeypatch):
    """A failed write (disk full) is raised by the next hand-over or by close, not lost in the writing thread."""
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(common, "pwrite_all", full)
    path = tmp_path / "out"
    path.write_bytes(b"")
    sink = common.DirectFile(path, 0, size=4096)
    with pytest.raises(OSError, match="No space"):
        for _ in range(4):
            sink.write(bytes(4096))
        sink.close()
    sink.abort()
