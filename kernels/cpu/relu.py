"""CPU ReLU, forward and backward: elementwise Numba loops, split over the cores for large arrays.

The backward's choice is written so it compiles to a vector select, not a branch. Large outputs
(``runtime.streams``: the forward's from half the last-level cache, the backward's from 4 MiB) are written a
cache line at a time with non-temporal stores (``runtime.line_intrinsic``), the ragged ends of each part by the
plain loops.
"""
import numpy as np
from numba import njit, prange

from . import runtime
from .runtime import CACHE_LINE, PARALLEL, line_phase, line_split, part_range, store_fence


@njit(inline="always")
def _relu(xs, ys):
    for i in range(ys.size):  # loops over whole views vectorize; over range(i0, i1) they did not (3x slower)
        v = xs[i]
        ys[i] = 0 if v <= 0 else v  # NaN propagates


@njit(inline="always")
def _relu_grad(dys, ys, dxs):
    for i in range(dxs.size):
        g = dys[i]  # loaded unconditionally, so the choice compiles to a vector select, not a branch
        dxs[i] = g if ys[i] > 0 else 0


def _relu_vector(builder, zero, x):
    return builder.select(builder.fcmp_ordered("<=", x, zero), zero, x)  # NaN propagates


def _relu_grad_vector(builder, zero, dy, y):
    return builder.select(builder.fcmp_ordered(">", y, zero), dy, zero)


_relu_line = runtime.line_intrinsic(_relu_vector, 1)
_relu_grad_line = runtime.line_intrinsic(_relu_grad_vector, 2)


@njit(**PARALLEL)
def _relu_forward(x, y, parts, stream):
    for p in prange(parts):
        i0, i1 = part_range(x.size, parts, p)
        a, b = line_split(i0, i1, line_phase(y), CACHE_LINE // y.itemsize) if stream else (i1, i1)
        _relu(x[i0:a], y[i0:a])
        for i in range(a, b, CACHE_LINE // y.itemsize):
            _relu_line(y, i, x)
        _relu(x[b:i1], y[b:i1])
        if stream:
            store_fence()


@njit(**PARALLEL)
def _relu_backward(dy, y, dx, parts, stream):
    for p in prange(parts):
        i0, i1 = part_range(dx.size, parts, p)
        a, b = line_split(i0, i1, line_phase(dx), CACHE_LINE // dx.itemsize) if stream else (i1, i1)
        _relu_grad(dy[i0:a], y[i0:a], dx[i0:a])
        for i in range(a, b, CACHE_LINE // dx.itemsize):
            _relu_grad_line(dx, i, dy, y)
        _relu_grad(dy[b:i1], y[b:i1], dx[b:i1])
        if stream:
            store_fence()


def relu_forward(x):
    """y = max(x, 0), any shape (0-d included)."""
    x = np.asarray(x, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    y = runtime.empty(x.shape, x.dtype)
    runtime.launch(_relu_forward, x.reshape(-1), y.reshape(-1), runtime.parts(x.size, 1, runtime.SPLIT),
                   runtime.streams(y, reread=True))
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0 (equivalently x > 0), else 0; any shape (0-d included)."""
    dy = np.asarray(dy, order="C")
    dx = runtime.empty(dy.shape, dy.dtype)
    runtime.launch(_relu_backward, dy.reshape(-1), np.asarray(y, order="C").reshape(-1), dx.reshape(-1),
                   runtime.parts(dy.size, 1, runtime.SPLIT), runtime.streams(dx))
    return dx
