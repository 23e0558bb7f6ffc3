"""CPU conv2d computed directly, for few input channels: 3x3 filters, stride 1, no dilation, any padding.

With C = 1 (the first layer of an image model) im2col's GEMM has an inner dimension of 9:
it writes a column matrix 9 times the input and then streams it through a GEMM that
cannot reach BLAS speed. Here each output row is one vectorized loop over the row,
summing its 9 taps per channel from three rows of a zero-padded copy of the image:
every output is written once, and nothing larger than one padded image is built.

The weight gradient of a layer as wide as its input ('same' padding) is nine dot products
per filter and channel, each gradient plane against the input under one tap, two filters
at a time over the same stacked copies of the image as the forward (no column matrix);
other paddings take one small GEMM per image, ``dy[n] (K x P) @ col[n]ᵀ (P x 9C)``, over
the image's own column matrix (P = OH*OW). Either way dy is read where it lies, in NCHW.

Layouts: x NCHW, weight KCRS. Deterministic: fixed summation orders (the dot products'
vector lanes fixed per machine); per-image partial sums of the weight gradient are added
in image order.
"""
import numpy as np
from numba import njit, prange

from . import runtime
from .runtime import JIT, PARALLEL, fill_zero, part_range

_u = np.uint64  # unsigned indices: no negative-index wraparound code in the loops


def applies(weight_shape, stride, dilation):
    """The direct kernels compute this conv: 3x3 filters, stride 1, no dilation."""
    return tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def scratch_bytes(C, out_hw, itemsize):
    """Scratch per worker of the larger pass (the weight gradient's padded image and column matrix)."""
    OH, OW = out_hw
    return itemsize * (C * (OH + 2) * (OW + 2) + 9 * C * OH * OW + 2)


@njit(inline="always")
def _pad_image(x, n, top, left, padded):
    """padded[c, i, j] = x[n, c, i - top, j - left], 0 outside x."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    PH, PW = padded.shape[1], padded.shape[2]
    for c in range(C):
        for i in range(PH):
            row = padded[c, i]
            h = i - top
            if h < 0 or h >= H:
                fill_zero(row, 0, PW)
                continue
            lo, hi = max(0, left), min(PW, W + left)
            fill_zero(row, 0, lo)
            fill_zero(row, max(hi, lo), PW)
            src = x[n, c, h]
            for j in range(lo, hi):
                row[j] = src[j - left]


@njit(**JIT)
def _forward(x, weight, bias, use_bias, relu, y, n0, n1, top, left, padded, plane):
    """y[n] = relu?(Σ_c Σ_rs w[k, c, r, s] x[n, c, oh + r - top, ow + s - left] + b[k]) for images [n0, n1).

    padded: scratch of C * (OH + 2) * (OW + 2) + 2 elements; plane: scratch of OH * (OW + 2).
    Outputs are first computed over the padded image's width, so that tap (r, s) of output p is
    element p + r*(OW + 2) + s of the flat padded channel: one long loop per plane and channel
    (loops over 28-wide rows ran mostly in their scalar remainder); the two extra columns per
    row are dropped when the plane is stored.
    """
    C, K, OH, OW = x.shape[1], y.shape[1], y.shape[2], y.shape[3]
    PW = OW + 2
    size = OH * PW
    zero = y.dtype.type(0)
    flat = padded
    flat[C * (OH + 2) * PW:] = 0  # the 2 spare elements: read only by the last row's dropped columns
    for n in range(n0, n1):
        _pad_image(x, n, top, left, padded[:C * (OH + 2) * PW].reshape(C, OH + 2, PW))
        for k in range(K):
            b = bias[k] if use_bias else zero
            if C == 0:
                fill_zero(plane, 0, size)
            for c in range(C):
                w = weight[k, c]
                w00, w01, w02, w10, w11, w12, w20, w21, w22 = (w[0, 0], w[0, 1], w[0, 2], w[1, 0], w[1, 1],
                                                               w[1, 2], w[2, 0], w[2, 1], w[2, 2])
                start = c * (OH + 2) * PW
                r0, r1, r2 = flat[start:start + size + 2], flat[start + PW:start + PW + size + 2], \
                    flat[start + 2 * PW:start + 2 * PW + size + 2]
                if c == 0:  # the first channel writes, the others add
                    for p in range(size):
                        plane[p] = (w00 * r0[p] + w01 * r0[p + 1] + w02 * r0[p + 2]
                                    + w10 * r1[p] + w11 * r1[p + 1] + w12 * r1[p + 2]
                                    + w20 * r2[p] + w21 * r2[p + 1] + w22 * r2[p + 2])
                else:
                    for p in range(size):
                        plane[p] += (w00 * r0[p] + w01 * r0[p + 1] + w02 * r0[p + 2]
                                     + w10 * r1[p] + w11 * r1[p + 1] + w12 * r1[p + 2]
                                     + w20 * r2[p] + w21 * r2[p + 1] + w22 * r2[p + 2])
            ys = y.reshape(-1)
            for oh in range(OH):
                dst = (n * K + k) * OH * OW + oh * OW
                for j in range(OW):
                    v = plane[_u(oh * PW + j)] + b
                    ys[_u(dst + j)] = (zero if v <= 0 else v) if relu else v  # NaN is not <= 0: it propagates


@njit(inline="always")
def _taps(w00, w01, w02, w10, w11, w12, w20, w21, w22, r0, r1, r2, j):
    """The 9-tap sum of one output from three input rows, in the one order every path uses."""
    return (w00 * r0[j] + w01 * r0[j + 1] + w02 * r0[j + 2] + w10 * r1[j] + w11 * r1[j + 1] + w12 * r1[j + 2]
            + w20 * r2[j] + w21 * r2[j + 1] + w22 * r2[j + 2])


@njit(inline="always")
def _stack_image(x, n, top, OH, stacked):
    """stacked[s, c] = image n's channel c as OH + 2 rows of x's width W (rows past x zero), flat, between a
    zero before and after; copy s = 0 with each row's last column zeroed, s = 2 its first (see
    ``_forward_same_width``)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    rows = (OH + 2) * W + 2
    for s in range(3):
        for c in range(C):  # the channel's rows between zero rows
            flat = stacked[s, c]
            flat[0] = 0
            flat[rows - 1] = 0
            for i in range(OH + 2):
                h = i - top
                dst = flat[1 + i * W:1 + (i + 1) * W]
                if 0 <= h < H:
                    src = x[n, c, h]
                    for j in range(W):
                        dst[j] = src[j]
                else:
                    fill_zero(dst, 0, W)
                if s == 0:
                    dst[W - 1] = 0
                elif s == 2:
                    dst[0] = 0


