"""CPU backend: Numba kernels for conv2d, pooling and ReLU, forward and backward.

Layouts: activations NCHW, conv weights KCRS, all C-contiguous float32 or float64.
Arguments arrive normalized (see ``gpuconv.geometry``): ``stride`` and
``dilation`` are ``(h, w)`` pairs, ``padding`` is ``((top, bottom), (left, right))``.

Convolution is im2col + one SGEMM/DGEMM per chunk (BLAS through NumPy). The
column matrix of a chunk is ``col[c*R*S + r*S + s, (n*rows + i)*OW + ow]``, so
one GEMM with ``W`` as a ``K x CRS`` matrix covers every image of the chunk.
Chunks (several images, or output rows of one image when an image alone is too
large) keep the workspace under ``WORKSPACE_BYTES`` however large the batch.
Copies that change layout are fused with useful work: the forward's
scatter back to NCHW adds the bias and applies the optional ReLU.

Pooling and ReLU are direct Numba loops, parallel over (image, channel) planes.
Max-pool stores the argmax as the row-major index inside the window. Backward
passes give each plane to one thread, which visits the windows in row-major
order: no atomics, and bit-identical results run to run even with overlapping
windows. Ties go to the first maximum in row-major order; a NaN in a window
wins (it propagates, as in other frameworks).

Integer arithmetic in Numba is int64, so indices do not overflow past 2**31.
"""
import contextlib
import ctypes
import ctypes.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit
from threadpoolctl import ThreadpoolController

from gpuconv.geometry import output_hw

from . import indexing

name = "cpu"
xp = np

# Extra memory per conv call: the default, and the cap (kept buffers stay within 2x the cap, 256 MiB).
WORKSPACE_BYTES = 8 << 20
WORKSPACE_LIMIT = 128 << 20
# Below this many elements a pooling/ReLU call runs on the calling thread alone.
PARALLEL_MIN_ELEMENTS = 1 << 15

_jit = dict(cache=True, nogil=True)
_valid_output_range = njit(inline="always")(indexing.valid_output_range)
_clipped_window = njit(inline="always")(indexing.clipped_window)


# --------------------------------------------------------------------------- helpers

def check_array(array, name):
    """The CPU backend takes host (NumPy) arrays only."""
    if hasattr(array, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array ({type(array).__module__}.{type(array).__name__}) but the "
                        f"active backend is 'cpu'; copy it to the host (e.g. cupy.asnumpy) or switch "
                        f"backend with gpuconv.set_backend")


