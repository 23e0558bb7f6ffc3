"""CPU pooling: max (with argmax) and average, forward and backward, as Numba loops over (image, channel) planes.

Max-pool stores the argmax as the row-major index inside the window, in one byte
(uint8) when a window has at most 256 taps: pooling is memory-bound, and an int32
argmax was a third of the 2x2 backward's reads. Backward
passes give each plane to one thread, which visits the windows in a fixed
order: no atomics, and bit-identical results run to run even with overlapping
windows. Ties go to the first maximum in row-major order; a NaN in a window wins
(it propagates, as in other frameworks).

Branches: max-pool's comparison is written so it compiles to a select; as a
branch on random data it mispredicted and cost 3-6x.

2x2 windows at stride 2 (Keras's default) have fast paths both ways, max and
average, a vector of windows at a time (``_max_2x2``, ``_spread_2x2``,
``_avg_2x2``, ``_spread_avg_2x2``); the backward writes every input pixel once.
Other windows go an output row at a time through per-column partials, so their
loops run along rows and overlapping windows share work: each input column's
maximum (and its row) or sum over the row's window rows, then each window's best
or sum of its columns; average pooling's backward is the same loops transposed.
Max-pool backward turns each argmax into a flat offset through a small table
(no division per window).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ..indexing import output_hw
from . import runtime
from .runtime import JIT, PARALLEL, clipped_window, fill_zero, part_range, valid_output_range

_u = np.uint64
TAP_TYPES = (types.uint8, types.int32)  # argmax dtypes the 2x2 vector kernels read and write
_NO_TAPS = np.zeros((1, 1, 1, 1), np.uint8)  # the argmax argument of average pooling, never read


def argmax_dtype(pool):
    """The argmax's dtype for windows of ``pool`` (PH, PW): uint8 up to 256 taps, else int32."""
    return np.dtype(np.uint8 if pool[0] * pool[1] <= 256 else np.int32)


@njit(inline="always")
def _consider(v, tap, best, at):
    """The window's (best, argmax) after tap ``tap`` of value v, by row-major order: v replaces the best so
    far when larger or equal with an earlier tap, or when it is a NaN and the best is not, or is a later
    NaN (the first NaN wins: NaN propagates). Taps may come in any order; written as a select, not a branch."""
    take = (v > best) | ((v == best) & (tap < at)) | ((v != v) & ((best == best) | (tap < at)))
    return (v, tap) if take else (best, at)


@njit(inline="always")
def _row_start(oh, r, sh, pt, W):
    """Flat index in a plane W wide where row r of output row oh's windows begins (a real row)."""
    return _u((oh * sh - pt + r) * W)


@njit(inline="always")
def _tap_column(s, pl, sw, W, OW):
    """``(lo, count, start)``: windows lo..lo + count of an output row have their tap column s on a real input
    column, the first on column ``start``, each next sw further."""
    lo, hi = valid_output_range(s, pl, sw, W, OW)
    return _u(lo), _u(hi - lo), _u(lo * sw - pl + s)


@njit(**JIT)
def _max_pool_forward(p0, p1, x, y, argmax, lowest, PH, PW, sh, sw, pt, pl):
    """Max pooling with argmax, any windows, an output row at a time: first each input column's maximum
    over the row's window rows (and its row), then each window's best of its columns' maxima. Both loops
    run along a row and vectorize at stride 1, and overlapping windows share their columns' maxima
    (3x3 at stride 1: 4x faster on one core than window by window). ``lowest``: -inf in x's dtype."""
    H, W = x.shape[2], x.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    x_planes, y_planes, tap_planes = x.reshape(-1, H * W), y.reshape(-1, OH * OW), argmax.reshape(-1, OH * OW)
    column_max, column_row, best_tap = np.empty(W, x.dtype), np.empty(W, np.int64), np.empty(OW, np.int64)
    for plane in range(p0, p1):
        xp, yp, taps = x_planes[plane], y_planes[plane], tap_planes[plane]
        for oh in range(OH):
            r_lo, r_hi = clipped_window(oh, sh, pt, PH, H)
            first = _row_start(oh, r_lo, sh, pt, W)
            for w in range(_u(W)):
                column_max[w] = xp[first + w]
                column_row[w] = r_lo
            for r in range(r_lo + 1, r_hi):
                first = _row_start(oh, r, sh, pt, W)
                for w in range(_u(W)):
                    column_max[w], column_row[w] = _consider(xp[first + w], r, column_max[w], column_row[w])
            row = _u(oh * OW)
            for ow in range(_u(OW)):
                yp[row + ow] = lowest
                best_tap[ow] = PH * PW
            for s in range(PW):  # tap column s of every window that has it
                lo, count, start = _tap_column(s, pl, sw, W, OW)
                for j in range(count):
                    column, out = start + j * _u(sw), lo + j
                    yp[row + out], best_tap[out] = _consider(column_max[column], column_row[column] * PW + s,
                                                             yp[row + out], best_tap[out])
            for ow in range(_u(OW)):
                taps[row + ow] = best_tap[ow]


