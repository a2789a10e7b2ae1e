"""Atomic file writes: write to a temp file in the same directory, fsync, rename.

A reader never sees a half-written file: either the old file (or nothing) or
the complete new one. On any exception the temp file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` on success.

    ``suffix`` is appended to the temp name (some writers, like ``np.savez``,
    insist on an extension).
    """
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; publish like open() would
        os.replace(tmp_path, dest)
        _fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temp file for writing; it replaces ``dest`` only if the block succeeds."""
    if "r" in mode or "a" in mode:
        raise ValueError("atomic_open is for writing only")
    with atomic_path(dest) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()


# errnos that only a write raises: a full disk or quota, a read-only filesystem, a file
# too large (a read never does, so a block that also reads inputs cannot misname them)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Fail now, before the work, if ``path`` (a file streamlm will write, atomically
    or not) cannot be written: a directory or a non-file where a file belongs, or a
    directory in which no file can be made (read-only, no permission). Probes by
    making and removing an empty temp file in the nearest existing directory of
    ``path`` (which is where atomic_path makes its own); makes no directory."""
    from streamlm.errors import StreamlmError, UsageError

    p = os.fspath(path)
    if p == "-":
        return
    if os.path.isdir(p):
        raise UsageError(f"{what} is a directory, expected a file path", path=p)
    if os.path.exists(p) and not os.path.isfile(p):  # a FIFO, a device: opened, not replaced
        if not os.access(p, os.W_OK):
            raise StreamlmError(f"cannot write {what}: permission denied", path=p)
        return
    d = os.path.dirname(os.path.abspath(p))
    while not os.path.exists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise UsageError(f"cannot write {what}: {d} is not a directory", path=p)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".streamlm-probe-", dir=d)
    except OSError as e:
        raise StreamlmError(f"cannot write {what}: {e.strerror or e}", path=p) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


@contextlib.contextmanager
def writing(path: str | os.PathLike | None, what: str) -> Iterator[None]:
    """A write that fails for want of space or permission (WRITE_ERRNOS) names the user's
    ``path`` and says what was being written, not a temp file or a spool inside it."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS or path is None:
            raise
        from streamlm.errors import StreamlmError

        raise StreamlmError(f"cannot write {what}: {e.strerror or e}",
                            path=os.fspath(path)) from None
