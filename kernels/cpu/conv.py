"""CPU conv2d: im2col + one SGEMM/DGEMM per chunk (BLAS through NumPy), forward and backward.

Layouts: activations NCHW, conv weights KCRS, float32 or float64. Arguments
arrive normalized (see ``gpuconv.kernels.api``).

The column matrix of a chunk is ``col[c*R*S + r*S + s, (n*rows + i)*OW + ow]``,
so one GEMM with ``W`` as a ``K x CRS`` matrix covers every image of the chunk.
Chunks (several images, or output rows of one image when an image alone is too
large) keep the workspace under ``runtime.WORKSPACE_BYTES`` however large the
batch. Copies that change layout are fused with useful work: the forward's
scatter back to NCHW adds the bias and applies the optional ReLU. Backward-weight
sums per image range and then in a fixed order, so it is bit-identical run to run.

Integer arithmetic in Numba is int64, so indices do not overflow past 2**31.
"""
import numpy as np
from numba import njit, prange

from ..indexing import output_hw
from . import direct, runtime, winograd
from .runtime import JIT, PARALLEL, fill_zero, part_range, valid_output_range


# --------------------------------------------------------------------------- kernels
# Serial Numba loops (one image range per thread, see runtime.run_units); 1-D row views keep
# the inner loops free of 4-D index arithmetic, and stride 1 gets a contiguous loop. A block is
# images [n0, n1) x output rows [oh0, oh1) x output columns [ow0, ow1) (a column range narrower
# than the row only when the block is one row of one image); its columns are ordered (n, row, col).

@njit(**JIT)
def _im2col(x, col, n0, n1, oh0, oh1, ow0, ow1, R, S, sh, sw, pt, pl, dh, dw):
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    nb, rows, OW = n1 - n0, oh1 - oh0, ow1 - ow0
    for crs in range(C * R * S):
        c, r, s = crs // (R * S), (crs // S) % R, crs % S
        lo, hi = _block_columns(s * dw, pl, sw, W, ow0, ow1)
        w_first, count = (lo + ow0) * sw - pl + s * dw, hi - lo
        for n in range(nb):
            plane = x[n0 + n, c]
            for i in range(rows):
                h = (oh0 + i) * sh - pt + r * dh
                dst = col[crs, (n * rows + i) * OW:(n * rows + i + 1) * OW]
                if h < 0 or h >= H:
                    fill_zero(dst, 0, OW)
                    continue
                fill_zero(dst, 0, lo)
                fill_zero(dst, hi, OW)
                src = plane[h]
                if sw == 1:
                    src, dst = src[w_first:w_first + count], dst[lo:hi]
                    for j in range(count):
                        dst[j] = src[j]
                else:
                    for j in range(count):
                        dst[lo + j] = src[w_first + j * sw]