# --------------------------------------------------------------------------- 2x2 windows at stride 2, vectorized
# Keras's default pooling, both ways a vector of windows at a time: an intrinsic relates the windows
# j..j + width of one output row (pooled[j:j + width], taps[j:j + width]) to the two input rows under them
# (plane[top:top + 2 * width], plane[bottom:bottom + 2 * width]); a row takes the widest vector that fits,
# and its last vector overlaps the one before (recomputing equal values) instead of a scalar tail.
# Numba's loop vectorizer left both loops scalar: the stride-2 access to the input rows.

class _Lanes:
    """What an intrinsic's body builds with: vectors of the arrays at the call's offsets, constants."""

    def __init__(self, context, builder, array_types, values, width):
        self.context, self.builder, self.width = context, builder, width
        plane, top, bottom, pooled, taps, j = values
        self._at = dict(top=(array_types[0], plane, top), bottom=(array_types[0], plane, bottom),
                        pooled=(array_types[3], pooled, j), taps=(array_types[4], taps, j))
        self.float_type = context.get_value_type(array_types[0].dtype)
        self.tap_type = ir.IntType(array_types[4].dtype.bitwidth)

    def _pointer(self, where, vector_type):
        array_type, array, offset = self._at[where]
        return runtime.vector_at(self.context, self.builder, array_type, array, offset, vector_type)

    def load(self, where, count):
        element = self.tap_type if where == "taps" else self.float_type
        vector_type = ir.VectorType(element, count)
        return self.builder.load(self._pointer(where, vector_type), align=self.context.get_abi_sizeof(element))

    def store(self, value, where):
        self.builder.store(value, self._pointer(where, value.type), align=self.context.get_abi_sizeof(value.type.element))

    splat = staticmethod(runtime.splat)

    lanes = staticmethod(runtime.lane_indices)


def _window_rows_intrinsic(body, width):
    """An intrinsic ``f(plane, top, bottom, pooled, taps, j)`` over 1-D C-contiguous arrays (plane and pooled
    of one float dtype, taps uint8 or int32) whose IR is ``body(_Lanes)``; no bounds checks."""
    def typer(typingctx, plane, top, bottom, pooled, taps, j):
        if not (runtime.flat_float_arrays(plane, pooled) and isinstance(taps, types.Array) and taps.ndim == 1
                and taps.layout == "C" and taps.dtype in TAP_TYPES):
            return None

        def codegen(context, builder, signature, args):
            body(_Lanes(context, builder, signature.args, args, width))
            return context.get_dummy_value()
        return types.void(plane, top, bottom, pooled, taps, j), codegen
    typer.__name__ = f"{body.__name__}_{width}"
    return intrinsic(typer)


