"""The CPU backend's runtime: its threads, BLAS thread limits, scratch and output buffers, glibc heap tuning.

Threads: a kernel splits its work into contiguous parts (image or plane ranges),
one per core, and runs them with Numba's ``prange`` on the TBB threading layer;
the GEMMs inside parts call BLAS held to one thread. A pool of Python threads was
used before: handing a part over and waiting for it cost 0.05-0.3 ms per call on
a 2-core VM (a sleeping thread's wake-up), more than a ReLU over a million floats;
TBB's workers start in microseconds. TBB is thread safe (ops called from several
Python threads at once) and fork safe (with GNU OpenMP, Numba terminates a forked
child). Without TBB, Numba's workqueue layer serves: fork safe but not thread safe,
so launches then take a lock. A layer chosen in the environment
(``NUMBA_THREADING_LAYER``) is respected.

Memory: ``tune_glibc_malloc()`` asks glibc to serve arrays up to 32 MiB from its
heap and to keep up to 512 MiB of freed heap, instead of a fresh ``mmap`` per
large array whose every page faults on first write. A training step allocates
dozens of such arrays; this took an MNIST step from 106 to 81 ms. It changes the
whole process, so it is explicit: the CPU backend calls it once when it is loaded
(``gpuconv.kernels.cpu.backend``), unless the environment sets
``GPUCONV_MALLOPT=0``. Arrays of 32 MiB and more glibc still maps afresh; the
kernels' outputs of that size come from kept buffers instead (``empty``), reused
once no array views them.
"""
import contextlib
import ctypes
import ctypes.util
import glob
import math
import os
import platform
import re
import sys
import threading

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (the BLAS behind np.dot in Numba code: loaded before threadpoolctl looks)
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from threadpoolctl import ThreadpoolController

from .. import indexing

# Extra memory per conv call: the default, and the cap (kept buffers stay within 2x the cap, 256 MiB).
WORKSPACE_BYTES = 8 << 20
WORKSPACE_LIMIT = 128 << 20
SERIAL_WORKSPACE_BYTES = 1 << 20  # per call inside serial(): many such calls run side by side (Dask)
# Below this many elements a pooling/ReLU call runs on the calling thread alone (and parts stay above it).
PARALLEL_MIN_ELEMENTS = 1 << 15
SPLIT = 4  # parts per thread of kernels whose parts write disjoint outputs (see parts())
# Outputs of at least this many bytes from memory-bound kernels bypass the caches (see line_intrinsic);
# outputs the next op reads from at least CACHE_KEEP_BYTES (set below, from the last-level cache's size).
STREAM_MIN_BYTES = 4 << 20
CACHE_KEEP_MAX_BYTES = 48 << 20
CACHE_LINE = 64
MALLOPT_ENV = "GPUCONV_MALLOPT"
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest; arrays from this size up are mapped afresh by malloc
# Kernel outputs of at least MMAP_THRESHOLD_BYTES come from kept buffers, this many bytes of them at most.
KEPT_OUTPUT_BYTES = 256 << 20

# --------------------------------------------------------------------------- Numba
# Options of every kernel, and the shared index helpers compiled for the CPU.
# error_model numpy: no ZeroDivisionError branch, which kept loops with a division scalar (8x slower)
JIT = dict(cache=True, nogil=True, error_model="numpy")
PARALLEL = dict(JIT, parallel=True)  # kernels whose parts run on the threading layer (prange)
valid_output_range = njit(inline="always")(indexing.valid_output_range)
clipped_window = njit(inline="always")(indexing.clipped_window)


@njit(inline="always")
def fill_zero(row, start, stop):
    for j in range(start, stop):
        row[j] = 0


# --------------------------------------------------------------------------- non-temporal stores
# A memory-bound kernel's ordinary store first reads the line it writes into the cache (read for ownership):
# a ReLU moves 3 bytes per 2 it needs. Non-temporal stores write whole lines around the caches; a ReLU over
# 3.2M floats took 0.55 ms instead of 0.71 (PyTorch: 0.59). They pay off only on outputs larger than the
# caches hold usefully, so kernels stream outputs of at least STREAM_MIN_BYTES, or half the last-level cache
# for an output the next op reads (``streams()``): their whole cache lines through a ``line_intrinsic`` (one
# vector op and store per line), the ragged ends plainly.
# (Computing chunks into an L1 buffer and copying them out was 1.7x slower than one pass.)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def flat_float_arrays(*array_types):
    """Whether every Numba type is a 1-D C-contiguous array of one float dtype: what the vector intrinsics
    index (``vector_at``) without bounds checks."""
    first = array_types[0]
    return (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in array_types)
            and isinstance(first.dtype, types.Float) and all(a.dtype == first.dtype for a in array_types))


