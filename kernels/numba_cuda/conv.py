"""Numba CUDA conv2d kernel (twin of ``cuda_c/conv.cu``): forward, and the input gradient.

A block stages an input tile with its halo and the matching slice of filters in shared memory,
channel chunk by channel chunk; each thread keeps a register block of ``filters x cols_per_thread``
outputs. The same kernel computes the input gradient: a stride-1 convolution of dy, zero-upsampled
by the stride while it is staged, with the flipped, transposed filters. Tiles and launch planning
live in ``gpuconv.kernels.gpu.tiling``, shared with the CUDA C kernels.

Factories of compile-time configurations; see the package docstring.
"""
import functools

import numba
import numpy as np
from numba import cuda


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
    NT = numba.from_dtype(np.dtype(dtype))
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
