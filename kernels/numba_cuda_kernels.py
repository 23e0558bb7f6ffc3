"""Numba CUDA kernels of the 'numba' backend, as factories of compile-time configurations.

Importable without a GPU: the factories return plain Python kernel functions,
which ``numba_cuda`` jits and launches, the offline compile check
(``ptx_report``) compiles to PTX, and the CUDA simulator runs.

Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64.
Every kernel loops over its work (``for block in range(blockIdx.x, total,
gridDim.x)``), so grids stay small whatever N, K or the image size, and
indices are 64-bit.

* ``conv`` -- direct convolution. A block stages an input tile with its halo and
  the matching slice of filters in shared memory, channel chunk by channel
  chunk; each thread keeps a register block of ``filters x cols_per_thread``
  outputs. The same kernel computes the input gradient: a stride-1 convolution
  of dy, zero-upsampled by the stride while it is staged, with the flipped,
  transposed filters.
* ``weight_grad`` -- dW = dy x im2col(x) as a tiled GEMM whose im2col tile is
  gathered straight into shared memory. The reduction over N*OH*OW is split
  across blocks into per-split partials summed in a fixed order: deterministic.
* ``bias_grad`` -- one block per filter, fixed-order tree reduction.
* pooling and ReLU -- one thread per element. Pooling's backward gathers per
  input pixel over the windows that cover it (no atomics); ties and NaN follow
  the CPU backend (first maximum in row-major window order; NaN wins).

Tiles and launch planning live in ``tiling``, shared with the CUDA C kernels.
"""
import functools

import numba
import numpy as np
from numba import cuda

from . import indexing

# --------------------------------------------------------------------------- device helpers

_clipped_window = cuda.jit(device=True)(indexing.clipped_window)
_covering_windows = cuda.jit(device=True)(indexing.covering_windows)
_unravel_nchw = cuda.jit(device=True)(indexing.unravel_nchw)


def _numba_type(dtype):
    return numba.from_dtype(np.dtype(dtype))


# --------------------------------------------------------------------------- kernel factories
# Each returns the plain Python kernel function; ``_compiled`` jits and caches it.
# Everything in capitals is a compile-time constant of the configuration.

