"""Case lists shared by the tests (ops, simulated GPU backends, GPU): shapes and arguments, and their inputs."""
import itertools

import numpy as np

import reference as ref

# conv2d: the stride x padding x dilation matrix
STRIDES = [1, 2, (2, 3)]
PADDINGS = [0, 1, (1, 2), ((0, 2), (1, 0)), "valid", "same"]
DILATIONS = [1, 2, (1, 2)]
# (N, C, H, W, K, R, S): odd sizes, non-square images and kernels
GEOMETRIES = [(2, 3, 9, 11, 4, 3, 3), (1, 2, 8, 7, 3, 2, 3), (3, 1, 13, 6, 2, 5, 1), (2, 4, 7, 10, 5, 1, 4)]
CASES = [(g, s, p, d) for (s, p, d), g in zip(itertools.product(STRIDES, PADDINGS, DILATIONS),
                                                 itertools.cycle(GEOMETRIES))]
# the same matrix over smaller shapes, which the simulated GPUs run faster (ragged tile edges all the same)
SIMULATED_GEOMETRIES = [(2, 2, 7, 9, 3, 3, 3), (1, 2, 6, 7, 3, 2, 3), (2, 1, 9, 5, 2, 5, 1), (1, 3, 5, 10, 4, 1, 4)]
SIMULATED_CASES = [(g, s, p, d) for (s, p, d), g in zip(itertools.product(STRIDES, PADDINGS, DILATIONS),
                                                           itertools.cycle(SIMULATED_GEOMETRIES))]
GRAD_CASES = [((2, 2, 5, 6, 3, 3, 2), 1, "same", 1), ((1, 2, 7, 6, 2, 2, 3), (2, 1), ((1, 0), (2, 1)), 1),
              ((2, 1, 8, 7, 2, 3, 3), 2, "same", (2, 1)), ((1, 3, 6, 5, 2, 1, 1), 1, "valid", 1)]

# pooling: (shape, pool_size, strides, padding): overlapping windows, odd sizes, non-square everything
POOL_CASES = [
    ((2, 3, 8, 8), 2, None, "valid"),
    ((2, 2, 7, 9), 2, None, "valid"),
    ((1, 3, 7, 9), 3, 2, "valid"),  # overlapping
    ((2, 2, 7, 9), 2, None, "same"),
    ((1, 2, 10, 7), (3, 2), (2, 3), "same"),
    ((1, 1, 9, 9), 3, 1, "same"),  # overlapping, padded on every side
    ((3, 1, 6, 5), (2, 3), 1, "valid"),
    ((1, 2, 5, 11), (1, 4), (2, 3), "SAME"),
    ((2, 2, 9, 10), 3, None, "valid"),  # windows tile the input (3x3 at stride 3), a column left over
    ((1, 2, 8, 9), 2, 3, "valid"),  # gaps between windows: pixels in none get no gradient
]


def case_arrays(rng, geometry, dtype=np.float64):
    """x (N, C, H, W), w (K, C, R, S), b (K,) of standard normal values for a conv geometry."""
    N, C, H, W, K, R, S = geometry
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def explicit(shape, pool_size, strides, padding):
    """A pooling case's (pool, stride, ((top, bottom), (left, right))) for the references."""
    pool = ref.pair(pool_size)
    stride = pool if strides is None else ref.pair(strides)
    return pool, stride, ref.explicit_padding(padding.lower(), shape[2:], pool, stride)


def distinct_values(rng, shape):
    """A random permutation of well-separated values: no ties, and eps-perturbations never reorder."""
    return rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.01


def conv_case(geometry, stride, padding, dilation):
    """A conv case's (stride, ((top, bottom), (left, right)), dilation) for the references."""
    stride, dilation = ref.pair(stride), ref.pair(dilation)
    return stride, ref.explicit_padding(padding, geometry[2:4], geometry[5:7], stride, dilation), dilation
