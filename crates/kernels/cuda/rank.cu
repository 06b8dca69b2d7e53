// Full-ranking rank counts without a [B, N] score matrix (the CPU reference
// is `src/rank.rs`). For batch row b with state h_b (width H), target t_b
// and item table W [N, H] with bias [N]: score_j = (Σ_k h_bk·W_jk, summed in
// order k = 0..H with fused multiply-adds) + bias_j. Counts, over items
// j ≥ 1 (id 0 is padding) other than t_b: greater[b] = #(score_j > score_t
// or NaN), equal[b] = #(score_j == score_t). target_scores writes score_t
// with the same arithmetic first, so the target's own score is bit-equal.
#include "common.cuh"

__device__ __forceinline__ float dot_in_order(const float* a, const float* w, unsigned width) {
    float s = 0.0f;
    for (unsigned k = 0; k < width; ++k) s = __fmaf_rn(a[k], w[k], s);
    return s;
}

extern "C" __global__ void target_scores(const float* states, const float* table, const float* bias,
                                         const unsigned* targets, unsigned rows, unsigned width, float* out) {
    for (unsigned b = blockIdx.x * blockDim.x + threadIdx.x; b < rows; b += gridDim.x * blockDim.x) {
        const unsigned long long t = targets[b];
        out[b] = dot_in_order(states + (unsigned long long)b * width, table + t * width, width) + bias[t];
    }
}

// Batch rows per pass over an item block, staged in shared memory.
#define ROW_TILE 8

// grid: item blocks of blockDim.x items (a multiple of 32); dynamic shared
// memory ROW_TILE·width floats.
extern "C" __global__ void rank_counts(const float* states, const float* table, const float* bias,
                                       const unsigned* targets, const float* target_score, unsigned rows,
                                       unsigned width, unsigned n_items, unsigned* counts) {
    // counts[b]: greater, counts[rows + b]: equal
    unsigned* greater = counts;
    unsigned* equal = counts + rows;
    extern __shared__ float tile[];
    for (unsigned item0 = blockIdx.x * blockDim.x; item0 < n_items; item0 += gridDim.x * blockDim.x) {
        const unsigned j = item0 + threadIdx.x;
        const bool live = j >= 1 && j < n_items;
        const float* w = table + (unsigned long long)(live ? j : 0) * width;
        const float bj = live ? bias[j] : 0.0f;
        for (unsigned b0 = 0; b0 < rows; b0 += ROW_TILE) {
            const unsigned nb = min(ROW_TILE, rows - b0);
            __syncthreads();
            for (unsigned k = threadIdx.x; k < nb * width; k += blockDim.x)
                tile[k] = states[(unsigned long long)b0 * width + k];
            __syncthreads();
            for (unsigned q = 0; q < nb; ++q) {
                const unsigned b = b0 + q;
                unsigned gt = 0, eq = 0;
                if (live && j != targets[b]) {
                    const float s = dot_in_order(tile + q * width, w, width) + bj;
                    const float t = target_score[b];
                    gt = (s > t || isnan(s)) ? 1u : 0u;
                    eq = (s == t) ? 1u : 0u;
                }
                for (int o = 16; o > 0; o >>= 1) {
                    gt += __shfl_down_sync(0xffffffffu, gt, o);
                    eq += __shfl_down_sync(0xffffffffu, eq, o);
                }
                if ((threadIdx.x & 31) == 0) {
                    if (gt) atomicAdd(greater + b, gt);
                    if (eq) atomicAdd(equal + b, eq);
                }
            }
        }
    }
}