@njit(inline="always")
def _tap_views(stacked, c, W, size):
    """The input under tap (r, s) of every output p of channel c, as nine views (l, m, r: s = 0, 1, 2) in the
    order (0, 0), (0, 1), (0, 2), (1, 0), ...: copy s from p + r*W. Indices with a run-time offset (p + W)
    kept the loops scalar (9x slower)."""
    left, middle, right = stacked[0, c], stacked[1, c], stacked[2, c]
    return (left[0:size], middle[1:size + 1], right[2:size + 2],
            left[W:W + size], middle[W + 1:W + size + 1], right[W + 2:W + size + 2],
            left[2 * W:2 * W + size], middle[2 * W + 1:2 * W + size + 1], right[2 * W + 2:2 * W + size + 2])


@njit(**JIT)
def _forward_same_width(x, weight, bias, use_bias, relu, y, n0, n1, top, stacked):
    """As _forward for outputs as wide as the input (padding 1 left and right), written straight into y.

    ``stacked`` (scratch (3, C, (OH + 2) * W + 2)) holds each channel's rows with zero rows above and
    below and one zero before and after, so that tap (r, s) of output p = oh*W + ow is element
    p + r*W + s: the whole plane in one loop. Reading past a row's end lands on the neighbouring
    row, where the padding column should be: copy s = 0, read by the left taps, has each row's last
    column zeroed, and copy s = 2 its first column, so those reads find the padding's zero.
    """
    C, W = x.shape[1], x.shape[3]
    K, OH = y.shape[1], y.shape[2]
    size = OH * W
    zero = y.dtype.type(0)
    ys = y.reshape(-1)
    for n in range(n0, n1):
        _stack_image(x, n, top, OH, stacked)
        for k in range(K):
            b = bias[k] if use_bias else zero
            plane = ys[(n * K + k) * size:(n * K + k + 1) * size]
            for c in range(C):
                w = weight[k, c]
                w00, w01, w02, w10, w11, w12, w20, w21, w22 = (w[0, 0], w[0, 1], w[0, 2], w[1, 0], w[1, 1],
                                                               w[1, 2], w[2, 0], w[2, 1], w[2, 2])
                l0, m0, r0, l1, m1, r1, l2, m2, r2 = _tap_views(stacked, c, W, size)
                if C == 1:  # the only channel: taps, bias and ReLU in one loop
                    _plane_taps_bias(plane, l0, m0, r0, l1, m1, r1, l2, m2, r2, w00, w01, w02, w10, w11, w12, w20,
                                     w21, w22, b, relu)
                    continue
                _plane_taps(plane, l0, m0, r0, l1, m1, r1, l2, m2, r2, w00, w01, w02, w10, w11, w12, w20, w21, w22,
                            c > 0)
            if C == 1:
                continue
            if relu:  # branch-free loops only: a test inside the tap loop kept it scalar (8x slower)
                for p in range(size):
                    v = plane[p] + b
                    plane[p] = zero if v <= 0 else v  # NaN is not <= 0, so it propagates
            else:
                for p in range(size):
                    plane[p] += b


