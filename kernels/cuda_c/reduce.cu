#include "common.cuh"
// Fixed-order reductions, deterministic run to run (no atomics). Configuration (-D): DTYPE, BLOCK_THREADS
// (a power of two).

// out[i] = partial[0, i] + partial[1, i] + ... in that order; partial is (splits, M).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
sum_splits(const DTYPE* __restrict__ partial, DTYPE* __restrict__ out, i64 splits, i64 M)
{
    GRID_STRIDE_LOOP(i, M) {
        DTYPE total = DTYPE(0);
        for (i64 split = 0; split < splits; ++split) total += partial[split * M + i];
        out[i] = total;
    }
}

// db[k] = sum over n, p of dy[n, k, p] for dy (N, K, P): one block per k, then a tree in shared memory.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
bias_grad(const DTYPE* __restrict__ dy, DTYPE* __restrict__ db, i64 N, i64 K, i64 P)
{
    __shared__ DTYPE partial[BLOCK_THREADS];
    const int tid = threadIdx.x;
    BLOCK_LOOP(k, K) {
        DTYPE total = DTYPE(0);
        for (i64 n = 0; n < N; ++n)
            for (i64 p = tid; p < P; p += BLOCK_THREADS) total += dy[(n * K + k) * P + p];
        partial[tid] = total;
        __syncthreads();
#pragma unroll
        for (int step = BLOCK_THREADS / 2; step > 0; step /= 2) {
            if (tid < step) partial[tid] += partial[tid + step];
            __syncthreads();
        }
        if (tid == 0) db[k] = partial[0];
        __syncthreads();  // partial is reused by the next k
    }
}
