"""2-D correlation and convolution with scipy.signal's semantics, computed by our conv kernels.

``correlate2d`` and ``convolve2d`` accept the same ``mode`` ('full', 'same',
'valid'), ``boundary`` ('fill', 'wrap', 'symm') and ``fillvalue`` as
``scipy.signal`` and return the same values and shape. Real inputs only.
Integer and boolean inputs are computed in float64 and cast back to the
integer result type, as scipy returns them (exact while sums stay below 2**53).

The lecture filters are named constants (3x3, float32), to be used with
``correlate2d`` the way the lecture applies them (``convolve2d`` flips them).

Images larger than memory: ``in1`` may be a ``dask.array.Array`` (the kernel stays a
small in-memory array). The result is then a lazy Dask array with the same value as
scipy.signal's on the whole image, for any chunking (chunks smaller than the kernel
and ragged last chunks included): each output chunk is the 'valid' correlation of
its input region plus a halo of the kernel's size, cut from the image extended by
the boundary rule, computed by gpuconv's kernel on the backend active at the call.
A block uses no threads of its own (``gpuconv.backend.serial``): Dask's threads or
workers are the parallelism, so the two never multiply.
"""
import sys
from typing import Any

import numpy as np

from gpuconv import backend
from gpuconv._types import ArrayLike

_MODES = ("full", "same", "valid")
_BOUNDARIES = {"fill": "constant", "pad": "constant", "wrap": "wrap", "circular": "wrap",
               "symm": "symmetric", "symmetric": "symmetric"}


def _filter(rows, scale=1.0):
    array = np.array(rows, np.float32) * np.float32(scale)
    array.setflags(write=False)
    return array