@njit(inline="always")
def _plane_taps_bias(plane, t00, t01, t02, t10, t11, t12, t20, t21, t22, w00, w01, w02, w10, w11, w12, w20, w21,
                     w22, b, relu):
    """plane = relu?(Σ w_rs * t_rs + b): a single channel's taps with the bias and the ReLU."""
    zero = plane.dtype.type(0)
    if relu:
        for p in range(plane.size):
            v = (w00 * t00[p] + w01 * t01[p] + w02 * t02[p] + w10 * t10[p] + w11 * t11[p] + w12 * t12[p]
                 + w20 * t20[p] + w21 * t21[p] + w22 * t22[p]) + b
            plane[p] = zero if v <= 0 else v  # NaN is not <= 0, so it propagates
    else:
        for p in range(plane.size):
            plane[p] = (w00 * t00[p] + w01 * t01[p] + w02 * t02[p] + w10 * t10[p] + w11 * t11[p] + w12 * t12[p]
                        + w20 * t20[p] + w21 * t21[p] + w22 * t22[p]) + b


@njit(inline="always")
def _plane_taps(plane, t00, t01, t02, t10, t11, t12, t20, t21, t22, w00, w01, w02, w10, w11, w12, w20, w21, w22, add):
    """plane (+)= Σ w_rs * t_rs, t_rs the input under tap (r, s) of every output, one channel."""
    if add:
        for p in range(plane.size):
            plane[p] += (w00 * t00[p] + w01 * t01[p] + w02 * t02[p] + w10 * t10[p] + w11 * t11[p] + w12 * t12[p]
                         + w20 * t20[p] + w21 * t21[p] + w22 * t22[p])
    else:
        for p in range(plane.size):
            plane[p] = (w00 * t00[p] + w01 * t01[p] + w02 * t02[p] + w10 * t10[p] + w11 * t11[p] + w12 * t12[p]
                        + w20 * t20[p] + w21 * t21[p] + w22 * t22[p])


@njit(**PARALLEL)
def _forward_parts(x, weight, bias, use_bias, relu, y, top, left, same_width, scratch):
    """The forward pass over ``scratch.shape[0]`` contiguous image ranges, one row of ``scratch`` each."""
    C, K, OH, OW = x.shape[1], y.shape[1], y.shape[2], y.shape[3]
    parts = scratch.shape[0]
    for part in prange(parts):
        n0, n1 = part_range(x.shape[0], parts, part)
        buf = scratch[part]
        if same_width and C > 0:
            _forward_same_width(x, weight, bias, use_bias, relu, y, n0, n1, top,
                                buf[:3 * C * ((OH + 2) * OW + 2)].reshape(3, C, (OH + 2) * OW + 2))
        else:
            size = C * (OH + 2) * (OW + 2)
            _forward(x, weight, bias, use_bias, relu, y, n0, n1, top, left, buf[:size + 2],
                     buf[size + 2:size + 2 + OH * (OW + 2)])