@njit(**JIT)
def _col2im_add(dcol, dx, n0, n1, oh0, oh1, ow0, ow1, R, S, sh, sw, pt, pl, dh, dw):
    """dx[n0:n1] += col2im(dcol), the transpose of _im2col (fixed summation order)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    nb, rows, OW = n1 - n0, oh1 - oh0, ow1 - ow0
    for n in range(nb):
        for c in range(C):
            plane = dx[n0 + n, c]
            for r in range(R):
                for s in range(S):
                    crs = (c * R + r) * S + s
                    lo, hi = _block_columns(s * dw, pl, sw, W, ow0, ow1)
                    w_first, count = (lo + ow0) * sw - pl + s * dw, hi - lo
                    for i in range(rows):
                        h = (oh0 + i) * sh - pt + r * dh
                        if h < 0 or h >= H:
                            continue
                        src = dcol[crs, (n * rows + i) * OW + lo:(n * rows + i) * OW + hi]
                        dst = plane[h]
                        if sw == 1:
                            dst = dst[w_first:w_first + count]
                            for j in range(count):
                                dst[j] += src[j]
                        else:
                            for j in range(count):
                                dst[w_first + j * sw] += src[j]


@njit(**JIT)
def _store_output(gemm_out, y, bias, use_bias, relu, n0, n1, oh0, oh1, ow0, ow1, OW):
    """The block's outputs of y = epilogue(gemm_out), the (K, columns) GEMM result, with bias and ReLU fused.

    y is the output viewed as (N, K, OH*OW); OW is its full width.
    """
    K = y.shape[1]
    size = (oh1 - oh0) * (ow1 - ow0)  # per image: whole rows, or a part of one row
    start = oh0 * OW + ow0
    zero = y.dtype.type(0)
    for n in range(n1 - n0):
        for k in range(K):
            b = bias[k] if use_bias else zero
            src = gemm_out[k, n * size:(n + 1) * size]
            dst = y[n0 + n, k, start:start + size]
            if relu:
                for j in range(size):
                    v = src[j] + b
                    dst[j] = zero if v <= 0 else v  # NaN is not <= 0, so it propagates
            else:
                for j in range(size):
                    dst[j] = src[j] + b


@njit(**JIT)
def _gather_columns(dy, dy_cols, n0, n1, oh0, oh1, ow0, ow1, OW):
    """The block's columns of dy as (K, columns) for the GEMMs: the NCHW -> column layout change.

    dy is viewed as (N, K, OH*OW); OW is its full width.
    """
    K = dy.shape[1]
    size = (oh1 - oh0) * (ow1 - ow0)
    start = oh0 * OW + ow0
    for n in range(n1 - n0):
        for k in range(K):
            src = dy[n0 + n, k, start:start + size]
            dst = dy_cols[k, n * size:(n + 1) * size]
            for j in range(size):
                dst[j] = src[j]


@njit(inline="always")
def _block_columns(tap_offset, pad_before, stride, in_size, ow0, ow1):
    """Columns [lo, hi) of block [ow0, ow1), counted from ow0, whose tap reads real input (not padding)."""
    lo, hi = valid_output_range(tap_offset, pad_before, stride, in_size, ow1)
    lo = max(lo, ow0)
    return lo - ow0, max(hi, lo) - ow0


def _geometry(R, S, stride, padding, dilation):
    return (R, S, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1])


def _plan(N, OH, OW, rows_a, rows_b, dtype, workspace_bytes):
    """The blocks of output columns of every part (``runtime.plan_parts``) and a scratch row per part for
    its largest block's ``(rows_a, columns)`` and ``(rows_b, columns)`` matrices."""
    column_bytes = max(1, np.dtype(dtype).itemsize * (rows_a + rows_b))  # 1: C = K = 0 still plans
    blocks, starts, _ = runtime.plan_parts(N, OH, OW, column_bytes, runtime.workspace_budget(workspace_bytes))
    columns = (blocks[:, 1] - blocks[:, 0]) * (blocks[:, 3] - blocks[:, 2]) * (blocks[:, 5] - blocks[:, 4])
    need = max(1, (rows_a + rows_b) * int(columns.max(initial=0)))
    parts = len(starts) - 1
    return blocks, starts, runtime.scratch(parts * need, dtype).reshape(parts, need)


@njit(inline="always")
def _block_matrices(block, buf, rows_a, rows_b):
    """A block's (rows_a, columns) and (rows_b, columns) matrices, carved from its part's scratch row."""
    cols = (block[1] - block[0]) * (block[3] - block[2]) * (block[5] - block[4])
    return buf[:rows_a * cols].reshape(rows_a, cols), buf[rows_a * cols:(rows_a + rows_b) * cols].reshape(rows_b, cols)


@njit(inline="always")
def _product(a, b, out):
    """out = a @ b through BLAS; an empty inner dimension gives zeros (BLAS is not asked)."""
    if a.shape[1] == 0:
        out[:] = 0
    elif out.size:
        np.dot(a, b, out)


@njit(**PARALLEL)
def _forward_parts(x, w_mat, bias, use_bias, relu, y_rows, OW, geometry, blocks, starts, scratch):
    R, S, sh, sw, pt, pl, dh, dw = geometry
    K, CRS = w_mat.shape
    for part in prange(scratch.shape[0]):
        for i in range(starts[part], starts[part + 1]):
            n0, n1, oh0, oh1, ow0, ow1 = blocks[i, 0], blocks[i, 1], blocks[i, 2], blocks[i, 3], blocks[i, 4], blocks[i, 5]
            col, gemm_out = _block_matrices(blocks[i], scratch[part], CRS, K)
            _im2col(x, col, n0, n1, oh0, oh1, ow0, ow1, R, S, sh, sw, pt, pl, dh, dw)
            _product(w_mat, col, gemm_out)
            _store_output(gemm_out, y_rows, bias, use_bias, relu, n0, n1, oh0, oh1, ow0, ow1, OW)


