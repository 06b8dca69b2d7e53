// GRU4Rec's fused sampled-output loss (the CPU reference is
// `sampled_loss_cpu` in `src/loss.rs`; definitions there). One block per row
// i of the [B, N] scores (positive on the diagonal, column i):
//   r_j = act(s_ij + bias_j) − logq·log_pop_j,
// the row's loss into row_loss[i] and ∂L/∂s_ij · scale into grad[i, j].
// The per-element arithmetic is in double, as in the reference.
#include "common.cuh"

// act: 0 linear, 1 relu, 2 tanh, 3 leaky(a), 4 elu(a). Returns y, writes y'.
__device__ __forceinline__ double act_eval(int act, double a, double x, double* d) {
    switch (act) {
        case 1: *d = x > 0.0 ? 1.0 : 0.0; return x > 0.0 ? x : 0.0;
        case 2: { const double t = tanh(x); *d = 1.0 - t * t; return t; }
        case 3: if (x >= 0.0) { *d = 1.0; return x; } *d = a; return a * x;
        case 4: if (x >= 0.0) { *d = 1.0; return x; } { const double e = exp(x); *d = a * e; return a * (e - 1.0); }
        default: *d = 1.0; return x;
    }
}

#define LOG_EPSILON 1e-24

// kind: 0 cross-entropy, 1 TOP1, 2 BPR, 3 TOP1-max, 4 BPR-max (bpreg).
extern "C" __global__ void sampled_loss(const float* scores, const float* bias, const float* log_pop, float logq,
                                        unsigned rows, unsigned cols, int kind, float bpreg, int act, float act_a,
                                        double scale, float* grad, double* row_loss) {
    __shared__ double scratch[32];
    const unsigned i = blockIdx.x;
    if (i >= rows) return;
    const float* s = scores + (unsigned long long)i * cols;
    float* g = grad + (unsigned long long)i * cols;
    // r_j is recomputed where it is needed (cheap) rather than stored.
#define R(j) (act_eval(act, act_a, (double)s[j] + (double)bias[j], &dd) - (log_pop ? (double)logq * (double)log_pop[j] : 0.0))
    double dd;
    const double ri = R(i);
    const double n = (double)cols;
    double loss = 0.0;
    if (kind == 0) {
        double m = -INFINITY;
        for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) m = fmax(m, R(j));
        m = block_max(m, scratch);
        double t = 0.0;
        for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) t += exp(R(j) - m);
        const double total = block_sum(t, scratch);
        const double pi = exp(ri - m) / total;
        const double c = -pi / (pi + LOG_EPSILON);
        for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
            const double rj = R(j);
            const double pj = exp(rj - m) / total;
            g[j] = (float)(scale * c * ((j == i ? 1.0 : 0.0) - pj) * dd);
        }
        loss = -log(pi + LOG_EPSILON);
    } else if (kind == 1 || kind == 2) {
        double l = 0.0, gi = 0.0;
        for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
            const double rj = R(j);
            const double dj = dd;
            if (kind == 1) {
                const double a = sigmoid_d(rj - ri), b = sigmoid_d(rj * rj);
                l += a + b;
                if (j != i) {
                    g[j] = (float)(scale * (a * (1.0 - a) + b * (1.0 - b) * 2.0 * rj) / n * dj);
                    gi -= a * (1.0 - a);
                }
            } else {
                const double m = ri - rj;
                l -= fmin(m, 0.0) - log1p(exp(-fabs(m)));
                if (j != i) {
                    const double sg = sigmoid_d(-m);
                    g[j] = (float)(scale * sg / n * dj);
                    gi -= sg;
                }
            }
        }
        l = block_sum(l, scratch);
        gi = block_sum(gi, scratch);
        if (threadIdx.x == 0) {
            R(i);
            g[i] = (float)(scale * gi / n * dd);
        }
        loss = kind == 1 ? (l - sigmoid_d(ri * ri)) / n : l / n;
    } else {
        // softmax weights over the negatives (j != i)
        double m = -INFINITY;
        for (unsigned j = threadIdx.x; j < cols; j += blockDim.x)
            if (j != i) m = fmax(m, R(j));
        m = block_max(m, scratch);
        double t = 0.0;
        for (unsigned j = threadIdx.x; j < cols; j += blockDim.x)
            if (j != i) t += exp(R(j) - m);
        const double total = block_sum(t, scratch);
        if (kind == 3) {
            double l = 0.0;
            for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
                if (j == i) continue;
                const double rj = R(j);
                l += exp(rj - m) / total * (sigmoid_d(rj - ri) + sigmoid_d(rj * rj));
            }
            loss = block_sum(l, scratch);
            double gi = 0.0;
            for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
                if (j == i) continue;
                const double rj = R(j);
                const double wj = exp(rj - m) / total, a = sigmoid_d(rj - ri), b = sigmoid_d(rj * rj);
                g[j] = (float)(scale * (wj * (a + b - loss) + wj * (a * (1.0 - a) + b * (1.0 - b) * 2.0 * rj)) * dd);
                gi -= wj * a * (1.0 - a);
            }
            gi = block_sum(gi, scratch);
            if (threadIdx.x == 0) {
                R(i);
                g[i] = (float)(scale * gi * dd);
            }
        } else {
            const double lambda = (double)bpreg;
            double a = 0.0, reg = 0.0;
            for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
                if (j == i) continue;
                const double rj = R(j);
                const double wj = exp(rj - m) / total;
                a += wj * sigmoid_d(ri - rj);
                reg += wj * rj * rj;
            }
            a = block_sum(a, scratch);
            reg = block_sum(reg, scratch);
            double gi = 0.0;
            for (unsigned j = threadIdx.x; j < cols; j += blockDim.x) {
                if (j == i) continue;
                const double rj = R(j);
                const double wj = exp(rj - m) / total, sj = sigmoid_d(ri - rj);
                const double da = wj * (sj - a) - wj * sj * (1.0 - sj);
                const double dr = wj * (rj * rj - reg) + 2.0 * wj * rj;
                g[j] = (float)(scale * (-da / (a + LOG_EPSILON) + lambda * dr) * dd);
                gi += wj * sj * (1.0 - sj);
            }
            gi = block_sum(gi, scratch);
            if (threadIdx.x == 0) {
                R(i);
                g[i] = (float)(scale * (-gi / (a + LOG_EPSILON)) * dd);
            }
            loss = -log(a + LOG_EPSILON) + lambda * reg;
        }
    }
#undef R
    if (threadIdx.x == 0) row_loss[i] = loss;
}
