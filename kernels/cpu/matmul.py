"""CPU matrix product split over the cores, for the dense layers.

Inside a training session BLAS is held to one thread (its idle threads' spinning slowed the
conv kernels' own threads), so a plain ``a @ b`` there runs on one core. Here the product is
split by rows of ``a`` and of the output into one single-threaded GEMM per part. Every output
element is computed by one GEMM, so results do not depend on timing. A transposed ``a`` (the
layer input in a weight gradient) is left to NumPy: its row ranges are not contiguous, and
splitting its inner dimension instead (partial products, then a sum) measured slower.
"""
import numpy as np
from numba import njit, prange

from . import runtime
from .runtime import PARALLEL, part_range

PARALLEL_MIN_FLOPS = 4 << 20  # below this the split costs more than it saves


@njit(**PARALLEL)
def _row_parts(a, b, out, parts):
    for part in prange(parts):
        i0, i1 = part_range(a.shape[0], parts, part)
        np.dot(a[i0:i1], b, out[i0:i1])


def matmul(a, b):
    """a @ b for NumPy arrays: 2-D products of one float dtype split over the cores; anything else as NumPy does."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.kind != "f" or a.shape[1] != b.shape[0]:
        return a @ b
    m, k = a.shape
    n = b.shape[1]
    parts = min(runtime.threads(), m, max(1, 2 * m * n * k // PARALLEL_MIN_FLOPS))
    if parts <= 1 or k == 0 or not a.flags.c_contiguous:
        return a @ b
    out = np.empty((m, n), a.dtype)
    # row ranges of a C-contiguous ``a`` are contiguous; b may be either layout (a transposed weight is F)
    b = b if b.flags.c_contiguous or b.flags.f_contiguous else np.ascontiguousarray(b)
    runtime.launch(_row_parts, a, b, out, parts, blas=True)
    return out
