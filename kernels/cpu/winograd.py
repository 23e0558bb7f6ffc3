"""CPU conv2d by Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3): 3x3 filters, stride 1, no dilation,
any padding.

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
of its rows and columns (``_pack_input_2``, a row at a time in vectors of 8 or 4 slots,
``_slots_intrinsic``), so patch element (i, j) of tile g is at ``g + (i//2)*L + j//2`` of plane
``(i%2, j%2)``. The output transform goes the other way,
straight from the GEMMs' products into y, a row of tiles at a time in explicit vectors of
4-16 tiles (``_tiles_intrinsic``): as whole-block loops it took two scratch passes more.

F(4x4, 3x3) (the forward and backward-input passes of images from 20x20, ``forward_tile``; the weight
gradient from 32x32, ``weight_gradient_tile``) takes 6x6 patches to 4x4 tiles: 36 GEMMs, 2.25
multiplications per output where F(2x2) has 4; on the AMD host 1.2-1.5x less time on the suite's larger
images (neu_conv3, cifar_conv). Its matrices come from ``toom_cook`` (points 0, ±1, ±1/2): Bᵀ's rows hold
up to four integers up to 8, so the input transform is two passes of four-term loops
(``_input_transform_by_rows``); the canvas splits rows and columns modulo 4 (16 planes; the packs are
built per tile side, ``_pack_input_kernel``); the output transform is the same intrinsic as F(2x2)'s,
built from Aᵀ; the weight gradient transforms dy's 4x4 tiles by A the same way
(``_gradient_transform_by_rows``). Its float32 error is about 10x F(2x2)'s (~1.5e-6 of the largest output
against 1.5e-7 over 64 channels), still within the tests' 2e-5.

Not for non-finite or huge inputs: Winograd mixes all 16 inputs of a patch into all 4
outputs of its tile, so an inf would turn neighbouring outputs into NaN. The pack kernels
check every input against ``input_limit`` as they copy it; a pass that meets NaN, inf or a
value past the limit returns None, and the caller (``conv``) redoes it with im2col, which
has the direct sum's semantics.
"""
import functools
import math
from fractions import Fraction

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import runtime
from .runtime import JIT, PARALLEL, part_range, valid_output_range

_u = np.uint64  # unsigned indices: no negative-index wraparound code in the loops

# Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], row p as (i1, i2, sign of i2): +d[i1] ± d[i2]
B_ROWS = np.array([[0, 2, -1], [1, 2, 1], [2, 1, -1], [1, 3, -1]])
# F(2x2, 3x3)'s Aᵀ (2 x 4): the output transform, with the sign of the point at infinity matching B_ROWS
F2_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# F(4x4, 3x3) from the points 0, ±1, ±1/2 and infinity: ±1/2 kept float32 errors at half those of ±2
# (1.6e-6 against 2.8e-6 of the largest output over 64 channels; F(2x2) 1.5e-7); see ``toom_cook``
F4_POINTS = (0, 1, -1, Fraction(1, 2), Fraction(-1, 2))
F4_MIN_SIDE, F4_MIN_CHANNELS = 20, 16  # where F(4x4) starts to serve the forward pass (``forward_tile``)
F4_GRADIENT_MIN_SIDE = 32  # and the weight gradient (``weight_gradient_tile``)
# Growth of a value through the transforms, bounding ``input_limit``: F(2x2): |Bᵀ|, |G|, |Aᵀ| row sums 2, 1.5, 3
# squared (81 in all); F(4x4): 24, 1, 5 squared (14400)
GROWTH = {2: 64 * 64, 4: 128 * 128}
# F(4x4)'s floats per tile (per input and per output channel) that size its blocks: about half what its arrays
# take, so blocks twice as large as (52, 48) would make; those ran 10-15% slower on neu_conv2, neu_conv3 and
# resnet (AMD host); planning by (18, 16) passed the 8 MiB workspace with two parts
F4_FLOATS_PER_TILE = (26, 24)
# the weight gradient's: (76, 76) counts its arrays (canvas, Vt and rows, 16 + 36 + 24 per C; P, Q and D per K);
# blocks three times as large ran 10-25% faster on cifar_conv, neu_conv2-3 and resnet_conv, larger ones no faster
F4_GRADIENT_FLOATS_PER_TILE = (26, 26)
BLOCK_BYTES = 4 << 20  # scratch per block of tiles (planned at twice the need): larger blocks ran slower GEMMs
# the weight gradient's blocks: on the Intel host (2 MiB L2) 2 MiB ran 5-20% faster than 4 on all five
# Winograd shapes of the suite (mnist_conv2 3.95 -> 3.42 ms, neu_conv3 22.4 -> 18.2); forward and
# backward-input ran no faster below 4 MiB (3-15% slower at 2)
WEIGHT_GRADIENT_BLOCK_BYTES = 2 << 20
# ξ planes of V and M start this many elements apart beyond their size: 16 streams at a multiple
# of 4 KiB apart share cache sets (a 32x32 case ran 2.7x slower)
PLANE_PAD = 32


def forward_tile(out_hw, in_channels, out_channels):
    """The tile side of the forward pass (and backward-input's, which is one) for outputs of ``out_hw``: 4 from
    ``F4_MIN_SIDE`` outputs a side and ``F4_MIN_CHANNELS`` channels in and out, else 2.

    Measured on the AMD host, F(4x4) / F(2x2) time, batch 128, 32 -> 64 channels: 14x14 1.25 (a 14-wide row
    is 3 full tiles and a ragged one: 16 % more outputs and narrow vectors), 16x16 0.94, 18x18 1.07, 20x20
    0.86, 24-28 0.75; 64 -> 64 at 8x8 1.02, 32x32 0.65; neu_conv3 (50x50, 64 -> 128) 0.80; 16 -> 16 at
    28x28 0.92, 8 -> 8 at 56x56 1.06."""
    return 4 if min(out_hw) >= F4_MIN_SIDE and min(in_channels, out_channels) >= F4_MIN_CHANNELS else 2


def weight_gradient_tile(out_hw, in_channels, out_channels):
    """The weight gradient's tile side for outputs of ``out_hw``: 4 from ``F4_GRADIENT_MIN_SIDE`` outputs a side
    and ``F4_MIN_CHANNELS`` channels in and out, else 2.

    Measured on the AMD host, F(4x4) / F(2x2) time: 32 -> 64 channels at batch 128: 14x14 1.47, 20x20 1.23,
    28x28 0.96; cifar_conv (32x32) 0.79-0.81, neu_conv2 0.88-0.89, neu_conv3 0.88-0.89, resnet_conv 0.77."""
    return 4 if min(out_hw) >= F4_GRADIENT_MIN_SIDE and min(in_channels, out_channels) >= F4_MIN_CHANNELS else 2


