#include "common.cuh"
// Max (with argmax) or average pooling, one thread per element, like the Numba twins
// (numba_cuda/pool.pool_forward_kernel_source, pool_backward_kernel_source).
// Max: the first maximum in row-major window order wins, and a NaN beats any number; argmax is the
// window-local index r*PW + s. Average: the mean over the real (unpadded) elements, as Keras does.
// Configuration (-D): DTYPE, IS_MAX (0 or 1), PH, PW, SH, SW, BLOCK_THREADS.

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
pool_forward(const DTYPE* __restrict__ x, DTYPE* __restrict__ y, int* __restrict__ argmax,
             i64 N, i64 C, i64 H, i64 W, i64 OH, i64 OW, i64 pad_top, i64 pad_left)
{
    GRID_STRIDE_LOOP(i, N * C * OH * OW) {
        const i64 ow = i % OW, oh = i / OW % OH, plane = i / (OW * OH);
        const IndexRange rows = clipped_window(oh, SH, pad_top, PH, H);
        const IndexRange cols = clipped_window(ow, SW, pad_left, PW, W);
        const i64 origin = (plane * H + oh * SH - pad_top) * W + ow * SW - pad_left;  // of the padded window
        if (IS_MAX) {
            DTYPE best = x[origin + rows.lo * W + cols.lo];
            int best_at = (int)(rows.lo * PW + cols.lo);
            for (i64 r = rows.lo; r < rows.hi; ++r)
                for (i64 s = cols.lo; s < cols.hi; ++s) {
                    const DTYPE v = x[origin + r * W + s];
                    if (v > best || (v != v && best == best)) {  // first maximum; the first NaN wins
                        best = v;
                        best_at = (int)(r * PW + s);
                    }
                }
            y[i] = best;
            argmax[i] = best_at;
        } else {
            DTYPE total = DTYPE(0);
            for (i64 r = rows.lo; r < rows.hi; ++r)
                for (i64 s = cols.lo; s < cols.hi; ++s) total += x[origin + r * W + s];
            y[i] = total / DTYPE((rows.hi - rows.lo) * (cols.hi - cols.lo));
        }
    }
}

// dx[n, c, h, w] = sum over the windows covering (h, w), in row-major order, of their share of dy:
// a gather per input pixel, so overlapping windows need no atomics. argmax is unused for average.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
pool_backward(const DTYPE* __restrict__ dy, const int* __restrict__ argmax, DTYPE* __restrict__ dx,
              i64 N, i64 C, i64 H, i64 W, i64 OH, i64 OW, i64 pad_top, i64 pad_left)
{
    GRID_STRIDE_LOOP(i, N * C * H * W) {
        const i64 w = i % W, h = i / W % H, plane = i / (W * H);
        const IndexRange out_rows = covering_windows(h, SH, pad_top, PH, OH);
        const IndexRange out_cols = covering_windows(w, SW, pad_left, PW, OW);
        DTYPE total = DTYPE(0);
        for (i64 oh = out_rows.lo; oh < out_rows.hi; ++oh) {
            const i64 r = h - (oh * SH - pad_top);
            for (i64 ow = out_cols.lo; ow < out_cols.hi; ++ow) {
                const i64 s = w - (ow * SW - pad_left);
                const i64 o = (plane * OH + oh) * OW + ow;
                if (IS_MAX) {
                    if (argmax[o] == r * PW + s) total += dy[o];
                } else {
                    const IndexRange rows = clipped_window(oh, SH, pad_top, PH, H);
                    const IndexRange cols = clipped_window(ow, SW, pad_left, PW, W);
                    total += dy[o] / DTYPE((rows.hi - rows.lo) * (cols.hi - cols.lo));
                }
            }
        }
        dx[i] = total;
    }
}
