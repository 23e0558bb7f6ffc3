"""The CPU backend's runtime: its thread pool, BLAS thread limits, scratch buffers and glibc heap tuning.

Threads: kernels are serial ``@njit(nogil=True)`` loops, run on a small thread
pool, one contiguous range of images (or planes) per core, with BLAS held to one
thread inside each range. Numba's own ``parallel=True`` was measured first and
lost: its worker threads and OpenBLAS's spin-waiting threads fought over the
cores.

Memory: ``tune_glibc_malloc()`` asks glibc to serve arrays up to 32 MiB from its
heap and to keep up to 512 MiB of freed heap, instead of a fresh ``mmap`` per
large array whose every page faults on first write. A training step allocates
dozens of such arrays; this took an MNIST step from 106 to 81 ms. It changes the
whole process, so it is explicit: the CPU backend calls it once when it is loaded
(``gpuconv.kernels.cpu.backend``), unless the environment sets
``GPUCONV_MALLOPT=0``.
"""
import contextlib
import ctypes
import ctypes.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (the BLAS behind np.dot in Numba code: loaded before threadpoolctl looks)
from numba import njit
from threadpoolctl import ThreadpoolController

from .. import indexing

# Extra memory per conv call: the default, and the cap (kept buffers stay within 2x the cap, 256 MiB).
WORKSPACE_BYTES = 8 << 20
WORKSPACE_LIMIT = 128 << 20
SERIAL_WORKSPACE_BYTES = 1 << 20  # per call inside serial(): many such calls run side by side (Dask)
# Below this many elements a pooling/ReLU call runs on the calling thread alone.
PARALLEL_MIN_ELEMENTS = 1 << 15
MALLOPT_ENV = "GPUCONV_MALLOPT"

# --------------------------------------------------------------------------- Numba
# Options of every kernel, and the shared index helpers compiled for the CPU.
JIT = dict(cache=True, nogil=True, error_model="numpy")  # numpy: no ZeroDivisionError branch, which kept loops with a division scalar (8x slower)
valid_output_range = njit(inline="always")(indexing.valid_output_range)
clipped_window = njit(inline="always")(indexing.clipped_window)


@njit(inline="always")
def fill_zero(row, start, stop):
    for j in range(start, stop):
        row[j] = 0


# --------------------------------------------------------------------------- process-wide memory

def tune_glibc_malloc():
    """Serve arrays up to 32 MiB from glibc's heap and keep up to 512 MiB of it freed (see the module docstring).

    Process-wide; does nothing when ``GPUCONV_MALLOPT=0`` or the C library is not glibc.
    """
    if os.environ.get(MALLOPT_ENV, "1") == "0":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# --------------------------------------------------------------------------- scratch buffers

_thread_state = threading.local()


def scratch(count, dtype):
    """A reusable buffer of ``count`` elements: one per thread, grown on demand, kept for reuse.

    Reuse avoids paying page faults on a fresh multi-MiB allocation every call.
    A call's calling thread or its workers hold at most the call's budget, so the
    memory kept is at most twice ``WORKSPACE_LIMIT``.
    """
    nbytes = count * np.dtype(dtype).itemsize
    raw = getattr(_thread_state, "raw", None)
    if raw is None or raw.size < nbytes:
        raw = _thread_state.raw = np.empty(nbytes, np.uint8)
    return raw[:nbytes].view(dtype)


def workspace_budget(workspace_bytes):
    """Bytes of scratch a call may use: ``workspace_bytes`` (default ``WORKSPACE_BYTES``, or
    ``SERIAL_WORKSPACE_BYTES`` inside ``serial()``, where many calls run at once), capped."""
    if workspace_bytes is None:
        workspace_bytes = SERIAL_WORKSPACE_BYTES if getattr(_thread_state, "serial", False) else WORKSPACE_BYTES
    return min(workspace_bytes, WORKSPACE_LIMIT)


# --------------------------------------------------------------------------- workspace planning