def conv2d_forward(x, weight, bias, padding, relu, out_shape):
    """y (out_shape: N, K, OH, OW) = relu?(3x3 stride-1 correlation of x (N, C, H, W) with weight + bias)."""
    N, C = x.shape[:2]
    K, OH, OW = out_shape[1:]
    x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
    use_bias = bias is not None
    bias = np.ascontiguousarray(bias) if use_bias else np.zeros(1, x.dtype)
    y = runtime.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    top, left = padding[0][0], padding[1][0]
    same_width = OW == x.shape[3] and left == 1
    need = max(3 * C * ((OH + 2) * OW + 2), C * (OH + 2) * (OW + 2) + 2 + OH * (OW + 2))
    parts = runtime.parts(N, K * OH * OW, runtime.SPLIT)
    scratch = runtime.scratch(parts * need, x.dtype).reshape(parts, need)
    runtime.launch(_forward_parts, x, weight, bias, use_bias, relu, y, top, left, same_width, scratch)
    return y


@njit(**JIT)
def _image_columns(x, n, top, left, padded, col):
    """col[c*9 + r*3 + s, oh*OW + ow] = x[n, c, oh + r - top, ow + s - left] (0 outside x): one image's im2col."""
    C = x.shape[1]
    OW = padded.shape[2] - 2
    OH = padded.shape[1] - 2
    _pad_image(x, n, top, left, padded)
    for c in range(C):
        for r in range(3):
            for s in range(3):
                dst = col[(c * 3 + r) * 3 + s]
                for oh in range(OH):
                    src = padded[c, oh + r, s:s + OW]
                    out = dst[oh * OW:(oh + 1) * OW]
                    for j in range(OW):
                        out[j] = src[j]


@njit(**JIT)
def _weight_gradient(dy, x, n0, n1, top, left, padded, col, partial):
    """partial (K, 9C) += Σ over images [n0, n1) of dy[n] (K x P) @ col[n]ᵀ, in image order."""
    K = dy.shape[1]
    P = dy.shape[2] * dy.shape[3]
    product = np.empty_like(partial)
    for n in range(n0, n1):
        _image_columns(x, n, top, left, padded, col)
        np.dot(dy[n].reshape(K, P), col.T, product)
        for i in range(partial.shape[0]):
            for j in range(partial.shape[1]):
                partial[i, j] += product[i, j]


@njit(**dict(JIT, fastmath={"reassoc", "contract"}))  # its own function: a parallel kernel's flags missed it
def _tap_sums(d0, d1, t00, t01, t02, t10, t11, t12, t20, t21, t22):
    """Σ_p d[p] * t_rs[p] for the nine taps and two gradient planes d0, d1 at once (each input vector loaded
    serves both: 43 GFLOP/s on one core, 29 for one plane), in one pass. Reassociation lets the sums run in
    vector lanes, contraction in FMAs: a fixed order on a given machine."""
    z = d0.dtype.type(0)
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = z
    b00 = b01 = b02 = b10 = b11 = b12 = b20 = b21 = b22 = z
    for p in range(d0.size):
        g, h = d0[p], d1[p]
        u00, u01, u02, u10, u11, u12 = t00[p], t01[p], t02[p], t10[p], t11[p], t12[p]
        u20, u21, u22 = t20[p], t21[p], t22[p]
        a00 += g * u00
        a01 += g * u01
        a02 += g * u02
        a10 += g * u10
        a11 += g * u11
        a12 += g * u12
        a20 += g * u20
        a21 += g * u21
        a22 += g * u22
        b00 += h * u00
        b01 += h * u01
        b02 += h * u02
        b10 += h * u10
        b11 += h * u11
        b12 += h * u12
        b20 += h * u20
        b21 += h * u21
        b22 += h * u22
    return (a00, a01, a02, a10, a11, a12, a20, a21, a22), (b00, b01, b02, b10, b11, b12, b20, b21, b22)


# The weight gradient at 'same' width reads each dy plane once, 3 KB at a time (mnist_conv1): the hardware
# prefetcher, restarting on each short stream, left the nine dot products waiting on memory (AMD host, one
# thread over 12.8 MB of dy: 1.75 ms, 0.60 with dy in L1). Asking for the planes DY_PREFETCH_PAIRS pairs ahead
# into L2 took it to 1.13-1.37 ms (2 to 8 pairs ahead alike; into L1: 2.0 ms); in the suite, on two threads,
# mnist_conv1's pass from 0.88-1.03 to 0.63-0.79 ms (neu_conv1's 160 KB planes: unchanged). The same hint for
# the forward's output planes (prefetchw) measured no gain.
DY_PREFETCH_PAIRS = 2