def _max_2x2(lanes):
    """Forward: each window's maximum and tap, by ``_consider``'s rule (first maximum, first NaN wins)."""
    b, w = lanes.builder, lanes.width
    even, odd = lanes.lanes(range(0, 2 * w, 2)), lanes.lanes(range(1, 2 * w, 2))
    top, bottom = lanes.load("top", 2 * w), lanes.load("bottom", 2 * w)
    taps = [(b.shuffle_vector(row, row, lane), tap) for tap, (row, lane) in
            enumerate(((top, even), (top, odd), (bottom, even), (bottom, odd)))]
    best = taps[0][0]
    at = lanes.splat(ir.VectorType(lanes.tap_type, w), 0)
    for v, tap in taps[1:]:
        first_nan = b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", best, best))
        take = b.or_(b.fcmp_ordered(">", v, best), first_nan)
        best, at = b.select(take, v, best), b.select(take, lanes.splat(at.type, tap), at)
    lanes.store(best, "pooled")
    lanes.store(at, "taps")


def _spread_2x2(lanes):
    """Backward: each window's gradient at its tap, zeros elsewhere; four selects and two interleaving
    shuffles write every input pixel once (the zero-fill pass and scalar scatter it replaces cost 7.5 cycles
    a window in cache against 1.2)."""
    b, w = lanes.builder, lanes.width
    grads, taps = lanes.load("pooled", w), lanes.load("taps", w)
    at_tap = [b.select(b.icmp_signed("==", taps, lanes.splat(taps.type, tap)), grads, lanes.splat(grads.type, 0.0))
              for tap in range(4)]
    lanes.store(runtime.interleave(b, at_tap[0], at_tap[1]), "top")  # window k's left, right taps
    lanes.store(runtime.interleave(b, at_tap[2], at_tap[3]), "bottom")


def _avg_2x2(lanes):
    """Forward: each window's mean, ``(((0 + a) + b) + c) + d`` times 1/4 (a sum in row-major order, an exact scaling)."""
    b, w = lanes.builder, lanes.width
    even, odd = lanes.lanes(range(0, 2 * w, 2)), lanes.lanes(range(1, 2 * w, 2))
    top, bottom = lanes.load("top", 2 * w), lanes.load("bottom", 2 * w)
    total = lanes.splat(ir.VectorType(lanes.float_type, w), 0.0)
    for row, lane in ((top, even), (top, odd), (bottom, even), (bottom, odd)):
        total = b.fadd(total, b.shuffle_vector(row, row, lane))
    lanes.store(b.fmul(total, lanes.splat(total.type, 0.25)), "pooled")


def _spread_avg_2x2(lanes):
    """Backward: a quarter of each window's gradient to each of its four pixels (plus 0, as the general kernel's
    sum into zeros: a -0 gradient gives +0)."""
    b, w = lanes.builder, lanes.width
    grads = lanes.load("pooled", w)
    quarter = b.fadd(lanes.splat(grads.type, 0.0), b.fmul(grads, lanes.splat(grads.type, 0.25)))
    both = runtime.interleave(b, quarter, quarter)
    lanes.store(both, "top")
    lanes.store(both, "bottom")


@njit(inline="always")
def _max_2x2_scalar(plane, top, bottom, pooled, taps, first, count):
    for ow in range(count):
        best, at = _consider(plane[top + 2 * ow + 1], 1, plane[top + 2 * ow], 0)
        best, at = _consider(plane[bottom + 2 * ow], 2, best, at)
        best, at = _consider(plane[bottom + 2 * ow + 1], 3, best, at)
        pooled[first + ow], taps[first + ow] = best, at


@njit(inline="always")
def _spread_2x2_scalar(plane, top, bottom, pooled, taps, first, count):
    for ow in range(count):
        g, tap = pooled[first + ow], taps[first + ow]
        plane[top + 2 * ow], plane[top + 2 * ow + 1] = (g if tap == 0 else 0), (g if tap == 1 else 0)
        plane[bottom + 2 * ow], plane[bottom + 2 * ow + 1] = (g if tap == 2 else 0), (g if tap == 3 else 0)


@njit(inline="always")
def _avg_2x2_scalar(plane, top, bottom, pooled, taps, first, count):
    zero = plane.dtype.type(0)
    for ow in range(count):
        total = zero + plane[top + 2 * ow] + plane[top + 2 * ow + 1]
        total = total + plane[bottom + 2 * ow] + plane[bottom + 2 * ow + 1]
        pooled[first + ow] = total * 0.25


