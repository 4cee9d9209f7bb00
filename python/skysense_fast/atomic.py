"""Files written whole or not at all: a temporary file of a unique name beside the target
(ranks on several nodes may share a process id), flushed to disk, given the permissions a
plain ``open`` would give (``mkstemp`` makes it owner-only), then renamed over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces ``path``, on any failure it is
    removed and ``path`` stays as it was. ``suffix``: what the writer needs the name to end in."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                               suffix=suffix or os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` into ``path``, atomically and durably (fsync before the rename)."""
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