@functools.lru_cache(maxsize=None)
def conv_kernel_source(dtype, tile, geometry, relu, use_bias):
    """y[n, k] = relu?(bias[k] + sum_{c,r,s} w[k, c, r, s] * u[n, c, oh*SH - pad_top + r*DH, ...]).

    ``u`` is x zero-upsampled by (UH, UW) (1 for the forward pass): the input
    gradient is this kernel run on dy. ``geometry`` = (R, S, SH, SW, DH, DW, UH, UW).
    Arguments: x (N, C, H, W), w (K, C, R, S), bias (K,) or (1,), y (N, K, OH, OW), pad_top, pad_left.
    """
    TH, TW, WPT, KB, CB = tile
    R, S, SH, SW, DH, DW, UH, UW = geometry
    THREADS = TH * TW
    OUT_W = TW * WPT
    IN_H = (TH - 1) * SH + (R - 1) * DH + 1
    IN_W = (OUT_W - 1) * SW + (S - 1) * DW + 1
    IN_PLANE = IN_H * IN_W
    TAPS = R * S
    RELU, USE_BIAS = relu, use_bias
    NT = _numba_type(dtype)
    ZERO = np.dtype(dtype).type(0)

    def conv(x, w, bias, y, pad_top, pad_left):
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        N, K, OH, OW = y.shape[0], y.shape[1], y.shape[2], y.shape[3]
        tiles_w = (OW + OUT_W - 1) // OUT_W
        tiles_h = (OH + TH - 1) // TH
        k_tiles = (K + KB - 1) // KB
        total = N * k_tiles * tiles_h * tiles_w
        x_tile = cuda.shared.array((CB, IN_H, IN_W), NT)
        w_tile = cuda.shared.array((KB, CB, TAPS), NT)
        acc = cuda.local.array((KB, WPT), NT)
        w_reg = cuda.local.array(KB, NT)
        x_reg = cuda.local.array(WPT, NT)
        tid = cuda.threadIdx.x
        ty = tid // TW
        tx = tid % TW
        for block in range(cuda.blockIdx.x, total, cuda.gridDim.x):
            col_tile = block % tiles_w
            rest = block // tiles_w
            row_tile = rest % tiles_h
            rest = rest // tiles_h
            k0 = (rest % k_tiles) * KB
            n = rest // k_tiles
            oh0 = row_tile * TH
            ow0 = col_tile * OUT_W
            top = oh0 * SH - pad_top   # tile origin in (upsampled) input coordinates
            left = ow0 * SW - pad_left
            for kk in range(KB):
                for j in range(WPT):
                    acc[kk, j] = ZERO
            for c0 in range(0, C, CB):
                # consecutive threads load consecutive columns: coalesced; outside the input is padding
                for i in range(tid, CB * IN_PLANE, THREADS):
                    cc = i // IN_PLANE
                    ph = (i % IN_PLANE) // IN_W
                    pw = i % IN_W
                    p = top + ph
                    q = left + pw
                    v = ZERO
                    if (c0 + cc < C and p >= 0 and q >= 0 and p % UH == 0 and q % UW == 0
                            and p // UH < H and q // UW < W):
                        v = x[n, c0 + cc, p // UH, q // UW]
                    x_tile[cc, ph, pw] = v
                for i in range(tid, KB * CB * TAPS, THREADS):
                    kk = i // (CB * TAPS)
                    cc = (i // TAPS) % CB
                    t = i % TAPS
                    v = ZERO
                    if k0 + kk < K and c0 + cc < C:
                        v = w[k0 + kk, c0 + cc, t // S, t % S]
                    w_tile[kk, cc, t] = v
                cuda.syncthreads()
                for cc in range(CB):
                    for r in range(R):
                        for s in range(S):
                            for kk in range(KB):  # same address across the block: a broadcast
                                w_reg[kk] = w_tile[kk, cc, r * S + s]
                            for j in range(WPT):
                                x_reg[j] = x_tile[cc, ty * SH + r * DH, (tx + j * TW) * SW + s * DW]
                            for kk in range(KB):
                                for j in range(WPT):
                                    acc[kk, j] += w_reg[kk] * x_reg[j]
                cuda.syncthreads()  # before the next chunk overwrites the tiles
            oh = oh0 + ty
            for kk in range(KB):
                k = k0 + kk
                if k < K and oh < OH:
                    b = ZERO
                    if USE_BIAS:
                        b = bias[k]
                    for j in range(WPT):
                        ow = ow0 + tx + j * TW
                        if ow < OW:
                            v = acc[kk, j] + b
                            if RELU and v <= ZERO:  # NaN is not <= 0: it propagates
                                v = ZERO
                            y[n, k, oh, ow] = v

    return conv


@functools.lru_cache(maxsize=None)
def weight_grad_kernel_source(dtype, tile, geometry):
    """partial[split, k, c*R*S + r*S + s] = sum over this split's positions of dy * x (im2col gathered on the fly).

    ``geometry`` = (R, S, SH, SW, DH, DW). Arguments: dy (N, K, OH, OW),
    x (N, C, H, W), partial (splits, K, C*R*S), pad_top, pad_left, chunks_per_split.
    """
    BK, BJ, BQ, TK, TJ = tile
    R, S, SH, SW, DH, DW = geometry
    THREADS = TK * TJ
    MK, MJ = BK // TK, BJ // TJ
    LOAD_STEP = THREADS // BQ  # each thread loads one position of the chunk (THREADS % BQ == 0)
    TAPS = R * S
    # +1 column: loads write down a column, so rows must not share banks
    DY_ROW, COL_ROW = BK + 1, BJ + 1  # shared shapes must be plain constants to compile
    NT = _numba_type(dtype)
    ZERO = np.dtype(dtype).type(0)

    def weight_grad(dy, x, partial, pad_top, pad_left, chunks_per_split):
        N, K, OH, OW = dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        CRS = C * TAPS
        P = OH * OW
        Q = N * P
        chunks = (Q + BQ - 1) // BQ
        k_tiles = (K + BK - 1) // BK
        j_tiles = (CRS + BJ - 1) // BJ
        total = partial.shape[0] * k_tiles * j_tiles
        dy_tile = cuda.shared.array((BQ, DY_ROW), NT)
        col_tile = cuda.shared.array((BQ, COL_ROW), NT)
        acc = cuda.local.array((MK, MJ), NT)
        a = cuda.local.array(MK, NT)
        b = cuda.local.array(MJ, NT)
        tid = cuda.threadIdx.x
        tk = tid % TK
        tj = tid // TK
        qq = tid % BQ
        row0 = tid // BQ
        for block in range(cuda.blockIdx.x, total, cuda.gridDim.x):
            j0 = (block % j_tiles) * BJ
            rest = block // j_tiles
            k0 = (rest % k_tiles) * BK
            split = rest // k_tiles
            for i in range(MK):
                for m in range(MJ):
                    acc[i, m] = ZERO
            chunk_hi = min((split + 1) * chunks_per_split, chunks)
            for chunk in range(split * chunks_per_split, chunk_hi):
                q = chunk * BQ + qq
                valid = q < Q
                n = q // P
                oh = (q % P) // OW
                ow = q % OW
                for kk in range(row0, BK, LOAD_STEP):
                    v = ZERO
                    if valid and k0 + kk < K:
                        v = dy[n, k0 + kk, oh, ow]
                    dy_tile[qq, kk] = v
                for jj in range(row0, BJ, LOAD_STEP):
                    j = j0 + jj
                    v = ZERO
                    if valid and j < CRS:
                        t = j % TAPS
                        h = oh * SH - pad_top + (t // S) * DH
                        w = ow * SW - pad_left + (t % S) * DW
                        if h >= 0 and h < H and w >= 0 and w < W:
                            v = x[n, j // TAPS, h, w]
                    col_tile[qq, jj] = v
                cuda.syncthreads()
                for p in range(BQ):
                    for i in range(MK):
                        a[i] = dy_tile[p, tk + i * TK]
                    for m in range(MJ):
                        b[m] = col_tile[p, tj + m * TJ]
                    for i in range(MK):
                        for m in range(MJ):
                            acc[i, m] += a[i] * b[m]
                cuda.syncthreads()
            for i in range(MK):
                k = k0 + tk + i * TK
                for m in range(MJ):
                    j = j0 + tj + m * TJ
                    if k < K and j < CRS:
                        partial[split, k, j] = acc[i, m]

    return weight_grad


@functools.lru_cache(maxsize=None)
def sum_splits_kernel_source(dtype):
    """out[i] = partial[0, i] + partial[1, i] + ... in that order. Arguments: partial (splits, M), out (M,)."""
    ZERO = np.dtype(dtype).type(0)

    def sum_splits(partial, out):
        for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            total = ZERO
            for split in range(partial.shape[0]):
                total += partial[split, i]
            out[i] = total

    return sum_splits


@functools.lru_cache(maxsize=None)
def bias_grad_kernel_source(dtype, threads):
    """db[k] = sum over n, p of dy[n, k, p], one block per k, fixed-order tree reduction.

    Arguments: dy (N, K, OH*OW), db (K,). ``threads`` is a power of two.
    """
    THREADS = threads
    NT = _numba_type(dtype)
    ZERO = np.dtype(dtype).type(0)

    def bias_grad(dy, db):
        N, K, P = dy.shape[0], dy.shape[1], dy.shape[2]
        partial = cuda.shared.array(THREADS, NT)
        tid = cuda.threadIdx.x
        for k in range(cuda.blockIdx.x, K, cuda.gridDim.x):
            total = ZERO
            for n in range(N):
                for p in range(tid, P, THREADS):
                    total += dy[n, k, p]
            partial[tid] = total
            cuda.syncthreads()
            step = THREADS // 2
            while step > 0:
                if tid < step:
                    partial[tid] += partial[tid + step]
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                db[k] = partial[0]
            cuda.syncthreads()  # partial is reused by the next k

    return bias_grad


@functools.lru_cache(maxsize=None)
def pool_forward_kernel_source(dtype, is_max, window):
    """Max (with argmax) or average pooling, one thread per output.

    ``window`` = (PH, PW, SH, SW). Arguments: x (N, C, H, W), y (N, C, OH, OW),
    argmax int32 (N, C, OH, OW) or (1, 1, 1, 1), pad_top, pad_left.
    """
    PH, PW, SH, SW = window
    IS_MAX = is_max
    ZERO = np.dtype(dtype).type(0)

    def pool_forward(x, y, argmax, pad_top, pad_left):
        C, H, W = x.shape[1], x.shape[2], x.shape[3]
        OH, OW = y.shape[2], y.shape[3]
        for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            n, c, oh, ow = _unravel_nchw(i, C, OH, OW)
            h0 = oh * SH - pad_top
            w0 = ow * SW - pad_left
            r_lo, r_hi = _clipped_window(oh, SH, pad_top, PH, H)
            s_lo, s_hi = _clipped_window(ow, SW, pad_left, PW, W)
            if IS_MAX:
                best = x[n, c, h0 + r_lo, w0 + s_lo]
                best_at = r_lo * PW + s_lo
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        v = x[n, c, h0 + r, w0 + s]
                        if v > best or (v != v and best == best):  # first maximum; the first NaN wins
                            best = v
                            best_at = r * PW + s
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_at
            else:
                total = ZERO
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        total += x[n, c, h0 + r, w0 + s]
                # mean over the real (unpadded) elements only, as Keras does
                y[n, c, oh, ow] = total / ((r_hi - r_lo) * (s_hi - s_lo))

    return pool_forward


@functools.lru_cache(maxsize=None)
def pool_backward_kernel_source(dtype, is_max, window):
    """dx[n, c, h, w] = sum over the windows covering (h, w), in row-major order, of their gradient share.

    A gather per input pixel: no atomics, deterministic with overlapping windows.
    ``window`` = (PH, PW, SH, SW). Arguments: dy (N, C, OH, OW), argmax int32,
    dx (N, C, H, W), pad_top, pad_left.
    """
    PH, PW, SH, SW = window
    IS_MAX = is_max
    ZERO = np.dtype(dtype).type(0)

    def pool_backward(dy, argmax, dx, pad_top, pad_left):
        C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
        OH, OW = dy.shape[2], dy.shape[3]
        for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
            n, c, h, w = _unravel_nchw(i, C, H, W)
            oh_lo, oh_hi = _covering_windows(h, SH, pad_top, PH, OH)
            ow_lo, ow_hi = _covering_windows(w, SW, pad_left, PW, OW)
            total = ZERO
            for oh in range(oh_lo, oh_hi):
                r = h - (oh * SH - pad_top)
                for ow in range(ow_lo, ow_hi):
                    s = w - (ow * SW - pad_left)
                    g = dy[n, c, oh, ow]
                    if IS_MAX:
                        if argmax[n, c, oh, ow] == r * PW + s:
                            total += g
                    else:
                        r_lo, r_hi = _clipped_window(oh, SH, pad_top, PH, H)
                        s_lo, s_hi = _clipped_window(ow, SW, pad_left, PW, W)
                        total += g / ((r_hi - r_lo) * (s_hi - s_lo))
            dx[n, c, h, w] = total

    return pool_backward


@functools.lru_cache(maxsize=None)
def relu_forward_kernel_source(dtype):
    """y = max(x, 0) on flat arrays; NaN propagates."""
    ZERO = np.dtype(dtype).type(0)

    def relu_forward(x, y):
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            v = x[i]
            y[i] = ZERO if v <= ZERO else v

    return relu_forward


@functools.lru_cache(maxsize=None)
def relu_backward_kernel_source(dtype):
    """dx = dy where y > 0, else 0, on flat arrays."""
    ZERO = np.dtype(dtype).type(0)

    def relu_backward(dy, y, dx):
        for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
            g = dy[i]
            dx[i] = g if y[i] > ZERO else ZERO

    return relu_backward