@njit(inline="always")
def _spread_avg_2x2_scalar(plane, top, bottom, pooled, taps, first, count):
    zero = plane.dtype.type(0)
    for ow in range(count):
        g = zero + pooled[first + ow] * 0.25
        plane[top + 2 * ow] = plane[top + 2 * ow + 1] = plane[bottom + 2 * ow] = plane[bottom + 2 * ow + 1] = g


@intrinsic
def _in_use(typingctx, plane, pooled, taps):
    """A use of the three arrays that compiles to nothing. At the end of a row it keeps every array alive to
    the same point on every path: the average rows' scalar path never reads ``taps``, so Numba released it
    early there, its reference-count pruning then kept three atomic incref/decref pairs per row, and the
    average-pool backward ran 2.8x slower than the max-pool backward (mnist_conv2, one thread: 0.65 ms;
    0.18 ms with this use)."""
    def codegen(context, builder, signature, args):
        return context.get_dummy_value()
    return types.none(plane, pooled, taps), codegen


def _row_2x2(body, scalar):
    """``row(plane, top, bottom, pooled, taps, first, OW, room)``: one output row of OW windows by ``body``'s
    intrinsics of 16, 8 or 4 windows, ``scalar`` for rows of fewer than 4. With ``room`` (rows of up to 16
    windows), the row is one vector that runs past its end, over windows and input rows written
    again later: a row of 7 windows (mnist_conv2) is one vector of 8, not two overlapping vectors of 4."""
    by16, by8, by4 = (_window_rows_intrinsic(body, width) for width in (16, 8, 4))

    @njit(inline="always")
    def row(plane, top, bottom, pooled, taps, first, OW, room):
        if room:  # one vector: its top-row store runs into the bottom row before the bottom-row store (a second
            # vector's top-row store would clobber the first's bottom row, so longer rows never get room)
            if OW > 8:
                by16(plane, top, bottom, pooled, taps, first)
            elif OW > 4:
                by8(plane, top, bottom, pooled, taps, first)
            else:
                by4(plane, top, bottom, pooled, taps, first)
        elif OW >= 16:
            last = OW - 16
            for ow in range(0, last, 16):
                by16(plane, top + 2 * ow, bottom + 2 * ow, pooled, taps, first + ow)
            by16(plane, top + 2 * last, bottom + 2 * last, pooled, taps, first + last)
        elif OW >= 8:
            by8(plane, top, bottom, pooled, taps, first)
            by8(plane, top + 2 * (OW - 8), bottom + 2 * (OW - 8), pooled, taps, first + OW - 8)
        elif OW >= 4:
            by4(plane, top, bottom, pooled, taps, first)
            by4(plane, top + 2 * (OW - 4), bottom + 2 * (OW - 4), pooled, taps, first + OW - 4)
        else:
            scalar(plane, top, bottom, pooled, taps, first, OW)
        _in_use(plane, pooled, taps)
    return row


_max_2x2_row = _row_2x2(_max_2x2, _max_2x2_scalar)
_spread_2x2_row = _row_2x2(_spread_2x2, _spread_2x2_scalar)
_avg_2x2_row = _row_2x2(_avg_2x2, _avg_2x2_scalar)
_spread_avg_2x2_row = _row_2x2(_spread_avg_2x2, _spread_avg_2x2_scalar)


