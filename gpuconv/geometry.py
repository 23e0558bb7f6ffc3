"""Argument checking and output-shape arithmetic shared by every op and backend.

Everything here runs on the host on plain ints, before any kernel is called, so
each backend receives arguments that are already normalized:

* ``stride``, ``dilation``, ``pool_size``: pairs of positive ints ``(h, w)``;
* ``padding``: explicit ``((top, bottom), (left, right))`` of non-negative ints.

Every int argument is at most ``MAX_INT`` (2**31 - 1): kernels index in 64 bits, and
larger strides, paddings or windows would overflow their tile arithmetic. Outputs
larger than this machine's memory are refused before anything is allocated.
"""
import math
import numbers
import os

import numpy as np

from gpuconv.kernels.indexing import output_hw  # noqa: F401  (output sizes: written once, beside the kernels)

PADDING_FORMS = "an int, (ph, pw), ((top, bottom), (left, right)), 'valid' or 'same'"
MAX_INT = 2**31 - 1


def as_pair(value, name):
    """``3`` or ``(3, 3)`` -> ``(3, 3)``, checking both are positive ints (NumPy ints too, never bools)."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(v) for v in pair)):
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if max(pair) > MAX_INT:
        raise ValueError(f"{name} must be at most {MAX_INT}, got {value!r}")
    return int(pair[0]), int(pair[1])


def as_count(value, name):
    """A positive int (NumPy ints too, never bools), e.g. a layer's filters or units."""
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if not 0 < value <= MAX_INT:
        raise ValueError(f"{name} must be a positive int, at most {MAX_INT}; got {value!r}")
    return int(value)


def check_padding_form(padding, allow_explicit=True):
    """Refuse a padding of no accepted form (before any input size is known, e.g. in a layer's constructor)."""
    resolve_padding(padding, (1, 1), (1, 1), (1, 1), allow_explicit)


def same_padding(in_size, extent, stride):
    """Keras/TensorFlow 'same' padding along one axis: output ceil(in/stride), odd extra pad after.

    ``extent`` is the dilated kernel (or pooling window) size ``dilation*(k-1) + 1``.
    """
    out_size = -(-in_size // stride)
    total = max((out_size - 1) * stride + extent - in_size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, in_hw, extent_hw, stride_hw, allow_explicit=True):
    """Normalize any accepted padding form to ``((top, bottom), (left, right))``."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            return tuple(same_padding(i, e, s) for i, e, s in zip(in_hw, extent_hw, stride_hw))
        expected = PADDING_FORMS if allow_explicit else "'valid' or 'same'"
        raise ValueError(f"padding must be {expected}; got unknown string {padding!r}")
    if not allow_explicit:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if _is_int(padding):
        pads = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(p) for p in padding):
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    elif (isinstance(padding, (tuple, list)) and len(padding) == 2
          and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p)
                  for p in padding)):
        pads = tuple(tuple(p) for p in padding)
    else:
        raise TypeError(f"padding must be {PADDING_FORMS}; got {padding!r}")
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    if max(max(p) for p in pads) > MAX_INT:
        raise ValueError(f"padding must be at most {MAX_INT}, got {padding!r}")
    return tuple((int(a), int(b)) for a, b in pads)


def check_float_array(array, name, ndim=None, layout=None):
    """Reject wrong ndim and non-float dtypes with a message that names the argument."""
    dtype = np.dtype(array.dtype)
    if dtype not in (np.float32, np.float64):
        hint = f" Convert it first, e.g. {name}.astype(np.float32)." if dtype.kind in "biuc" else ""
        raise TypeError(f"{name} has dtype {dtype}; gpuconv kernels take float32 or float64.{hint}")
    if ndim is not None and array.ndim != ndim:
        what = f" {layout}" if layout else ""
        raise ValueError(f"{name} must be a {ndim}-D{what} array, got shape {tuple(array.shape)}")


def check_output_size(shape, dtype, what, cause):
    """Refuse an output larger than this machine's memory before allocating it; ``cause`` names the argument."""
    nbytes = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    if nbytes > memory_bytes():
        raise ValueError(f"{cause} makes {what} of shape {tuple(shape)} {np.dtype(dtype)}: {nbytes / 2**30:.1f} GiB, "
                         f"more than this machine's {memory_bytes() / 2**30:.1f} GiB of memory")


def memory_bytes():
    """Physical memory of this machine (the bound on any one output)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known
        return 1 << 62


def check_extent_fits(in_hw, padding, extent_hw, what):
    """The (dilated) kernel or window must fit inside the padded input on both axes."""
    padded = tuple(i + sum(p) for i, p in zip(in_hw, padding))
    if any(e > p for e, p in zip(extent_hw, padded)):
        raise ValueError(f"{what} (extent {extent_hw[0]}x{extent_hw[1]} after dilation) is larger than "
                         f"the padded input {padded[0]}x{padded[1]} (input {in_hw[0]}x{in_hw[1]}, "
                         f"padding {padding}); use a smaller kernel or more padding")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
