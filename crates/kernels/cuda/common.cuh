// Helpers shared by seqrec's kernels. Every kernel is `extern "C"` so that its
// PTX name is the name `src/cuda.rs` loads.
#pragma once

// Sum over a block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the total. `scratch` holds 32 values.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (int w = 0; w < warps; ++w) t += scratch[w];
    return t;
}

// Maximum over a block, as `block_sum`.
__device__ __forceinline__ double block_max(double v, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = -INFINITY;
    for (int w = 0; w < warps; ++w) t = fmax(t, scratch[w]);
    return t;
}

__device__ __forceinline__ double sigmoid_d(double x) { return 0.5 * tanh(0.5 * x) + 0.5; }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }
