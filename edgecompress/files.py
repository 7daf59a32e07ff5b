"""Atomic file writes (named files, not io: it must not shadow the standard library): a temp file in the same directory, fsync, then rename, so a reader
never sees a half-written artifact and a killed run leaves only ``.tmp-*`` files."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgecompress.errors import BadInput

# Errors of the file system rather than of the code: reported as bad input (exit 2, one line).
_FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def write_error(path: Path, e: OSError) -> BadInput:
    """The one-line message for a failed artifact write: what failed and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return BadInput(f"cannot write {path.name}: {e.strerror or 'no space left'}; free some disk space "
                        "or choose another --out")
    return BadInput(f"cannot write {path.name} in {path.parent}: {e.strerror or e}; choose a writable --out")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write(tmp_path)`` and renames tmp_path onto ``path`` only if it succeeded.

    A file-system failure (disk full, quota, read-only, permission) becomes a one-line
    ``BadInput`` naming the file; the temp file is removed in every case."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    except OSError as e:
        raise (write_error(path, e) if e.errno in _FS_ERRNOS else e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are ordinary files
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.errno in _FS_ERRNOS:
            raise write_error(path, e) from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