@njit(inline="always")
def _rows_2x2(row, p0, p1, plane, pooled, taps, H, W, OH, OW, zero_edges):
    """``row`` over every output row of planes p0..p1 (flat arrays), in order; ``zero_edges``: also zero the
    input rows and columns an odd height or width leaves outside the windows (the backward writes every
    element). In the backward a row's vector may run past its end (``room``) while what it reads and writes
    lies in these planes: the rows after it rewrite it (mnist_conv2's max-pool backward 0.58-0.62 -> 0.38-0.51
    ms on one thread; the average-pool forward ran 2x slower that way, the max-pool forward no faster)."""
    reach = 16 if OW > 8 else (8 if OW > 4 else 4)  # the one vector of a row given room (OW <= 16)
    pooled_end, plane_end = p1 * OH * OW, p1 * H * W
    for p in range(p0, p1):
        for oh in range(OH):
            top, first = (p * H + 2 * oh) * W, (p * OH + oh) * OW
            room = zero_edges and OW <= 16 and first + reach <= pooled_end and top + W + 2 * reach <= plane_end
            row(plane, top, top + W, pooled, taps, first, OW, room)
            if zero_edges and W % 2:
                plane[top + W - 1] = plane[top + 2 * W - 1] = 0
        if zero_edges and H % 2:
            fill_zero(plane, (p * H + H - 1) * W, (p + 1) * H * W)


@njit(**JIT)
def _pool_2x2(p0, p1, x, y, argmax, mean):
    """Pooling of 2x2 windows at stride 2 without padding, planes p0..p1: max with its argmax (the general
    kernel's result, first maximum, first NaN, with no NaN pre-scan and no branch), or with ``mean`` the
    average (``argmax`` unused). The choice is made once: tested per row, it cost 2x on 7-window rows."""
    xs, ys, taps = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    H, W, OH, OW = x.shape[2], x.shape[3], y.shape[2], y.shape[3]
    if mean:
        _rows_2x2(_avg_2x2_row, p0, p1, xs, ys, taps, H, W, OH, OW, False)
    else:
        _rows_2x2(_max_2x2_row, p0, p1, xs, ys, taps, H, W, OH, OW, False)


@njit(**JIT)
def _pool_backward_2x2(p0, p1, dy, argmax, dx, mean):
    """Backward of ``_pool_2x2``: every dx element written once."""
    dxs, dys, taps = dx.reshape(-1), dy.reshape(-1), argmax.reshape(-1)
    H, W, OH, OW = dx.shape[2], dx.shape[3], dy.shape[2], dy.shape[3]
    if mean:
        _rows_2x2(_spread_avg_2x2_row, p0, p1, dxs, dys, taps, H, W, OH, OW, True)
    else:
        _rows_2x2(_spread_2x2_row, p0, p1, dxs, dys, taps, H, W, OH, OW, True)


@njit(inline="always")
def _column_counts(OW, sw, pl, PW, W, counts):
    """counts[ow]: the real (unpadded) columns of window column ow."""
    for ow in range(OW):
        s_lo, s_hi = clipped_window(ow, sw, pl, PW, W)
        counts[ow] = s_hi - s_lo


@njit(**JIT)
def _avg_pool_forward(p0, p1, x, y, zero, PH, PW, sh, sw, pt, pl):
    """Average pooling, an output row at a time: the row's window rows summed column by column, then each
    window's columns of those sums, over the count of real (unpadded) elements (as Keras does for 'same').
    Every loop runs along a row (the first two vectorize); window by window it was 3-8x slower."""
    H, W = x.shape[2], x.shape[3]
    OH, OW = y.shape[2], y.shape[3]
    x_planes, y_planes = x.reshape(-1, H * W), y.reshape(-1, OH * OW)
    column_sums, counts = np.empty(W, x.dtype), np.empty(OW, x.dtype)
    _column_counts(OW, sw, pl, PW, W, counts)
    for plane in range(p0, p1):
        xp, yp = x_planes[plane], y_planes[plane]
        for oh in range(OH):
            r_lo, r_hi = clipped_window(oh, sh, pt, PH, H)
            for w in range(W):
                column_sums[w] = zero
            for r in range(r_lo, r_hi):
                first = _row_start(oh, r, sh, pt, W)
                for w in range(_u(W)):
                    column_sums[w] += xp[first + w]
            row = _u(oh * OW)
            for ow in range(_u(OW)):
                yp[row + ow] = zero
            for s in range(PW):  # tap column s of every window that has it
                lo, count, start = _tap_column(s, pl, sw, W, OW)
                for j in range(count):
                    yp[row + lo + j] += column_sums[start + j * _u(sw)]
            rows = r_hi - r_lo
            for ow in range(_u(OW)):
                yp[row + ow] = yp[row + ow] / (rows * counts[ow])