def _keep_freed_memory_for_reuse():
    """Ask glibc to serve large arrays from its heap and keep freed memory for the next call.

    By default each multi-MiB array is a fresh mmap whose every page faults on first
    write; in a training step that allocates dozens of such arrays this cost a third of
    the time (106 -> 81 ms per MNIST step measured). Up to 32 MiB per array is served
    from the heap, and up to 512 MiB of free heap is kept. Process-wide; glibc only.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


if os.environ.get("GPUCONV_MALLOPT", "1") != "0":
    _keep_freed_memory_for_reuse()

_thread_state = threading.local()
_pool_lock = threading.Lock()
_pool = None
_blas = None


def _scratch(count, dtype):
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


def _workers():
    return max(1, numba.get_num_threads())


def _controller():
    global _pool, _blas
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="gpuconv-cpu")
            _blas = ThreadpoolController()
    return _pool, _blas


@contextlib.contextmanager
def session():
    """Hold BLAS to one thread for a block of many ops (a training loop).

    OpenBLAS's idle threads spin for a while after each multi-threaded call and steal
    the cores our kernels' threads need; a model's small matmuls lose little by
    running on one thread. Inside, every kernel still uses all cores.
    """
    with _controller()[1].limit(limits=1, user_api="blas"):
        yield


def _run_units(work, units):
    """Run ``work(n0, n1)`` for each image range, one per core, and return the results in order.

    Each range runs serially (Numba loops with ``nogil``, then a single-threaded
    GEMM) on its own Python thread, so cores never fight over spinning BLAS and
    Numba worker threads. A single range runs inline with multi-threaded BLAS.
    """
    if len(units) <= 1:
        return [work(*unit) for unit in units]
    pool, blas = _controller()
    with blas.limit(limits=1, user_api="blas"):
        return list(pool.map(lambda unit: work(*unit), units))


def _parallel_for(kernel, count, cost_per_item, *args):
    """Run ``kernel(i0, i1, *args)`` over ``[0, count)`` split into one contiguous range per worker.

    ``cost_per_item`` (elements touched per item) keeps small jobs inline, where
    a thread hand-off would cost more than it saves.
    """
    parts = min(_workers(), count, max(1, count * cost_per_item // PARALLEL_MIN_ELEMENTS))
    bounds = [count * i // parts for i in range(parts + 1)] if parts else []
    _run_units(lambda i0, i1: kernel(i0, i1, *args), list(zip(bounds[:-1], bounds[1:])))


def _image_units(n_images, out_h, out_w, bytes_per_column, budget):
    """Split the batch into contiguous image ranges, one per worker (one image each if images are huge)."""
    if out_h * out_w * bytes_per_column > budget // _workers():
        return [(n, n + 1) for n in range(n_images)]
    count = min(_workers(), n_images)
    if count == 0:
        return []
    bounds = [n_images * i // count for i in range(count + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _chunks(n0, n1, out_h, out_w, bytes_per_column, budget):
    """Yield ``(n0, n1, oh0, oh1)`` blocks of output columns whose workspace fits ``budget``.

    Whole images are grouped while one image fits; otherwise an image is split
    by output rows (never below one row, so a single output row whose columns
    exceed the budget is the one case allowed to exceed it).
    """
    per_image = out_h * out_w * bytes_per_column
    if per_image <= budget:
        step = max(1, budget // per_image)
        for a in range(n0, n1, step):
            yield a, min(a + step, n1), 0, out_h
    else:
        rows = max(1, budget // (out_w * bytes_per_column))
        for n in range(n0, n1):
            for oh0 in range(0, out_h, rows):
                yield n, n + 1, oh0, min(oh0 + rows, out_h)


def _budget(workspace_bytes):
    return min(WORKSPACE_BYTES if workspace_bytes is None else workspace_bytes, WORKSPACE_LIMIT)


# --------------------------------------------------------------------------- conv2d kernels
# Serial Numba loops (one image range per thread, see _run_units); 1-D row views keep
# the inner loops free of 4-D index arithmetic, and stride 1 gets a contiguous loop.

@njit(inline="always")
def _fill_zero(row, start, stop):
    for j in range(start, stop):
        row[j] = 0


@njit(**_jit)
def _im2col(x, col, n0, n1, oh0, oh1, R, S, sh, sw, pt, pl, dh, dw):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    nb, rows = n1 - n0, oh1 - oh0
    OW = col.shape[1] // (nb * rows)
    for crs in range(C * R * S):
        c, r, s = crs // (R * S), (crs // S) % R, crs % S
        lo, hi = _valid_output_range(s * dw, pl, sw, W, OW)
        w_first, count = lo * sw - pl + s * dw, hi - lo
        for n in range(nb):
            plane = x[n0 + n, c]
            for i in range(rows):
                h = (oh0 + i) * sh - pt + r * dh
                dst = col[crs, (n * rows + i) * OW:(n * rows + i + 1) * OW]
                if h < 0 or h >= H:
                    _fill_zero(dst, 0, OW)
                    continue
                _fill_zero(dst, 0, lo)
                _fill_zero(dst, hi, OW)
                src = plane[h]
                if sw == 1:
                    src, dst = src[w_first:w_first + count], dst[lo:hi]
                    for j in range(count):
                        dst[j] = src[j]
                else:
                    for j in range(count):
                        dst[lo + j] = src[w_first + j * sw]


@njit(**_jit)
def _col2im_add(dcol, dx, n0, n1, oh0, oh1, R, S, sh, sw, pt, pl, dh, dw):
    """dx[n0:n1] += col2im(dcol), the transpose of _im2col (fixed summation order)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    nb, rows = n1 - n0, oh1 - oh0
    OW = dcol.shape[1] // (nb * rows)
    for n in range(nb):
        for c in range(C):
            plane = dx[n0 + n, c]
            for r in range(R):
                for s in range(S):
                    crs = (c * R + r) * S + s
                    lo, hi = _valid_output_range(s * dw, pl, sw, W, OW)
                    w_first, count = lo * sw - pl + s * dw, hi - lo
                    for i in range(rows):
                        h = (oh0 + i) * sh - pt + r * dh
                        if h < 0 or h >= H:
                            continue
                        src = dcol[crs, (n * rows + i) * OW + lo:(n * rows + i) * OW + hi]
                        dst = plane[h]
                        if sw == 1:
                            dst = dst[w_first:w_first + count]
                            for j in range(count):
                                dst[j] += src[j]
                        else:
                            for j in range(count):
                                dst[w_first + j * sw] += src[j]


