"""Index and shape arithmetic shared by every backend and by ``gpuconv``'s argument checks, written once.

It imports nothing from ``gpuconv`` or the backends: both sides build on it.

These functions take and return plain ints and use no Python objects, so the same
source compiles with ``numba.njit`` for the CPU kernels and with
``numba.cuda.jit(device=True)`` for the CUDA ones. Host-side code calls them
directly. All arithmetic is on Python/int64 integers: nothing here narrows to
32 bits, so tensors over 2**31 elements index correctly.

Conventions: a window (conv kernel tap or pooling window) of output position
``o`` starts at input index ``o * stride - pad_before``; tap ``t`` of it reads
input index ``o * stride - pad_before + t * dilation``.
"""


def conv_output_size(in_size, pad_total, kernel, stride, dilation):
    """Output length along one axis: floor((in + pad - dilation*(k-1) - 1) / stride) + 1."""
    return (in_size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def valid_output_range(tap_offset, pad_before, stride, in_size, out_size):
    """Outputs ``o`` in ``[lo, hi)`` whose input ``o*stride - pad_before + tap_offset`` is inside ``[0, in_size)``.

    ``tap_offset`` is ``t * dilation`` for conv tap ``t``. Outside that range the
    tap reads padding.
    """
    first = pad_before - tap_offset  # need o * stride >= first
    lo = 0
    if first > 0:
        lo = (first + stride - 1) // stride
    last = in_size - 1 + pad_before - tap_offset  # need o * stride <= last
    hi = 0
    if last >= 0:
        hi = last // stride + 1
    if hi > out_size:
        hi = out_size
    if lo > hi:
        lo = hi
    return lo, hi


def clipped_window(out_index, stride, pad_before, window, in_size):
    """Taps ``[lo, hi)`` of window ``out_index`` that fall on real (unpadded) input."""
    start = out_index * stride - pad_before
    lo = 0
    if start < 0:
        lo = -start
    hi = window
    if start + window > in_size:
        hi = in_size - start
    if lo > hi:
        lo = hi
    return lo, hi


def covering_windows(in_index, stride, pad_before, window, out_size):
    """Outputs ``[lo, hi)`` whose window (of ``window`` taps, no dilation) contains input ``in_index``.

    Window ``o`` covers inputs ``o*stride - pad_before .. o*stride - pad_before + window - 1``;
    this is the gather form of a pooling backward pass.
    """
    hi = (in_index + pad_before) // stride + 1
    if hi > out_size:
        hi = out_size
    first = in_index + pad_before - window + 1  # need o * stride >= first
    lo = 0
    if first > 0:
        lo = (first + stride - 1) // stride
    if lo > hi:
        lo = hi
    return lo, hi


def unravel_nchw(flat_index, C, H, W):
    """``(n, c, h, w)`` of element ``flat_index`` of a C-contiguous (N, C, H, W) array."""
    w = flat_index % W
    h = (flat_index // W) % H
    plane = flat_index // (W * H)
    return plane // C, plane % C, h, w


def output_hw(in_hw, padding, kernel_hw, stride_hw, dilation_hw=(1, 1)):
    """Output ``(OH, OW)`` from normalized arguments: ``padding`` is ``((top, bottom), (left, right))``.

    Host side only (it takes tuples).
    """
    return tuple(conv_output_size(i, sum(p), k, s, d)
                 for i, p, k, s, d in zip(in_hw, padding, kernel_hw, stride_hw, dilation_hw))
