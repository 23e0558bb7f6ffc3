"""The host side of the GPU backends, written once: shapes, allocation, tile and split planning.

``GpuOps`` implements the kernel contract (``gpuconv.kernels.api``) on top of a
few launch methods that each GPU backend provides: the Numba CUDA one
(``numba_cuda.backend``) and the CUDA C one (``cuda_c.backend``). Both run the same tiled
algorithms with the same tiles (``tiling``), so everything but the launch is shared.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
Arguments arrive normalized (see ``gpuconv.kernels.api``): ``stride``/``dilation``
are ``(h, w)`` pairs, ``padding`` is ``((top, bottom), (left, right))``.
"""
import functools

import numpy as np

from ..api import KERNELS
from ..indexing import output_hw
from . import tiling
from .tiling import ceil_div


class GpuOps:
    """Backend kernels over launch methods a subclass provides.

    A subclass sets ``name``, ``xp`` (CuPy on a GPU, NumPy when simulated on the
    host) and ``emulated`` (True on the host), and implements the ``_launch_*``
    methods. Every array they receive is C-contiguous and already allocated;
    absent arguments are ``None``.
    """
    name = None
    xp = np
    emulated = False

    def exports(self):
        """The module-level names of a backend: its kernels and ``check_array``."""
        return {op: getattr(self, op) for op in KERNELS + ("check_array",)}

    # ------------------------------------------------------------------ helpers

    def _new(self, shape, dtype, what):
        """A new device array; out-of-memory is reported with what was asked for."""
        out_of_memory = (MemoryError,) if self.xp is np else (MemoryError, self.xp.cuda.memory.OutOfMemoryError)
        try:
            return self.xp.empty(shape, dtype)
        except out_of_memory as error:
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            raise MemoryError(f"GPU out of memory allocating {what}: shape {tuple(shape)} {np.dtype(dtype)} "
                              f"({nbytes / 2**20:.1f} MiB); use a smaller batch") from error

    def _device_id(self):
        return 0 if self.emulated else self.xp.cuda.Device().id

    def _target_blocks(self):
        """Blocks that fill this GPU a few times over: 4 per SM (a fixed number per device: deterministic)."""
        return tiling.TARGET_BLOCKS if self.emulated else 4 * _multiprocessors(self._device_id())

    def _contiguous(self, array):
        return self.xp.ascontiguousarray(array)

    def check_array(self, array, name):
        """A GPU backend takes device (CuPy) arrays; when emulated on the host it takes NumPy arrays."""
        if self.emulated or hasattr(array, "__cuda_array_interface__"):
            return
        raise TypeError(f"{name} is a host array ({type(array).__module__}.{type(array).__name__}) but the "
                        f"active backend is {self.name!r} (GPU); move it to the GPU with cupy.asarray, or switch "
                        f"backend with gpuconv.set_backend('cpu')")

    # ------------------------------------------------------------------ conv2d

    def _conv(self, x, w, bias, y, geometry, pad_top, pad_left, relu, tile):
        """y (N, K, OH, OW) from x (N, C, H, W) and w (K, C, R, S); ``geometry`` = (R, S, SH, SW, DH, DW, UH, UW)."""
        C, K, OH, OW = x.shape[1], *y.shape[1:]
        if y.size:
            tile = tile or tiling.choose_conv_tile(C, K, OH, OW, geometry, x.dtype.itemsize, tiling.CONV_TILES)
            self._launch_conv(x, w, bias, y, geometry, pad_top, pad_left, bool(relu), tile)
        return y

    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, relu=False, tile=None):
        """y = relu?(conv2d(x, weight) + bias).

        x (N, C, H, W), weight (K, C, R, S), bias (K,) or None  ->  y (N, K, OH, OW).
        """
        N, C, H, W = x.shape
        K, _, R, S = weight.shape
        OH, OW = output_hw((H, W), padding, (R, S), stride, dilation)
        y = self._new((N, K, OH, OW), x.dtype, "the conv2d output")
        bias = None if bias is None else self._contiguous(bias)
        return self._conv(self._contiguous(x), self._contiguous(weight), bias, y, (R, S, *stride, *dilation, 1, 1),
                          padding[0][0], padding[1][0], relu, tile)

    def conv2d_backward_input(self, dy, weight, x_shape, stride, padding, dilation, tile=None):
        """dx of conv2d: dy (N, K, OH, OW), weight (K, C, R, S) -> dx with ``x_shape`` (N, C, H, W).

        The conv kernel again: a stride-1 convolution of dy upsampled by the
        stride (zeros inserted while staging) with the flipped filters as
        (C, K, R, S), padded by ``dilation*(R-1) - pad_top`` (may be negative).
        """
        K, C, R, S = weight.shape
        dx = self._new(x_shape, dy.dtype, "the conv2d input gradient")
        flipped = self._contiguous(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        pad_top = dilation[0] * (R - 1) - padding[0][0]
        pad_left = dilation[1] * (S - 1) - padding[1][0]
        return self._conv(self._contiguous(dy), flipped, None, dx, (R, S, 1, 1, *dilation, *stride),
                          pad_top, pad_left, False, tile)

    def conv2d_backward_weight(self, dy, x, weight_shape, stride, padding, dilation, tile=None, target_blocks=None):
        """dweight of conv2d: dy (N, K, OH, OW), x (N, C, H, W) -> (K, C, R, S).

        Deterministic: fixed splits of the N*OH*OW reduction, summed in order.
        """
        K, C, R, S = weight_shape
        N, _, OH, OW = dy.shape
        CRS = C * R * S
        dw = self._new((K, CRS), dy.dtype, "the conv2d weight gradient")
        if dw.size == 0:
            return dw.reshape(weight_shape)
        if N * OH * OW == 0:
            dw[...] = 0
            return dw.reshape(weight_shape)
        tile = tile or tiling.choose_weight_grad_tile(K, CRS, tiling.WEIGHT_GRAD_TILES)
        k_tiles, j_tiles = ceil_div(K, tile.filters), ceil_div(CRS, tile.taps)
        chunks = ceil_div(N * OH * OW, tile.chunk)
        splits, per_split = tiling.weight_grad_splits(k_tiles, j_tiles, chunks, target_blocks or self._target_blocks())
        partial = dw.reshape(1, K, CRS) if splits == 1 else self._new((splits, K, CRS), dy.dtype, "dW partial sums")
        self._launch_weight_grad(self._contiguous(dy), self._contiguous(x), partial, (R, S, *stride, *dilation),
                                 padding[0][0], padding[1][0], per_split, tile)
        if splits > 1:
            self._launch_sum_splits(partial.reshape(splits, -1), dw.reshape(-1))
        return dw.reshape(weight_shape)

    def conv2d_backward_bias(self, dy):
        """dbias of conv2d: dy (N, K, OH, OW) -> (K,), summed over N, OH, OW in a fixed order."""
        N, K, OH, OW = dy.shape
        db = self._new((K,), dy.dtype, "the conv2d bias gradient")
        if K:
            self._launch_bias_grad(self._contiguous(dy).reshape(N, K, OH * OW), db)
        return db

    # ------------------------------------------------------------------ pooling

    def pool2d_forward(self, x, mode, pool, stride, padding):
        """Max or average pooling: x (N, C, H, W) -> (y (N, C, OH, OW), argmax int32 or None).

        ``argmax`` is the row-major index ``r*PW + s`` of the chosen element in its window.
        """
        N, C, H, W = x.shape
        OH, OW = output_hw((H, W), padding, pool, stride)
        is_max = mode == "max"
        y = self._new((N, C, OH, OW), x.dtype, "the pooling output")
        argmax = self._new((N, C, OH, OW), np.int32, "the max-pool argmax") if is_max else None
        if y.size:
            self._launch_pool_forward(self._contiguous(x), y, argmax, is_max, (*pool, *stride),
                                      padding[0][0], padding[1][0])
        return y, argmax

    def pool2d_backward(self, dy, argmax, x_shape, mode, pool, stride, padding):
        """Gradient of pool2d_forward: dy (N, C, OH, OW) -> dx with ``x_shape``, gathered per input pixel."""
        is_max = mode == "max"
        dx = self._new(x_shape, dy.dtype, "the pooling input gradient")
        if dx.size:
            argmax = self._contiguous(argmax) if is_max else None
            self._launch_pool_backward(self._contiguous(dy), argmax, dx, is_max, (*pool, *stride),
                                       padding[0][0], padding[1][0])
        return dx

    # ------------------------------------------------------------------ ReLU

    def relu_forward(self, x):
        """y = max(x, 0), any shape; NaN propagates."""
        y = self._new(x.shape, x.dtype, "the ReLU output")
        if x.size:
            self._launch_relu_forward(self._contiguous(x).reshape(-1), y.reshape(-1))
        return y

    def relu_backward(self, dy, y):
        """dx = dy where the forward output y > 0, else 0."""
        dx = self._new(dy.shape, dy.dtype, "the ReLU input gradient")
        if dy.size:
            self._launch_relu_backward(self._contiguous(dy).reshape(-1), self._contiguous(y).reshape(-1),
                                       dx.reshape(-1))
        return dx


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id):
    import cupy
    return cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]
