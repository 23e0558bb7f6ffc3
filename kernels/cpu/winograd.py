"""CPU conv2d by Winograd's minimal filtering F(2x2, 3x3): 3x3 filters, stride 1, no dilation, any padding.

Each 2x2 block of outputs (a *tile*) comes from its 4x4 input patch ``d`` as

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A        summed over input channels,

16 multiplications per tile and channel pair instead of 36: 2.25x less arithmetic than
im2col + GEMM. The sum over channels of the 16 elementwise products is 16 GEMMs,
``M[ξ] (K x T) = U[ξ] (K x C) @ V[ξ] (C x T)`` over T tiles at a time, so BLAS still does
the multiplications (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016). B and A hold only 0 and ±1, G also ±1/2: rounding stays at im2col's level.

The three passes share the transforms, each being the transpose of the forward map:

* forward:         ``V = Bᵀ d B``, ``M = U V``, ``y = Aᵀ M A``;
* backward-input:  the forward pass of dy with the filters rotated and transposed (C <-> K)
                   and padding ``2 - pad``;
* backward-weight: ``dU = Σ (A p Aᵀ) Vᵀ`` over the 2x2 tiles p of dy, ``dweight = Gᵀ dU G``.

Layout (the *canvas*): a block of tiles (images x tile rows x tile columns) is laid out in
canvas rows of ``L = images * (tiles + 1)`` tiles, each image's tiles followed by one spare.
Then a tile's right neighbour is always at +1 and the one below at +L, so every transform
is a loop over the whole block with one output array and a few inputs at fixed offsets:
loops of that form vectorize (multi-output loops and loops over 7-tile rows did not), and
the spare tiles (1 in ``tiles + 1``) are the price. The input is first split by the parity
of its rows and columns (``_pack_input``, a row at a time in vectors of 8 or 4 slots,
``_slots_intrinsic``), so patch element (i, j) of tile g is at ``g + (i//2)*L + j//2`` of plane
``(i%2, j%2)``. The output transform goes the other way,
straight from the GEMMs' products into y, a row of tiles at a time in explicit vectors of
4-16 tiles (``_tiles_intrinsic``): as whole-block loops it took two scratch passes more.

Not for non-finite or huge inputs: Winograd mixes all 16 inputs of a patch into all 4
outputs of its tile, so an inf would turn neighbouring outputs into NaN. The pack kernels
check every input against ``input_limit`` as they copy it; a pass that meets NaN, inf or a
value past the limit returns None, and the caller (``conv``) redoes it with im2col, which
has the direct sum's semantics.
"""
import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import runtime
from .runtime import JIT, PARALLEL, part_range, valid_output_range

_u = np.uint64  # unsigned indices: no negative-index wraparound code in the loops

# Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], row p as (i1, i2, sign of i2): +d[i1] ± d[i2]
B_ROWS = np.array([[0, 2, -1], [1, 2, 1], [2, 1, -1], [1, 3, -1]])
TILE = 2  # outputs per tile side
BLOCK_BYTES = 4 << 20  # scratch per block of tiles (planned at twice the need): larger blocks ran slower GEMMs
# the weight gradient's blocks: on the Intel host (2 MiB L2) 2 MiB ran 5-20% faster than 4 on all five
# Winograd shapes of the suite (mnist_conv2 3.95 -> 3.42 ms, neu_conv3 22.4 -> 18.2); forward and
# backward-input ran no faster below 4 MiB (3-15% slower at 2)
WEIGHT_GRADIENT_BLOCK_BYTES = 2 << 20
# ξ planes of V and M start this many elements apart beyond their size: 16 streams at a multiple
# of 4 KiB apart share cache sets (a 32x32 case ran 2.7x slower)
PLANE_PAD = 32


def applies(weight_shape, stride, dilation):
    """Winograd F(2x2, 3x3) computes this conv: 3x3 filters, stride 1, no dilation."""
    return tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def filter_transform(weight):
    """U (16, K, C) = G g Gᵀ of every filter g of weight (K, C, 3, 3), in the weight's dtype."""
    K, C = weight.shape[:2]
    U = np.empty((16, K, C), weight.dtype)
    # a filter costs about what 64 elements of a ReLU do (50 ns): mnist_conv2's 2048 took 0.11 ms on one core
    runtime.launch(_filter_transform, np.ascontiguousarray(weight), U, runtime.parts(K, 64 * C))
    return U


def rotated_filters(weight):
    """weight (K, C, 3, 3) -> (C, K, 3, 3) rotated by 180 degrees: the backward-input pass's filters."""
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def weight_from(dU):
    """dweight (K, C, 3, 3) = Gᵀ dU G from dU (16, K, C)."""
    K, C = dU.shape[1:]
    dweight = np.empty((K, C, 3, 3), dU.dtype)
    _weight_from(dU, dweight)
    return dweight


