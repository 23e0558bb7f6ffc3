"""Numba CUDA ReLU kernels (twin of ``cuda_c/relu.cu``): elementwise, grid-stride; NaN propagates.

Factories of compile-time configurations; see the package docstring.
"""
import functools

import numpy as np
from numba import cuda


@functools.lru_cache(maxsize=None)
def relu_forward_kernel_source(dtype):
    """y = max(x, 0) on flat arrays; NaN propagates."""
    ZERO = np.dtype(dtype).type(0)

    def relu_forward(x, y):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[i]
            y[i] = ZERO if v <= ZERO else v

    return relu_forward


@functools.lru_cache(maxsize=None)
def relu_backward_kernel_source(dtype):
    """dx = dy where y > 0, else 0, on flat arrays."""
    ZERO = np.dtype(dtype).type(0)

    def relu_backward(dy, y, dx):
        for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
            g = dy[i]
            dx[i] = g if y[i] > ZERO else ZERO

    return relu_backward
