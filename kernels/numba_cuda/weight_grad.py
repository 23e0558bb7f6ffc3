"""Numba CUDA weight-gradient kernel (twin of ``cuda_c/weight_grad.cu``).

dW = dy x im2col(x) as a tiled GEMM whose im2col tile is gathered straight into shared memory.
The reduction over N*OH*OW is split across blocks into per-split partials, summed in a fixed order
(``reduce.sum_splits_kernel_source``): deterministic, no atomics.

Factories of compile-time configurations; see the package docstring.
"""
import functools

import numba
import numpy as np
from numba import cuda


@functools.lru_cache(maxsize=None)
def weight_grad_kernel_source(dtype, tile, geometry):
    """partial[split, k, c*R*S + r*S + s] = sum over this split's positions of dy * x (im2col gathered on the fly).

    ``geometry`` = (R, S, SH, SW, DH, DW). Arguments: dy (N, K, OH, OW),
    x (N, C, H, W), partial (splits, K, C*R*S), pad_top, pad_left, chunks_per_split.
    """
    BK, BJ, BQ, TK, TJ = tile
    R, S, SH, SW, DH, DW = geometry
    THREADS = TK * TJ
    MK, MJ = BK // TK, BJ // TJ
    LOAD_STEP = THREADS // BQ  # each thread loads one position of the chunk (THREADS % BQ == 0)
    TAPS = R * S
    # +1 column: loads write down a column, so rows must not share banks
    DY_ROW, COL_ROW = BK + 1, BJ + 1  # shared shapes must be plain constants to compile
    NT = numba.from_dtype(np.dtype(dtype))
    ZERO = np.dtype(dtype).type(0)

    def weight_grad(dy, x, partial, pad_top, pad_left, chunks_per_split):
        N, K, OH, OW = dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        CRS = C * TAPS
        P = OH * OW
        Q = N * P
        chunks = (Q + BQ - 1) // BQ
        k_tiles = (K + BK - 1) // BK
        j_tiles = (CRS + BJ - 1) // BJ
        total = partial.shape[0] * k_tiles * j_tiles
        dy_tile = cuda.shared.array((BQ, DY_ROW), NT)
        col_tile = cuda.shared.array((BQ, COL_ROW), NT)
        acc = cuda.local.array((MK, MJ), NT)
        a = cuda.local.array(MK, NT)
        b = cuda.local.array(MJ, NT)
        tid = cuda.threadIdx.x
        tk = tid % TK
        tj = tid // TK
        qq = tid % BQ
        row0 = tid // BQ
        for block in range(cuda.blockIdx.x, total, cuda.gridDim.x):
            j0 = (block % j_tiles) * BJ
            rest = block // j_tiles
            k0 = (rest % k_tiles) * BK
            split = rest // k_tiles
            for i in range(MK):
                for m in range(MJ):
                    acc[i, m] = ZERO
            chunk_hi = min((split + 1) * chunks_per_split, chunks)
            for chunk in range(split * chunks_per_split, chunk_hi):
                q = chunk * BQ + qq
                valid = q < Q
                n = q // P
                oh = (q % P) // OW
                ow = q % OW
                for kk in range(row0, BK, LOAD_STEP):
                    v = ZERO
                    if valid and k0 + kk < K:
                        v = dy[n, k0 + kk, oh, ow]
                    dy_tile[qq, kk] = v
                for jj in range(row0, BJ, LOAD_STEP):
                    j = j0 + jj
                    v = ZERO
                    if valid and j < CRS:
                        t = j % TAPS
                        h = oh * SH - pad_top + (t // S) * DH
                        w = ow * SW - pad_left + (t % S) * DW
                        if h >= 0 and h < H and w >= 0 and w < W:
                            v = x[n, j // TAPS, h, w]
                    col_tile[qq, jj] = v
                cuda.syncthreads()
                for p in range(BQ):
                    for i in range(MK):
                        a[i] = dy_tile[p, tk + i * TK]
                    for m in range(MJ):
                        b[m] = col_tile[p, tj + m * TJ]
                    for i in range(MK):
                        for m in range(MJ):
                            acc[i, m] += a[i] * b[m]
                cuda.syncthreads()
            for i in range(MK):
                k = k0 + tk + i * TK
                for m in range(MJ):
                    j = j0 + tj + m * TJ
                    if k < K and j < CRS:
                        partial[split, k, j] = acc[i, m]

    return weight_grad