@njit(inline="always")
def _g_rows(a, b, c):
    """G (a, b, c) with G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    return a, (a + b + c) * 0.5, (a - b + c) * 0.5, c


@njit(inline="always")
def _gt_rows(a, b, c, d):
    """Gᵀ (a, b, c, d): the transpose of _g_rows."""
    return a + (b + c) * 0.5, (b - c) * 0.5, (b + c) * 0.5 + d


@njit(**PARALLEL)
def _filter_transform(weight, U, parts):
    for part in prange(parts):
        k0, k1 = part_range(weight.shape[0], parts, part)
        _filter_transform_range(weight, U, k0, k1)


@njit(inline="always")
def _filter_transform_range(weight, U, k0, k1):
    C = weight.shape[1]
    cols = np.empty((4, 3), U.dtype)  # G g
    for k in range(k0, k1):
        for c in range(C):
            g = weight[k, c]
            for s in range(3):
                cols[0, s], cols[1, s], cols[2, s], cols[3, s] = _g_rows(g[0, s], g[1, s], g[2, s])
            for p in range(4):  # (G g) Gᵀ
                U[4 * p, k, c], U[4 * p + 1, k, c], U[4 * p + 2, k, c], U[4 * p + 3, k, c] = _g_rows(
                    cols[p, 0], cols[p, 1], cols[p, 2])


@njit(**JIT)
def _weight_from(dU, dweight):
    K, C = dU.shape[1], dU.shape[2]
    rows = np.empty((3, 4), dU.dtype)  # Gᵀ dU
    for k in range(K):
        for c in range(C):
            for q in range(4):
                rows[0, q], rows[1, q], rows[2, q] = _gt_rows(dU[q, k, c], dU[4 + q, k, c], dU[8 + q, k, c],
                                                              dU[12 + q, k, c])
            for r in range(3):  # (Gᵀ dU) G
                dweight[k, c, r, 0], dweight[k, c, r, 1], dweight[k, c, r, 2] = _gt_rows(
                    rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3])


def input_limit(dtype, terms, other=None):
    """The largest |input| for which Winograd's result is finite and accurate: no sum of ``terms`` products
    (with the transforms' growth) can overflow ``dtype``. ``other``: the other operand's max |value| (the
    filters), or None when both operands are inputs checked this way (the weight gradient: the bound is
    shared as its square root). 0 when ``other`` is NaN or inf: every input then fails, as it must.
    The inputs are checked while they are packed (``ok`` of the pack kernels): one pass fewer over them."""
    room = float(np.finfo(dtype).max) / (64 * 64 * max(terms, 1))
    if other is None:
        return float(np.sqrt(room))
    return room / max(other, 1.0) if np.isfinite(other) else 0.0


def max_magnitude(a):
    """max |a| (inf when a holds NaN or inf), in one vectorized pass over the bits."""
    a = np.ascontiguousarray(a).reshape(-1)
    if a.size == 0:
        return 0.0
    bits = a.view(np.int32 if a.dtype == np.float32 else np.int64)
    no_sign = bits.dtype.type(np.iinfo(bits.dtype).max)  # every bit but the sign
    top = np.array([_max_abs_bits(bits, no_sign)], bits.dtype).view(a.dtype)[0]
    return float(top) if np.isfinite(top) else float("inf")  # NaN bits sort above inf's


@njit(**JIT)
def _max_abs_bits(bits, no_sign):
    """max over ``bits`` (a float array's bits as signed ints) of ``bits & no_sign``, the bits without the
    sign: for floats that is max |value|, and NaN/inf come out at or above inf's bits. Integer max vectorizes;
    float max did not."""
    top = bits.dtype.type(0)
    for i in range(bits.size):
        top = max(top, bits[i] & no_sign)
    return top


# --------------------------------------------------------------------------- loops
# One output array per loop, inputs as views: the form that vectorizes.

@njit(inline="always")
def _sum4(dst, a, b, c, d, minus_b, minus_c):
    """dst = a ± b ± c ± d, d's sign the product of b's and c's (the sign patterns of Bᵀ d B)."""
    if minus_b and minus_c:
        for g in range(dst.size):
            dst[g] = a[g] - b[g] - c[g] + d[g]
    elif minus_b:
        for g in range(dst.size):
            dst[g] = a[g] - b[g] + c[g] - d[g]
    elif minus_c:
        for g in range(dst.size):
            dst[g] = a[g] + b[g] - c[g] - d[g]
    else:
        for g in range(dst.size):
            dst[g] = a[g] + b[g] + c[g] + d[g]


# --------------------------------------------------------------------------- transforms

def _slots_intrinsic(width):
    """An intrinsic ``ok = f(xs, at, lo, hi, cs, even, odd, limit)`` that splits ``2 * width`` consecutive elements
    xs[at:at + 2*width] by parity into cs[even:even + width] and cs[odd:odd + width] (1-D C-contiguous arrays of
    one float dtype; no bounds checks), lanes outside [lo, hi) read as 0 (padding, or the rows beside), and
    says whether every lane kept is within ``limit`` in magnitude (NaN is not). One vector load, a select, two
    deinterleaving shuffles and two stores, where the per-slot loop with its edge cases took ~17 ns a row."""
    def typer(typingctx, xs, at, lo, hi, cs, even, odd, limit):
        if not runtime.flat_float_arrays(xs, cs):
            return None

        def codegen(context, builder, signature, args):
            xs_value, at, lo, hi, cs_value, even, odd, limit = args
            element = context.get_value_type(xs.dtype)
            align = context.get_abi_sizeof(element)
            lanes = ir.VectorType(element, 2 * width)
            lane_type = ir.VectorType(ir.IntType(64), 2 * width)
            index = ir.Constant(lane_type, [ir.Constant(ir.IntType(64), i) for i in range(2 * width)])
            inside = builder.and_(builder.icmp_signed(">=", index, runtime.splat_value(builder, lane_type, lo)),
                                  builder.icmp_signed("<", index, runtime.splat_value(builder, lane_type, hi)))
            v = builder.load(runtime.vector_at(context, builder, xs, xs_value, at, lanes), align=align)
            v = builder.select(inside, v, runtime.splat(lanes, 0.0))
            bound = runtime.splat_value(builder, lanes, context.cast(builder, limit, signature.args[7], xs.dtype))
            within = builder.and_(builder.fcmp_ordered("<=", v, bound),
                                  builder.fcmp_ordered(">=", v, builder.fneg(bound)))
            ok = builder.icmp_unsigned("==", builder.bitcast(within, ir.IntType(2 * width)),
                                       ir.Constant(ir.IntType(2 * width), (1 << 2 * width) - 1))
            for parity, offset in ((0, even), (1, odd)):
                half = builder.shuffle_vector(v, v, runtime.lane_indices(range(parity, 2 * width, 2)))
                builder.store(half, runtime.vector_at(context, builder, cs, cs_value, offset, half.type), align=align)
            return ok
        return types.boolean(xs, at, lo, hi, cs, even, odd, limit), codegen
    typer.__name__ = f"_slots_{width}"
    return intrinsic(typer)


_slots_8, _slots_4 = _slots_intrinsic(8), _slots_intrinsic(4)


@njit(inline="always")
def _pack_row_vectors(xs, src, first, W, cs, even, odd, slot, width, limit):
    """One input row (xs[src:src + 2*slot], its first element at column ``first``) into its even and odd canvas
    rows by ``_slots_8`` or ``_slots_4`` (``width``), the last vector overlapping the one before; whether every
    element is within ``limit``. The caller checks that xs[src:src + 2*slot] lies inside xs."""
    ok = True
    last = slot - width
    for j in range(0, last + width, width):
        j = min(j, last)
        lo, hi = -first - 2 * j, W - first - 2 * j  # the lanes inside the row
        if width == 8:
            ok &= _slots_8(xs, src + 2 * j, lo, hi, cs, even + j, odd + j, limit)
        else:
            ok &= _slots_4(xs, src + 2 * j, lo, hi, cs, even + j, odd + j, limit)
    return ok


@njit(**JIT)
def _pack_input(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
    """canvas[c, 2a + b, r*L + n*(nt+1) + j] = x[n0 + n, c, 2(th0 + r) + a - top, 2(tw0 + j) + b - left],
    0 outside x, for canvas rows r in [0, th1 - th0] and j in [0, nt] (nt = tw1 - tw0): the block's patches
    split by row and column parity. canvas: (C, 4, (rows + 1) * L + 1).

    Each input row is read once. Flat arrays and unsigned offsets: with signed indices Numba's
    negative-index wraparound kept these loops scalar (2-3x slower), and a view per short row
    cost more than its copy; so did the edges as a helper function. Returns whether every input
    copied is within ``limit`` in magnitude (NaN is not).
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    nt, rows = tw1 - tw0, th1 - th0
    slot = nt + 1
    L = (n1 - n0) * slot
    plane = canvas.shape[2]
    first = 2 * tw0 - left
    lo, hi = valid_output_range(0, -first, 2, W - 1, slot)  # slots whose two columns are both inside x
    xs, cs = x.reshape(-1), canvas.reshape(-1)
    zero = cs.dtype.type(0)
    ok = True
    h_lo, h_hi = max(0, 2 * th0 - top), min(H, 2 * th1 + 2 - top)
    for n in range(n1 - n0):  # x's order: with the channel loop outside, each plane began a new stream
        for c in range(C):
            base = c * 4 * plane
            for h in range(h_lo, h_hi):
                ph = h + top - 2 * th0  # canvas row (ph >> 1) of parity (ph & 1)
                even = base + 2 * (ph & 1) * plane + (ph >> 1) * L + n * slot
                odd = even + plane
                src = (((n0 + n) * C + c) * H + h) * W + first
                if slot >= 4 and src >= 0 and src + 2 * slot <= xs.size:  # vectors may read the rows beside
                    ok &= _pack_row_vectors(xs, src, first, W, cs, even, odd, slot, 8 if slot >= 8 else 4, limit)
                    continue
                for j in range(lo):  # the left edge: padding, or a column whose neighbour is padding
                    w = first + 2 * j
                    e = xs[_u(src + 2 * j)] if 0 <= w < W else zero
                    o = xs[_u(src + 2 * j + 1)] if 0 <= w + 1 < W else zero
                    ok &= (abs(e) <= limit) & (abs(o) <= limit)
                    cs[_u(even + j)] = e
                    cs[_u(odd + j)] = o
                for j in range(lo, hi):
                    e, o = xs[_u(src + 2 * j)], xs[_u(src + 2 * j + 1)]
                    ok &= (abs(e) <= limit) & (abs(o) <= limit)
                    cs[_u(even + j)] = e
                    cs[_u(odd + j)] = o
                for j in range(hi, slot):  # the right edge
                    w = first + 2 * j
                    e = xs[_u(src + 2 * j)] if 0 <= w < W else zero
                    o = xs[_u(src + 2 * j + 1)] if 0 <= w + 1 < W else zero
                    ok &= (abs(e) <= limit) & (abs(o) <= limit)
                    cs[_u(even + j)] = e
                    cs[_u(odd + j)] = o
    for c in range(C):
        base = c * 4 * plane
        for ph in range(2 * (rows + 1)):  # canvas rows over the padding above or below x
            h = 2 * th0 + ph - top
            if 0 <= h < H:
                continue
            for n in range(n1 - n0):
                even = base + 2 * (ph & 1) * plane + (ph >> 1) * L + n * slot
                for j in range(slot):
                    cs[_u(even + j)] = zero
                    cs[_u(even + plane + j)] = zero
        for p in range(4):
            cs[_u(base + p * plane + (rows + 1) * L)] = zero  # read only by the block's last spare tile
    return ok


@njit(**JIT)
def _input_transform(planes, V, column, L, T, C):
    """V[4p + q, column + g*C + c] = (Bᵀ d B)[p, q] of tile g's patch d in channel c, for a canvas whose four
    parity planes ``planes`` (4, ...) hold C channels innermost (``_pack_input_t``; C = 1 for one channel of
    ``_pack_input``'s canvas): one loop over (tile, channel) per ξ, the patch offsets scaled by C.

    V: (16, ...), C-contiguous (planes padded apart): a 'C' layout keeps every loop unit-stride.
    """
    size = T * C
    for p in range(4):
        i1, i2, sign_i = B_ROWS[p, 0], B_ROWS[p, 1], B_ROWS[p, 2]
        for q in range(4):
            j1, j2, sign_j = B_ROWS[q, 0], B_ROWS[q, 1], B_ROWS[q, 2]
            # d[i][j] of every tile: plane (i%2, j%2) from offset ((i//2)*L + j//2) * C
            o11 = ((i1 // 2) * L + j1 // 2) * C
            o12 = ((i1 // 2) * L + j2 // 2) * C
            o21 = ((i2 // 2) * L + j1 // 2) * C
            o22 = ((i2 // 2) * L + j2 // 2) * C
            _sum4(V[4 * p + q, column:column + size],
                  planes[2 * (i1 % 2) + j1 % 2, o11:o11 + size], planes[2 * (i1 % 2) + j2 % 2, o12:o12 + size],
                  planes[2 * (i2 % 2) + j1 % 2, o21:o21 + size], planes[2 * (i2 % 2) + j2 % 2, o22:o22 + size],
                  sign_j < 0, sign_i < 0)


def _tile_outputs(b, m):
    """IR: ``(top-left, top-right, bottom-left, bottom-right)`` = Aᵀ m A of tiles whose 16 elements ``m``
    (row-major, 4x4) are vectors, built by ``b``. A = [[1, 0], [1, 1], [1, -1], [0, -1]]: Aᵀ over the
    columns of m, then over the rows."""
    s = []
    for i in range(4):
        s.append(b.fadd(b.fadd(m[4 * i], m[4 * i + 1]), m[4 * i + 2]))
        s.append(b.fsub(b.fsub(m[4 * i + 1], m[4 * i + 2]), m[4 * i + 3]))
    return (b.fadd(b.fadd(s[0], s[2]), s[4]), b.fadd(b.fadd(s[1], s[3]), s[5]),
            b.fsub(b.fsub(s[2], s[4]), s[6]), b.fsub(b.fsub(s[3], s[5]), s[7]))


def _activate(b, v, bias, zero, relu):
    """relu?(v + bias), IR: NaN is not <= 0, so it propagates."""
    v = b.fadd(v, bias)
    return b.select(b.fcmp_ordered("<=", v, zero), zero, v) if relu else v


def _tiles_intrinsic(width, relu, columns=2):
    """An intrinsic ``f(y, top, bottom, both, M, plane, g, bias)`` that writes ``width`` adjacent 2x2 output
    tiles: relu?(Aᵀ m A + bias) of tiles g..g+width of the 16 planes of M (flat, ``plane`` elements apart), to
    y[top:top + 2*width] and, if ``both``, y[bottom:bottom + 2*width] (1-D C-contiguous arrays of one float
    dtype; no bounds checks). One pass from M to y: 16 vector loads, the sums, two interleaving shuffles.
    ``columns=1`` (width 1): the tile's left column only, for a tile whose right one is past y's edge."""
    def typer(typingctx, y, top, bottom, both, M, plane, g, bias):
        if not runtime.flat_float_arrays(y, M):
            return None

        def codegen(context, builder, signature, args):
            y_value, top, bottom, both, M_value, plane, g, bias = args
            element = context.get_value_type(y.dtype)
            align = context.get_abi_sizeof(element)
            vector = ir.VectorType(element, width)
            bias = context.cast(builder, bias, signature.args[7], y.dtype)
            bias_lanes = runtime.splat_value(builder, vector, bias)
            m = [builder.load(runtime.vector_at(context, builder, M, M_value,
                                                builder.add(g, builder.mul(plane, ir.Constant(plane.type, xi))), vector),
                              align=align) for xi in range(16)]
            zero = runtime.splat(vector, 0.0)
            tl, tr, bl, br = (_activate(builder, v, bias_lanes, zero, relu) for v in _tile_outputs(builder, m))
            if columns == 2:
                top_row, bottom_row = runtime.interleave(builder, tl, tr), runtime.interleave(builder, bl, br)
            else:
                top_row, bottom_row = tl, bl
            builder.store(top_row, runtime.vector_at(context, builder, y, y_value, top, top_row.type), align=align)
            with builder.if_then(context.cast(builder, both, signature.args[3], types.boolean)):
                builder.store(bottom_row, runtime.vector_at(context, builder, y, y_value, bottom, bottom_row.type),
                              align=align)
            return context.get_dummy_value()
        return types.void(y, top, bottom, both, M, plane, g, bias), codegen
    typer.__name__ = f"_tiles_{width}x{columns}{'_relu' if relu else ''}"
    return intrinsic(typer)


def _tiles_row(relu):
    """``row(y, top, bottom, both, M, plane, g, bias, count, ragged)``: ``count`` adjacent full tiles by
    intrinsics of 16, 8 or 4 tiles (a row's last vector overlaps the one before and rewrites equal values),
    rows of under 4 a tile at a time; then, if ``ragged``, one more tile whose right column is past y's edge,
    its left column only."""
    by16, by8, by4, by1 = (_tiles_intrinsic(width, relu) for width in (16, 8, 4, 1))
    left_column = _tiles_intrinsic(1, relu, columns=1)

    @njit(inline="always")
    def row(y, top, bottom, both, M, plane, g, bias, count, ragged):
        if count >= 16:
            last = count - 16
            for j in range(0, last, 16):
                by16(y, top + 2 * j, bottom + 2 * j, both, M, plane, g + j, bias)
            by16(y, top + 2 * last, bottom + 2 * last, both, M, plane, g + last, bias)
        elif count >= 8:
            by8(y, top, bottom, both, M, plane, g, bias)
            by8(y, top + 2 * (count - 8), bottom + 2 * (count - 8), both, M, plane, g + count - 8, bias)
        elif count >= 4:
            by4(y, top, bottom, both, M, plane, g, bias)
            by4(y, top + 2 * (count - 4), bottom + 2 * (count - 4), both, M, plane, g + count - 4, bias)
        else:
            for j in range(count):
                by1(y, top + 2 * j, bottom + 2 * j, both, M, plane, g + j, bias)
        if ragged:
            left_column(y, top + 2 * count, bottom + 2 * count, both, M, plane, g + count, bias)
    return row


_tiles_row_plain, _tiles_row_relu = _tiles_row(False), _tiles_row(True)


@njit(**JIT)
def _output_tiles(M, plane, y, bias, use_bias, relu, n0, n1, th0, th1, tw0, tw1):
    """y's outputs of the block = relu?(Aᵀ m A + bias) of its tiles, m from M's 16 planes (flat, ``plane``
    elements apart; tile g of filter k at k*T + g, g = r*L + n*(nt + 1) + j), straight into y."""
    K, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    nt, rows = tw1 - tw0, th1 - th0
    slot = nt + 1
    L = (n1 - n0) * slot
    T = rows * L
    full = min(nt, (OW - 2 * tw0) // 2)  # tiles whose two columns are inside y
    ragged = full < nt
    ys = y.reshape(-1)
    zero = y.dtype.type(0)
    for k in range(K):  # M's order: its 16 streams read front to back
        b = bias[k] if use_bias else zero
        for r in range(rows):
            oh = 2 * (th0 + r)
            both = oh + 1 < OH
            for n in range(n1 - n0):
                top = (((n0 + n) * K + k) * OH + oh) * OW + 2 * tw0
                g = k * T + r * L + n * slot
                if relu:
                    _tiles_row_relu(ys, top, top + OW, both, M, plane, g, b, full, ragged)
                else:
                    _tiles_row_plain(ys, top, top + OW, both, M, plane, g, b, full, ragged)


@njit(**JIT)
def _pack_gradient(dy, canvas, n0, n1, th0, th1, tw0, tw1, limit):
    """canvas[2a + b, k*rows*L + r*L + n*(nt+1) + j] = dy[n0 + n, k, 2(th0 + r) + a, 2(tw0 + j) + b] for j < nt,
    0 past dy and on the spare tiles (so they add nothing to the weight gradient). canvas: (>= 4, >= K*rows*L),
    C-contiguous (its rows may be padded apart).

    Flat arrays and unsigned offsets, as in _pack_input; returns whether every value copied is within
    ``limit`` in magnitude.
    """
    K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    nt, rows = tw1 - tw0, th1 - th0
    slot = nt + 1
    L = (n1 - n0) * slot
    plane = canvas.shape[1]
    first = 2 * tw0
    hi = max(0, min(nt, (OW - first) // 2))  # tiles whose two columns are both inside dy
    dys, cs = dy.reshape(-1), canvas.reshape(-1)
    zero = cs.dtype.type(0)
    ok = True
    for k in range(K):
        for n in range(n1 - n0):
            for r in range(rows):
                for a in range(2):
                    even = 2 * a * plane + (k * rows + r) * L + n * slot
                    odd = even + plane
                    oh = 2 * (th0 + r) + a
                    if oh >= OH:
                        for j in range(slot):
                            cs[_u(even + j)] = zero
                            cs[_u(odd + j)] = zero
                        continue
                    src = (((n0 + n) * K + k) * OH + oh) * OW + first
                    # short rows in vectors (m2's 8 slots: 0.62 -> 0.44 ms a part); LLVM vectorizes long ones
                    # better itself (32 wide: 2.1 ms, 2.5 in vectors); columns past the block's tiles read as 0
                    if 4 <= slot <= 16 and src + 2 * slot <= dys.size:
                        ok &= _pack_row_vectors(dys, src, first, min(OW, 2 * tw1), cs, even, odd, slot,
                                                8 if slot >= 8 else 4, limit)
                        continue
                    for j in range(hi):
                        e, o = dys[_u(src + 2 * j)], dys[_u(src + 2 * j + 1)]
                        ok &= (abs(e) <= limit) & (abs(o) <= limit)
                        cs[_u(even + j)] = e
                        cs[_u(odd + j)] = o
                    for j in range(hi, slot):  # a ragged last column, then the spare tile
                        w = first + 2 * j
                        e = dys[_u(src + 2 * j)] if j < nt and w < OW else zero
                        ok &= abs(e) <= limit
                        cs[_u(even + j)] = e
                        cs[_u(odd + j)] = zero
    return ok


# The weight gradient's 16 operands D[p, q] = (A p Aᵀ)[p, q], A = [[1, 0], [1, 1], [1, -1], [0, -1]], from the
# 2x2 tiles' planes P[a, b] (planes 0-3): each is one of 16 planes, P itself or 12 sums and differences
# (planes 4-15), with a sign, half the work of computing all 16 (eight are a plane of P or of the first
# sums, signed). D[p, q] = GRAD_SIGN[4p + q] * plane GRAD_PLANE[4p + q] of [P00, P01, P10, P11, Z1_0, Z1_1,
# Z2_0, Z2_1, E10, E20, E11, E21, E12, E22, E13, E23]: Z1_a = Pa0 + Pa1, Z2_a = Pa0 - Pa1, and E1q / E2q the
# sum / difference of column q's two rows (E13, E23 built from P01 and P11, their sign -1 in GRAD_SIGN).
GRAD_PLANE = np.array([0, 4, 6, 1, 8, 10, 12, 14, 9, 11, 13, 15, 2, 5, 7, 3])
GRAD_SIGN = np.array([1, 1, 1, -1, 1, 1, 1, -1, 1, 1, 1, -1, -1, -1, -1, 1])


@njit(inline="always")
def _sum2(dst, a, b, minus):
    if minus:
        for g in range(dst.size):
            dst[g] = a[g] - b[g]
    else:
        for g in range(dst.size):
            dst[g] = a[g] + b[g]


@njit(**JIT)
def _gradient_transform(planes, size):
    """Planes 4-15 of ``planes`` (16, >= size; planes 0-3 the tiles' P[a, b]), see GRAD_PLANE."""
    P00, P01, P10, P11 = planes[0, :size], planes[1, :size], planes[2, :size], planes[3, :size]
    _sum2(planes[4, :size], P00, P01, False)  # Z1_0
    _sum2(planes[5, :size], P10, P11, False)  # Z1_1
    _sum2(planes[6, :size], P00, P01, True)   # Z2_0
    _sum2(planes[7, :size], P10, P11, True)   # Z2_1
    _sum2(planes[8, :size], P00, P10, False)  # E10
    _sum2(planes[9, :size], P00, P10, True)   # E20
    _sum2(planes[10, :size], planes[4, :size], planes[5, :size], False)  # E11
    _sum2(planes[11, :size], planes[4, :size], planes[5, :size], True)   # E21
    _sum2(planes[12, :size], planes[6, :size], planes[7, :size], False)  # E12
    _sum2(planes[13, :size], planes[6, :size], planes[7, :size], True)   # E22
    _sum2(planes[14, :size], P01, P11, False)  # E13 (sign -1)
    _sum2(planes[15, :size], P01, P11, True)   # E23 (sign -1)


@njit(**JIT)
def _pack_input_t(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
    """As _pack_input with the channel innermost: canvas[2a + b, pos*C + c] (canvas (4, ((rows + 1)*L + 1) * C)),
    so that the input transform's loops produce V transposed, (T x C) per ξ, for the weight gradient's GEMM
    (113 GFLOP/s on that layout, 68 on the transposed view of (C x T)). Returns whether every input copied
    is within ``limit`` in magnitude."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    nt, rows = tw1 - tw0, th1 - th0
    slot = nt + 1
    L = (n1 - n0) * slot
    plane = canvas.shape[1]
    first = 2 * tw0 - left
    zero = canvas.dtype.type(0)
    ok = True
    xs, cs = x.reshape(-1), canvas.reshape(-1)
    for n in range(n1 - n0):
        for ph in range(2 * (rows + 1)):  # canvas row (ph >> 1) of parity (ph & 1)
            h = 2 * th0 + ph - top
            row = (ph & 1) * 2 * plane + ((ph >> 1) * L + n * slot) * C
            for j in range(slot):
                for b in range(2):
                    w = first + 2 * j + b
                    dst = row + b * plane + j * C
                    if 0 <= h < H and 0 <= w < W:
                        src = (((n0 + n) * C) * H + h) * W + w
                        for c in range(C):
                            v = xs[_u(src + c * H * W)]
                            ok &= abs(v) <= limit
                            cs[_u(dst + c)] = v
                    else:
                        for c in range(C):
                            cs[_u(dst + c)] = zero
    for p in range(4):
        for c in range(C):
            cs[_u(p * plane + (rows + 1) * L * C + c)] = zero  # read only by the block's last spare tile
    return ok


# --------------------------------------------------------------------------- passes
# Each worker runs its blocks in one Numba call, GEMMs included (np.dot through SciPy's BLAS):
# with a Python loop per block, the two workers' GIL hand-offs cost a quarter of the time.

@njit(inline="always")
def _layout(block):
    n0, n1, th0, th1, tw0, tw1 = block[0], block[1], block[2], block[3], block[4], block[5]
    rows, L = th1 - th0, (n1 - n0) * (tw1 - tw0 + 1)
    return rows, L, rows * L


@njit(**JIT)
def _correlate_blocks(x, U, bias, use_bias, relu, y, top, left, blocks, buf, limit):
    """The forward pass over ``blocks`` ((count, 6): n0, n1, th0, th1, tw0, tw1), in scratch ``buf``;
    False as soon as an input is past ``limit`` (or NaN): the caller then redoes the pass by im2col."""
    C, K = x.shape[1], y.shape[1]
    for i in range(blocks.shape[0]):
        block = blocks[i]
        rows, L, T = _layout(block)
        n0, n1, th0, th1, tw0, tw1 = block[0], block[1], block[2], block[3], block[4], block[5]
        size = C * 4 * ((rows + 1) * L + 1)
        canvas = buf[:size].reshape(C, 4, (rows + 1) * L + 1)
        V = buf[size:size + 16 * (C * T + PLANE_PAD)].reshape(16, C * T + PLANE_PAD)
        size += 16 * (C * T + PLANE_PAD)
        M = buf[size:size + 16 * (K * T + PLANE_PAD)].reshape(16, K * T + PLANE_PAD)
        if not _pack_input(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
            return False
        for c in range(C):
            _input_transform(canvas[c], V, c * T, L, T, 1)
        for xi in range(16):
            np.dot(U[xi], V[xi, :C * T].reshape(C, T), M[xi, :K * T].reshape(K, T))
        _output_tiles(M.reshape(-1), K * T + PLANE_PAD, y, bias, use_bias, relu, n0, n1, th0, th1, tw0, tw1)
    return True


@njit(**JIT)
def _weight_gradient_blocks(dy, x, top, left, blocks, buf, partial, limit):
    """partial (16, K, C) += Σ over the tiles of ``blocks`` of (A p Aᵀ) Vᵀ, in scratch ``buf``; False as soon
    as an input is past ``limit`` (or NaN)."""
    C, K = x.shape[1], dy.shape[1]
    product = np.empty((K, C), partial.dtype)
    for i in range(blocks.shape[0]):
        block = blocks[i]
        rows, L, T = _layout(block)
        n0, n1, th0, th1, tw0, tw1 = block[0], block[1], block[2], block[3], block[4], block[5]
        size = 4 * ((rows + 1) * L + 1) * C
        canvas = buf[:size].reshape(4, ((rows + 1) * L + 1) * C)
        Vt = buf[size:size + 16 * (T * C + PLANE_PAD)].reshape(16, T * C + PLANE_PAD)
        size += 16 * (T * C + PLANE_PAD)
        planes = buf[size:size + 16 * (K * T + PLANE_PAD)].reshape(16, K * T + PLANE_PAD)
        if not (_pack_input_t(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit)
                and _pack_gradient(dy, planes, n0, n1, th0, th1, tw0, tw1, limit)):
            return False
        _input_transform(canvas, Vt, 0, L, T, C)
        _gradient_transform(planes, K * T)
        for xi in range(16):
            np.dot(planes[GRAD_PLANE[xi], :K * T].reshape(K, T), Vt[xi, :T * C].reshape(T, C), product)
            total, sign = partial[xi], partial.dtype.type(GRAD_SIGN[xi])
            for k in range(K):
                for c in range(C):
                    total[k, c] += sign * product[k, c]
    return True


@njit(**PARALLEL)
def _correlate_parts(x, U, bias, use_bias, relu, y, top, left, blocks, starts, scratch, limit, ok):
    """The forward pass, part p (an image range) running blocks[starts[p]:starts[p + 1]] in scratch[p];
    ok[p]: its inputs were all within ``limit``."""
    for part in prange(scratch.shape[0]):
        ok[part] = _correlate_blocks(x, U, bias, use_bias, relu, y, top, left,
                                     blocks[starts[part]:starts[part + 1]], scratch[part], limit)


@njit(**PARALLEL)
def _weight_gradient_parts(dy, x, top, left, blocks, starts, scratch, partials, limit, ok):
    """partials[p] = the weight gradient sum of part p's blocks[starts[p]:starts[p + 1]], in scratch[p]."""
    for part in prange(scratch.shape[0]):
        ok[part] = _weight_gradient_blocks(dy, x, top, left, blocks[starts[part]:starts[part + 1]], scratch[part],
                                           partials[part], limit)


def correlate(x, U, bias, relu, top, left, out_shape, limit, workspace_bytes=None):
    """y (out_shape: N, K, OH, OW) = relu?(stride-1 3x3 correlation of x (N, C, H, W) + bias), or None when an
    input is NaN, inf or past ``limit`` (``input_limit``).

    U (16, K, C) is the filter transform; (top, left) the padding before the first row and
    column (negative: rows and columns skipped).
    """
    N, C = x.shape[:2]
    K, OH, OW = out_shape[1:]
    y = runtime.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    x, U = np.ascontiguousarray(x), np.ascontiguousarray(U)
    use_bias = bias is not None
    bias = np.ascontiguousarray(bias) if use_bias else np.zeros(1, x.dtype)
    # 28 * K: M's 16 and the 12 an output transform through scratch once took; planning by 16 * K made
    # larger blocks that ran no faster
    blocks, starts, scratch = _plan(N, OH, OW, C, K, 20 * C + 28 * K, x.dtype, workspace_bytes)
    ok = np.zeros(scratch.shape[0], np.bool_)
    runtime.launch(_correlate_parts, x, U, bias, use_bias, relu, y, top, left, blocks, starts, scratch, limit, ok,
                   blas=True)
    return y if ok.all() else None


def weight_gradient(dy, x, top, left, limit, workspace_bytes=None):
    """dU (16, K, C): the sum over tiles of (A p Aᵀ) Vᵀ (dweight = ``weight_from(dU)``), or None when an input
    is NaN, inf or past ``limit``.

    dy (N, K, OH, OW), x (N, C, H, W); (top, left) the forward pass's padding.
    Deterministic: each image range sums its own partial, added in a fixed order.
    """
    N, C = x.shape[:2]
    K, OH, OW = dy.shape[1:]
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    blocks, starts, scratch = _plan(N, OH, OW, C, K, 20 * C + 16 * K, x.dtype, workspace_bytes,
                                    WEIGHT_GRADIENT_BLOCK_BYTES)
    partials = np.zeros((scratch.shape[0], 16, K, C), x.dtype)
    ok = np.zeros(scratch.shape[0], np.bool_)
    runtime.launch(_weight_gradient_parts, dy, x, top, left, blocks, starts, scratch, partials, limit, ok, blas=True)
    if not ok.all():
        return None
    total = np.zeros((16, K, C), x.dtype)
    for partial in partials:  # fixed order: deterministic
        total += partial
    return total


def _plan(N, OH, OW, C, K, floats_per_tile, dtype, workspace_bytes, cap=None):
    """The blocks of tiles of every part (``runtime.plan_parts``), each within ``cap`` bytes (default
    ``BLOCK_BYTES``), and a scratch row per part for its largest."""
    blocks, starts, need = _blocks(N, OH, OW, C, floats_per_tile, np.dtype(dtype),
                                   runtime.workspace_budget(workspace_bytes), runtime.threads(), cap or BLOCK_BYTES)
    parts = len(starts) - 1
    return blocks, starts, runtime.scratch(parts * need, dtype).reshape(parts, need)


@functools.lru_cache(maxsize=64)
def _blocks(N, OH, OW, C, floats_per_tile, dtype, budget, threads, cap):
    """``_plan``'s blocks, starts and scratch floats per part, kept per shape (planning took 30-40 us, a
    training step plans three passes); the kernels only read them. ``threads``: the most parts (and so part
    of the key)."""
    TH, TW = -(-OH // TILE), -(-OW // TILE)
    # twice the arrays' size per tile covers the spare tiles and the canvas's extra row, even for 1x1-tile blocks
    tile_bytes = 2 * floats_per_tile * dtype.itemsize
    # a part's scratch has a floor (its planes' padding, one tile's transforms): with many threads and a small
    # budget the parts' floors alone passed it (16 threads, 64 KiB: 118 KiB), so fewer parts until they fit
    for max_parts in range(threads, 0, -1):
        blocks, starts, _ = runtime.plan_parts(N, TH, TW, tile_bytes, budget, cap, max_parts)
        need = 0
        for n0, n1, th0, th1, tw0, tw1 in blocks:
            rows, L = th1 - th0, (n1 - n0) * (tw1 - tw0 + 1)
            need = max(need, 4 * C * ((rows + 1) * L + 1) + (floats_per_tile - 4 * C) * rows * L + 32 * PLANE_PAD)
        if (len(starts) - 1) * need * dtype.itemsize <= budget:
            break
    return blocks, starts, int(need)
