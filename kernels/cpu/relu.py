"""CPU ReLU, forward and backward: elementwise Numba loops, split over the cores for large arrays.

The backward's choice is written so it compiles to a vector select, not a branch.
"""
import numpy as np
from numba import njit, prange

from . import runtime
from .runtime import PARALLEL, part_range


@njit(**PARALLEL)
def _relu_forward(x, y, parts):
    for p in prange(parts):
        i0, i1 = part_range(x.size, parts, p)
        xs, ys = x[i0:i1], y[i0:i1]  # loops over whole views vectorize; over range(i0, i1) they did not (3x slower)
        for i in range(xs.size):
            v = xs[i]
            ys[i] = 0 if v <= 0 else v  # NaN propagates


@njit(**PARALLEL)
def _relu_backward(dy, y, dx, parts):
    for p in prange(parts):
        i0, i1 = part_range(dx.size, parts, p)
        dys, ys, dxs = dy[i0:i1], y[i0:i1], dx[i0:i1]
        for i in range(dxs.size):
            g = dys[i]  # loaded unconditionally, so the choice compiles to a vector select, not a branch
            dxs[i] = g if ys[i] > 0 else 0


def relu_forward(x):
    """y = max(x, 0), any shape (0-d included)."""
    x = np.asarray(x, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    y = np.empty_like(x)
    runtime.launch(_relu_forward, x.reshape(-1), y.reshape(-1), runtime.parts(x.size, 1, runtime.SPLIT))
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0 (equivalently x > 0), else 0; any shape (0-d included)."""
    dy = np.asarray(dy, order="C")
    dx = np.empty_like(dy)
    runtime.launch(_relu_backward, dy.reshape(-1), np.asarray(y, order="C").reshape(-1), dx.reshape(-1),
                   runtime.parts(dy.size, 1, runtime.SPLIT))
    return dx
