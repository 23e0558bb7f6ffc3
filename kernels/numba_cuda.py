"""Numba CUDA backend ('numba'): launches the kernels of ``numba_cuda_kernels`` on CuPy arrays.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
The host side (shapes, allocation, planning) is ``gpu_ops.GpuOps``, shared with
the CUDA C backend; this module compiles and launches.

Arrays are CuPy arrays on a real GPU: kernels take them zero-copy through
``__cuda_array_interface__`` and launch on CuPy's current stream. Under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) the same launchers take NumPy arrays.
Compiled kernels are cached per configuration.
"""
import functools

import numpy as np
from numba import config as _numba_config

try:
    from numba import cuda
except ImportError as error:  # pragma: no cover - depends on the installation
    raise RuntimeError("backend 'numba' needs the numba-cuda package: pip install 'gpuconv[cuda]'") from error

from . import numba_cuda_kernels as cuda_kernels
from . import tiling
from .gpu_ops import GpuOps
from .tiling import ConvTile, WeightGradTile  # noqa: F401  (tiles: for callers choosing them)

name = "numba"
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

if SIMULATOR:
    xp = np
else:
    if not cuda.is_available():
        raise RuntimeError("backend 'numba' needs a CUDA GPU and none was found (numba.cuda.is_available() is "
                           "False); use backend 'cpu', or set NUMBA_ENABLE_CUDASIM=1 before numba is imported "
                           "to run the kernels on Numba's CUDA simulator")
    try:
        import cupy as xp
    except ImportError as error:
        raise RuntimeError("backend 'numba' keeps tensors as CuPy arrays; install CuPy for your CUDA version, "
                           "e.g. pip install cupy-cuda13x") from error

_streams = {}


@functools.lru_cache(maxsize=None)
def _compiled(source, *config):
    """``cuda.jit`` of ``source(*config)``: one dispatcher per configuration, compiled on first launch."""
    return cuda.jit(source(*config))


def _launch(kernel, blocks, threads, *args):
    """Launch on CuPy's current stream, so the kernel is ordered with the CuPy work around it."""
    if SIMULATOR:
        kernel[blocks, threads](*args)
        return
    pointer = xp.cuda.get_current_stream().ptr
    stream = _streams.get(pointer)
    if stream is None:
        stream = _streams[pointer] = cuda.default_stream() if pointer == 0 else cuda.external_stream(pointer)
    kernel[blocks, threads, stream](*args)


def _launch_elementwise(kernel, items, *args):
    """Launch a one-thread-per-element (grid-stride) kernel over ``items`` elements."""
    threads = tiling.THREADS_1D
    _launch(kernel, tiling.grid_blocks(items, threads), threads, *args)


i64 = np.int64


class NumbaCudaOps(GpuOps):
    """Launches of the Numba CUDA kernels; the kernels take arrays, so shapes travel with them."""
    name = name
    xp = xp
    emulated = SIMULATOR

    def __init__(self):
        self._placeholders = {}

    def _placeholder(self, dtype):
        """A one-element array standing for an absent argument (no bias, no argmax), kept for reuse."""
        key = (np.dtype(dtype), self._device_id())
        if key not in self._placeholders:
            self._placeholders[key] = self._new((1,), dtype, "a placeholder argument")
        return self._placeholders[key]

    def _launch_conv(self, x, w, bias, y, geometry, pad_top, pad_left, relu, tile):
        use_bias = bias is not None
        bias = bias if use_bias else self._placeholder(x.dtype)
        kernel = _compiled(cuda_kernels.conv_kernel_source, np.dtype(x.dtype), tile, geometry, relu, use_bias)
        blocks = tiling.grid_blocks(tiling.conv_tile_count(*y.shape[:2], *y.shape[2:], tile), 1)
        _launch(kernel, blocks, tile.rows * tile.cols, x, w, bias, y, i64(pad_top), i64(pad_left))

    def _launch_weight_grad(self, dy, x, partial, geometry, pad_top, pad_left, per_split, tile):
        K, CRS = partial.shape[1:]
        blocks = partial.shape[0] * tiling.ceil_div(K, tile.filters) * tiling.ceil_div(CRS, tile.taps)
        kernel = _compiled(cuda_kernels.weight_grad_kernel_source, np.dtype(dy.dtype), tile, geometry)
        _launch(kernel, tiling.grid_blocks(blocks, 1), tile.threads_k * tile.threads_j,
                dy, x, partial, i64(pad_top), i64(pad_left), i64(per_split))

    def _launch_sum_splits(self, partial, out):
        _launch_elementwise(_compiled(cuda_kernels.sum_splits_kernel_source, np.dtype(out.dtype)), out.size,
                            partial, out)

    def _launch_bias_grad(self, dy, db):
        kernel = _compiled(cuda_kernels.bias_grad_kernel_source, np.dtype(dy.dtype), tiling.THREADS_1D)
        _launch(kernel, tiling.grid_blocks(db.size, 1), tiling.THREADS_1D, dy, db)

    def _launch_pool_forward(self, x, y, argmax, is_max, window, pad_top, pad_left):
        argmax = argmax if is_max else self._placeholder(np.int32).reshape(1, 1, 1, 1)
        kernel = _compiled(cuda_kernels.pool_forward_kernel_source, np.dtype(x.dtype), is_max, window)
        _launch_elementwise(kernel, y.size, x, y, argmax, i64(pad_top), i64(pad_left))

    def _launch_pool_backward(self, dy, argmax, dx, is_max, window, pad_top, pad_left):
        argmax = argmax if is_max else self._placeholder(np.int32).reshape(1, 1, 1, 1)
        kernel = _compiled(cuda_kernels.pool_backward_kernel_source, np.dtype(dy.dtype), is_max, window)
        _launch_elementwise(kernel, dx.size, dy, argmax, dx, i64(pad_top), i64(pad_left))

    def _launch_relu_forward(self, x, y):
        _launch_elementwise(_compiled(cuda_kernels.relu_forward_kernel_source, np.dtype(x.dtype)), x.size, x, y)

    def _launch_relu_backward(self, dy, y, dx):
        _launch_elementwise(_compiled(cuda_kernels.relu_backward_kernel_source, np.dtype(dy.dtype)), dy.size,
                            dy, y, dx)


ops = NumbaCudaOps()
globals().update(ops.exports())  # conv2d_forward, ..., relu_backward, check_array