@njit(**PARALLEL)
def _backward_input_parts(dy_rows, w_mat_t, dx, OW, geometry, blocks, starts, scratch):
    R, S, sh, sw, pt, pl, dh, dw = geometry
    CRS, K = w_mat_t.shape
    for part in prange(scratch.shape[0]):
        for i in range(starts[part], starts[part + 1]):
            n0, n1, oh0, oh1, ow0, ow1 = blocks[i, 0], blocks[i, 1], blocks[i, 2], blocks[i, 3], blocks[i, 4], blocks[i, 5]
            dcol, dy_cols = _block_matrices(blocks[i], scratch[part], CRS, K)
            _gather_columns(dy_rows, dy_cols, n0, n1, oh0, oh1, ow0, ow1, OW)
            _product(w_mat_t, dy_cols, dcol)
            _col2im_add(dcol, dx, n0, n1, oh0, oh1, ow0, ow1, R, S, sh, sw, pt, pl, dh, dw)


@njit(**PARALLEL)
def _backward_weight_parts(dy_rows, x, OW, geometry, blocks, starts, scratch, partials):
    R, S, sh, sw, pt, pl, dh, dw = geometry
    K, CRS = partials.shape[1], partials.shape[2]
    for part in prange(scratch.shape[0]):
        product = np.empty((K, CRS), partials.dtype)
        total = partials[part]
        for i in range(starts[part], starts[part + 1]):
            n0, n1, oh0, oh1, ow0, ow1 = blocks[i, 0], blocks[i, 1], blocks[i, 2], blocks[i, 3], blocks[i, 4], blocks[i, 5]
            col, dy_cols = _block_matrices(blocks[i], scratch[part], CRS, K)
            _im2col(x, col, n0, n1, oh0, oh1, ow0, ow1, R, S, sh, sw, pt, pl, dh, dw)
            _gather_columns(dy_rows, dy_cols, n0, n1, oh0, oh1, ow0, ow1, OW)
            _product(dy_cols, col.T, product)
            for k in range(K):
                for j in range(CRS):
                    total[k, j] += product[k, j]


def _im2col_forward(x, weight, bias, stride, padding, dilation, relu, workspace_bytes):
    """y = relu?(conv2d(x, weight) + bias): x (N, C, H, W), weight (K, C, R, S), bias (K,) or None -> y (N, K, OH, OW)."""
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    OH, OW = output_hw((H, W), padding, (R, S), stride, dilation)
    x = np.ascontiguousarray(x)
    w_mat = np.ascontiguousarray(weight).reshape(K, C * R * S)
    use_bias = bias is not None
    bias = np.ascontiguousarray(bias) if use_bias else np.zeros(1, x.dtype)
    y = runtime.empty((N, K, OH, OW), x.dtype)
    if y.size:
        blocks, starts, scratch = _plan(N, OH, OW, C * R * S, K, x.dtype, workspace_bytes)
        runtime.launch(_forward_parts, x, w_mat, bias, use_bias, relu, y.reshape(N, K, OH * OW), OW,
                       _geometry(R, S, stride, padding, dilation), blocks, starts, scratch, blas=True)
    return y


def _im2col_backward_input(dy, weight, x_shape, stride, padding, dilation, workspace_bytes):
    """dx: dy (N, K, OH, OW), weight (K, C, R, S) -> dx with ``x_shape`` (N, C, H, W): GEMM, then col2im."""
    N, C, H, W = x_shape
    K, _, R, S = weight.shape
    OH, OW = dy.shape[2], dy.shape[3]
    dx = np.zeros(x_shape, dy.dtype)
    if dx.size and dy.size:
        dy_rows = np.ascontiguousarray(dy).reshape(N, K, OH * OW)
        w_mat_t = np.ascontiguousarray(weight).reshape(K, C * R * S).T
        blocks, starts, scratch = _plan(N, OH, OW, C * R * S, K, dy.dtype, workspace_bytes)
        runtime.launch(_backward_input_parts, dy_rows, w_mat_t, dx, OW, _geometry(R, S, stride, padding, dilation),
                       blocks, starts, scratch, blas=True)
    return dx


def _im2col_backward_weight(dy, x, weight_shape, stride, padding, dilation, workspace_bytes):
    """dweight: dy (N, K, OH, OW), x (N, C, H, W) -> (K, C, R, S), a reduction over N, OH, OW.

    Deterministic: each image range sums into its own partial, added in a fixed order.
    """
    N = x.shape[0]
    K, C, R, S = weight_shape
    OH, OW = dy.shape[2], dy.shape[3]
    total = np.zeros((K, C * R * S), dy.dtype)
    if total.size and dy.size:
        x = np.ascontiguousarray(x)
        dy_rows = np.ascontiguousarray(dy).reshape(N, K, OH * OW)
        blocks, starts, scratch = _plan(N, OH, OW, C * R * S, K, dy.dtype, workspace_bytes)
        partials = np.zeros((scratch.shape[0], K, C * R * S), dy.dtype)
        runtime.launch(_backward_weight_parts, dy_rows, x, OW, _geometry(R, S, stride, padding, dilation), blocks,
                       starts, scratch, partials, blas=True)
        for partial in partials:  # fixed order: deterministic
            total += partial
    return total.reshape(weight_shape)