def tap_offsets(pool, W):
    """Flat offset of each tap ``r*PW + s`` of a window from its top-left corner in a plane W wide (int64)."""
    PH, PW = pool
    return np.array([r * W + s for r in range(PH) for s in range(PW)], np.int64)


@njit(**JIT)
def _max_pool_backward(p0, p1, dy, argmax, dx, offsets, sh, sw, pt, pl):
    """Max-pool backward, any windows: zero each plane while it is in cache, then add each window's
    gradient at its argmax, windows in row-major order. The argmax becomes a flat index through
    ``offsets`` (``tap_offsets``): no division per window."""
    H, W = dx.shape[2], dx.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    dx_planes, dy_planes = dx.reshape(-1, H * W), dy.reshape(-1, OH * OW)
    tap_planes = argmax.reshape(-1, OH * OW)
    for plane in range(p0, p1):
        out, g, taps = dx_planes[plane], dy_planes[plane], tap_planes[plane]
        fill_zero(out, 0, H * W)
        for oh in range(OH):
            first = oh * OW
            corner = (oh * sh - pt) * W - pl  # a window's corner may lie in the padding; its argmax never does
            for ow in range(OW):
                out[corner + ow * sw + offsets[taps[first + ow]]] += g[first + ow]


@njit(**JIT)
def _avg_pool_backward(p0, p1, dy, dx, zero, PH, PW, sh, sw, pt, pl):
    """Average-pool backward, the forward's loops transposed: per output row, each window's share of its
    gradient (over its real-element count) spread to the columns of its taps, then those column gradients
    added to each of the window rows. One thread owns each plane and visits rows and taps in a fixed
    order: no atomics, and every input pixel sums its contributions in the same order on every run."""
    H, W = dx.shape[2], dx.shape[3]
    OH, OW = dy.shape[2], dy.shape[3]
    dx_planes, dy_planes = dx.reshape(-1, H * W), dy.reshape(-1, OH * OW)
    column_grads, shares, counts = np.empty(W, dx.dtype), np.empty(OW, dx.dtype), np.empty(OW, dx.dtype)
    _column_counts(OW, sw, pl, PW, W, counts)
    for plane in range(p0, p1):
        dxp, g = dx_planes[plane], dy_planes[plane]
        fill_zero(dxp, 0, H * W)
        for oh in range(OH):
            r_lo, r_hi = clipped_window(oh, sh, pt, PH, H)
            rows, row = r_hi - r_lo, _u(oh * OW)
            for ow in range(_u(OW)):
                shares[ow] = g[row + ow] / (rows * counts[ow])
            for w in range(W):
                column_grads[w] = zero
            for s in range(PW):
                lo, count, start = _tap_column(s, pl, sw, W, OW)
                for j in range(count):
                    column_grads[start + j * _u(sw)] += shares[lo + j]
            for r in range(r_lo, r_hi):
                first = _row_start(oh, r, sh, pt, W)
                for w in range(_u(W)):
                    dxp[first + w] += column_grads[w]


# --------------------------------------------------------------------------- parts over the cores
# Each part is a contiguous range of (image, channel) planes (see runtime.parts).

@njit(**PARALLEL)
def _max_pool_forward_parts(x, y, argmax, lowest, PH, PW, sh, sw, pt, pl, parts):
    for part in prange(parts):
        p0, p1 = part_range(x.shape[0] * x.shape[1], parts, part)
        _max_pool_forward(p0, p1, x, y, argmax, lowest, PH, PW, sh, sw, pt, pl)


@njit(**PARALLEL)
def _pool_2x2_parts(x, y, argmax, mean, parts):
    for part in prange(parts):
        p0, p1 = part_range(x.shape[0] * x.shape[1], parts, part)
        _pool_2x2(p0, p1, x, y, argmax, mean)


