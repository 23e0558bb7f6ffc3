#include "common.cuh"
// dW of conv2d as a tiled GEMM, like the Numba twin (numba_cuda/weight_grad.weight_grad_kernel_source):
//   partial[split, k, j] = sum over this split's positions q of N*OH*OW of dy[n, k, oh, ow] * col[q, j]
// with j = c*KR*KS + r*KS + s and col the im2col of x, gathered straight into shared memory.
// A block computes a TILE_FILTERS x TILE_TAPS tile of dW over chunks_per_split chunks of CHUNK
// positions; each of its THREADS_K x THREADS_J threads keeps a register block. Splits are summed in
// order by sum_splits (reduce.cu): deterministic, no atomics.
//
// Configuration (-D): DTYPE; TILE_FILTERS, TILE_TAPS, CHUNK, THREADS_K, THREADS_J;
// KR, KS, STRIDE_H, STRIDE_W, DIL_H, DIL_W.
#define THREADS (THREADS_K * THREADS_J)
#define ROWS_K (TILE_FILTERS / THREADS_K)
#define ROWS_J (TILE_TAPS / THREADS_J)
#define LOAD_STEP (THREADS / CHUNK)  // each thread loads one position of the chunk
#define TAPS (KR * KS)
static_assert(THREADS % CHUNK == 0 && TILE_FILTERS % THREADS_K == 0 && TILE_TAPS % THREADS_J == 0,
              "weight_grad tile: THREADS_K*THREADS_J must be a multiple of CHUNK, tiles multiples of threads");

extern "C" __global__ void __launch_bounds__(THREADS)
conv2d_weight_grad(const DTYPE* __restrict__ dy, const DTYPE* __restrict__ x, DTYPE* __restrict__ partial,
                   i64 N, i64 C, i64 H, i64 W, i64 K, i64 OH, i64 OW, i64 splits, i64 pad_top, i64 pad_left,
                   i64 chunks_per_split)
{
    // +1 column: loads write down a column, so rows must not share banks
    __shared__ DTYPE dy_tile[CHUNK][TILE_FILTERS + 1];
    __shared__ DTYPE col_tile[CHUNK][TILE_TAPS + 1];
    const i64 CRS = C * TAPS, P = OH * OW, Q = N * P;
    const i64 chunks = (Q + CHUNK - 1) / CHUNK;
    const i64 k_tiles = (K + TILE_FILTERS - 1) / TILE_FILTERS, j_tiles = (CRS + TILE_TAPS - 1) / TILE_TAPS;
    const int tid = threadIdx.x;
    const int tk = tid % THREADS_K, tj = tid / THREADS_K;
    const int qq = tid % CHUNK, row0 = tid / CHUNK;

    BLOCK_LOOP(block, splits * k_tiles * j_tiles) {
        const i64 j0 = block % j_tiles * TILE_TAPS;
        const i64 k0 = block / j_tiles % k_tiles * TILE_FILTERS;
        const i64 split = block / (j_tiles * k_tiles);
        DTYPE acc[ROWS_K][ROWS_J];
#pragma unroll
        for (int i = 0; i < ROWS_K; ++i)
#pragma unroll
            for (int m = 0; m < ROWS_J; ++m) acc[i][m] = DTYPE(0);

        const i64 split_end = (split + 1) * chunks_per_split;
        const i64 chunk_end = split_end < chunks ? split_end : chunks;
        for (i64 chunk = split * chunks_per_split; chunk < chunk_end; ++chunk) {
            const i64 q = chunk * CHUNK + qq;
            const bool valid = q < Q;
            const i64 n = q / P, oh = q % P / OW, ow = q % OW;
            for (int kk = row0; kk < TILE_FILTERS; kk += LOAD_STEP) {
                DTYPE v = DTYPE(0);
                if (valid && k0 + kk < K) v = dy[((n * K + k0 + kk) * OH + oh) * OW + ow];
                dy_tile[qq][kk] = v;
            }
            for (int jj = row0; jj < TILE_TAPS; jj += LOAD_STEP) {
                const i64 j = j0 + jj;
                DTYPE v = DTYPE(0);
                if (valid && j < CRS) {
                    const int t = (int)(j % TAPS);
                    const i64 h = oh * STRIDE_H - pad_top + t / KS * DIL_H;
                    const i64 w = ow * STRIDE_W - pad_left + t % KS * DIL_W;
                    if (h >= 0 && h < H && w >= 0 && w < W) v = x[((n * C + j / TAPS) * H + h) * W + w];
                }
                col_tile[qq][jj] = v;
            }
            __syncthreads();
#pragma unroll
            for (int p = 0; p < CHUNK; ++p) {
                DTYPE a[ROWS_K], b[ROWS_J];
#pragma unroll
                for (int i = 0; i < ROWS_K; ++i) a[i] = dy_tile[p][tk + i * THREADS_K];
#pragma unroll
                for (int m = 0; m < ROWS_J; ++m) b[m] = col_tile[p][tj + m * THREADS_J];
#pragma unroll
                for (int i = 0; i < ROWS_K; ++i)
#pragma unroll
                    for (int m = 0; m < ROWS_J; ++m) acc[i][m] += a[i] * b[m];
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < ROWS_K; ++i) {
            const i64 k = k0 + tk + i * THREADS_K;
#pragma unroll
            for (int m = 0; m < ROWS_J; ++m) {
                const i64 j = j0 + tj + m * THREADS_J;
                if (k < K && j < CRS) partial[(split * K + k) * CRS + j] = acc[i][m];
            }
        }
    }
}
