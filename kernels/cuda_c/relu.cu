#include "common.cuh"
// ReLU on flat arrays, VEC elements per 16-byte packet (one vector load and store) when the launcher
// found every pointer 16-byte aligned, else VEC = 1; the n % VEC tail is done element by element.
// Configuration (-D): DTYPE, VEC, BLOCK_THREADS.
struct __align__(sizeof(DTYPE) * VEC) Packet { DTYPE v[VEC]; };

// y = max(x, 0); NaN propagates.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
relu_forward(const DTYPE* __restrict__ x, DTYPE* __restrict__ y, i64 n)
{
    const i64 packets = n / VEC;
    GRID_STRIDE_LOOP(i, packets) {
        Packet p = reinterpret_cast<const Packet*>(x)[i];
#pragma unroll
        for (int e = 0; e < VEC; ++e) p.v[e] = p.v[e] <= DTYPE(0) ? DTYPE(0) : p.v[e];
        reinterpret_cast<Packet*>(y)[i] = p;
    }
    GRID_STRIDE_LOOP(t, n - packets * VEC) {
        const DTYPE v = x[packets * VEC + t];
        y[packets * VEC + t] = v <= DTYPE(0) ? DTYPE(0) : v;
    }
}

// dx = dy where the forward output y > 0, else 0.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
relu_backward(const DTYPE* __restrict__ dy, const DTYPE* __restrict__ y, DTYPE* __restrict__ dx, i64 n)
{
    const i64 packets = n / VEC;
    GRID_STRIDE_LOOP(i, packets) {
        Packet g = reinterpret_cast<const Packet*>(dy)[i];
        const Packet out = reinterpret_cast<const Packet*>(y)[i];
#pragma unroll
        for (int e = 0; e < VEC; ++e) g.v[e] = out.v[e] > DTYPE(0) ? g.v[e] : DTYPE(0);
        reinterpret_cast<Packet*>(dx)[i] = g;
    }
    GRID_STRIDE_LOOP(t, n - packets * VEC) {
        const i64 i = packets * VEC + t;
        dx[i] = y[i] > DTYPE(0) ? dy[i] : DTYPE(0);
    }
}