SHARPEN = _filter([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
LAPLACIAN = _filter([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
EMBOSS = _filter([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
OUTLINE = _filter([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])
SOBEL_TOP = _filter([[1, 2, 1], [0, 0, 0], [-1, -2, -1]])
SOBEL_BOTTOM = _filter([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
SOBEL_LEFT = _filter([[1, 0, -1], [2, 0, -2], [1, 0, -1]])
SOBEL_RIGHT = _filter([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
GAUSSIAN_BLUR = _filter([[1, 2, 1], [2, 4, 2], [1, 2, 1]], 1 / 16)
BOX_BLUR = _filter([[1, 1, 1], [1, 1, 1], [1, 1, 1]], 1 / 9)

FILTERS = {
    "sharpen": SHARPEN, "laplacian": LAPLACIAN, "emboss": EMBOSS, "outline": OUTLINE,
    "sobel_top": SOBEL_TOP, "sobel_bottom": SOBEL_BOTTOM, "sobel_left": SOBEL_LEFT,
    "sobel_right": SOBEL_RIGHT, "gaussian_blur": GAUSSIAN_BLUR, "box_blur": BOX_BLUR,
}


def correlate2d(in1: ArrayLike, in2: ArrayLike, mode: str = "full", boundary: str = "fill",
                fillvalue: float = 0) -> Any:
    """Cross-correlation of 2-D arrays, as ``scipy.signal.correlate2d``.

    Runs on the active backend; the result lives where the inputs do (NumPy in, NumPy
    out, even when a GPU backend computes it).
    """
    if _is_dask(in1):
        return _dask_filter(correlate2d, in1, in2, mode, boundary, fillvalue)
    in1, in2, mode, pad_mode, on_host = _check(in1, in2, mode, boundary)
    swapped = mode == "valid" and _valid_swap_needed(in1.shape, in2.shape)
    if swapped:
        in1, in2 = in2, in1
    out = _correlate_region(in1, in2, _extension(in1.shape, in2.shape, mode, False), pad_mode, fillvalue)
    return _returned(out[::-1, ::-1] if swapped else out, on_host)


def convolve2d(in1: ArrayLike, in2: ArrayLike, mode: str = "full", boundary: str = "fill",
               fillvalue: float = 0) -> Any:
    """Convolution of 2-D arrays (correlation with the flipped kernel), as ``scipy.signal.convolve2d``.

    Runs on the active backend; the result lives where the inputs do.
    """
    if _is_dask(in1):
        return _dask_filter(convolve2d, in1, in2, mode, boundary, fillvalue)
    in1, in2, mode, pad_mode, on_host = _check(in1, in2, mode, boundary)
    if mode == "valid" and _valid_swap_needed(in1.shape, in2.shape):
        in1, in2 = in2, in1  # convolution commutes
    pads = _extension(in1.shape, in2.shape, mode, True)
    return _returned(_correlate_region(in1, in2[::-1, ::-1], pads, pad_mode, fillvalue), on_host)


def _returned(out, on_host):
    """Back to the host when the inputs came from there."""
    return backend.to_host(out) if on_host else out


def _extension(in_shape, kernel_shape, mode, convolve):
    """Padding ``((top, bottom), (left, right))`` of the image whose 'valid' correlation with the kernel
    (flipped, for a convolution) is scipy's ``mode`` result. 'same' is centred on the 'full' result at
    scipy's centre: k//2 for a correlation, (k-1)//2 for a convolution."""
    offsets = {"full": (0, 0), "same": tuple((k - 1) // 2 if convolve else k // 2 for k in kernel_shape),
               "valid": tuple(k - 1 for k in kernel_shape)}[mode]
    out_shape = {"full": tuple(i + k - 1 for i, k in zip(in_shape, kernel_shape)), "same": tuple(in_shape),
                 "valid": tuple(i - k + 1 for i, k in zip(in_shape, kernel_shape))}[mode]
    # 'full' index i reads extended-input rows i - (k-1) .. i, so pad to cover the region asked for
    return tuple((k - 1 - off, off + out - size)
                 for k, off, out, size in zip(kernel_shape, offsets, out_shape, in_shape))


def _dtypes(image_dtype, kernel_dtype):
    """(result dtype, as scipy returns it; dtype the kernels compute in: float32/float64)."""
    result = np.result_type(image_dtype, kernel_dtype)
    work = result if result in (np.float32, np.float64) else np.float32 if result == np.float16 else np.float64
    return result, np.dtype(work)


def _correlate_region(in1, kernel, pads, pad_mode, fillvalue):
    """The 'valid' correlation of in1, extended by ``pads`` with ``pad_mode``, with kernel."""
    xp = backend.array_module(in1)
    result_dtype, work_dtype = _dtypes(in1.dtype, kernel.dtype)
    image = in1.astype(work_dtype, copy=False)
    if pad_mode == "constant":
        image = xp.pad(image, pads, mode="constant", constant_values=_fill(fillvalue, result_dtype, work_dtype))
    else:
        image = xp.pad(image, pads, mode=pad_mode)
    weight = xp.ascontiguousarray(kernel.astype(work_dtype, copy=False))
    kern = backend.kernels()
    out = kern.conv2d_forward(image[None, None], weight[None, None], None, (1, 1), ((0, 0), (0, 0)), (1, 1))
    return out[0, 0].astype(result_dtype, copy=False)


def _check(in1, in2, mode, boundary):
    """Inputs as arrays of the active backend, and whether both came from the host."""
    kern = backend.kernels()
    on_host = True
    for name, array in (("in1", in1), ("in2", in2)):
        if hasattr(array, "__cuda_array_interface__"):
            kern.check_array(array, name)  # a GPU array on the CPU backend: refused with a clear message
            on_host = False
    in1, in2 = backend.to_device(in1), backend.to_device(in2)
    _check_image(in1, "in1")
    _check_image(in2, "in2")
    _check_options(mode, boundary)
    return in1, in2, mode, _BOUNDARIES[boundary], on_host


def _check_image(array, name):
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {tuple(array.shape)}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {array.dtype}; gpuconv.signal takes real arrays")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(array.shape)}")


def _check_options(mode, boundary):
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(boundary, str) or boundary not in _BOUNDARIES:
        raise ValueError(f"boundary must be 'fill', 'wrap' or 'symm', got {boundary!r}")


def _is_dask(array):
    dask_array = sys.modules.get("dask.array")  # a Dask array means Dask is imported already
    return dask_array is not None and isinstance(array, dask_array.Array)


def _dask_filter(function, image, kernel, mode, boundary, fillvalue):
    """``function`` (correlate2d or convolve2d) of the Dask array ``image`` with an in-memory ``kernel``, lazily."""
    import dask.array as da
    kernel = np.asarray(backend.to_host(kernel.compute() if _is_dask(kernel) else kernel))
    _check_image(image, "in1")
    _check_image(kernel, "in2")
    _check_options(mode, boundary)
    (M1, N1), (M2, N2) = image.shape, kernel.shape
    if mode == "valid" and _valid_swap_needed(image.shape, kernel.shape) or \
            boundary not in ("fill", "pad") and (M2 > M1 or N2 > N1):
        # the image is no larger than the in-memory kernel (scipy swaps them, or wraps it more than once)
        return da.from_array(function(image.compute(), kernel, mode, boundary, fillvalue))
    pads = _extension(image.shape, kernel.shape, mode, function is convolve2d)
    if function is convolve2d:
        kernel = kernel[::-1, ::-1]
    result_dtype, work_dtype = _dtypes(image.dtype, kernel.dtype)
    out_shape = tuple(i + before + after - k + 1 for i, (before, after), k in zip(image.shape, pads, kernel.shape))
    extended = image.astype(work_dtype)
    if _BOUNDARIES[boundary] == "constant":
        extended = da.pad(extended, pads, mode="constant", constant_values=_fill(fillvalue, result_dtype, work_dtype))
    else:
        extended = da.pad(extended, pads, mode=_BOUNDARIES[boundary])
    rows, cols = (_output_chunks(chunks, size) for chunks, size in zip(image.chunks, out_shape))
    name = backend.get_backend()
    grid = []
    for i0, i1 in zip(np.cumsum((0,) + rows[:-1]), np.cumsum(rows)):
        row = []
        for j0, j1 in zip(np.cumsum((0,) + cols[:-1]), np.cumsum(cols)):
            region = extended[i0:i1 + M2 - 1, j0:j1 + N2 - 1]  # the block and its halo, one task's input
            region = region.rechunk(region.shape)
            row.append(region.map_blocks(_valid_block, kernel=kernel, backend_name=name, result_dtype=result_dtype,
                                         dtype=result_dtype, chunks=((i1 - i0,), (j1 - j0,))))
        grid.append(row)
    return da.block(grid)


def _fill(fillvalue, result_dtype, work_dtype):
    """The fill value as scipy uses it: converted to the result's dtype first (1.5 fills integers with 1)."""
    return work_dtype.type(np.asarray(fillvalue).astype(result_dtype))


def _output_chunks(chunks, size):
    """The input's chunk sizes along one axis, cut or extended at the end to sum to the output's ``size``."""
    out, total = [], 0
    for chunk in chunks:
        if total + chunk >= size:
            break
        out.append(chunk)
        total += chunk
    return tuple(out) + (size - total,)


def _valid_block(region, kernel, backend_name, result_dtype):
    """One Dask task: the 'valid' correlation of an extended region, on ``backend_name``, with no threads of
    its own; the result lives where the region does."""
    with backend.use_backend(backend_name), backend.serial():
        on_host = not hasattr(region, "__cuda_array_interface__")
        image, weight = backend.to_device(region), backend.to_device(kernel, dtype=region.dtype)
        out = backend.kernels().conv2d_forward(image[None, None], weight[None, None], None, (1, 1),
                                               ((0, 0), (0, 0)), (1, 1))[0, 0].astype(result_dtype, copy=False)
        return backend.to_host(out) if on_host else out


def _valid_swap_needed(shape1, shape2):
    """scipy's rule for 'valid': the larger input goes first; one must contain the other."""
    first_fits = all(a >= b for a, b in zip(shape1, shape2))
    second_fits = all(b >= a for a, b in zip(shape1, shape2))
    if not (first_fits or second_fits):
        raise ValueError("for mode 'valid', one input must be at least as large as the other in every "
                         f"dimension; got in1 {tuple(shape1)} and in2 {tuple(shape2)}")
    return not first_fits