@njit(**_jit)
def _store_output(gemm_out, y, bias, use_bias, relu, n0, n1, oh0, oh1):
    """y[n0:n1, :, oh0:oh1] = epilogue(gemm_out), the (K, columns) GEMM result, with bias and ReLU fused.

    y is the output viewed as (N, K, OH*OW).
    """
    K = y.shape[1]
    OW = gemm_out.shape[1] // ((n1 - n0) * (oh1 - oh0))
    nb, rows = n1 - n0, oh1 - oh0
    zero = y.dtype.type(0)
    for n in range(nb):
        for k in range(K):
            b = bias[k] if use_bias else zero
            src = gemm_out[k, n * rows * OW:(n + 1) * rows * OW]
            dst = y[n0 + n, k, oh0 * OW:oh1 * OW]
            if relu:
                for j in range(rows * OW):
                    v = src[j] + b
                    dst[j] = zero if v <= 0 else v  # NaN is not <= 0, so it propagates
            else:
                for j in range(rows * OW):
                    dst[j] = src[j] + b


@njit(**_jit)
def _gather_columns(dy, dy_cols, n0, n1, oh0, oh1):
    """dy_cols[k, (n*rows + i)*OW + ow] = dy[n0 + n, k, (oh0 + i)*OW + ow]: NCHW -> (K, columns) for the GEMMs.

    dy is viewed as (N, K, OH*OW).
    """
    K = dy.shape[1]
    nb, rows = n1 - n0, oh1 - oh0
    OW = dy_cols.shape[1] // (nb * rows)
    for n in range(nb):
        for k in range(K):
            src = dy[n0 + n, k, oh0 * OW:oh1 * OW]
            dst = dy_cols[k, n * rows * OW:(n + 1) * rows * OW]
            for j in range(rows * OW):
                dst[j] = src[j]


def _geometry(R, S, stride, padding, dilation):
    return (R, S, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1])


