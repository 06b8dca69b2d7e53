// GRU gate steps of GRU4Rec's original GRU form (reset applied to h before
// the recurrent product); the CPU reference is `src/gru.rs`. Per row, with
// vx = x·Wx + b laid out [c | r | z] and vrz = h·Wrz laid out [r | z]:
//   forward A: r = σ(vx_r + vrz_r), z = σ(vx_z + vrz_z), rh = r ⊙ h
//              → gates [r | z | rh | h]            (the product u = rh·Wh follows)
//   forward B: c = tanh(vx_c + u), out = h + z ⊙ (c − h) → [c | out]
//   backward B (d = ∂L/∂out): dac = d ⊙ z ⊙ (1 − c²), daz = d ⊙ (c − h) ⊙ z(1 − z) → [dac | daz]
//   backward A (d_rh = dac·Whᵀ): dar = d_rh ⊙ h ⊙ r(1 − r) → dar
// One thread per (row, unit).
#include "common.cuh"

#define LOOP(n) for (unsigned long long k = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; k < (n); \
                     k += (unsigned long long)gridDim.x * blockDim.x)

extern "C" __global__ void gru_forward_a(const float* vx, const float* vrz, const float* h, float* gates,
                                         unsigned rows, unsigned n) {
    LOOP((unsigned long long)rows * n) {
        const unsigned long long b = k / n, u = k % n;
        const float* x = vx + b * 3 * n;
        const float* v = vrz + b * 2 * n;
        const float hv = h[b * n + u];
        const float r = sigmoid_f(x[n + u] + v[u]);
        const float z = sigmoid_f(x[2 * n + u] + v[n + u]);
        float* g = gates + b * 4 * n;
        g[u] = r;
        g[n + u] = z;
        g[2 * n + u] = r * hv;
        g[3 * n + u] = hv;
    }
}

extern "C" __global__ void gru_forward_b(const float* vx, const float* uh, const float* gates, float* out,
                                         unsigned rows, unsigned n) {
    LOOP((unsigned long long)rows * n) {
        const unsigned long long b = k / n, u = k % n;
        const float* g = gates + b * 4 * n;
        const float z = g[n + u], hv = g[3 * n + u];
        const float c = tanhf(vx[b * 3 * n + u] + uh[b * n + u]);
        out[b * 2 * n + u] = c;
        out[b * 2 * n + n + u] = hv + z * (c - hv);
    }
}

extern "C" __global__ void gru_backward_b(const float* d, const float* gates, const float* cout, float* dout,
                                          unsigned rows, unsigned n) {
    LOOP((unsigned long long)rows * n) {
        const unsigned long long b = k / n, u = k % n;
        const float* g = gates + b * 4 * n;
        const float z = g[n + u], hv = g[3 * n + u];
        const float c = cout[b * 2 * n + u];
        const float dv = d[b * n + u];
        dout[b * 2 * n + u] = dv * z * (1.0f - c * c);
        dout[b * 2 * n + n + u] = dv * (c - hv) * (z * (1.0f - z));
    }
}

extern "C" __global__ void gru_backward_a(const float* d_rh, const float* gates, float* dar, unsigned rows,
                                          unsigned n) {
    LOOP((unsigned long long)rows * n) {
        const unsigned long long b = k / n, u = k % n;
        const float* g = gates + b * 4 * n;
        const float r = g[u], hv = g[3 * n + u];
        dar[b * n + u] = d_rh[b * n + u] * hv * (r * (1.0f - r));
    }
}
