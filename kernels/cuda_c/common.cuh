// Shared by every gpuconv CUDA C kernel (inlined into each source by the loader, kernels/cuda_c/sources.py).
// Layouts: activations NCHW, conv weights KCRS, C-contiguous. DTYPE (float or double) and the
// tile and geometry constants come from the launcher as -D options; sizes arrive as 64-bit ints.
typedef long long i64;

// Twins of kernels/indexing.py (tests/kernels/test_cuda_c_host.py checks them against it exhaustively).
struct IndexRange { i64 lo, hi; };

// Taps [lo, hi) of window `out_index` that fall on real (unpadded) input.
__device__ __forceinline__ IndexRange clipped_window(i64 out_index, i64 stride, i64 pad_before, i64 window,
                                                     i64 in_size)
{
    const i64 start = out_index * stride - pad_before;
    i64 lo = start < 0 ? -start : 0;
    i64 hi = start + window > in_size ? in_size - start : window;
    if (lo > hi) lo = hi;
    return IndexRange{lo, hi};
}

// Outputs [lo, hi) whose window (of `window` taps, no dilation) contains input `in_index`.
__device__ __forceinline__ IndexRange covering_windows(i64 in_index, i64 stride, i64 pad_before, i64 window,
                                                       i64 out_size)
{
    i64 hi = (in_index + pad_before) / stride + 1;  // non-negative operands: C and Python division agree
    if (hi > out_size) hi = out_size;
    const i64 first = in_index + pad_before - window + 1;
    i64 lo = first > 0 ? (first + stride - 1) / stride : 0;
    if (lo > hi) lo = hi;
    return IndexRange{lo, hi};
}

// Grid-stride loops over work items: grids are capped, so kernels loop over the rest.
#define GRID_STRIDE_LOOP(i, count) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (count); i += (i64)gridDim.x * blockDim.x)
#define BLOCK_LOOP(b, count) for (i64 b = blockIdx.x; b < (count); b += gridDim.x)