def applies(weight_shape, stride, dilation):
    """Winograd (F(2x2, 3x3) or F(4x4, 3x3)) computes this conv: 3x3 filters, stride 1, no dilation."""
    return tuple(weight_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def toom_cook(m, points, r=3):
    """(Aᵀ (m, n), G (n, r), Bᵀ (n, n)) of F(m, r), n = m + r - 1, from n - 1 distinct finite ``points`` and
    infinity, computed exactly (fractions) and returned as float64 arrays: ``y = Aᵀ [(G g) ⊙ (Bᵀ d)]`` is the
    correlation ``y[i] = Σ_k d[i + k] g[k]`` of d (n,) with g (r,), and the 2-D form nests it.

    Correlation is the transpose of polynomial multiplication: with V the n x n matrix evaluating a polynomial
    of degree n - 1 at the points (its last row picks the leading coefficient, the point at infinity),
    Aᵀ = V_mᵀ, G = V_r and Bᵀ = V⁻ᵀ, V_k being V's first k columns. Each row of Bᵀ is scaled to integers
    and the same row of G divided by that factor."""
    n = m + r - 1
    points = [Fraction(p) for p in points]
    if len(points) != n - 1 or len(set(points)) != n - 1:
        raise ValueError(f"points must be {n - 1} distinct numbers, got {points}")
    V = [[p ** e for e in range(n)] for p in points] + [[Fraction(int(e == n - 1)) for e in range(n)]]
    inverse = _exact_inverse(V)
    BT = [[inverse[j][i] for j in range(n)] for i in range(n)]
    G = [[p ** e for e in range(r)] for p in points] + [[Fraction(int(e == r - 1)) for e in range(r)]]
    AT = [[V[j][i] if j < n - 1 else Fraction(int(i == m - 1)) for j in range(n)] for i in range(m)]
    for j in range(n):
        scale = math.lcm(*(v.denominator for v in BT[j]))
        BT[j] = [v * scale for v in BT[j]]
        G[j] = [v / scale for v in G[j]]
    return tuple(np.array(a, np.float64) for a in (AT, G, BT))


def _exact_inverse(matrix):
    """The inverse of a square matrix of Fractions (Gauss-Jordan with exact arithmetic)."""
    n = len(matrix)
    rows = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for c in range(n):
        pivot = next(i for i in range(c, n) if rows[i][c] != 0)
        rows[c], rows[pivot] = rows[pivot], rows[c]
        rows[c] = [v / rows[c][c] for v in rows[c]]
        for i in range(n):
            if i != c and rows[i][c] != 0:
                f = rows[i][c]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[c])]
    return [row[n:] for row in rows]


F4_AT, F4_G, F4_BT = toom_cook(4, F4_POINTS)


def _terms(BT):
    """Bᵀ's rows as four (column, coefficient) terms each, (n, 4) indices and (n, 4) coefficients; rows of
    three nonzeros repeat their first column with coefficient 0 (the loops take four inputs)."""
    index, coefficient = np.zeros((len(BT), 4), np.int64), np.zeros((len(BT), 4), np.float64)
    for p, row in enumerate(BT):
        nonzero = np.flatnonzero(row)
        if len(nonzero) > 4:
            raise ValueError("Bᵀ rows of more than 4 nonzeros")
        index[p] = nonzero[0]
        index[p, :len(nonzero)] = nonzero
        coefficient[p, :len(nonzero)] = row[nonzero]
    return index, coefficient


F4_BT_INDEX, F4_BT_COEFFICIENT = _terms(F4_BT)
F4_A_INDEX, F4_A_COEFFICIENT = _terms(F4_AT.T)  # A (6 x 4): the weight gradient's transform of dy's tiles


@functools.lru_cache(maxsize=4)
def _coefficients(dtype):
    """(Bᵀ's, A's) term coefficients in ``dtype``, made once per dtype rather than on every call (the kernels
    only read them)."""
    return F4_BT_COEFFICIENT.astype(dtype), F4_A_COEFFICIENT.astype(dtype)


def tile_side(U):
    """The tile side (2 or 4) of a filter transform U (16 or 36, K, C)."""
    return {16: 2, 36: 4}[U.shape[0]]


