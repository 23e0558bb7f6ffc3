"""CPU matrix product split over the cores, for the dense layers.

Inside a training session BLAS is held to one thread (its idle threads' spinning slowed the
conv kernels' own threads), so a plain ``a @ b`` there runs on one core. Here the output is
split into one single-threaded GEMM per part, called straight through SciPy's BLAS
(``numba_xxgemm``, what Numba's np.dot calls), which takes strided and transposed operands:
the split goes across the larger operand, so each part packs only its share of it. (Split
by rows of ``a``, each part packed all of ``b``: the dense layer's (64 x 3136) @ (3136 x 128)
took 0.31 ms for half the rows, 0.40 for all, on one core.) Every output element is computed
by one GEMM, so results do not depend on timing.

Layouts: ``a`` and ``b`` C- or F-contiguous (a transposed view is F), the output C-contiguous.
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import runtime
from .runtime import PARALLEL, part_range

PARALLEL_MIN_FLOPS = 4 << 20  # below this the split costs more than it saves


# Numba's own entry to SciPy's ?gemm (what np.dot compiles to), called by name, so kernels stay cacheable;
# pointers as void*, kind 's' or 'd'; it returns nonzero when SciPy's BLAS is missing
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,  # kind, transa, transb, m, n, k
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,    # alpha, a, lda, b, ldb
    types.voidptr, types.voidptr, types.intp))                              # beta, c, ldc
_N, _T = ord("n"), ord("t")


@intrinsic
def _pointer(typingctx, address):
    """The integer ``address`` as a void*."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.intp), codegen


@njit(inline="always")
def _gemm(a, b, out, i0, i1, j0, j1):
    """out[i0:i1, j0:j1] = a[i0:i1] @ b[:, j0:j1] by one BLAS call. BLAS is column-major, so it computes the
    transposed product, ``outᵀ = bᵀ aᵀ``: a C-contiguous operand is read as its transpose ('n'), an F one
    transposed ('t')."""
    m, n, k = i1 - i0, j1 - j0, a.shape[1]
    b_c, a_c = b.strides[1] == b.itemsize, a.strides[1] == a.itemsize
    size = out.itemsize
    scalars = np.empty(2, out.dtype)
    scalars[0], scalars[1] = 1, 0  # alpha, beta
    _xxgemm(np.int8(ord("s") if size == 4 else ord("d")), np.int8(_N if b_c else _T), np.int8(_N if a_c else _T),
            n, m, k, _pointer(scalars.ctypes.data),
            _pointer(b.ctypes.data + size * (j0 if b_c else j0 * k)), b.shape[1] if b_c else k,
            _pointer(a.ctypes.data + size * (i0 * k if a_c else i0)), k if a_c else a.shape[0],
            _pointer(scalars.ctypes.data + size), _pointer(out.ctypes.data + size * (i0 * out.shape[1] + j0)),
            out.shape[1])


@njit(**PARALLEL)
def _split_gemm(a, b, out, parts, by_columns):
    for part in prange(parts):
        if by_columns:
            j0, j1 = part_range(out.shape[1], parts, part)
            _gemm(a, b, out, 0, out.shape[0], j0, j1)
        else:
            i0, i1 = part_range(out.shape[0], parts, part)
            _gemm(a, b, out, i0, i1, 0, out.shape[1])


def _blas_layout(array):
    return array.flags.c_contiguous or array.flags.f_contiguous


def matmul(a, b):
    """a @ b for NumPy arrays: 2-D products of float32/float64 split over the cores; anything else as NumPy does."""
    if (a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64)
            or a.shape[1] != b.shape[0]):
        return a @ b
    m, k = a.shape
    n = b.shape[1]
    by_columns = n >= m  # split across the larger operand (b: k x n, a: m x k): each part packs its share of it
    parts = min(runtime.threads(), n if by_columns else m, max(1, 2 * m * n * k // PARALLEL_MIN_FLOPS))
    if parts <= 1 or k == 0 or max(m, n, k) >= 1 << 31:
        return a @ b
    a, b = (x if _blas_layout(x) else np.ascontiguousarray(x) for x in (a, b))
    out = np.empty((m, n), a.dtype)
    runtime.launch(_split_gemm, a, b, out, parts, by_columns, blas=True)
    return out