@njit(inline="always")
def _prefetch_planes(flat, start, count):
    """Prefetch flat[start:start + count] into L2, a cache line at a time (nothing past flat's end)."""
    stop = min(start + count, flat.size)
    for i in range(start, stop, runtime.CACHE_LINE // flat.itemsize):
        runtime.prefetch_to_l2(flat, i)


@njit(**PARALLEL)
def _weight_gradient_same_width(dy, x, top, stacked, partials):
    """partials[part] (K, 9C) = Σ over the part's images of Σ_p dy[n, k, p] * (input under tap (r, s) of p), for
    outputs as wide as the input (padding 1 left and right): nine dot products per filter and channel over
    the stacked copies of ``_stack_image``, with no column matrix and no GEMM of 9 columns."""
    C, K, OH, W = x.shape[1], dy.shape[1], dy.shape[2], x.shape[3]
    size = OH * W
    parts = partials.shape[0]
    dys = dy.reshape(-1)
    for part in prange(parts):
        n0, n1 = part_range(x.shape[0], parts, part)
        own, partial = stacked[part], partials[part]
        for n in range(n0, n1):
            _stack_image(x, n, top, OH, own)
            for k in range(0, K, 2):  # filters in pairs; an odd last one paired with itself
                k1 = min(k + 1, K - 1)
                d0, d1 = dy[n, k].reshape(-1), dy[n, k1].reshape(-1)
                _prefetch_planes(dys, (n * K + k + 2 * DY_PREFETCH_PAIRS) * size, 2 * size)
                for c in range(C):
                    t00, t01, t02, t10, t11, t12, t20, t21, t22 = _tap_views(own, c, W, size)
                    first, second = _tap_sums(d0, d1, t00, t01, t02, t10, t11, t12, t20, t21, t22)
                    for t in range(9):
                        partial[k, 9 * c + t] += first[t]
                    if k1 > k:
                        for t in range(9):
                            partial[k1, 9 * c + t] += second[t]


@njit(**PARALLEL)
def _weight_gradient_parts(dy, x, top, left, scratch, partials):
    """partials[part] = the weight gradient (K, 9C) of the part-th contiguous image range."""
    C, OH, OW = x.shape[1], dy.shape[2], dy.shape[3]
    parts = partials.shape[0]
    for part in prange(parts):
        n0, n1 = part_range(x.shape[0], parts, part)
        buf = scratch[part]
        padded = buf[:C * (OH + 2) * (OW + 2)].reshape(C, OH + 2, OW + 2)
        col = buf[C * (OH + 2) * (OW + 2):].reshape(9 * C, OH * OW)
        _weight_gradient(dy, x, n0, n1, top, left, padded, col, partials[part])


def conv2d_backward_weight(dy, x, weight_shape, padding):
    """dweight (K, C, 3, 3) from dy (N, K, OH, OW) and x (N, C, H, W), summed over images in order: nine dot
    products per filter and channel at 'same' width, else dy[n] (K x P) @ col[n]ᵀ per image."""
    N, C = x.shape[:2]
    K, OH, OW = dy.shape[1:]
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    parts = runtime.parts(N, K * OH * OW)
    partials = np.zeros((parts, K, 9 * C), x.dtype)
    top, left = padding[0][0], padding[1][0]
    if OW == x.shape[3] and left == 1 and C > 0:  # no column matrix: mnist_conv1 0.44 -> 0.32 ms, neu_conv1 2x
        need = 3 * C * ((OH + 2) * OW + 2)
        stacked = runtime.scratch(parts * need, x.dtype).reshape(parts, 3, C, (OH + 2) * OW + 2)
        runtime.launch(_weight_gradient_same_width, dy, x, top, stacked, partials)
    else:
        need = C * (OH + 2) * (OW + 2) + 9 * C * OH * OW
        scratch = runtime.scratch(parts * need, x.dtype).reshape(parts, need)
        runtime.launch(_weight_gradient_parts, dy, x, top, left, scratch, partials, blas=True)
    total = np.zeros((K, 9 * C), x.dtype)
    for partial in partials:  # fixed order: deterministic
        total += partial
    return total.reshape(weight_shape)