def filter_transform(weight, tile=2):
    """U (n², K, C) = G g Gᵀ of every filter g of weight (K, C, 3, 3), in the weight's dtype; n = tile + 2
    (F(2x2, 3x3): 16 planes, F(4x4, 3x3): 36)."""
    K, C = weight.shape[:2]
    n = tile + 2
    U = np.empty((n * n, K, C), weight.dtype)
    # a filter costs about what 64 elements of a ReLU do (50 ns): mnist_conv2's 2048 took 0.11 ms on one core
    parts = runtime.parts(K, 64 * C * (n * n) // 16)
    if tile == 2:
        runtime.launch(_filter_transform, np.ascontiguousarray(weight), U, parts)
    else:
        runtime.launch(_filter_transform_by_matrix, np.ascontiguousarray(weight), U, F4_G, parts)
    return U


def rotated_filters(weight):
    """weight (K, C, 3, 3) -> (C, K, 3, 3) rotated by 180 degrees: the backward-input pass's filters."""
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def weight_from(dU):
    """dweight (K, C, 3, 3) = Gᵀ dU G from dU (16 or 36, K, C)."""
    K, C = dU.shape[1:]
    dweight = np.empty((K, C, 3, 3), dU.dtype)
    if dU.shape[0] == 16:
        _weight_from(dU, dweight)
    else:
        _weight_from_by_matrix(dU, dweight, F4_G)
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


@njit(**PARALLEL)
def _filter_transform_by_matrix(weight, U, G, parts):
    """U[n*p + q, k, c] = (G g Gᵀ)[p, q] for G (n, 3), filters k of part p, summed in G's dtype (float64: F(4x4)'s
    1/6 and 1/12 are not exact in float32)."""
    n = G.shape[0]
    for part in prange(parts):
        k0, k1 = part_range(weight.shape[0], parts, part)
        cols = np.empty((n, 3), G.dtype)  # G g
        for k in range(k0, k1):
            for c in range(weight.shape[1]):
                g = weight[k, c]
                for p in range(n):
                    for s in range(3):
                        cols[p, s] = G[p, 0] * g[0, s] + G[p, 1] * g[1, s] + G[p, 2] * g[2, s]
                for p in range(n):
                    for q in range(n):
                        U[n * p + q, k, c] = cols[p, 0] * G[q, 0] + cols[p, 1] * G[q, 1] + cols[p, 2] * G[q, 2]


@njit(**JIT)
def _weight_from_by_matrix(dU, dweight, G):
    """dweight[k, c] = Gᵀ dU[:, k, c] G, dU's planes as an n x n matrix (G: (n, 3)), summed in G's dtype."""
    n = G.shape[0]
    rows = np.empty((3, n), G.dtype)  # Gᵀ dU
    for k in range(dU.shape[1]):
        for c in range(dU.shape[2]):
            for r in range(3):
                for q in range(n):
                    total = 0.0
                    for p in range(n):
                        total += G[p, r] * dU[n * p + q, k, c]
                    rows[r, q] = total
            for r in range(3):
                for s in range(3):
                    total = 0.0
                    for q in range(n):
                        total += rows[r, q] * G[q, s]
                    dweight[k, c, r, s] = total


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


def input_limit(dtype, terms, other=None, tile=2):
    """The largest |input| for which Winograd's result is finite and accurate: no sum of ``terms`` products
    (with the transforms' growth) can overflow ``dtype``. ``other``: the other operand's max |value| (the
    filters), or None when both operands are inputs checked this way (the weight gradient: the bound is
    shared as its square root). 0 when ``other`` is NaN or inf: every input then fails, as it must. ``tile``:
    the tile side, whose transforms' growth (``GROWTH``) takes its share of the room.
    The inputs are checked while they are packed (``ok`` of the pack kernels): one pass fewer over them."""
    room = float(np.finfo(dtype).max) / (GROWTH[tile] * max(terms, 1))
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

def _slots_intrinsic(width, phases=2):
    """An intrinsic ``ok = f(xs, at, lo, hi, cs, dst, plane, limit)`` that splits ``phases * width`` consecutive
    elements xs[at:at + phases*width] by their index modulo ``phases`` into cs[dst + b*plane:][:width] for phase b
    (1-D C-contiguous arrays of one float dtype; no bounds checks), lanes outside [lo, hi) read as 0 (padding, or
    the rows beside), and says whether every lane kept is within ``limit`` in magnitude (NaN is not). One vector
    load, a select, a deinterleaving shuffle and a store per phase, where the per-slot loop with its edge cases
    took ~17 ns a row."""
    lanes_count = phases * width

    def typer(typingctx, xs, at, lo, hi, cs, dst, plane, limit):
        if not runtime.flat_float_arrays(xs, cs):
            return None

        def codegen(context, builder, signature, args):
            xs_value, at, lo, hi, cs_value, dst, plane, limit = args
            element = context.get_value_type(xs.dtype)
            align = context.get_abi_sizeof(element)
            lanes = ir.VectorType(element, lanes_count)
            lane_type = ir.VectorType(ir.IntType(64), lanes_count)
            index = ir.Constant(lane_type, [ir.Constant(ir.IntType(64), i) for i in range(lanes_count)])
            inside = builder.and_(builder.icmp_signed(">=", index, runtime.splat_value(builder, lane_type, lo)),
                                  builder.icmp_signed("<", index, runtime.splat_value(builder, lane_type, hi)))
            v = builder.load(runtime.vector_at(context, builder, xs, xs_value, at, lanes), align=align)
            v = builder.select(inside, v, runtime.splat(lanes, 0.0))
            bound = runtime.splat_value(builder, lanes, context.cast(builder, limit, signature.args[7], xs.dtype))
            within = builder.and_(builder.fcmp_ordered("<=", v, bound),
                                  builder.fcmp_ordered(">=", v, builder.fneg(bound)))
            ok = builder.icmp_unsigned("==", builder.bitcast(within, ir.IntType(lanes_count)),
                                       ir.Constant(ir.IntType(lanes_count), (1 << lanes_count) - 1))
            offset = dst
            for phase in range(phases):
                part = builder.shuffle_vector(v, v, runtime.lane_indices(range(phase, lanes_count, phases)))
                builder.store(part, runtime.vector_at(context, builder, cs, cs_value, offset, part.type), align=align)
                offset = builder.add(offset, plane)
            return ok
        return types.boolean(xs, at, lo, hi, cs, dst, plane, limit), codegen
    typer.__name__ = f"_slots_{width}x{phases}"
    return intrinsic(typer)


_slots_8, _slots_4 = _slots_intrinsic(8), _slots_intrinsic(4)
_slots_8x4, _slots_4x4 = _slots_intrinsic(8, 4), _slots_intrinsic(4, 4)


@njit(inline="always")
def _block_canvas(n0, n1, th0, th1, tw0, tw1):
    """The canvas of the block of images [n0, n1), tile rows [th0, th1), tile columns [tw0, tw1): (nt tile columns,
    rows, slot = nt + 1 per image row (its tiles and one spare), L = slots per canvas row)."""
    nt, rows = tw1 - tw0, th1 - th0
    slot = nt + 1
    return nt, rows, slot, (n1 - n0) * slot


@njit(inline="always")
def _pack_row_vectors(xs, src, first, W, cs, dst, plane, slot, width, tile, limit):
    """One input row (xs[src:src + tile*slot], its first element at column ``first``) into its ``tile`` canvas rows
    (one per column phase, ``plane`` apart from cs[dst]) by ``_slots_*`` intrinsics of ``width`` (8 or 4) slots,
    the last vector overlapping the one before; whether every element is within ``limit``. The caller checks
    that xs[src:src + tile*slot] lies inside xs."""
    ok = True
    last = slot - width
    for j in range(0, last + width, width):
        j = min(j, last)
        lo, hi = -first - tile * j, W - first - tile * j  # the lanes inside the row
        if tile == 4:
            if width == 8:
                ok &= _slots_8x4(xs, src + 4 * j, lo, hi, cs, dst + j, plane, limit)
            else:
                ok &= _slots_4x4(xs, src + 4 * j, lo, hi, cs, dst + j, plane, limit)
        elif width == 8:
            ok &= _slots_8(xs, src + 2 * j, lo, hi, cs, dst + j, plane, limit)
        else:
            ok &= _slots_4(xs, src + 2 * j, lo, hi, cs, dst + j, plane, limit)
    return ok


def _pack_input_kernel(tile):
    """``pack(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit)`` for tiles of side ``tile``, a
    compile-time constant (with a run-time one, the divisions by it per row took 70% more time)."""

    @njit(**JIT)
    def pack(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
        """canvas[c, tile*a + b, r*L + n*(nt+1) + j] = x[n0 + n, c, tile*(th0 + r) + a - top,
        tile*(tw0 + j) + b - left], 0 outside x, for canvas rows r in [0, th1 - th0] and j in [0, nt]
        (nt = tw1 - tw0): the block's patches split by the row and column modulo ``tile`` (2: parity).
        canvas: (C, tile², (rows + 1) * L + 1).

        Each input row is read once. Flat arrays and unsigned offsets: with signed indices Numba's
        negative-index wraparound kept these loops scalar (2-3x slower), and a view per short row
        cost more than its copy; so did the edges as a helper function. Returns whether every input
        copied is within ``limit`` in magnitude (NaN is not).
        """
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        nt, rows, slot, L = _block_canvas(n0, n1, th0, th1, tw0, tw1)
        plane = canvas.shape[2]
        phases = tile * tile
        first = tile * tw0 - left
        lo, hi = valid_output_range(0, -first, tile, W - (tile - 1), slot)  # slots whose columns are all inside x
        xs, cs = x.reshape(-1), canvas.reshape(-1)
        zero = cs.dtype.type(0)
        ok = True
        h_lo, h_hi = max(0, tile * th0 - top), min(H, tile * th1 + 2 - top)  # the rows the patches read
        for n in range(n1 - n0):  # x's order: with the channel loop outside, each plane began a new stream
            for c in range(C):
                base = c * phases * plane
                for h in range(h_lo, h_hi):
                    ph = h + top - tile * th0  # canvas row ph // tile of row phase ph % tile
                    dst = base + tile * (ph % tile) * plane + (ph // tile) * L + n * slot
                    src = (((n0 + n) * C + c) * H + h) * W + first
                    if slot >= 4 and src >= 0 and src + tile * slot <= xs.size:  # vectors may read the rows beside
                        ok &= _pack_row_vectors(xs, src, first, W, cs, dst, plane, slot, 8 if slot >= 8 else 4, tile,
                                                limit)
                        continue
                    for j in range(slot):
                        inside = lo <= j < hi  # all the slot's columns inside x: no checks
                        for b in range(tile):
                            w = first + tile * j + b
                            v = xs[_u(src + tile * j + b)] if inside or 0 <= w < W else zero
                            ok &= abs(v) <= limit
                            cs[_u(dst + b * plane + j)] = v
        for c in range(C):
            base = c * phases * plane
            for ph in range(tile * (rows + 1)):  # canvas rows no input row filled: padding, or unread past the patches
                h = tile * th0 + ph - top
                if h_lo <= h < h_hi:
                    continue
                for n in range(n1 - n0):
                    dst = base + tile * (ph % tile) * plane + (ph // tile) * L + n * slot
                    for b in range(tile):
                        for j in range(slot):
                            cs[_u(dst + b * plane + j)] = zero
            for p in range(phases):
                cs[_u(base + p * plane + (rows + 1) * L)] = zero  # read only by the block's last spare tile
        return ok
    return pack


_pack_input_2, _pack_input_4 = _pack_input_kernel(2), _pack_input_kernel(4)


@njit(**JIT)
def _input_transform(planes, V, column, L, T, C):
    """V[4p + q, column + g*C + c] = (Bᵀ d B)[p, q] of tile g's patch d in channel c, for a canvas whose four
    parity planes ``planes`` (4, ...) hold C channels innermost (``_pack_input_t``; C = 1 for one channel of
    ``_pack_input_2``'s canvas): one loop over (tile, channel) per ξ, the patch offsets scaled by C.

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


@njit(inline="always")
def _axpy4(dst, at, src, s0, s1, s2, s3, c0, c1, c2, c3, count):
    """dst[at:at + count] = c0 src[s0:] + c1 src[s1:] + c2 src[s2:] + c3 src[s3:] (flat arrays, unsigned offsets:
    a loop of views cost ~25 ns in slicing, as much as the loop itself over 80 elements). A coefficient 0 adds
    nothing: the inputs are finite."""
    for g in range(count):
        dst[_u(at + g)] = (c0 * src[_u(s0 + g)] + c1 * src[_u(s1 + g)] + c2 * src[_u(s2 + g)]
                           + c3 * src[_u(s3 + g)])


@njit(**JIT)
def _input_transform_by_rows(canvas, rows, V, L, T, unit, index, coefficient):
    """V[n*p + q, c*T + g] = (Bᵀ d B)[p, q] of tile g's patch d (n x n, n = tile + 2) in channel c of
    ``_pack_input_kernel``'s canvas (C, tile², plane), Bᵀ given by its rows' four terms (``_terms``).
    ``unit``: 1; or C for ``_pack_input_t_kernel``'s canvas with the channels innermost, passed as
    (1, tile², plane * C): then V[n*p + q, g*C + c] (V transposed, T x C per plane).

    Two passes per channel, each a loop per output plane over the whole block: rows[n*i + q] = (d B)[i, q]
    for the patch rows i < tile, then V[p, q] = Σ_i Bᵀ[p, i] rows[i, q]; patch rows i >= tile are rows
    i - tile of the tile below (+L), so the first pass covers T + L tiles for them and the second reads them
    shifted. rows: (tile * n, >= (T + L) * unit) scratch; V: (n², >= C*T), C-contiguous.
    """
    n = index.shape[0]
    tile = n - 2
    C, plane = canvas.shape[0], canvas.shape[2]
    cs, rs, vs = canvas.reshape(-1), rows.reshape(-1), V.reshape(-1)
    row_plane, v_plane = rows.shape[1], V.shape[1]
    for c in range(C):
        base = c * tile * tile * plane
        for i in range(tile):
            span = (T + L if i < n - tile else T) * unit
            for q in range(n):
                # d[i][j] of every tile: plane (i, j % tile) from offset j // tile
                j0, j1, j2, j3 = index[q, 0], index[q, 1], index[q, 2], index[q, 3]
                _axpy4(rs, (n * i + q) * row_plane, cs,
                       base + (tile * i + j0 % tile) * plane + j0 // tile * unit,
                       base + (tile * i + j1 % tile) * plane + j1 // tile * unit,
                       base + (tile * i + j2 % tile) * plane + j2 // tile * unit,
                       base + (tile * i + j3 % tile) * plane + j3 // tile * unit,
                       coefficient[q, 0], coefficient[q, 1], coefficient[q, 2], coefficient[q, 3], span)
        for p in range(n):
            i0, i1, i2, i3 = index[p, 0], index[p, 1], index[p, 2], index[p, 3]
            for q in range(n):
                _axpy4(vs, (n * p + q) * v_plane + c * T * unit, rs,
                       (n * (i0 % tile) + q) * row_plane + (i0 // tile) * L * unit,
                       (n * (i1 % tile) + q) * row_plane + (i1 // tile) * L * unit,
                       (n * (i2 % tile) + q) * row_plane + (i2 // tile) * L * unit,
                       (n * (i3 % tile) + q) * row_plane + (i3 // tile) * L * unit,
                       coefficient[p, 0], coefficient[p, 1], coefficient[p, 2], coefficient[p, 3], T * unit)


@njit(**JIT)
def _gradient_transform_by_rows(P, Q, D, size, index, coefficient):
    """D[n*p + q, :size] = (A p Aᵀ)[p, q] of the tiles p (tile x tile) whose elements are P's planes
    (P[tile*a + b]), A given by its rows' four terms (``_terms(Aᵀ.T)``): Q[n*a + q] = (p Aᵀ)[a, q], then
    D[p, q] = Σ_a A[p, a] Q[a, q]. Q: (tile * n, >= size) scratch; loops over flat arrays, as in
    ``_input_transform_by_rows``."""
    n = index.shape[0]
    tile = n - 2
    ps, qs, ds = P.reshape(-1), Q.reshape(-1), D.reshape(-1)
    p_plane, q_plane, d_plane = P.shape[1], Q.shape[1], D.shape[1]
    for a in range(tile):
        for q in range(n):
            b0, b1, b2, b3 = index[q, 0], index[q, 1], index[q, 2], index[q, 3]
            _axpy4(qs, (n * a + q) * q_plane, ps, (tile * a + b0) * p_plane, (tile * a + b1) * p_plane,
                   (tile * a + b2) * p_plane, (tile * a + b3) * p_plane,
                   coefficient[q, 0], coefficient[q, 1], coefficient[q, 2], coefficient[q, 3], size)
    for p in range(n):
        a0, a1, a2, a3 = index[p, 0], index[p, 1], index[p, 2], index[p, 3]
        for q in range(n):
            _axpy4(ds, (n * p + q) * d_plane, qs, (n * a0 + q) * q_plane, (n * a1 + q) * q_plane,
                   (n * a2 + q) * q_plane, (n * a3 + q) * q_plane,
                   coefficient[p, 0], coefficient[p, 1], coefficient[p, 2], coefficient[p, 3], size)


def _weighted_sum(b, terms):
    """IR: Σ c·v over the (coefficient, vector) ``terms``, adds and subtracts for ±1, nothing for 0."""
    total = None
    for c, v in terms:
        if c == 0:
            continue
        if c not in (1, -1):
            v = b.fmul(v, runtime.splat(v.type, float(c)))
        if total is None:
            total = b.fneg(v) if c == -1 else v
        else:
            total = b.fsub(total, v) if c == -1 else b.fadd(total, v)
    return total


def _tile_outputs(b, m, AT):
    """IR: rows[a][c] = (Aᵀ m A)[a, c] of tiles whose n x n elements ``m`` (row-major) are vectors, built by
    ``b``: Aᵀ over the columns of m, then over the rows. F(2x2): A = [[1, 0], [1, 1], [1, -1], [0, -1]]."""
    tile, n = AT.shape
    s = [[_weighted_sum(b, zip(AT[c], m[n * i:n * i + n])) for c in range(tile)] for i in range(n)]
    return [[_weighted_sum(b, zip(AT[a], (s[i][c] for i in range(n)))) for c in range(tile)] for a in range(tile)]


def _activate(b, v, bias, zero, relu):
    """relu?(v + bias), IR: NaN is not <= 0, so it propagates."""
    v = b.fadd(v, bias)
    return b.select(b.fcmp_ordered("<=", v, zero), zero, v) if relu else v


def _tiles_intrinsic(width, relu, AT, columns=None):
    """An intrinsic ``f(y, top, stride, rows, M, plane, g, bias)`` that writes ``width`` adjacent output tiles of
    side ``tile`` (Aᵀ: (tile, n)): relu?(Aᵀ m A + bias) of tiles g..g+width of the n² planes of M (flat,
    ``plane`` elements apart), row a of them to y[top + a*stride:][:tile*width] for a < ``rows`` (1-D C-contiguous
    arrays of one float dtype; no bounds checks). One pass from M to y: n² vector loads, the sums, interleaving
    shuffles. ``columns`` < tile (width 1): the tile's first columns only, for a tile past y's right edge."""
    tile, n = AT.shape
    columns = columns or tile

    def typer(typingctx, y, top, stride, rows, M, plane, g, bias):
        if not runtime.flat_float_arrays(y, M):
            return None

        def codegen(context, builder, signature, args):
            y_value, top, stride, rows, M_value, plane, g, bias = args
            element = context.get_value_type(y.dtype)
            align = context.get_abi_sizeof(element)
            vector = ir.VectorType(element, width)
            bias = context.cast(builder, bias, signature.args[7], y.dtype)
            bias_lanes = runtime.splat_value(builder, vector, bias)
            m = [builder.load(runtime.vector_at(context, builder, M, M_value,
                                                builder.add(g, builder.mul(plane, ir.Constant(plane.type, xi))),
                                                vector), align=align) for xi in range(n * n)]
            zero = runtime.splat(vector, 0.0)
            out = [[_activate(builder, v, bias_lanes, zero, relu) for v in row]
                   for row in _tile_outputs(builder, m, AT)]

            def store(at, c, v):  # v to y[at + c:]
                at = builder.add(at, ir.Constant(at.type, c))
                builder.store(v, runtime.vector_at(context, builder, y, y_value, at, v.type), align=align)

            at = top
            for a in range(tile):
                if columns == tile:  # interleave the columns: lane k of column c to lane tile*k + c
                    parts = out[a]
                    while len(parts) > 1:
                        half = len(parts) // 2
                        parts = [runtime.interleave(builder, parts[c], parts[c + half]) for c in range(half)]
                    stores = [(0, parts[0])]
                else:
                    stores = [(c, out[a][c]) for c in range(columns)]
                if a == 0:
                    for c, v in stores:
                        store(at, c, v)
                else:
                    at = builder.add(at, stride)
                    with builder.if_then(builder.icmp_signed(">", rows, ir.Constant(rows.type, a))):
                        for c, v in stores:
                            store(at, c, v)
            return context.get_dummy_value()
        return types.void(y, top, stride, rows, M, plane, g, bias), codegen
    typer.__name__ = f"_tiles_{tile}_{width}x{columns}{'_relu' if relu else ''}"
    return intrinsic(typer)


def _tiles_row(relu, AT):
    """``row(y, top, stride, rows, M, plane, g, bias, count, ragged)``: ``count`` adjacent full tiles by
    intrinsics of 16 (tile 2 only), 8 or 4 tiles (a row's last vector overlaps the one before and rewrites equal
    values), rows of under 4 a tile at a time; then ``ragged`` (0 to tile - 1) columns of one more tile, the
    rest of it past y's edge."""
    tile = AT.shape[0]
    by16, by8, by4, by1 = (_tiles_intrinsic(width, relu, AT) for width in (16 if tile == 2 else 8, 8, 4, 1))
    # F(4x4)'s 36 planes of 16 lanes spilled registers: 8 tiles at most
    edge = [_tiles_intrinsic(1, relu, AT, c) for c in range(1, tile)]
    edge1, edge2, edge3 = (edge + [edge[0]] * 2)[:3]

    @njit(inline="always")
    def row(y, top, stride, rows, M, plane, g, bias, count, ragged):
        if count >= 16 and tile == 2:
            last = count - 16
            for j in range(0, last, 16):
                by16(y, top + tile * j, stride, rows, M, plane, g + j, bias)
            by16(y, top + tile * last, stride, rows, M, plane, g + last, bias)
        elif count >= 8:
            last = count - 8
            for j in range(0, last, 8):
                by8(y, top + tile * j, stride, rows, M, plane, g + j, bias)
            by8(y, top + tile * last, stride, rows, M, plane, g + last, bias)
        elif count >= 4:
            by4(y, top, stride, rows, M, plane, g, bias)
            by4(y, top + tile * (count - 4), stride, rows, M, plane, g + count - 4, bias)
        else:
            for j in range(count):
                by1(y, top + tile * j, stride, rows, M, plane, g + j, bias)
        at = top + tile * count
        if ragged == 1:
            edge1(y, at, stride, rows, M, plane, g + count, bias)
        elif ragged == 2:
            edge2(y, at, stride, rows, M, plane, g + count, bias)
        elif ragged == 3:
            edge3(y, at, stride, rows, M, plane, g + count, bias)
    return row


_tiles_row_2, _tiles_row_2_relu = _tiles_row(False, F2_AT), _tiles_row(True, F2_AT)
_tiles_row_4, _tiles_row_4_relu = _tiles_row(False, F4_AT), _tiles_row(True, F4_AT)


def _output_tiles_kernel(tile):
    """``output_tiles(M, plane, y, bias, use_bias, relu, n0, n1, th0, th1, tw0, tw1)`` for tiles of side ``tile``, a
    compile-time constant: Numba prunes the other tile's branches, so a pass compiles only its own intrinsics."""

    @njit(**JIT)
    def output_tiles(M, plane, y, bias, use_bias, relu, n0, n1, th0, th1, tw0, tw1):
        """y's outputs of the block = relu?(Aᵀ m A + bias) of its tiles (side ``tile``), m from M's n² planes (flat,
        ``plane`` elements apart; tile g of filter k at k*T + g, g = r*L + n*(nt + 1) + j), straight into y."""
        K, OH, OW = y.shape[1], y.shape[2], y.shape[3]
        nt, rows, slot, L = _block_canvas(n0, n1, th0, th1, tw0, tw1)
        T = rows * L
        full = min(nt, (OW - tile * tw0) // tile)  # tiles whose columns are all inside y
        ragged = OW - tile * (tw0 + full) if full < nt else 0  # columns of the next tile inside y
        ys = y.reshape(-1)
        zero = y.dtype.type(0)
        for k in range(K):  # M's order: its streams read front to back
            b = bias[k] if use_bias else zero
            for r in range(rows):
                oh = tile * (th0 + r)
                inside = min(tile, OH - oh)  # the tile rows inside y
                for n in range(n1 - n0):
                    top = (((n0 + n) * K + k) * OH + oh) * OW + tile * tw0
                    g = k * T + r * L + n * slot
                    if tile == 4:
                        if relu:
                            _tiles_row_4_relu(ys, top, OW, inside, M, plane, g, b, full, ragged)
                        else:
                            _tiles_row_4(ys, top, OW, inside, M, plane, g, b, full, ragged)
                    elif relu:
                        _tiles_row_2_relu(ys, top, OW, inside, M, plane, g, b, full, ragged)
                    else:
                        _tiles_row_2(ys, top, OW, inside, M, plane, g, b, full, ragged)
    return output_tiles


_output_tiles_2, _output_tiles_4 = _output_tiles_kernel(2), _output_tiles_kernel(4)


def _pack_gradient_kernel(tile):
    """``pack(dy, canvas, n0, n1, th0, th1, tw0, tw1, limit)`` for tiles of side ``tile`` (compile-time)."""

    @njit(**JIT)
    def pack(dy, canvas, n0, n1, th0, th1, tw0, tw1, limit):
        """canvas[tile*a + b, k*rows*L + r*L + n*(nt+1) + j] = dy[n0 + n, k, tile*(th0 + r) + a, tile*(tw0 + j) + b]
        for j < nt, 0 past dy and on the spare tiles (so they add nothing to the weight gradient).
        canvas: (>= tile², >= K*rows*L), C-contiguous (its rows may be padded apart).

        Flat arrays and unsigned offsets, as in _pack_input_kernel; returns whether every value copied is within
        ``limit`` in magnitude.
        """
        K, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
        nt, rows, slot, L = _block_canvas(n0, n1, th0, th1, tw0, tw1)
        plane = canvas.shape[1]
        first = tile * tw0
        hi = max(0, min(nt, (OW - first) // tile))  # tiles whose columns are all inside dy
        dys, cs = dy.reshape(-1), canvas.reshape(-1)
        zero = cs.dtype.type(0)
        ok = True
        for k in range(K):
            for n in range(n1 - n0):
                for r in range(rows):
                    for a in range(tile):
                        dst = tile * a * plane + (k * rows + r) * L + n * slot
                        oh = tile * (th0 + r) + a
                        if oh >= OH:
                            for b in range(tile):
                                for j in range(slot):
                                    cs[_u(dst + b * plane + j)] = zero
                            continue
                        src = (((n0 + n) * K + k) * OH + oh) * OW + first
                        # short rows in vectors (m2's 8 slots: 0.62 -> 0.44 ms a part); LLVM vectorizes long ones
                        # better itself (32 wide: 2.1 ms, 2.5 in vectors); columns past the block's tiles read as 0
                        if 4 <= slot <= 16 and src + tile * slot <= dys.size:
                            ok &= _pack_row_vectors(dys, src, first, min(OW, tile * tw1), cs, dst, plane, slot,
                                                    8 if slot >= 8 else 4, tile, limit)
                            continue
                        for j in range(hi):
                            for b in range(tile):
                                v = dys[_u(src + tile * j + b)]
                                ok &= abs(v) <= limit
                                cs[_u(dst + b * plane + j)] = v
                        for j in range(hi, slot):  # a ragged last column, then the spare tile
                            for b in range(tile):
                                w = first + tile * j + b
                                v = dys[_u(src + tile * j + b)] if j < nt and w < OW else zero
                                ok &= abs(v) <= limit
                                cs[_u(dst + b * plane + j)] = v
        return ok
    return pack


_pack_gradient, _pack_gradient_4 = _pack_gradient_kernel(2), _pack_gradient_kernel(4)


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


def _pack_input_t_kernel(tile):
    """``pack(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit)`` for tiles of side ``tile``
    (compile-time)."""

    @njit(**JIT)
    def pack(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
        """As _pack_input_kernel with the channel innermost: canvas[tile*a + b, pos*C + c] (canvas (tile²,
        ((rows + 1)*L + 1) * C)), so that the input transform's loops produce V transposed, (T x C) per ξ, for
        the weight gradient's GEMM (113 GFLOP/s on that layout, 68 on the transposed view of (C x T)). Returns
        whether every input copied is within ``limit`` in magnitude."""
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        nt, rows, slot, L = _block_canvas(n0, n1, th0, th1, tw0, tw1)
        plane = canvas.shape[1]
        first = tile * tw0 - left
        zero = canvas.dtype.type(0)
        ok = True
        xs, cs = x.reshape(-1), canvas.reshape(-1)
        # a position's channels in turn are H*W apart: from 4 KiB (32x32) on, reads that share L1 sets, and at
        # 32x32 every one in the same set (cifar_conv's F(4x4) pack took 36% of a block); there each input row
        # is read front to back instead (154 -> 56 us a block), which ran mnist_conv2's weight gradient (784
        # bytes apart) 20% slower
        by_rows = H * W * xs.itemsize >= 4096
        for n in range(n1 - n0):
            for ph in range(tile * (rows + 1)):  # canvas row ph // tile of row phase ph % tile
                h = tile * th0 + ph - top
                row = (ph % tile) * tile * plane + ((ph // tile) * L + n * slot) * C
                inside_rows = 0 <= h < H and ph < tile * rows + 2  # rows past the patches: zeros, never read
                if by_rows:
                    for c in range(C):
                        src = (((n0 + n) * C + c) * H + h) * W
                        for j in range(slot):
                            for b in range(tile):
                                w = first + tile * j + b
                                v = xs[_u(src + w)] if inside_rows and 0 <= w < W else zero
                                ok &= abs(v) <= limit
                                cs[_u(row + b * plane + j * C + c)] = v
                    continue
                for j in range(slot):
                    for b in range(tile):
                        w = first + tile * j + b
                        dst = row + b * plane + j * C
                        if inside_rows and 0 <= w < W:
                            src = (((n0 + n) * C) * H + h) * W + w
                            for c in range(C):
                                v = xs[_u(src + c * H * W)]
                                ok &= abs(v) <= limit
                                cs[_u(dst + c)] = v
                        else:
                            for c in range(C):
                                cs[_u(dst + c)] = zero
        for p in range(tile * tile):
            for c in range(C):
                cs[_u(p * plane + (rows + 1) * L * C + c)] = zero  # read only by the block's last spare tile
        return ok
    return pack


_pack_input_t, _pack_input_t_4 = _pack_input_t_kernel(2), _pack_input_t_kernel(4)


# --------------------------------------------------------------------------- passes
# Each worker runs its blocks in one Numba call, GEMMs included (np.dot through SciPy's BLAS):
# with a Python loop per block, the two workers' GIL hand-offs cost a quarter of the time.

@njit(inline="always")
def _layout(block):
    _, rows, _, L = _block_canvas(block[0], block[1], block[2], block[3], block[4], block[5])
    return rows, L, rows * L


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


@njit(**JIT)
def _weight_gradient_blocks_by_rows(dy, x, top, left, blocks, buf, partial, limit, bt_index, bt_coefficient,
                                    a_index, a_coefficient):
    """As ``_weight_gradient_blocks`` for F(4x4): partial (36, K, C) += Σ over the tiles of ``blocks`` of
    (A p Aᵀ) Vᵀ, the transforms by rows (``_input_transform_by_rows``, ``_gradient_transform_by_rows``)."""
    C, K = x.shape[1], dy.shape[1]
    tile, n = 4, 6
    product = np.empty((K, C), partial.dtype)
    for i in range(blocks.shape[0]):
        block = blocks[i]
        rows, L, T = _layout(block)
        n0, n1, th0, th1, tw0, tw1 = block[0], block[1], block[2], block[3], block[4], block[5]
        plane = ((rows + 1) * L + 1) * C
        size = tile * tile * plane
        canvas = buf[:size].reshape(1, tile * tile, plane)
        Vt = buf[size:size + n * n * (T * C + PLANE_PAD)].reshape(n * n, T * C + PLANE_PAD)
        size += n * n * (T * C + PLANE_PAD)
        by_rows = buf[size:size + tile * n * ((T + L) * C + PLANE_PAD)].reshape(tile * n, (T + L) * C + PLANE_PAD)
        size += tile * n * ((T + L) * C + PLANE_PAD)
        P = buf[size:size + tile * tile * (K * T + PLANE_PAD)].reshape(tile * tile, K * T + PLANE_PAD)
        size += tile * tile * (K * T + PLANE_PAD)
        Q = buf[size:size + tile * n * (K * T + PLANE_PAD)].reshape(tile * n, K * T + PLANE_PAD)
        size += tile * n * (K * T + PLANE_PAD)
        D = buf[size:size + n * n * (K * T + PLANE_PAD)].reshape(n * n, K * T + PLANE_PAD)
        if not (_pack_input_t_4(x, canvas[0], n0, n1, th0, th1, tw0, tw1, top, left, limit)
                and _pack_gradient_4(dy, P, n0, n1, th0, th1, tw0, tw1, limit)):
            return False
        _input_transform_by_rows(canvas, by_rows, Vt, L, T, C, bt_index, bt_coefficient)
        _gradient_transform_by_rows(P, Q, D, K * T, a_index, a_coefficient)
        for xi in range(n * n):
            np.dot(D[xi, :K * T].reshape(K, T), Vt[xi, :T * C].reshape(T, C), product)
            total = partial[xi]
            for k in range(K):
                for c in range(C):
                    total[k, c] += product[k, c]
    return True


def _correlate_kernel(tile):
    """``correlate_parts(...)``, the forward pass's kernel for tiles of side ``tile`` (U: (n², K, C), n = tile + 2),
    a compile-time constant: a pass compiles only its own tile's functions (with both tiles in one kernel, the
    first F(2x2) forward and weight gradient compiled in 27 and 29 s, now 12 and 15; F(4x4)'s 17 and 18 s
    come when a shape first uses it)."""
    xis = (tile + 2) ** 2

    @njit(**JIT)
    def correlate_blocks(x, U, bias, use_bias, relu, y, top, left, blocks, buf, limit, index, coefficient):
        """The forward pass over ``blocks`` ((count, 6): n0, n1, th0, th1, tw0, tw1) with tiles of side ``tile``
        (U: (n², K, C), n = tile + 2; Bᵀ's terms ``index``, ``coefficient`` for tile 4), in scratch ``buf``; False as
        soon as an input is past ``limit`` (or NaN): the caller then redoes the pass by im2col."""
        C, K = x.shape[1], y.shape[1]
        for i in range(blocks.shape[0]):
            block = blocks[i]
            rows, L, T = _layout(block)
            n0, n1, th0, th1, tw0, tw1 = block[0], block[1], block[2], block[3], block[4], block[5]
            plane = (rows + 1) * L + 1
            size = C * tile * tile * plane
            canvas = buf[:size].reshape(C, tile * tile, plane)
            V = buf[size:size + xis * (C * T + PLANE_PAD)].reshape(xis, C * T + PLANE_PAD)
            size += xis * (C * T + PLANE_PAD)
            M = buf[size:size + xis * (K * T + PLANE_PAD)].reshape(xis, K * T + PLANE_PAD)
            size += xis * (K * T + PLANE_PAD)
            if tile == 2:
                if not _pack_input_2(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
                    return False
                for c in range(C):
                    _input_transform(canvas[c], V, c * T, L, T, 1)
            else:
                if not _pack_input_4(x, canvas, n0, n1, th0, th1, tw0, tw1, top, left, limit):
                    return False
                by_rows = buf[size:size + tile * (tile + 2) * (T + L + PLANE_PAD)].reshape(tile * (tile + 2),
                                                                                            T + L + PLANE_PAD)
                _input_transform_by_rows(canvas, by_rows, V, L, T, 1, index, coefficient)
            for xi in range(xis):
                np.dot(U[xi], V[xi, :C * T].reshape(C, T), M[xi, :K * T].reshape(K, T))
            if tile == 2:
                _output_tiles_2(M.reshape(-1), K * T + PLANE_PAD, y, bias, use_bias, relu, n0, n1, th0, th1, tw0, tw1)
            else:
                _output_tiles_4(M.reshape(-1), K * T + PLANE_PAD, y, bias, use_bias, relu, n0, n1, th0, th1, tw0, tw1)
        return True

    @njit(**PARALLEL)
    def correlate_parts(x, U, bias, use_bias, relu, y, top, left, blocks, starts, scratch, limit, index, coefficient,
                         ok):
        """The forward pass, part p (an image range) running blocks[starts[p]:starts[p + 1]] in scratch[p];
        ok[p]: its inputs were all within ``limit``."""
        for part in prange(scratch.shape[0]):
            ok[part] = correlate_blocks(x, U, bias, use_bias, relu, y, top, left,
                                        blocks[starts[part]:starts[part + 1]], scratch[part], limit, index, coefficient)
    return correlate_parts


_correlate_parts_2, _correlate_parts_4 = _correlate_kernel(2), _correlate_kernel(4)


def _weight_gradient_kernel(tile):
    """``weight_gradient_parts(...)`` for tiles of side ``tile`` (compile-time, as ``_correlate_kernel``)."""

    @njit(**PARALLEL)
    def weight_gradient_parts(dy, x, top, left, blocks, starts, scratch, partials, limit, bt_index, bt_coefficient,
                              a_index, a_coefficient, ok):
        """partials[p] = the weight gradient sum of part p's blocks[starts[p]:starts[p + 1]], in scratch[p]."""
        for part in prange(scratch.shape[0]):
            if tile == 2:
                ok[part] = _weight_gradient_blocks(dy, x, top, left, blocks[starts[part]:starts[part + 1]],
                                                   scratch[part], partials[part], limit)
            else:
                ok[part] = _weight_gradient_blocks_by_rows(dy, x, top, left, blocks[starts[part]:starts[part + 1]],
                                                           scratch[part], partials[part], limit, bt_index,
                                                           bt_coefficient, a_index, a_coefficient)
    return weight_gradient_parts


_weight_gradient_parts_2, _weight_gradient_parts_4 = _weight_gradient_kernel(2), _weight_gradient_kernel(4)


def correlate(x, U, bias, relu, top, left, out_shape, limit, workspace_bytes=None):
    """y (out_shape: N, K, OH, OW) = relu?(stride-1 3x3 correlation of x (N, C, H, W) + bias), or None when an
    input is NaN, inf or past ``limit`` (``input_limit``).

    U (16 or 36, K, C) is the filter transform (``filter_transform``), whose size picks F(2x2, 3x3) or
    F(4x4, 3x3); (top, left) the padding before the first row and column (negative: rows and columns skipped).
    """
    N, C = x.shape[:2]
    K, OH, OW = out_shape[1:]
    y = runtime.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    x, U = np.ascontiguousarray(x), np.ascontiguousarray(U)
    use_bias = bias is not None
    bias = np.ascontiguousarray(bias) if use_bias else np.zeros(1, x.dtype)
    tile = tile_side(U)
    # F(2x2): 28 * K: M's 16 and the 12 an output transform through scratch once took; planning by 16 * K made
    # larger blocks that ran no faster
    per_c, per_k = (20, 28) if tile == 2 else F4_FLOATS_PER_TILE
    floats_per_tile = per_c * C + per_k * K
    blocks, starts, scratch = _plan(N, OH, OW, C, K, floats_per_tile, x.dtype, workspace_bytes, tile=tile)
    ok = np.zeros(scratch.shape[0], np.bool_)
    runtime.launch(_correlate_parts_2 if tile == 2 else _correlate_parts_4, x, U, bias, use_bias, relu, y, top, left,
                   blocks, starts, scratch, limit, F4_BT_INDEX, _coefficients(x.dtype)[0], ok, blas=True)
    return y if ok.all() else None


def weight_gradient(dy, x, top, left, limit, workspace_bytes=None, tile=2):
    """dU (n², K, C): the sum over tiles of (A p Aᵀ) Vᵀ (dweight = ``weight_from(dU)``), n = tile + 2, or None
    when an input is NaN, inf or past ``limit``.

    dy (N, K, OH, OW), x (N, C, H, W); (top, left) the forward pass's padding.
    Deterministic: each image range sums its own partial, added in a fixed order.
    """
    N, C = x.shape[:2]
    K, OH, OW = dy.shape[1:]
    xis = (tile + 2) ** 2
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    floats_per_tile = 20 * C + 16 * K if tile == 2 else F4_GRADIENT_FLOATS_PER_TILE[0] * C + \
        F4_GRADIENT_FLOATS_PER_TILE[1] * K
    blocks, starts, scratch = _plan(N, OH, OW, C, K, floats_per_tile, x.dtype, workspace_bytes,
                                    WEIGHT_GRADIENT_BLOCK_BYTES, tile=tile, weight_gradient=True)
    partials = np.zeros((scratch.shape[0], xis, K, C), x.dtype)
    ok = np.zeros(scratch.shape[0], np.bool_)
    runtime.launch(_weight_gradient_parts_2 if tile == 2 else _weight_gradient_parts_4, dy, x, top, left, blocks,
                   starts, scratch, partials, limit, F4_BT_INDEX, _coefficients(x.dtype)[0], F4_A_INDEX,
                   _coefficients(x.dtype)[1], ok, blas=True)
    if not ok.all():
        return None
    total = np.zeros((xis, K, C), x.dtype)
    for partial in partials:  # fixed order: deterministic
        total += partial
    return total


def _plan(N, OH, OW, C, K, floats_per_tile, dtype, workspace_bytes, cap=None, tile=2, weight_gradient=False):
    """The blocks of tiles (side ``tile``) of every part (``runtime.plan_parts``), each within ``cap`` bytes
    (default ``BLOCK_BYTES``), and a scratch row per part for its largest."""
    blocks, starts, need = _blocks(N, OH, OW, C, K, floats_per_tile, np.dtype(dtype),
                                   runtime.workspace_budget(workspace_bytes), runtime.threads(), cap or BLOCK_BYTES,
                                   tile, weight_gradient)
    parts = len(starts) - 1
    return blocks, starts, runtime.scratch(parts * need, dtype).reshape(parts, need)


@functools.lru_cache(maxsize=64)
def _blocks(N, OH, OW, C, K, floats_per_tile, dtype, budget, threads, cap, tile=2, weight_gradient=False):
    """``_plan``'s blocks, starts and scratch floats per part, kept per shape (planning took 30-40 us, a
    training step plans three passes); the kernels only read them. ``threads``: the most parts (and so part
    of the key). ``floats_per_tile`` sizes the blocks; the scratch is what the largest block's arrays take:
    its canvas (tile² planes of C channels), V and M (n² planes of C and K), the padding between planes, and
    for tile 4 ``_input_transform_by_rows``'s rows (and for its weight gradient, the dy tiles' P and Q)."""
    TH, TW = -(-OH // tile), -(-OW // tile)
    phases, xis = tile * tile, (tile + 2) ** 2
    # twice the arrays' size per tile covers the spare tiles and the canvas's extra row, even for 1x1-tile blocks
    tile_bytes = 2 * floats_per_tile * dtype.itemsize
    # a part's scratch has a floor (its planes' padding, one tile's transforms): with many threads and a small
    # budget the parts' floors alone passed it (16 threads, 64 KiB: 118 KiB), so fewer parts until they fit;
    # before that, smaller blocks (F(4x4)'s with (26, 24) per tile passed the budget on 8x8-16x16 images,
    # and one part instead of two ran them 2x slower)
    for max_parts in range(threads, 0, -1):
        block_cap = cap
        while True:
            blocks, starts, _ = runtime.plan_parts(N, TH, TW, tile_bytes, budget, block_cap, max_parts)
            need = 0
            for n0, n1, th0, th1, tw0, tw1 in blocks:
                rows, L = th1 - th0, (n1 - n0) * (tw1 - tw0 + 1)
                block_need = phases * C * ((rows + 1) * L + 1) + xis * ((C + K) * rows * L + 2 * PLANE_PAD)
                if tile == 4 and weight_gradient:  # the rows of C channels; P and Q
                    block_need += tile * (tile + 2) * ((rows + 1) * L * C + PLANE_PAD) + \
                        (tile * tile + tile * (tile + 2)) * (K * rows * L + PLANE_PAD)
                elif tile == 4:  # _input_transform_by_rows's rows
                    block_need += tile * (tile + 2) * ((rows + 1) * L + PLANE_PAD)
                need = max(need, block_need)
            if (len(starts) - 1) * need * dtype.itemsize <= budget or block_cap <= tile_bytes:
                break
            block_cap //= 2
        if (len(starts) - 1) * need * dtype.itemsize <= budget:
            break
    return blocks, starts, int(need)
