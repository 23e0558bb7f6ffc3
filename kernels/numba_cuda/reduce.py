"""Numba CUDA reductions (twin of ``cuda_c/reduce.cu``): the dW split sum and the bias gradient,
both in a fixed order (deterministic, no atomics).

Factories of compile-time configurations; see the package docstring.
"""
import functools

import numba
import numpy as np
from numba import cuda


@functools.lru_cache(maxsize=None)
def sum_splits_kernel_source(dtype):
    """out[i] = partial[0, i] + partial[1, i] + ... in that order. Arguments: partial (splits, M), out (M,)."""
    ZERO = np.dtype(dtype).type(0)

    def sum_splits(partial, out):
        for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            total = ZERO
            for split in range(partial.shape[0]):
                total += partial[split, i]
            out[i] = total

    return sum_splits


@functools.lru_cache(maxsize=None)
def bias_grad_kernel_source(dtype, threads):
    """db[k] = sum over n, p of dy[n, k, p], one block per k, fixed-order tree reduction.

    Arguments: dy (N, K, OH*OW), db (K,). ``threads`` is a power of two.
    """
    THREADS = threads
    NT = numba.from_dtype(np.dtype(dtype))
    ZERO = np.dtype(dtype).type(0)

    def bias_grad(dy, db):
        N, K, P = dy.shape[0], dy.shape[1], dy.shape[2]
        partial = cuda.shared.array(THREADS, NT)
        tid = cuda.threadIdx.x
        for k in range(cuda.blockIdx.x, K, cuda.gridDim.x):
            total = ZERO
            for n in range(N):
                for p in range(tid, P, THREADS):
                    total += dy[n, k, p]
            partial[tid] = total
            cuda.syncthreads()
            step = THREADS // 2
            while step > 0:
                if tid < step:
                    partial[tid] += partial[tid + step]
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                db[k] = partial[0]
            cuda.syncthreads()  # partial is reused by the next k

    return bias_grad