# --------------------------------------------------------------------------- the kernels: algorithm per pass

ALGORITHMS = ("auto", "im2col", "winograd", "winograd_2x2", "winograd_4x4", "direct")
WINOGRAD_TILES = {"winograd_2x2": 2, "winograd_4x4": 4}  # 'winograd' itself: the tile by shape
WINOGRAD_MIN_CHANNELS = 4
DIRECT_MAX_CHANNELS = 3


def choose_algorithm(conv_pass, x_shape, weight_shape, stride, dilation, out_hw, itemsize=4, workspace_bytes=None):
    """The algorithm ``'auto'`` uses for one pass ('forward', 'backward_input', 'backward_weight') of a conv,
    from its shapes (the README's table says why).

    3x3 filters at stride 1 without dilation: 'direct' for the forward and weight-gradient passes
    of layers with few input channels (when an image's scratch fits the workspace), Winograd
    when the channel counts make its GEMMs worth their transforms: 'winograd_4x4' (F(4x4, 3x3)) for large
    enough images (``winograd_tile``), else 'winograd_2x2'; im2col + GEMM for everything else.
    """
    C, K = x_shape[1], weight_shape[0]
    if not winograd.applies(weight_shape, stride, dilation):
        return "im2col"
    if conv_pass != "backward_input" and C <= DIRECT_MAX_CHANNELS and \
            direct.scratch_bytes(C, out_hw, itemsize) <= runtime.workspace_budget(workspace_bytes):
        return "direct"
    if min(C, K) >= WINOGRAD_MIN_CHANNELS:
        tile = winograd_tile(conv_pass, x_shape, weight_shape, out_hw)
        return f"winograd_{tile}x{tile}"
    return "im2col"


def winograd_tile(conv_pass, x_shape, weight_shape, out_hw):
    """The Winograd tile side of a pass by shape (``winograd.forward_tile``, ``winograd.weight_gradient_tile``);
    backward-input is the forward pass of dy (K channels) onto x's (H, W) (C channels)."""
    C, K = x_shape[1], weight_shape[0]
    if conv_pass == "backward_weight":
        return winograd.weight_gradient_tile(out_hw, C, K)
    if conv_pass == "backward_input":
        return winograd.forward_tile(x_shape[2:], K, C)
    return winograd.forward_tile(out_hw, C, K)


def _algorithm(algorithm, conv_pass, x_shape, weight_shape, stride, dilation, out_hw, dtype, workspace_bytes):
    if algorithm == "auto":
        return choose_algorithm(conv_pass, x_shape, weight_shape, stride, dilation, out_hw, np.dtype(dtype).itemsize,
                                workspace_bytes)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "im2col" and not winograd.applies(weight_shape, stride, dilation):
        raise ValueError(f"algorithm {algorithm!r} needs 3x3 filters, stride 1 and dilation 1; got KCRS "
                         f"{tuple(weight_shape)}, stride {tuple(stride)}, dilation {tuple(dilation)}")
    if algorithm == "direct" and conv_pass == "backward_input":
        raise ValueError("algorithm 'direct' has no backward-input pass; use 'im2col' or 'winograd'")
    if algorithm == "winograd":
        tile = winograd_tile(conv_pass, x_shape, weight_shape, out_hw)
        return f"winograd_{tile}x{tile}"
    return algorithm


def conv2d_forward(x, weight, bias, stride, padding, dilation, relu=False, workspace_bytes=None, algorithm="auto"):
    """y = relu?(conv2d(x, weight) + bias).

    x (N, C, H, W), weight (K, C, R, S), bias (K,) or None  ->  y (N, K, OH, OW).
    ``algorithm``: 'auto' (``choose_algorithm``), 'im2col', 'winograd' (its tile by shape), 'winograd_2x2',
    'winograd_4x4' or 'direct'. Winograd falls back to im2col when an input holds NaN, inf or a value large
    enough to overflow (``winograd.input_limit``).
    """
    N, C, H, W = x.shape
    K = weight.shape[0]
    out_hw = output_hw((H, W), padding, weight.shape[2:], stride, dilation)
    chosen = _algorithm(algorithm, "forward", x.shape, weight.shape, stride, dilation, out_hw, x.dtype,
                        workspace_bytes)
    if chosen == "direct":
        return direct.conv2d_forward(x, weight, bias, padding, relu, (N, K) + out_hw)
    if chosen in WINOGRAD_TILES and (bias is None or np.isfinite(bias).all()):
        tile = WINOGRAD_TILES[chosen]
        limit = winograd.input_limit(x.dtype, 9 * C, winograd.max_magnitude(weight), tile)
        y = winograd.correlate(x, winograd.filter_transform(weight, tile), bias, relu, padding[0][0], padding[1][0],
                               (N, K) + out_hw, limit, workspace_bytes)
        if y is not None:
            return y
    return _im2col_forward(x, weight, bias, stride, padding, dilation, relu, workspace_bytes)


