"""CUDA C backend ('cupy'): the kernels of the ``*.cu`` files, compiled by NVRTC and launched through CuPy.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
The host side (shapes, allocation, planning) is ``gpu_ops.GpuOps``, shared with
the Numba CUDA backend; this module loads modules and launches. Each
configuration (a .cu file plus tile and geometry ``-D`` defines, see ``cuda_c``)
is one ``cupy.RawModule``, cached per configuration and device (CuPy also caches
the compiled binary on disk). Kernels run on CuPy's current stream; arguments
are packed to the exact C types of each kernel by ``cuda_c.pack``.

With ``GPUCONV_CUDA_EMULATOR=1`` (set before this module is imported) the same
sources run on the host through ``cuda_emulator`` and tensors are NumPy arrays:
that is how CI tests the kernels' logic without a GPU. It is for tests only.
"""
import functools
import os

import numpy as np

from . import cuda_c, tiling
from .gpu_ops import GpuOps
from .tiling import ConvTile, WeightGradTile  # noqa: F401  (tiles: for callers choosing them)

name = "cupy"
EMULATOR_ENV = "GPUCONV_CUDA_EMULATOR"
EMULATED = os.environ.get(EMULATOR_ENV) == "1"

if EMULATED:
    from .cuda_emulator import EmulatedModule as _load_module
    xp = np
else:
    try:
        import cupy as xp
    except ImportError as error:
        raise RuntimeError("backend 'cupy' needs CuPy for your CUDA version, e.g. pip install cupy-cuda13x "
                           "(or pip install 'gpuconv[cuda]')") from error
    try:
        _devices = xp.cuda.runtime.getDeviceCount()
    except xp.cuda.runtime.CUDARuntimeError:
        _devices = 0
    if not _devices:
        raise RuntimeError(f"backend 'cupy' needs a CUDA GPU and CuPy found none; use backend 'cpu' (to test "
                           f"the kernels without a GPU, set {EMULATOR_ENV}=1 to run them on the host emulator)")

    def _load_module(module):
        return xp.RawModule(code=cuda_c.source(module), options=cuda_c.options(module))


@functools.lru_cache(maxsize=None)
def _kernel(module, kernel, device_id):
    """The compiled ``kernel`` of ``module`` on a device: compiled once per configuration and device."""
    return _load_module(module).get_function(kernel)


def _address(array):
    return array.ctypes.data if EMULATED else array.data.ptr


class CupyRawKernelOps(GpuOps):
    """Launches of the CUDA C kernels: raw pointers plus 64-bit sizes, as ``cuda_c.SIGNATURES`` declares."""
    name = name
    xp = xp
    emulated = EMULATED

    def _run(self, module, kernel, blocks, threads, *args):
        packed = cuda_c.pack(kernel, cuda_c.dtype_of(module), args)
        _kernel(module, kernel, self._device_id())((blocks,), (threads,), packed)

    def _run_elementwise(self, module, kernel, items, *args):
        threads = tiling.THREADS_1D
        self._run(module, kernel, tiling.grid_blocks(items, threads), threads, *args)

    def _launch_conv(self, x, w, bias, y, geometry, pad_top, pad_left, relu, tile):
        (N, C, H, W), (K, OH, OW) = x.shape, y.shape[1:]
        module = cuda_c.conv_module(x.dtype, tile, geometry, relu, bias is not None)
        blocks = tiling.grid_blocks(tiling.conv_tile_count(N, K, OH, OW, tile), 1)
        self._run(module, "conv2d", blocks, tile.rows * tile.cols, x, w, bias, y, N, C, H, W, K, OH, OW,
                  pad_top, pad_left)

    def _launch_weight_grad(self, dy, x, partial, geometry, pad_top, pad_left, per_split, tile):
        (N, K, OH, OW), (C, H, W) = dy.shape, x.shape[1:]
        splits, _, CRS = partial.shape
        blocks = splits * tiling.ceil_div(K, tile.filters) * tiling.ceil_div(CRS, tile.taps)
        self._run(cuda_c.weight_grad_module(dy.dtype, tile, geometry), "conv2d_weight_grad",
                  tiling.grid_blocks(blocks, 1), tile.threads_k * tile.threads_j,
                  dy, x, partial, N, C, H, W, K, OH, OW, splits, pad_top, pad_left, per_split)

    def _launch_sum_splits(self, partial, out):
        module = cuda_c.reduce_module(out.dtype, tiling.THREADS_1D)
        self._run_elementwise(module, "sum_splits", out.size, partial, out, partial.shape[0], out.size)

    def _launch_bias_grad(self, dy, db):
        module = cuda_c.reduce_module(dy.dtype, tiling.THREADS_1D)
        self._run(module, "bias_grad", tiling.grid_blocks(db.size, 1), tiling.THREADS_1D, dy, db, *dy.shape)

    def _launch_pool_forward(self, x, y, argmax, is_max, window, pad_top, pad_left):
        module = cuda_c.pool_module(x.dtype, is_max, window, tiling.THREADS_1D)
        self._run_elementwise(module, "pool_forward", y.size, x, y, argmax, *x.shape, *y.shape[2:],
                              pad_top, pad_left)

    def _launch_pool_backward(self, dy, argmax, dx, is_max, window, pad_top, pad_left):
        module = cuda_c.pool_module(dy.dtype, is_max, window, tiling.THREADS_1D)
        self._run_elementwise(module, "pool_backward", dx.size, dy, argmax, dx, *dx.shape, *dy.shape[2:],
                              pad_top, pad_left)

    def _relu(self, kernel, *arrays):
        """16-byte packets when every pointer allows them, else one element at a time."""
        vector = 16 // arrays[0].itemsize if all(_address(a) % 16 == 0 for a in arrays) else 1
        module = cuda_c.relu_module(arrays[0].dtype, vector, tiling.THREADS_1D)
        n = arrays[0].size
        self._run_elementwise(module, kernel, tiling.ceil_div(n, vector), *arrays, n)

    def _launch_relu_forward(self, x, y):
        self._relu("relu_forward", x, y)

    def _launch_relu_backward(self, dy, y, dx):
        self._relu("relu_backward", dy, y, dx)


ops = CupyRawKernelOps()
globals().update(ops.exports())  # conv2d_forward, ..., relu_backward, check_array
