"""Numba CUDA backend ('numba'): launches the kernels of ``numba_cuda_kernels`` on CuPy arrays.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
Arguments arrive normalized (see ``gpuconv.geometry``): ``stride``/``dilation``
are ``(h, w)`` pairs, ``padding`` is ``((top, bottom), (left, right))``.

Arrays are CuPy arrays on a real GPU: kernels take them zero-copy through
``__cuda_array_interface__`` and launch on CuPy's current stream. Under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) the same launchers take NumPy arrays.
Each launcher picks a tile configuration from the shape; compiled kernels are
cached per configuration.
"""
import functools

import numpy as np
from numba import config as _numba_config

try:
    from numba import cuda
except ImportError as error:  # pragma: no cover - depends on the installation
    raise RuntimeError("backend 'numba' needs the numba-cuda package: pip install 'gpuconv[cuda]'") from error

from gpuconv.geometry import output_hw

from . import numba_cuda_kernels as cuda_kernels
from .numba_cuda_kernels import ConvTile, WeightGradTile, ceil_div  # noqa: F401  (tiles: for callers choosing them)

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

_OUT_OF_MEMORY = (MemoryError,) if SIMULATOR else (MemoryError, xp.cuda.memory.OutOfMemoryError)
_streams = {}


# --------------------------------------------------------------------------- launching

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
    """Launch a one-thread-per-element kernel over ``items`` elements."""
    threads = cuda_kernels.THREADS_1D
    _launch(kernel, cuda_kernels.grid_blocks(items, threads), threads, *args)


def _new(shape, dtype, what):
    """A new device array; out-of-memory is reported with what was asked for."""
    try:
        return xp.empty(shape, dtype)
    except _OUT_OF_MEMORY as error:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise MemoryError(f"GPU out of memory allocating {what}: shape {tuple(shape)} {np.dtype(dtype)} "
                          f"({nbytes / 2**20:.1f} MiB); use a smaller batch") from error


@functools.lru_cache(maxsize=None)
def _placeholder(dtype, ndim, device_id):
    """A one-element array standing for an absent argument (no bias, no argmax), kept for reuse."""
    return _new((1,) * ndim, dtype, "a placeholder argument")


def _device_id():
    return 0 if SIMULATOR else xp.cuda.Device().id


@functools.lru_cache(maxsize=None)
def _device_target_blocks(device_id):
    return 4 * cuda.get_current_device().MULTIPROCESSOR_COUNT


def _target_blocks():
    """Blocks that fill this GPU a few times over: 4 per SM (a fixed number per device: deterministic)."""
    if SIMULATOR:
        return cuda_kernels.TARGET_BLOCKS
    return _device_target_blocks(_device_id())


def check_array(array, name):
    """A GPU backend takes device (CuPy) arrays; the simulator takes NumPy arrays."""
    on_device = hasattr(array, "__cuda_array_interface__")
    if SIMULATOR or on_device:
        return
    raise TypeError(f"{name} is a host array ({type(array).__module__}.{type(array).__name__}) but the active "
                    f"backend is 'numba' (GPU); move it to the GPU with cupy.asarray, or switch backend with "
                    f"gpuconv.set_backend('cpu')")


def _i64(value):
    return np.int64(value)


def _contiguous(array):
    return xp.ascontiguousarray(array)


# --------------------------------------------------------------------------- conv2d

def _run_conv(x, w, bias, y, geometry, pad_top, pad_left, relu, tile):
    """Launch the conv kernel for y (N, K, OH, OW) from x (N, C, H, W) and w (K, C, R, S)."""
    N, C = x.shape[:2]
    K, OH, OW = y.shape[1:]
    if y.size == 0:
        return y
    tile = tile or cuda_kernels.choose_conv_tile(C, K, OH, OW, geometry, x.dtype.itemsize, cuda_kernels.CONV_TILES)
    use_bias = bias is not None
    if not use_bias:
        bias = _placeholder(np.dtype(x.dtype), 1, _device_id())
    kernel = _compiled(cuda_kernels.conv_kernel_source, np.dtype(x.dtype), tile, geometry, bool(relu), use_bias)
    blocks = cuda_kernels.grid_blocks(cuda_kernels.conv_tile_count(N, K, OH, OW, tile), 1)
    _launch(kernel, blocks, tile.rows * tile.cols, x, w, bias, y, _i64(pad_top), _i64(pad_left))
    return y


def conv2d_forward(x, weight, bias, stride, padding, dilation, relu=False, tile=None):
    """y = relu?(conv2d(x, weight) + bias).

    x (N, C, H, W), weight (K, C, R, S), bias (K,) or None  ->  y (N, K, OH, OW).
    """
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    OH, OW = output_hw((H, W), padding, (R, S), stride, dilation)
    y = _new((N, K, OH, OW), x.dtype, "the conv2d output")
    geometry = (R, S, *stride, *dilation, 1, 1)
    bias = None if bias is None else _contiguous(bias)
    return _run_conv(_contiguous(x), _contiguous(weight), bias, y, geometry,
                     padding[0][0], padding[1][0], relu, tile)