def vector_at(context, builder, array_type, array, index, vector_type):
    """IR: a ``vector_type`` pointer to element ``index`` of the 1-D C-contiguous ``array`` (no bounds check)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), vector_type.as_pointer())


def splat(vector_type, value):
    """IR: a ``vector_type`` constant with ``value`` in every lane."""
    return ir.Constant(vector_type, [ir.Constant(vector_type.element, value)] * vector_type.count)


def lane_indices(indices):
    """IR: a constant vector of i32 lane numbers, the mask of a shuffle."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), [ir.Constant(ir.IntType(32), i) for i in indices])


def splat_value(builder, vector_type, value):
    """IR: a ``vector_type`` vector with the run-time scalar ``value`` in every lane."""
    lane = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lane, lane, lane_indices([0] * vector_type.count))


def interleave(builder, a, b):
    """IR: ``a[0], b[0], a[1], b[1], ...`` from two vectors of one width (left and right columns into a row)."""
    width = a.type.count
    return builder.shuffle_vector(a, b, lane_indices([k // 2 + (k % 2) * width for k in range(2 * width)]))


def line_intrinsic(compute, sources):
    """An intrinsic ``f(dst, i, source, ...)`` (``sources`` of them) that computes one cache line of dst, ``dst[i:i + L]``, from the
    same elements of the sources with ``compute(builder, zero, *lines)`` (LLVM vector IR) and writes it with a
    non-temporal store (a plain one off x86); ``dst[i]`` must start a cache line."""
    def signature(dst, i, arrays):
        if not flat_float_arrays(dst, *arrays):
            return None

        def codegen(context, builder, signature, args):
            element = context.get_value_type(dst.dtype)
            size = context.get_abi_sizeof(element)
            line = ir.VectorType(element, CACHE_LINE // size)
            lines = [builder.load(vector_at(context, builder, t, v, args[1], line), align=size)
                     for t, v in zip(signature.args[2:], args[2:])]
            store = builder.store(compute(builder, splat(line, 0.0), *lines),
                                  vector_at(context, builder, signature.args[0], args[0], args[1], line), align=CACHE_LINE)
            if _X86:
                store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            return context.get_dummy_value()
        return types.void(dst, i, *arrays), codegen

    if sources == 1:
        def typer(typingctx, dst, i, a):
            return signature(dst, i, (a,))
    elif sources == 2:
        def typer(typingctx, dst, i, a, b):
            return signature(dst, i, (a, b))
    else:
        raise ValueError(f"sources must be 1 or 2, got {sources}")
    typer.__name__ = compute.__name__
    return intrinsic(typer)


@intrinsic
def prefetch_to_l2(typingctx, array, index):
    """Ask for the cache line of element ``index`` of the 1-D C-contiguous ``array`` to be brought into L2
    (``llvm.prefetch``, read, locality 2: ``prefetcht1`` on x86; a no-op where the target has none). No bounds
    check; a prefetch never faults."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        array_value, index = args
        data = context.make_array(signature.args[0])(context, builder, array_value).data
        pointer = builder.bitcast(builder.gep(data, [index]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch", [pointer.type], ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]))
        builder.call(prefetch, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


@intrinsic
def store_fence(typingctx):
    """Order this thread's non-temporal stores before what follows (``sfence``): call once at a part's end."""
    def codegen(context, builder, signature, args):
        if _X86:
            builder.call(builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), [])), [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(inline="always")
def line_phase(dst):
    """Index of the first element of 1-D dst that starts a cache line, or -1 if its elements straddle lines.

    Costs about 100 ns (the array's ``ctypes``): take it once per part, not per chunk."""
    address = np.int64(dst.ctypes.data)  # uintp: signed arithmetic follows
    if address % dst.itemsize != 0:
        return -1
    return (-(address // dst.itemsize)) % (CACHE_LINE // dst.itemsize)


@njit(inline="always")
def line_split(i0, i1, phase, line):
    """``(a, b)``: [a, b) are the whole cache lines of dst[i0:i1], [i0, a) and [b, i1) the ragged ends
    (``phase``: ``line_phase(dst)``, ``line``: elements per line; no lines when phase is -1)."""
    if phase < 0:
        return i1, i1
    a = min(i1, i0 + (phase - i0) % line)
    return a, a + (i1 - a) // line * line


def cpu_caches(root="/sys/devices/system/cpu/cpu0/cache"):
    """{'L1d': '48K', 'L2': '2048K', 'L3': '32768K', ...}: CPU 0's data and unified caches as the OS reports
    them (a VM's: the hypervisor's report); empty where sysfs has none."""
    def read(index, name):
        with open(os.path.join(index, name)) as f:
            return f.read().strip()

    caches = {}
    for index in sorted(glob.glob(os.path.join(root, "index[0-9]*"))):
        try:
            level, kind, size = (read(index, name) for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            caches[f"L{level}{'d' if kind == 'Data' else ''}"] = size
    return caches


def last_level_cache_bytes(caches):
    """Bytes of the highest level in ``cpu_caches()``'s report, or None when it has none that parses."""
    found = None
    for name, size in caches.items():
        match = re.fullmatch(r"(\d+)\s*([KMG]?)B?", size, re.IGNORECASE)
        if match:
            nbytes = int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2].upper()]
            level = int(name[1])
            if found is None or level > found[0] or (level == found[0] and nbytes > found[1]):
                found = level, nbytes
    return found and found[1]


def cache_keep_bytes(caches):
    """The output size from which a kernel streams an output the next op reads: half the last-level cache
    (from ``STREAM_MIN_BYTES`` up to ``CACHE_KEEP_MAX_BYTES``; ``STREAM_MIN_BYTES`` when it is unknown).

    Measured with the ReLU forward in the suite (3 rotating inputs), runs of each policy alternating, ratio
    PyTorch / ours: on the AMD host (32 MiB L3) mnist_conv2's 6 MiB output written plainly 0.92-0.96x, streamed
    0.62-0.64x (the plain one stays in L3 for its next use); 12 MiB a tie (streamed 1.03-1.06x, plain
    0.99-1.13x); 19.5 MiB streamed 0.99-1.72x, plain 0.94-1.25x (five runs each); 32-78 MiB streamed ran
    1.02-1.31x faster than plain. On the Intel host (480 MiB reported, shared by the VMs) plain
    stores ran 10-20% faster at 32-39 MB, streamed ones 25% faster at 78 MB: hence the cap, a VM's share of a
    large shared cache being less than the whole.
    """
    llc = last_level_cache_bytes(caches)
    if llc is None:
        return STREAM_MIN_BYTES
    return max(STREAM_MIN_BYTES, min(llc // 2, CACHE_KEEP_MAX_BYTES))


CACHE_KEEP_BYTES = cache_keep_bytes(cpu_caches())


def streams(array, reread=False):
    """Whether a kernel writing ``array`` should stream it: from ``STREAM_MIN_BYTES``; ``reread`` (the next op
    reads it, and the kernel reads one array per output: ReLU's forward) from ``CACHE_KEEP_BYTES``.

    The backward, reading two arrays per output, ran as fast or faster streamed from 6 MiB on the AMD host
    (mnist_conv2's 6 MiB: 1.08-1.38x PyTorch streamed, 0.82-1.11x plain; 19.5-78 MiB: streamed 0.98-1.65x
    plain's speed, 1.12x or more in 8 of 10 pairs).
    """
    return array.nbytes >= (CACHE_KEEP_BYTES if reread else STREAM_MIN_BYTES)


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
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# --------------------------------------------------------------------------- kept output buffers

_kept_outputs = []  # uint8 buffers, oldest first; one no array views any more is free for reuse
_kept_lock = threading.Lock()


def _holders(buffers, i):
    return sys.getrefcount(buffers[i])


_UNVIEWED = _holders([np.empty(1, np.uint8)], 0)  # what _holders counts for a buffer only the list holds


def empty(shape, dtype):
    """``np.empty(shape, dtype)`` (C order) for a kernel's output.

    Outputs of ``MMAP_THRESHOLD_BYTES`` or more reuse a kept buffer of the same size that no array
    views any more (every view of it holds a reference, counted by ``sys.getrefcount``): glibc maps
    such an array afresh on every call, and each of its pages then faults on first write, which took a
    ReLU over 41 MB from 2-3 ms to 5.5-35. At most ``KEPT_OUTPUT_BYTES`` are kept, in use or not.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(map(int, shape)) * dtype.itemsize  # not np.prod: 3 us a call
    if nbytes < MMAP_THRESHOLD_BYTES or nbytes > KEPT_OUTPUT_BYTES:
        return np.empty(shape, dtype)
    with _kept_lock:
        buffer = _take_kept(nbytes)
        if buffer is None:
            buffer = np.empty(nbytes, np.uint8)
            if _make_room(nbytes):
                _kept_outputs.append(buffer)
        return buffer.view(dtype).reshape(shape)


def _take_kept(nbytes):
    """A kept buffer of ``nbytes`` that nothing views, moved to the back (most recently used); or None."""
    for i in range(len(_kept_outputs)):
        if _kept_outputs[i].nbytes == nbytes and _holders(_kept_outputs, i) == _UNVIEWED:
            buffer = _kept_outputs.pop(i)
            _kept_outputs.append(buffer)
            return buffer
    return None


def _make_room(nbytes):
    """Drop unviewed kept buffers, oldest first, until ``nbytes`` more fit; whether they do."""
    i = 0
    while sum(b.nbytes for b in _kept_outputs) + nbytes > KEPT_OUTPUT_BYTES and i < len(_kept_outputs):
        if _holders(_kept_outputs, i) == _UNVIEWED:
            del _kept_outputs[i]
        else:
            i += 1
    return sum(b.nbytes for b in _kept_outputs) + nbytes <= KEPT_OUTPUT_BYTES


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
    """Split the batch into contiguous image ranges, one per thread (one image each if images are huge).

    A *column* is one output position's share of the workspace (im2col: a column of the
    column matrix; Winograd: one tile's transforms), ``out_h x out_w`` of them per image.
    """
    if out_h * out_w * bytes_per_column > budget // threads():
        return [(n, n + 1) for n in range(n_images)]
    count = min(threads(), n_images)
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


def plan_parts(n_images, out_h, out_w, bytes_per_column, budget, cap=None, max_parts=None):
    """The blocks of a batch for a parallel kernel: ``(blocks, starts, per_part)``.

    Image ranges (``image_units``) are dealt out in contiguous runs, one run per part (thread, at most
    ``max_parts``); ``blocks`` ((count, 6), ``blocks()``'s tuples) holds every part's blocks in order, part
    p's from ``starts[p]`` to ``starts[p + 1]``, each within ``per_part`` bytes (``budget`` shared by the
    parts, and at most ``cap``).
    """
    units = image_units(n_images, out_h, out_w, bytes_per_column, budget)
    count = max(1, min(len(units), threads(), max_parts or len(units)))
    per_part = max(1, budget // count)
    if cap is not None:
        per_part = min(per_part, cap)
    found, starts = [], [0]
    for p in range(count):
        for a, b in units[len(units) * p // count:len(units) * (p + 1) // count]:
            found += blocks(a, b, out_h, out_w, bytes_per_column, per_part)
        starts.append(len(found))
    return np.array(found, np.int64).reshape(-1, 6), np.array(starts, np.int64), per_part


# --------------------------------------------------------------------------- threads
# The BLAS limiter and the launch lock are created on first use and made anew in a forked child
# (a lock held by another thread at the fork would never be released there).

_lock = threading.Lock()
_blas = None
_blas_users = 0       # callers inside single_threaded_blas() now, across threads
_blas_limiter = None  # what restores BLAS's own thread count when the last of them leaves
_launch_lock = None   # serializes launches when the threading layer is not thread safe
_layer_ready = False
_thread_count = numba.get_num_threads  # until the layer is loaded


def threads():
    """Threads a kernel call may use: the cores (Numba's count for this thread), or 1 inside ``serial()``."""
    if getattr(_thread_state, "serial", False):
        return 1
    if not _layer_ready:
        _load_threading_layer()
    return max(1, _thread_count())


def parts(count, cost_per_item, per_thread=1):
    """Parts to split ``count`` items into: ``per_thread`` per thread, fewer when the work is small
    (``cost_per_item`` elements touched per item; below ``PARALLEL_MIN_ELEMENTS`` in all, one part on the
    calling thread).

    Kernels whose parts write disjoint outputs take several parts per thread: a thread that wakes late
    then takes a share of what is left (a ReLU over 3M floats: 0.82 ms in 4 parts, 0.88 in 2, 1.0 in 1);
    kernels that sum per-part partials keep one per thread, so their summation order stays fixed.
    """
    by_size = count * cost_per_item // PARALLEL_MIN_ELEMENTS
    if by_size <= 1:  # one part, without asking for the thread count
        return 1
    return min(threads() * per_thread, count, by_size)


@njit(inline="always")
def part_range(count, parts, p):
    """Items [lo, hi) of part p when ``count`` items are split into ``parts`` contiguous parts."""
    return count * p // parts, count * (p + 1) // parts


@njit(**PARALLEL)
def _probe(a):
    for i in numba.prange(a.size):
        a[i] = i


_init_lock = threading.Lock()


def _load_threading_layer():
    """Load the threading layer: TBB, unless the environment or an earlier launch in this process chose one;
    the workqueue layer when TBB is missing. Launches take a lock when the layer is not thread safe."""
    global _layer_ready, _launch_lock, _thread_count
    from numba.np.ufunc import parallel
    with _init_lock:
        if _layer_ready:
            return
        if not parallel._is_initialized and "NUMBA_THREADING_LAYER" not in os.environ:
            numba.config.THREADING_LAYER = "tbb"
            try:
                _probe(np.zeros(2))
            except ValueError:  # no TBB (pip install tbb)
                numba.config.THREADING_LAYER = "workqueue"
        _probe(np.zeros(2))
        if numba.threading_layer() == "workqueue":
            _launch_lock = threading.Lock()
        # the layer's own per-thread getter: numba.get_num_threads() first takes a process-wide lock, which
        # took 12 us after a memory-bound kernel had left the caches cold (a ReLU of 0.27 ms ran 4% slower)
        _thread_count = getattr(parallel, "_get_num_threads", None) or numba.get_num_threads
        _layer_ready = True


def launch(kernel, *args, blas=False):
    """Call the parallel kernel ``kernel(*args)``; ``blas``: its parts call BLAS, held to one thread meanwhile.

    Launches are serialized when the threading layer is not thread safe (workqueue).
    """
    if not _layer_ready:
        _load_threading_layer()
    if not blas and _launch_lock is None:  # the common case, without a context manager's 1 us
        return kernel(*args)
    with single_threaded_blas() if blas else contextlib.nullcontext(), _launch_lock or contextlib.nullcontext():
        return kernel(*args)


@contextlib.contextmanager
def serial():
    """Run this thread's kernel calls on this thread alone, BLAS included.

    For callers that parallelize themselves (Dask's threads or worker processes):
    their threads times ours would oversubscribe the cores. Numba's thread count is
    per calling thread, so kernels split into several parts (ReLU, pooling, Adam) run
    them all here.
    """
    if not _layer_ready:
        _load_threading_layer()  # before Numba's thread count is touched: that would start the default layer
    previous, previous_threads = getattr(_thread_state, "serial", False), numba.get_num_threads()
    _thread_state.serial = True
    numba.set_num_threads(1)
    try:
        with single_threaded_blas():
            yield
    finally:
        _thread_state.serial = previous
        numba.set_num_threads(previous_threads)


def _blas_controller():
    global _blas
    with _lock:
        if _blas is None:
            _blas = ThreadpoolController()
    return _blas


def _new_locks_after_fork():
    global _lock, _blas, _blas_users, _blas_limiter, _launch_lock, _kept_lock
    _lock, _blas, _blas_users, _blas_limiter = threading.Lock(), None, 0, None
    _kept_lock = threading.Lock()
    _launch_lock = threading.Lock() if _launch_lock is not None else None


os.register_at_fork(after_in_child=_new_locks_after_fork)


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
