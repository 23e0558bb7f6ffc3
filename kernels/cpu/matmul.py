"""CPU matrix product split over the cores, for the dense layers.

Inside a training session BLAS is held to one thread (its idle threads' spinning slowed the
conv kernels' own threads), so a plain ``a @ b`` there runs on one core. Here the output is
cut into one row (or column) range per worker, each a single-threaded GEMM into its part of
the output: every output element is computed by one call, so results do not depend on timing.
"""
import numpy as np

from . import runtime

PARALLEL_MIN_FLOPS = 4 << 20  # below this a hand-off to the pool costs more than it saves


def matmul(a, b):
    """a @ b for NumPy arrays, 2-D products of one float dtype split over the cores; anything else as NumPy does."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.kind != "f" or a.shape[1] != b.shape[0]:
        return a @ b
    m, k = a.shape
    n = b.shape[1]
    parts = min(runtime.workers(), max(1, 2 * m * n * k // PARALLEL_MIN_FLOPS))
    if parts <= 1:
        return a @ b
    out = np.empty((m, n), a.dtype)
    by_rows = m >= n
    length = m if by_rows else n
    bounds = [length * i // parts for i in range(parts + 1)]

    def work(i0, i1):
        if by_rows:
            np.matmul(a[i0:i1], b, out=out[i0:i1])
        else:
            np.matmul(a, b[:, i0:i1], out=out[:, i0:i1])

    runtime.run_units(work, list(zip(bounds[:-1], bounds[1:])))
    return out