def conv2d_backward_input(dy, weight, x_shape, stride, padding, dilation, tile=None):
    """dx of conv2d: dy (N, K, OH, OW), weight (K, C, R, S) -> dx with ``x_shape`` (N, C, H, W).

    A stride-1 convolution of dy upsampled by the stride (zeros inserted while
    staging) with the flipped filters as (C, K, R, S), padded by
    ``dilation*(R-1) - pad_top`` (may be negative: the kernel takes any offset).
    """
    K, C, R, S = weight.shape
    dx = _new(x_shape, dy.dtype, "the conv2d input gradient")
    flipped = _contiguous(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    geometry = (R, S, 1, 1, *dilation, *stride)
    pad_top = dilation[0] * (R - 1) - padding[0][0]
    pad_left = dilation[1] * (S - 1) - padding[1][0]
    return _run_conv(_contiguous(dy), flipped, None, dx, geometry, pad_top, pad_left, False, tile)


def conv2d_backward_weight(dy, x, weight_shape, stride, padding, dilation, tile=None, target_blocks=None):
    """dweight of conv2d: dy (N, K, OH, OW), x (N, C, H, W) -> (K, C, R, S).

    Deterministic: fixed splits of the N*OH*OW reduction, summed in order.
    """
    K, C, R, S = weight_shape
    N, _, OH, OW = dy.shape
    CRS = C * R * S
    dw = _new((K, CRS), dy.dtype, "the conv2d weight gradient")
    if dw.size == 0:
        return dw.reshape(weight_shape)
    if N * OH * OW == 0:
        dw[...] = 0
        return dw.reshape(weight_shape)
    tile = tile or cuda_kernels.choose_weight_grad_tile(K, CRS, cuda_kernels.WEIGHT_GRAD_TILES)
    k_tiles, j_tiles = ceil_div(K, tile.filters), ceil_div(CRS, tile.taps)
    chunks = ceil_div(N * OH * OW, tile.chunk)
    splits, per_split = cuda_kernels.weight_grad_splits(k_tiles, j_tiles, chunks, target_blocks or _target_blocks())
    partial = dw.reshape(1, K, CRS) if splits == 1 else _new((splits, K, CRS), dy.dtype, "dW partial sums")
    geometry = (R, S, *stride, *dilation)
    kernel = _compiled(cuda_kernels.weight_grad_kernel_source, np.dtype(dy.dtype), tile, geometry)
    _launch(kernel, cuda_kernels.grid_blocks(splits * k_tiles * j_tiles, 1), tile.threads_k * tile.threads_j,
            _contiguous(dy), _contiguous(x), partial, _i64(padding[0][0]), _i64(padding[1][0]), _i64(per_split))
    if splits > 1:
        reduce = _compiled(cuda_kernels.sum_splits_kernel_source, np.dtype(dy.dtype))
        flat = dw.reshape(-1)
        _launch_elementwise(reduce, flat.size, partial.reshape(splits, -1), flat)
    return dw.reshape(weight_shape)


def conv2d_backward_bias(dy):
    """dbias of conv2d: dy (N, K, OH, OW) -> (K,), summed over N, OH, OW in a fixed order."""
    N, K, OH, OW = dy.shape
    db = _new((K,), dy.dtype, "the conv2d bias gradient")
    if K:
        kernel = _compiled(cuda_kernels.bias_grad_kernel_source, np.dtype(dy.dtype), cuda_kernels.THREADS_1D)
        dy_rows = _contiguous(dy).reshape(N, K, OH * OW)
        _launch(kernel, cuda_kernels.grid_blocks(K, 1), cuda_kernels.THREADS_1D, dy_rows, db)
    return db


# --------------------------------------------------------------------------- pooling

def pool2d_forward(x, mode, pool, stride, padding):
    """Max or average pooling: x (N, C, H, W) -> (y (N, C, OH, OW), argmax int32 or None).

    ``argmax`` is the row-major index ``r*PW + s`` of the chosen element in its window.
    """
    N, C, H, W = x.shape
    OH, OW = output_hw((H, W), padding, pool, stride)
    is_max = mode == "max"
    y = _new((N, C, OH, OW), x.dtype, "the pooling output")
    argmax = (_new((N, C, OH, OW), np.int32, "the max-pool argmax") if is_max
              else _placeholder(np.dtype(np.int32), 4, _device_id()))
    if y.size:
        kernel = _compiled(cuda_kernels.pool_forward_kernel_source, np.dtype(x.dtype), is_max, (*pool, *stride))
        _launch_elementwise(kernel, y.size, _contiguous(x), y, argmax, _i64(padding[0][0]), _i64(padding[1][0]))
    return y, (argmax if is_max else None)


def pool2d_backward(dy, argmax, x_shape, mode, pool, stride, padding):
    """Gradient of pool2d_forward: dy (N, C, OH, OW) -> dx with ``x_shape``, gathered per input pixel."""
    is_max = mode == "max"
    dx = _new(x_shape, dy.dtype, "the pooling input gradient")
    if argmax is None:
        argmax = _placeholder(np.dtype(np.int32), 4, _device_id())
    if dx.size:
        kernel = _compiled(cuda_kernels.pool_backward_kernel_source, np.dtype(dy.dtype), is_max, (*pool, *stride))
        _launch_elementwise(kernel, dx.size, _contiguous(dy), _contiguous(argmax), dx,
                            _i64(padding[0][0]), _i64(padding[1][0]))
    return dx


# --------------------------------------------------------------------------- ReLU

def relu_forward(x):
    """y = max(x, 0), any shape."""
    x = _contiguous(x)
    y = _new(x.shape, x.dtype, "the ReLU output")
    if x.size:
        kernel = _compiled(cuda_kernels.relu_forward_kernel_source, np.dtype(x.dtype))
        _launch_elementwise(kernel, x.size, x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0, else 0."""
    dy = _contiguous(dy)
    dx = _new(dy.shape, dy.dtype, "the ReLU input gradient")
    if dy.size:
        kernel = _compiled(cuda_kernels.relu_backward_kernel_source, np.dtype(dy.dtype))
        _launch_elementwise(kernel, dy.size, dy.reshape(-1), _contiguous(y).reshape(-1), dx.reshape(-1))
    return dx
