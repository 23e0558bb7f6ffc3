"""Atomic file writes: a temporary file in the target's directory, flushed to disk, then renamed.

An interrupted write leaves the previous file (or none) and no temporary file behind.
"""
import os
import pathlib
import tempfile


def atomic_write(path, write):
    """Create or replace ``path`` with what ``write(file_object)`` writes (binary mode)."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