def image_units(n_images, out_h, out_w, bytes_per_column, budget):
    """Split the batch into contiguous image ranges, one per worker (one image each if images are huge).

    A *column* is one output position's share of the workspace (im2col: a column of the
    column matrix; Winograd: one tile's transforms), ``out_h x out_w`` of them per image.
    """
    if out_h * out_w * bytes_per_column > budget // workers():
        return [(n, n + 1) for n in range(n_images)]
    count = min(workers(), n_images)
    if count == 0:
        return []
    bounds = [n_images * i // count for i in range(count + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def blocks(n0, n1, out_h, out_w, bytes_per_column, budget):
    """Yield ``(n0, n1, oh0, oh1, ow0, ow1)`` blocks of output positions whose workspace fits ``budget``.

    Whole images are grouped while one image fits; otherwise an image is split
    by output rows, and a row too wide by columns. A block never has fewer than
    one output position, so only a single position whose column exceeds the
    budget can exceed it.
    """
    per_image = out_h * out_w * bytes_per_column
    if per_image <= budget:
        step = max(1, budget // max(per_image, 1))
        for a in range(n0, n1, step):
            yield a, min(a + step, n1), 0, out_h, 0, out_w
    elif out_w * bytes_per_column <= budget:
        rows = budget // (out_w * bytes_per_column)
        for n in range(n0, n1):
            for oh0 in range(0, out_h, rows):
                yield n, n + 1, oh0, min(oh0 + rows, out_h), 0, out_w
    else:
        cols = max(1, budget // bytes_per_column)
        for n in range(n0, n1):
            for oh in range(out_h):
                for ow0 in range(0, out_w, cols):
                    yield n, n + 1, oh, oh + 1, ow0, min(ow0 + cols, out_w)


# --------------------------------------------------------------------------- threads
# The pool and the BLAS limiter are created on first use and forgotten in a forked child, whose copy
# of the parent's pool has no threads (using it would hang forever).

_lock = threading.Lock()
_pool = None
_blas = None
_blas_users = 0       # callers inside single_threaded_blas() now, across threads
_blas_limiter = None  # what restores BLAS's own thread count when the last of them leaves


def workers():
    """Threads a kernel call may use: the cores (Numba's count), or 1 inside ``serial()``."""
    return 1 if getattr(_thread_state, "serial", False) else max(1, numba.get_num_threads())


@contextlib.contextmanager
def serial():
    """Run this thread's kernel calls on this thread alone, BLAS included.

    For callers that parallelize themselves (Dask's threads or worker processes):
    their threads times ours would oversubscribe the cores.
    """
    previous = getattr(_thread_state, "serial", False)
    _thread_state.serial = True
    try:
        with single_threaded_blas():
            yield
    finally:
        _thread_state.serial = previous


def _controller():
    """The thread pool (created on first use)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, numba.get_num_threads()), thread_name_prefix="gpuconv-cpu")
    return _pool


def _blas_controller():
    global _blas
    with _lock:
        if _blas is None:
            _blas = ThreadpoolController()
    return _blas


def _forget_threads_after_fork():
    global _lock, _pool, _blas, _blas_users, _blas_limiter
    _lock, _pool, _blas, _blas_users, _blas_limiter = threading.Lock(), None, None, 0, None


os.register_at_fork(after_in_child=_forget_threads_after_fork)


@contextlib.contextmanager
def single_threaded_blas():
    """Hold BLAS to one thread while any caller, in any thread, is inside; restore it when the last leaves.

    BLAS's thread count is process-wide, so overlapping callers share one limit:
    the first saves the original count, the last restores it, whatever the order
    in which they leave.
    """
    global _blas_users, _blas_limiter
    blas = _blas_controller()
    with _lock:
        if _blas_users == 0:
            _blas_limiter = blas.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


@contextlib.contextmanager
def session():
    """Hold BLAS to one thread for a block of many ops (a training loop).

    OpenBLAS's idle threads spin for a while after each multi-threaded call and steal
    the cores our kernels' threads need; a model's small matmuls lose little by
    running on one thread. Inside, every kernel still uses all cores.
    """
    with single_threaded_blas():
        yield


def run_units(work, units, uses_blas=True):
    """Run ``work(n0, n1)`` for each image range, one per core, and return the results in order.

    Each range runs serially (Numba loops with ``nogil``, then a single-threaded
    GEMM) on its own Python thread, so cores never fight over spinning BLAS and
    Numba worker threads. A single range runs inline with multi-threaded BLAS.
    Work that calls no BLAS (``uses_blas=False``) skips the BLAS limit, whose
    threadpoolctl calls cost more than a small kernel.
    """
    if len(units) <= 1:
        return [work(*unit) for unit in units]
    with single_threaded_blas() if uses_blas else contextlib.nullcontext():
        return list(_controller().map(lambda unit: work(*unit), units))


def parallel_for(kernel, count, cost_per_item, *args):
    """Run ``kernel(i0, i1, *args)`` (a Numba loop calling no BLAS) over ``[0, count)`` split into one
    contiguous range per worker.

    ``cost_per_item`` (elements touched per item) keeps small jobs inline, where
    a thread hand-off would cost more than it saves.
    """
    parts = min(workers(), count, max(1, count * cost_per_item // PARALLEL_MIN_ELEMENTS))
    bounds = [count * i // parts for i in range(parts + 1)] if parts else []
    run_units(lambda i0, i1: kernel(i0, i1, *args), list(zip(bounds[:-1], bounds[1:])), uses_blas=False)
