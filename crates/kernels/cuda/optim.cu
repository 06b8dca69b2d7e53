// Optimiser updates (the CPU reference is `src/optim.rs`; layouts as there).
//
// Sparse: `state` is [rows, 2·width], row r = [slot a of r ‖ slot b of r];
// `groups` name the touched rows: rows[g] is updated from the sum, in order,
// of the gradient rows sources[starts[g] .. starts[g+1]]. One thread per
// (group, column): each touched element is written by exactly one thread.
// Dense: `state` is [a (n) ‖ b (n)] for n elements.
//
// rule 0: Adagrad with momentum: acc += g²; mom = μ·mom − lr·g/√(acc + ε);
//         the step (slot b) is added to the parameter.
// rule 1: Adam: m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; the parameter
//         becomes p·keep − lr·(m·c1)/(√(v·c2) + ε) (keep = 1 − lr·wd,
//         c1, c2 the bias corrections computed on the host).
#include "common.cuh"

struct Rule {
    int kind;
    float lr, mu_or_beta1, eps, beta2, c1, c2, keep;
};

__device__ __forceinline__ void update_state(const Rule& r, float* a, float* b, float g) {
    if (r.kind == 0) {
        const float acc = *a + g * g;
        *a = acc;
        *b = r.mu_or_beta1 * *b - r.lr * g / sqrtf(acc + r.eps);
    } else {
        *a = r.mu_or_beta1 * *a + (1.0f - r.mu_or_beta1) * g;
        *b = r.beta2 * *b + (1.0f - r.beta2) * g * g;
    }
}

__device__ __forceinline__ float apply_step(const Rule& r, float p, float a, float b) {
    if (r.kind == 0) return p + b;
    return p * r.keep - r.lr * (a * r.c1) / (sqrtf(b * r.c2) + r.eps);
}

extern "C" __global__ void sparse_state_update(float* state, const float* grad, const unsigned* rows,
                                               const unsigned* starts, const unsigned* sources,
                                               unsigned n_groups, unsigned width, Rule rule) {
    const unsigned long long total = (unsigned long long)n_groups * width;
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; k < total;
         k += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned g = (unsigned)(k / width), j = (unsigned)(k % width);
        const unsigned s0 = starts[g], s1 = starts[g + 1];
        float sum = grad[(unsigned long long)sources[s0] * width + j];
        for (unsigned s = s0 + 1; s < s1; ++s) sum += grad[(unsigned long long)sources[s] * width + j];
        float* row = state + (unsigned long long)rows[g] * 2 * width;
        update_state(rule, row + j, row + width + j, sum);
    }
}

extern "C" __global__ void sparse_apply(float* param, const float* state, const unsigned* rows, unsigned n_groups,
                                        unsigned width, Rule rule) {
    const unsigned long long total = (unsigned long long)n_groups * width;
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; k < total;
         k += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long r = rows[k / width], j = k % width;
        const float* srow = state + r * 2 * width;
        float* p = param + r * width + j;
        *p = apply_step(rule, *p, srow[j], srow[width + j]);
    }
}

extern "C" __global__ void dense_state_update(float* state, const float* grad, unsigned long long n, Rule rule) {
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; k < n;
         k += (unsigned long long)gridDim.x * blockDim.x) {
        update_state(rule, state + k, state + n + k, grad[k]);
    }
}

extern "C" __global__ void dense_apply(float* param, const float* state, unsigned long long n, Rule rule) {
    for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; k < n;
         k += (unsigned long long)gridDim.x * blockDim.x) {
        param[k] = apply_step(rule, param[k], state[k], state[n + k]);
    }
}
