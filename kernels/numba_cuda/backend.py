"""Backend 'numba': the Numba CUDA kernels of this package, launched on CuPy arrays.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
The host side (shapes, allocation, planning) is ``gpuconv.kernels.gpu.ops.GpuOps``,
shared with the CUDA C backend; this module only picks the compiled kernel and
launches it (``runtime``: device, kernel cache, streams).
"""
import numpy as np

from ..gpu import tiling
from ..gpu.ops import GpuOps
from ..gpu.tiling import ConvTile, WeightGradTile  # noqa: F401  (tiles: for callers choosing them)
from . import conv, pool, reduce, relu, runtime, weight_grad
from .runtime import compiled, launch, launch_elementwise

name = "numba"
xp = runtime.xp
SIMULATOR = runtime.SIMULATOR
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

    def _launch_conv(self, x, w, bias, y, geometry, pad_top, pad_left, fuse_relu, tile):
        use_bias = bias is not None
        bias = bias if use_bias else self._placeholder(x.dtype)
        kernel = compiled(conv.conv_kernel_source, np.dtype(x.dtype), tile, geometry, fuse_relu, use_bias)
        blocks = tiling.grid_blocks(tiling.conv_tile_count(*y.shape[:2], *y.shape[2:], tile), 1)
        launch(kernel, blocks, tile.rows * tile.cols, x, w, bias, y, i64(pad_top), i64(pad_left))

    def _launch_weight_grad(self, dy, x, partial, geometry, pad_top, pad_left, per_split, tile):
        K, CRS = partial.shape[1:]
        blocks = partial.shape[0] * tiling.ceil_div(K, tile.filters) * tiling.ceil_div(CRS, tile.taps)
        kernel = compiled(weight_grad.weight_grad_kernel_source, np.dtype(dy.dtype), tile, geometry)
        launch(kernel, tiling.grid_blocks(blocks, 1), tile.threads_k * tile.threads_j,
               dy, x, partial, i64(pad_top), i64(pad_left), i64(per_split))

    def _launch_sum_splits(self, partial, out):
        launch_elementwise(compiled(reduce.sum_splits_kernel_source, np.dtype(out.dtype)), out.size, partial, out)

    def _launch_bias_grad(self, dy, db):
        kernel = compiled(reduce.bias_grad_kernel_source, np.dtype(dy.dtype), tiling.THREADS_1D)
        launch(kernel, tiling.grid_blocks(db.size, 1), tiling.THREADS_1D, dy, db)

    def _launch_pool_forward(self, x, y, argmax, is_max, window, pad_top, pad_left):
        argmax = argmax if is_max else self._placeholder(np.int32).reshape(1, 1, 1, 1)
        kernel = compiled(pool.pool_forward_kernel_source, np.dtype(x.dtype), is_max, window)
        launch_elementwise(kernel, y.size, x, y, argmax, i64(pad_top), i64(pad_left))

    def _launch_pool_backward(self, dy, argmax, dx, is_max, window, pad_top, pad_left):
        argmax = argmax if is_max else self._placeholder(np.int32).reshape(1, 1, 1, 1)
        kernel = compiled(pool.pool_backward_kernel_source, np.dtype(dy.dtype), is_max, window)
        launch_elementwise(kernel, dx.size, dy, argmax, dx, i64(pad_top), i64(pad_left))

    def _launch_relu_forward(self, x, y):
        launch_elementwise(compiled(relu.relu_forward_kernel_source, np.dtype(x.dtype)), x.size, x, y)

    def _launch_relu_backward(self, dy, y, dx):
        launch_elementwise(compiled(relu.relu_backward_kernel_source, np.dtype(dy.dtype)), dy.size, dy, y, dx)


ops = NumbaCudaOps()
globals().update(ops.exports())  # conv2d_forward, ..., relu_backward, check_array