def conv2d_backward_input(dy, weight, x_shape, stride, padding, dilation, workspace_bytes=None, algorithm="auto"):
    """dx = d(loss)/dx of conv2d: a transposed convolution of dy with weight.

    dy (N, K, OH, OW), weight (K, C, R, S)  ->  dx with ``x_shape`` (N, C, H, W).
    ``algorithm`` as for ``conv2d_forward``; Winograd runs the forward pass of dy with the
    filters rotated and transposed.
    """
    K = weight.shape[0]
    chosen = _algorithm(algorithm, "backward_input", x_shape, weight.shape, stride, dilation, dy.shape[2:], dy.dtype,
                        workspace_bytes)
    if chosen in WINOGRAD_TILES:
        tile = WINOGRAD_TILES[chosen]
        rotated = winograd.filter_transform(winograd.rotated_filters(weight), tile)
        limit = winograd.input_limit(dy.dtype, 9 * K, winograd.max_magnitude(weight), tile)
        dx = winograd.correlate(dy, rotated, None, False, 2 - padding[0][0], 2 - padding[1][0], tuple(x_shape),
                                limit, workspace_bytes)
        if dx is not None:
            return dx
    return _im2col_backward_input(dy, weight, x_shape, stride, padding, dilation, workspace_bytes)


def conv2d_backward_weight(dy, x, weight_shape, stride, padding, dilation, workspace_bytes=None, algorithm="auto"):
    """dweight = d(loss)/dweight of conv2d: a reduction over N, OH, OW.

    dy (N, K, OH, OW), x (N, C, H, W)  ->  dweight with ``weight_shape`` (K, C, R, S).
    Deterministic: each image range sums into its own partial, and the partials are
    added in a fixed order. ``algorithm`` as for ``conv2d_forward``.
    """
    N = x.shape[0]
    chosen = _algorithm(algorithm, "backward_weight", x.shape, weight_shape, stride, dilation, dy.shape[2:], dy.dtype,
                        workspace_bytes)
    if chosen == "direct":
        return direct.conv2d_backward_weight(dy, x, weight_shape, padding)
    if chosen in WINOGRAD_TILES:
        tile = WINOGRAD_TILES[chosen]
        limit = winograd.input_limit(dy.dtype, N * dy.shape[2] * dy.shape[3], tile=tile)
        dU = winograd.weight_gradient(dy, x, padding[0][0], padding[1][0], limit, workspace_bytes, tile)
        if dU is not None:
            return winograd.weight_from(dU)
    return _im2col_backward_weight(dy, x, weight_shape, stride, padding, dilation, workspace_bytes)


@njit(inline="always")
def _channel_sums(dy, db, k0, k1):
    for k in range(k0, k1):
        total = 0.0  # float64: a float32 running sum over a batch's 50k values would lose digits
        for n in range(dy.shape[0]):
            row = dy[n, k]
            for p in range(row.size):  # vectorized: reassociation allowed below, the order fixed per machine
                total += row[p]
        db[k] = total


@njit(**dict(PARALLEL, fastmath={"reassoc"}))
def _bias_gradient(dy, db, parts):
    for part in prange(parts):
        k0, k1 = part_range(dy.shape[1], parts, part)
        _channel_sums(dy, db, k0, k1)


def conv2d_backward_bias(dy):
    """dbias of conv2d: dy (N, K, OH, OW) -> (K,), summed over N, OH, OW in float64, a channel per thread at a
    time (deterministic). Memory-bound: mnist_conv1's at batch 64 took 0.27 ms in einsum (one core), 0.18 here."""
    N, K = dy.shape[:2]
    dy = np.ascontiguousarray(dy).reshape(N, K, dy.shape[2] * dy.shape[3])
    db = np.empty(K, dy.dtype)
    runtime.launch(_bias_gradient, dy, db, max(1, min(K, runtime.parts(dy.size, 1))))
    return db
