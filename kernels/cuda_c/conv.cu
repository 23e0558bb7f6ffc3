#include "common.cuh"
// Direct convolution, tiled like the Numba twin (numba_cuda/conv.conv_kernel_source):
//   y[n, k, oh, ow] = relu?(bias[k] + sum_{c,r,s} w[k, c, r, s] * u[n, c, oh*STRIDE_H - pad_top + r*DIL_H, ...])
// where u is x zero-upsampled by (UP_H, UP_W): 1 for the forward pass; the input gradient is this
// kernel on dy with the flipped, transposed filters and the forward stride as the upsampling.
//
// A block of TILE_ROWS x TILE_COLS threads computes TILE_FILTERS output channels over TILE_ROWS x
// (TILE_COLS * COLS_PER_THREAD) outputs of one image, staging TILE_CHANNELS input channels (input
// tile with halo, and the filter slice) in shared memory at a time. Each thread accumulates a
// TILE_FILTERS x COLS_PER_THREAD register block; all loops over the tile are unrolled.
//
// Configuration (-D): DTYPE; TILE_ROWS, TILE_COLS, COLS_PER_THREAD, TILE_FILTERS, TILE_CHANNELS;
// KR, KS, STRIDE_H, STRIDE_W, DIL_H, DIL_W, UP_H, UP_W; RELU, USE_BIAS (0 or 1).
#define THREADS (TILE_ROWS * TILE_COLS)
#define OUT_W (TILE_COLS * COLS_PER_THREAD)
#define IN_H ((TILE_ROWS - 1) * STRIDE_H + (KR - 1) * DIL_H + 1)
#define IN_W ((OUT_W - 1) * STRIDE_W + (KS - 1) * DIL_W + 1)
#define TAPS (KR * KS)

extern "C" __global__ void __launch_bounds__(THREADS)
conv2d(const DTYPE* __restrict__ x, const DTYPE* __restrict__ w, const DTYPE* __restrict__ bias,
       DTYPE* __restrict__ y, i64 N, i64 C, i64 H, i64 W, i64 K, i64 OH, i64 OW, i64 pad_top, i64 pad_left)
{
    __shared__ DTYPE x_tile[TILE_CHANNELS][IN_H][IN_W];
    // filter-minor, so a thread's TILE_FILTERS weights of one tap are one vector load
    __shared__ __align__(16) DTYPE w_tile[TILE_CHANNELS][TAPS][TILE_FILTERS];
    const int tid = threadIdx.x;
    const int ty = tid / TILE_COLS, tx = tid % TILE_COLS;
    const i64 tiles_w = (OW + OUT_W - 1) / OUT_W, tiles_h = (OH + TILE_ROWS - 1) / TILE_ROWS;
    const i64 k_tiles = (K + TILE_FILTERS - 1) / TILE_FILTERS;

    BLOCK_LOOP(block, N * k_tiles * tiles_h * tiles_w) {
        const i64 ow0 = block % tiles_w * OUT_W;
        const i64 oh0 = block / tiles_w % tiles_h * TILE_ROWS;
        const i64 k0 = block / (tiles_w * tiles_h) % k_tiles * TILE_FILTERS;
        const i64 n = block / (tiles_w * tiles_h * k_tiles);
        const i64 top = oh0 * STRIDE_H - pad_top;  // tile origin in (upsampled) input coordinates
        const i64 left = ow0 * STRIDE_W - pad_left;
        DTYPE acc[TILE_FILTERS][COLS_PER_THREAD];
#pragma unroll
        for (int kk = 0; kk < TILE_FILTERS; ++kk)
#pragma unroll
            for (int j = 0; j < COLS_PER_THREAD; ++j) acc[kk][j] = DTYPE(0);

        for (i64 c0 = 0; c0 < C; c0 += TILE_CHANNELS) {
            // consecutive threads load consecutive columns (coalesced); outside the input is padding
            for (int i = tid; i < TILE_CHANNELS * IN_H * IN_W; i += THREADS) {
                const int cc = i / (IN_H * IN_W), ph = i / IN_W % IN_H, pw = i % IN_W;
                const i64 p = top + ph, q = left + pw;
                DTYPE v = DTYPE(0);
                if (c0 + cc < C && p >= 0 && q >= 0 && p % UP_H == 0 && q % UP_W == 0 && p / UP_H < H
                    && q / UP_W < W)
                    v = x[((n * C + c0 + cc) * H + p / UP_H) * W + q / UP_W];
                x_tile[cc][ph][pw] = v;
            }
            for (int i = tid; i < TILE_FILTERS * TILE_CHANNELS * TAPS; i += THREADS) {
                const int kk = i / (TILE_CHANNELS * TAPS), cc = i / TAPS % TILE_CHANNELS, t = i % TAPS;
                DTYPE v = DTYPE(0);
                if (k0 + kk < K && c0 + cc < C) v = w[((k0 + kk) * C + c0 + cc) * TAPS + t];
                w_tile[cc][t][kk] = v;
            }
            __syncthreads();
#pragma unroll
            for (int cc = 0; cc < TILE_CHANNELS; ++cc)
#pragma unroll
                for (int r = 0; r < KR; ++r)
#pragma unroll
                    for (int s = 0; s < KS; ++s) {
                        DTYPE w_reg[TILE_FILTERS], x_reg[COLS_PER_THREAD];
#pragma unroll
                        for (int kk = 0; kk < TILE_FILTERS; ++kk) w_reg[kk] = w_tile[cc][r * KS + s][kk];
#pragma unroll
                        for (int j = 0; j < COLS_PER_THREAD; ++j)
                            x_reg[j] = x_tile[cc][ty * STRIDE_H + r * DIL_H][(tx + j * TILE_COLS) * STRIDE_W + s * DIL_W];
#pragma unroll
                        for (int kk = 0; kk < TILE_FILTERS; ++kk)
#pragma unroll
                            for (int j = 0; j < COLS_PER_THREAD; ++j) acc[kk][j] += w_reg[kk] * x_reg[j];
                    }
            __syncthreads();  // before the next chunk overwrites the tiles
        }

        const i64 oh = oh0 + ty;
#pragma unroll
        for (int kk = 0; kk < TILE_FILTERS; ++kk) {
            const i64 k = k0 + kk;
            if (k >= K || oh >= OH) continue;
            const DTYPE b = USE_BIAS ? bias[k] : DTYPE(0);
#pragma unroll
            for (int j = 0; j < COLS_PER_THREAD; ++j) {
                const i64 ow = ow0 + tx + j * TILE_COLS;
                if (ow >= OW) continue;
                DTYPE v = acc[kk][j] + b;
                if (RELU && v <= DTYPE(0)) v = DTYPE(0);  // NaN is not <= 0: it propagates
                y[((n * K + k) * OH + oh) * OW + ow] = v;
            }
        }
    }
}
