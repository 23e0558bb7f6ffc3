"""Atomic file writes: a temporary file in the target's directory, flushed to disk, then renamed.

An interrupted write (an exception, Ctrl-C) leaves the previous file (or none) and
removes its temporary file. A process killed mid-write cannot clean up: its
temporary file (``.<name>.<pid>.<random>.tmp`` beside the target) stays until the
next write to the same path, which removes the temporaries of processes that no
longer run. A symlink is followed (the file it points to is replaced), and an
existing file keeps its permission bits.
"""
import glob
import os
import pathlib
import tempfile


def atomic_write(path, write):
    """Create or replace ``path`` with what ``write(file_object)`` writes (binary mode)."""
    path = pathlib.Path(os.path.realpath(path))  # through symlinks: replace the file, keep the link
    _remove_stale_temporaries(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()  # what open() would give a new file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _remove_stale_temporaries(path):
    """Temporaries of earlier writes to ``path`` whose process is gone (killed mid-write)."""
    for tmp in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        pid = os.path.basename(tmp)[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(tmp)
            except FileNotFoundError:  # another writer cleaned it first
                pass


def _umask():
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