def _plan(N, OH, OW, rows_a, rows_b, dtype, workspace_bytes):
    """Image ranges (one per worker) and, for each, its blocks of output columns with scratch matrices.

    ``blocks(n0, n1)`` yields ``((n0, n1, oh0, oh1), a, b)`` where ``a`` is
    ``(rows_a, columns)`` and ``b`` is ``(rows_b, columns)``, both carved from this
    thread's reusable workspace and together within the per-worker budget.
    """
    column_bytes = np.dtype(dtype).itemsize * (rows_a + rows_b)
    budget = _budget(workspace_bytes)
    units = _image_units(N, OH, OW, column_bytes, budget)
    per_worker = max(1, budget // max(1, min(len(units), _workers())))

    def blocks(a, b):
        for n0, n1, oh0, oh1 in _chunks(a, b, OH, OW, column_bytes, per_worker):
            cols = (n1 - n0) * (oh1 - oh0) * OW
            scratch = _scratch((rows_a + rows_b) * cols, dtype)
            yield ((n0, n1, oh0, oh1), scratch[:rows_a * cols].reshape(rows_a, cols),
                   scratch[rows_a * cols:].reshape(rows_b, cols))

    return units, blocks


def conv2d_forward(x, weight, bias, stride, padding, dilation, relu=False, workspace_bytes=None):
    """y = relu?(conv2d(x, weight) + bias).

    x (N, C, H, W), weight (K, C, R, S), bias (K,) or None  ->  y (N, K, OH, OW).
    """
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    OH, OW = output_hw((H, W), padding, (R, S), stride, dilation)
    x = np.ascontiguousarray(x)
    w_mat = np.ascontiguousarray(weight).reshape(K, C * R * S)
    use_bias = bias is not None
    bias = np.ascontiguousarray(bias) if use_bias else np.zeros(1, x.dtype)
    y = np.empty((N, K, OH, OW), x.dtype)
    y_rows = y.reshape(N, K, OH * OW)
    geometry = _geometry(R, S, stride, padding, dilation)
    units, blocks = _plan(N, OH, OW, C * R * S, K, x.dtype, workspace_bytes)

    def work(a, b):
        for block, col, gemm_out in blocks(a, b):
            _im2col(x, col, *block, *geometry)
            np.matmul(w_mat, col, out=gemm_out)
            _store_output(gemm_out, y_rows, bias, use_bias, relu, *block)

    _run_units(work, units)
    return y


def conv2d_backward_input(dy, weight, x_shape, stride, padding, dilation, workspace_bytes=None):
    """dx = d(loss)/dx of conv2d: a transposed convolution of dy with weight.

    dy (N, K, OH, OW), weight (K, C, R, S)  ->  dx with ``x_shape`` (N, C, H, W).
    """
    N, C, H, W = x_shape
    K, _, R, S = weight.shape
    OH, OW = dy.shape[2], dy.shape[3]
    dy_rows = np.ascontiguousarray(dy).reshape(N, K, OH * OW)
    w_mat_t = np.ascontiguousarray(weight).reshape(K, C * R * S).T
    dx = np.zeros(x_shape, dy.dtype)
    geometry = _geometry(R, S, stride, padding, dilation)
    units, blocks = _plan(N, OH, OW, C * R * S, K, dy.dtype, workspace_bytes)

    def work(a, b):
        for block, dcol, dy_cols in blocks(a, b):
            _gather_columns(dy_rows, dy_cols, *block)
            np.matmul(w_mat_t, dy_cols, out=dcol)
            _col2im_add(dcol, dx, *block, *geometry)

    _run_units(work, units)
    return dx


def conv2d_backward_weight(dy, x, weight_shape, stride, padding, dilation, workspace_bytes=None):
    """dweight = d(loss)/dweight of conv2d: a reduction over N, OH, OW.

    dy (N, K, OH, OW), x (N, C, H, W)  ->  dweight with ``weight_shape`` (K, C, R, S).
    Deterministic: each image range sums into its own partial, and the partials
    are added in a fixed order.
    """
    N = x.shape[0]
    K, C, R, S = weight_shape
    OH, OW = dy.shape[2], dy.shape[3]
    x = np.ascontiguousarray(x)
    dy_rows = np.ascontiguousarray(dy).reshape(N, K, OH * OW)
    geometry = _geometry(R, S, stride, padding, dilation)
    units, blocks = _plan(N, OH, OW, C * R * S, K, dy.dtype, workspace_bytes)

    def work(a, b):
        partial = np.zeros((K, C * R * S), dy.dtype)
        for block, col, dy_cols in blocks(a, b):
            _im2col(x, col, *block, *geometry)
            _gather_columns(dy_rows, dy_cols, *block)
            partial += dy_cols @ col.T
        return partial

    total = np.zeros((K, C * R * S), dy.dtype)
    for partial in _run_units(work, units):  # fixed order: deterministic
        total += partial
    return total.reshape(weight_shape)


def conv2d_backward_bias(dy):
    """dbias of conv2d: dy (N, K, OH, OW) -> (K,), summed over N, OH, OW."""
    return np.ascontiguousarray(dy).sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------- pooling kernels

_u = np.uint64


@njit(inline="always")
def _has_nan(plane):
    found = False
    for h in range(plane.shape[0]):
        for w in range(plane.shape[1]):
            found |= plane[h, w] != plane[h, w]
    return found


@njit(inline="always")
def _window_max(x_plane, h0, w0, r_lo, r_hi, s_lo, s_hi, PW):
    """Max and row-major index of the first maximum over taps [r_lo, r_hi) x [s_lo, s_hi); no NaN expected."""
    # indices are known non-negative here: unsigned indexing skips negative-index wraparound
    best = x_plane[_u(h0 + r_lo), _u(w0 + s_lo)]
    best_at = r_lo * PW + s_lo
    for r in range(r_lo, r_hi):
        for s in range(s_lo, s_hi):
            v = x_plane[_u(h0 + r), _u(w0 + s)]
            # branch-free: data-dependent branches mispredict on random data
            best_at += (r * PW + s - best_at) * (v > best)
            best = max(v, best)
    return best, best_at


@njit(inline="always")
def _window_max_nan(x_plane, h0, w0, r_lo, r_hi, s_lo, s_hi, PW):
    """As _window_max, but the first NaN in the window wins (NaN propagates)."""
    best = x_plane[h0 + r_lo, w0 + s_lo]
    best_at = r_lo * PW + s_lo
    for r in range(r_lo, r_hi):
        for s in range(s_lo, s_hi):
            v = x_plane[h0 + r, w0 + s]
            if v > best or (v != v and best == best):
                best, best_at = v, r * PW + s
    return best, best_at


@njit(inline="always")
def _max_pool_row(x_plane, y_plane, argmax_plane, oh, ow_lo, ow_hi, PH, PW, sh, sw, pt, pl):
    """Outputs [ow_lo, ow_hi) of row oh, windows clipped to the input, NaN-aware."""
    H, W = x_plane.shape
    h0 = oh * sh - pt
    r_lo, r_hi = _clipped_window(oh, sh, pt, PH, H)
    for ow in range(ow_lo, ow_hi):
        s_lo, s_hi = _clipped_window(ow, sw, pl, PW, W)
        best, best_at = _window_max_nan(x_plane, h0, ow * sw - pl, r_lo, r_hi, s_lo, s_hi, PW)
        y_plane[oh, ow] = best
        argmax_plane[oh, ow] = best_at


@njit(**_jit)
def _max_pool_forward(p0, p1, x, y, argmax, PH, PW, sh, sw, pt, pl):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    # outputs in [lo, hi) have windows wholly inside the input along that axis
    oh_in_lo, oh_in_hi = _valid_output_range(0, pt, sh, H - PH + 1, OH)
    ow_in_lo, ow_in_hi = _valid_output_range(0, pl, sw, W - PW + 1, OW)
    for plane in range(p0, p1):
        n, c = plane // C, plane % C
        x_plane, y_plane, argmax_plane = x[n, c], y[n, c], argmax[n, c]
        has_nan = _has_nan(x_plane)
        for oh in range(OH):
            if has_nan or oh < oh_in_lo or oh >= oh_in_hi:
                _max_pool_row(x_plane, y_plane, argmax_plane, oh, 0, OW, PH, PW, sh, sw, pt, pl)
                continue
            _max_pool_row(x_plane, y_plane, argmax_plane, oh, 0, ow_in_lo, PH, PW, sh, sw, pt, pl)
            _max_pool_row(x_plane, y_plane, argmax_plane, oh, ow_in_hi, OW, PH, PW, sh, sw, pt, pl)
            h0 = oh * sh - pt
            if PH == 2 and PW == 2:  # the common window, with constant loop bounds LLVM unrolls
                for ow in range(ow_in_lo, ow_in_hi):
                    best, best_at = _window_max(x_plane, h0, ow * sw - pl, 0, 2, 0, 2, 2)
                    y_plane[oh, ow] = best
                    argmax_plane[oh, ow] = best_at
                continue
            for ow in range(ow_in_lo, ow_in_hi):  # the hot loop: no clipping, no NaN
                best, best_at = _window_max(x_plane, h0, ow * sw - pl, 0, PH, 0, PW, PW)
                y_plane[oh, ow] = best
                argmax_plane[oh, ow] = best_at


@njit(**_jit)
def _window_counts(out_size, stride, pad, window, in_size):
    """Number of real (unpadded) elements in each window along one axis."""
    counts = np.empty(out_size, np.float64)
    for o in range(out_size):
        lo, hi = _clipped_window(o, stride, pad, window, in_size)
        counts[o] = hi - lo
    return counts


@njit(**_jit)
def _avg_pool_forward(p0, p1, x, y, PH, PW, sh, sw, pt, pl):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    row_counts = _window_counts(OH, sh, pt, PH, H)
    col_counts = _window_counts(OW, sw, pl, PW, W)
    for plane in range(p0, p1):
        n, c = plane // C, plane % C
        for oh in range(OH):
            h0 = oh * sh - pt
            r_lo, r_hi = _clipped_window(oh, sh, pt, PH, H)
            # tap by tap over the whole output row, so the inner loop runs along W
            acc = y[n, c, oh]
            _fill_zero(acc, 0, OW)
            for r in range(r_lo, r_hi):
                row = x[n, c, h0 + r]
                for s in range(PW):
                    lo, hi = _valid_output_range(s, pl, sw, W, OW)
                    w_first = lo * sw - pl + s
                    for j in range(hi - lo):
                        acc[lo + j] += row[w_first + j * sw]
            for ow in range(OW):  # mean over real elements only, as Keras does for 'same'
                acc[ow] /= row_counts[oh] * col_counts[ow]


@njit(**_jit)
def _pool_backward(p0, p1, dy, argmax, dx, is_max, PH, PW, sh, sw, pt, pl):
    """Each window sends its gradient back: max to its argmax, avg spread over its real elements.

    One thread owns each plane and visits its windows in row-major order, so
    overlapping windows need no atomics and every input pixel sums its
    contributions in the same order on every run.
    """
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    for plane in range(p0, p1):
        n, c = plane // C, plane % C
        dx_plane = dx[n, c]
        dx_plane[:] = 0
        for oh in range(OH):
            h0 = oh * sh - pt
            r_lo, r_hi = _clipped_window(oh, sh, pt, PH, H)
            for ow in range(OW):
                w0 = ow * sw - pl
                g = dy[n, c, oh, ow]
                if is_max:
                    tap = argmax[n, c, oh, ow]
                    dx_plane[h0 + tap // PW, w0 + tap % PW] += g
                    continue
                s_lo, s_hi = _clipped_window(ow, sw, pl, PW, W)
                g /= (r_hi - r_lo) * (s_hi - s_lo)
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        dx_plane[h0 + r, w0 + s] += g


def pool2d_forward(x, mode, pool, stride, padding):
    """Max or average pooling of x (N, C, H, W) -> (y (N, C, OH, OW), argmax int32 (N, C, OH, OW) or None).

    ``argmax`` holds, for max pooling, the row-major index ``r*PW + s`` of the chosen
    element inside its window.
    """
    N, C, H, W = x.shape
    OH, OW = output_hw((H, W), padding, pool, stride)
    x = np.ascontiguousarray(x)
    y = np.empty((N, C, OH, OW), x.dtype)
    args = (pool[0], pool[1], stride[0], stride[1], padding[0][0], padding[1][0])
    if mode == "max":
        argmax = np.empty((N, C, OH, OW), np.int32)
        _parallel_for(_max_pool_forward, N * C, x.size // max(N * C, 1), x, y, argmax, *args)
        return y, argmax
    _parallel_for(_avg_pool_forward, N * C, x.size // max(N * C, 1), x, y, *args)
    return y, None


def pool2d_backward(dy, argmax, x_shape, mode, pool, stride, padding):
    """Gradient of pool2d_forward: dy (N, C, OH, OW) -> dx with ``x_shape`` (N, C, H, W)."""
    dy = np.ascontiguousarray(dy)
    dx = np.empty(x_shape, dy.dtype)
    args = (pool[0], pool[1], stride[0], stride[1], padding[0][0], padding[1][0])
    is_max = mode == "max"
    argmax = np.ascontiguousarray(argmax) if is_max else np.zeros((1, 1, 1, 1), np.int32)
    _parallel_for(_pool_backward, x_shape[0] * x_shape[1], x_shape[2] * x_shape[3], dy, argmax, dx, is_max, *args)
    return dx


# --------------------------------------------------------------------------- ReLU kernels

@njit(**_jit)
def _relu_forward(i0, i1, x, y):
    for i in range(i0, i1):
        v = x[i]
        y[i] = 0 if v <= 0 else v  # NaN propagates


@njit(**_jit)
def _relu_backward(i0, i1, dy, y, dx):
    zero = dx.dtype.type(0)
    for i in range(i0, i1):
        g = dy[i]  # loaded unconditionally, so the choice compiles to a vector select, not a branch
        dx[i] = g if y[i] > 0 else zero


def relu_forward(x):
    """y = max(x, 0), any shape."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _parallel_for(_relu_forward, x.size, 1, x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0 (equivalently x > 0), else 0."""
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    _parallel_for(_relu_backward, dy.size, 1, dy.reshape(-1), np.ascontiguousarray(y).reshape(-1), dx.reshape(-1))
    return dx
