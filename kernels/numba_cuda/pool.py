"""Numba CUDA pooling kernels (twin of ``cuda_c/pool.cu``): max (with argmax) and average, one thread
per element. The backward gathers per input pixel over the windows that cover it (no atomics); ties
and NaN follow the CPU backend (first maximum in row-major window order; NaN wins).

Factories of compile-time configurations; see the package docstring.
"""
import functools

import numpy as np
from numba import cuda

from .. import indexing

_clipped_window = cuda.jit(device=True)(indexing.clipped_window)
_covering_windows = cuda.jit(device=True)(indexing.covering_windows)
_unravel_nchw = cuda.jit(device=True)(indexing.unravel_nchw)


@functools.lru_cache(maxsize=None)
def pool_forward_kernel_source(dtype, is_max, window):
    """Max (with argmax) or average pooling, one thread per output.

    ``window`` = (PH, PW, SH, SW). Arguments: x (N, C, H, W), y (N, C, OH, OW),
    argmax int32 (N, C, OH, OW) or (1, 1, 1, 1), pad_top, pad_left.
    """
    PH, PW, SH, SW = window
    IS_MAX = is_max
    ZERO = np.dtype(dtype).type(0)

    def pool_forward(x, y, argmax, pad_top, pad_left):
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        OH, OW = y.shape[2], y.shape[3]
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, c, oh, ow = _unravel_nchw(i, C, OH, OW)
            h0 = oh * SH - pad_top
            w0 = ow * SW - pad_left
            r_lo, r_hi = _clipped_window(oh, SH, pad_top, PH, H)
            s_lo, s_hi = _clipped_window(ow, SW, pad_left, PW, W)
            if IS_MAX:
                best = x[n, c, h0 + r_lo, w0 + s_lo]
                best_at = r_lo * PW + s_lo
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        v = x[n, c, h0 + r, w0 + s]
                        if v > best or (v != v and best == best):  # first maximum; the first NaN wins
                            best = v
                            best_at = r * PW + s
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_at
            else:
                total = ZERO
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        total += x[n, c, h0 + r, w0 + s]
                # mean over the real (unpadded) elements only, as Keras does
                y[n, c, oh, ow] = total / ((r_hi - r_lo) * (s_hi - s_lo))

    return pool_forward


@functools.lru_cache(maxsize=None)
def pool_backward_kernel_source(dtype, is_max, window):
    """dx[n, c, h, w] = sum over the windows covering (h, w), in row-major order, of their gradient share.

    A gather per input pixel: no atomics, deterministic with overlapping windows.
    ``window`` = (PH, PW, SH, SW). Arguments: dy (N, C, OH, OW), argmax int32,
    dx (N, C, H, W), pad_top, pad_left.
    """
    PH, PW, SH, SW = window
    IS_MAX = is_max
    ZERO = np.dtype(dtype).type(0)

    def pool_backward(dy, argmax, dx, pad_top, pad_left):
        C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
        OH, OW = dy.shape[2], dy.shape[3]
        for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            n, c, h, w = _unravel_nchw(i, C, H, W)
            oh_lo, oh_hi = _covering_windows(h, SH, pad_top, PH, OH)
            ow_lo, ow_hi = _covering_windows(w, SW, pad_left, PW, OW)
            total = ZERO
            for oh in range(oh_lo, oh_hi):
                r = h - (oh * SH - pad_top)
                for ow in range(ow_lo, ow_hi):
                    s = w - (ow * SW - pad_left)
                    g = dy[n, c, oh, ow]
                    if IS_MAX:
                        if argmax[n, c, oh, ow] == r * PW + s:
                            total += g
                    else:
                        r_lo, r_hi = _clipped_window(oh, SH, pad_top, PH, H)
                        s_lo, s_hi = _clipped_window(ow, SW, pad_left, PW, W)
                        total += g / ((r_hi - r_lo) * (s_hi - s_lo))
            dx[n, c, h, w] = total

    return pool_backward