@njit(**PARALLEL)
def _avg_pool_forward_parts(x, y, zero, PH, PW, sh, sw, pt, pl, parts):
    for part in prange(parts):
        p0, p1 = part_range(x.shape[0] * x.shape[1], parts, part)
        _avg_pool_forward(p0, p1, x, y, zero, PH, PW, sh, sw, pt, pl)


@njit(**PARALLEL)
def _max_pool_backward_parts(dy, argmax, dx, offsets, sh, sw, pt, pl, parts):
    for part in prange(parts):
        p0, p1 = part_range(dx.shape[0] * dx.shape[1], parts, part)
        _max_pool_backward(p0, p1, dy, argmax, dx, offsets, sh, sw, pt, pl)


@njit(**PARALLEL)
def _pool_backward_2x2_parts(dy, argmax, dx, mean, parts):
    for part in prange(parts):
        p0, p1 = part_range(dx.shape[0] * dx.shape[1], parts, part)
        _pool_backward_2x2(p0, p1, dy, argmax, dx, mean)


@njit(**PARALLEL)
def _avg_pool_backward_parts(dy, dx, zero, PH, PW, sh, sw, pt, pl, parts):
    for part in prange(parts):
        p0, p1 = part_range(dx.shape[0] * dx.shape[1], parts, part)
        _avg_pool_backward(p0, p1, dy, dx, zero, PH, PW, sh, sw, pt, pl)


def pool2d_forward(x, mode, pool, stride, padding):
    """Max or average pooling of x (N, C, H, W) -> (y (N, C, OH, OW), argmax (N, C, OH, OW) or None).

    ``argmax`` holds, for max pooling, the row-major index ``r*PW + s`` of the chosen
    element inside its window (dtype ``argmax_dtype(pool)``).
    """
    N, C, H, W = x.shape
    OH, OW = output_hw((H, W), padding, pool, stride)
    x = np.ascontiguousarray(x)
    y = runtime.empty((N, C, OH, OW), x.dtype)
    args = (pool[0], pool[1], stride[0], stride[1], padding[0][0], padding[1][0])
    parts = runtime.parts(N * C, x.size // max(N * C, 1), runtime.SPLIT)
    is_max = mode == "max"
    argmax = runtime.empty((N, C, OH, OW), argmax_dtype(pool)) if is_max else None
    if pool == stride == (2, 2) and padding == ((0, 0), (0, 0)):  # Keras's default
        runtime.launch(_pool_2x2_parts, x, y, argmax if is_max else _NO_TAPS, not is_max, parts)
    elif is_max:
        runtime.launch(_max_pool_forward_parts, x, y, argmax, x.dtype.type(-np.inf), *args, parts)
    else:
        runtime.launch(_avg_pool_forward_parts, x, y, x.dtype.type(0), *args, parts)
    return y, argmax


def pool2d_backward(dy, argmax, x_shape, mode, pool, stride, padding):
    """Gradient of pool2d_forward: dy (N, C, OH, OW) -> dx with ``x_shape`` (N, C, H, W); ``argmax`` as
    pool2d_forward gives it (any other integer dtype is taken as int32)."""
    dy = np.ascontiguousarray(dy)
    dx = runtime.empty(x_shape, dy.dtype)
    args = (pool[0], pool[1], stride[0], stride[1], padding[0][0], padding[1][0])
    is_max = mode == "max"
    if is_max:
        argmax = np.ascontiguousarray(argmax, argmax.dtype if argmax.dtype == np.uint8 else np.int32)
    else:
        argmax = _NO_TAPS
    planes, plane_size = x_shape[0] * x_shape[1], x_shape[2] * x_shape[3]
    parts = runtime.parts(planes, plane_size, runtime.SPLIT)
    if pool == stride == (2, 2) and padding == ((0, 0), (0, 0)):  # Keras's default
        runtime.launch(_pool_backward_2x2_parts, dy, argmax, dx, not is_max, parts)
    elif is_max:
        runtime.launch(_max_pool_backward_parts, dy, argmax, dx, tap_offsets(pool, x_shape[3]), *args[2:], parts)
    else:
        runtime.launch(_avg_pool_backward_parts, dy, dx, dy.dtype.type(0), *args, parts)
    return dx
