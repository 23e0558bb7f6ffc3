"""Backend 'cupy': the CUDA C kernels of this package (``*.cu``), compiled by NVRTC and launched through CuPy.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
The host side (shapes, allocation, planning) is ``gpuconv.kernels.gpu.ops.GpuOps``,
shared with the Numba CUDA backend; this module picks the module for a
configuration and launches (``runtime``: device, module cache). Arguments are
packed to the exact C types of each kernel by ``sources.pack``.
"""
from ..gpu import tiling
from ..gpu.ops import GpuOps
from ..gpu.tiling import ConvTile, WeightGradTile  # noqa: F401  (tiles: for callers choosing them)
from . import runtime, sources

name = "cupy"
xp = runtime.xp
EMULATED = runtime.EMULATED


class CupyRawKernelOps(GpuOps):
    """Launches of the CUDA C kernels: raw pointers plus 64-bit sizes, as ``sources.SIGNATURES`` declares."""
    name = name
    xp = xp
    emulated = EMULATED

    def _run(self, module, kernel, blocks, threads, *args):
        packed = sources.pack(kernel, sources.dtype_of(module), args)
        runtime.kernel(module, kernel, self._device_id())((blocks,), (threads,), packed)

    def _run_elementwise(self, module, kernel, items, *args):
        threads = tiling.THREADS_1D
        self._run(module, kernel, tiling.grid_blocks(items, threads), threads, *args)

    def _launch_conv(self, x, w, bias, y, geometry, pad_top, pad_left, fuse_relu, tile):
        (N, C, H, W), (K, OH, OW) = x.shape, y.shape[1:]
        module = sources.conv_module(x.dtype, tile, geometry, fuse_relu, bias is not None)
        blocks = tiling.grid_blocks(tiling.conv_tile_count(N, K, OH, OW, tile), 1)
        self._run(module, "conv2d", blocks, tile.rows * tile.cols, x, w, bias, y, N, C, H, W, K, OH, OW,
                  pad_top, pad_left)

    def _launch_weight_grad(self, dy, x, partial, geometry, pad_top, pad_left, per_split, tile):
        (N, K, OH, OW), (C, H, W) = dy.shape, x.shape[1:]
        splits, _, CRS = partial.shape
        blocks = splits * tiling.ceil_div(K, tile.filters) * tiling.ceil_div(CRS, tile.taps)
        self._run(sources.weight_grad_module(dy.dtype, tile, geometry), "conv2d_weight_grad",
                  tiling.grid_blocks(blocks, 1), tile.threads_k * tile.threads_j,
                  dy, x, partial, N, C, H, W, K, OH, OW, splits, pad_top, pad_left, per_split)

    def _launch_sum_splits(self, partial, out):
        module = sources.reduce_module(out.dtype, tiling.THREADS_1D)
        self._run_elementwise(module, "sum_splits", out.size, partial, out, partial.shape[0], out.size)

    def _launch_bias_grad(self, dy, db):
        module = sources.reduce_module(dy.dtype, tiling.THREADS_1D)
        self._run(module, "bias_grad", tiling.grid_blocks(db.size, 1), tiling.THREADS_1D, dy, db, *dy.shape)

    def _launch_pool_forward(self, x, y, argmax, is_max, window, pad_top, pad_left):
        module = sources.pool_module(x.dtype, is_max, window, tiling.THREADS_1D)
        self._run_elementwise(module, "pool_forward", y.size, x, y, argmax, *x.shape, *y.shape[2:],
                              pad_top, pad_left)

    def _launch_pool_backward(self, dy, argmax, dx, is_max, window, pad_top, pad_left):
        module = sources.pool_module(dy.dtype, is_max, window, tiling.THREADS_1D)
        self._run_elementwise(module, "pool_backward", dx.size, dy, argmax, dx, *dx.shape, *dy.shape[2:],
                              pad_top, pad_left)

    def _relu(self, kernel, *arrays):
        """16-byte packets when every pointer allows them, else one element at a time."""
        vector = 16 // arrays[0].itemsize if all(runtime.address(a) % 16 == 0 for a in arrays) else 1
        module = sources.relu_module(arrays[0].dtype, vector, tiling.THREADS_1D)
        n = arrays[0].size
        self._run_elementwise(module, kernel, tiling.ceil_div(n, vector), *arrays, n)

    def _launch_relu_forward(self, x, y):
        self._relu("relu_forward", x, y)

    def _launch_relu_backward(self, dy, y, dx):
        self._relu("relu_backward", dy, y, dx)


ops = CupyRawKernelOps()
globals().update(ops.exports())  # conv2d_forward, ..., relu_backward, check_array
