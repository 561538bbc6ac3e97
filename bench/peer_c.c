/* The hand-C peer of `backprop bench`: plain serial loops, the way a person writes a
 * model's CPU path by hand (as llm.c's train_gpt2.c does), written here from the math.
 * Compiled as such code is (bench/peer_c.py: -O3 -Ofast -march=native, no OpenMP): the
 * compiler may vectorize the loops and call libmvec for tanhf/expf/logf, nothing more.
 * Each takes the same inputs and writes the same outputs as the generated kernel and the
 * PyTorch call it sits beside. */
#include <math.h>
#include <stddef.h>

/* Layer norm backward over N rows of C, from the saved mean and 1/std:
 * xhat = (x - mean) rstd, g = dy w;
 * dx = rstd (g - mean(g) - xhat mean(g xhat)), dw = sum over rows of dy xhat, db = sum dy. */
void peer_layernorm_backward(ptrdiff_t N, ptrdiff_t C, const float *x, const float *w,
                             const float *dy, const float *mean, const float *rstd,
                             float *dx, float *dw, float *db)
{
    for (ptrdiff_t c = 0; c < C; c++) {
        dw[c] = 0.0f;
        db[c] = 0.0f;
    }
    for (ptrdiff_t n = 0; n < N; n++) {
        const float *xr = x + n * C, *dyr = dy + n * C;
        float *dxr = dx + n * C;
        const float mu = mean[n], rs = rstd[n];
        float g_sum = 0.0f, gx_sum = 0.0f;
        for (ptrdiff_t c = 0; c < C; c++) {
            const float xhat = (xr[c] - mu) * rs;
            const float g = dyr[c] * w[c];
            g_sum += g;
            gx_sum += g * xhat;
        }
        const float g_mean = g_sum / C, gx_mean = gx_sum / C;
        for (ptrdiff_t c = 0; c < C; c++) {
            const float xhat = (xr[c] - mu) * rs;
            const float g = dyr[c] * w[c];
            db[c] += dyr[c];
            dw[c] += dyr[c] * xhat;
            dxr[c] = rs * (g - g_mean - xhat * gx_mean);
        }
    }
}

/* GELU (tanh form) backward from z and the upstream gradient, tanh recomputed:
 * u = k (z + 0.044715 z^3), a = z (1 + tanh u) / 2,
 * da/dz = (1 + tanh u) / 2 + z (1 - tanh^2 u) k (1 + 3 0.044715 z^2) / 2. */
void peer_gelu_backward(ptrdiff_t n, const float *z, const float *da, float *dz)
{
    const float k = 0.7978845608028654f;
    for (ptrdiff_t i = 0; i < n; i++) {
        const float x = z[i];
        const float t = tanhf(k * (x + 0.044715f * x * x * x));
        const float du = k * (1.0f + 3.0f * 0.044715f * x * x);
        dz[i] = da[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
    }
}

/* Softmax + cross-entropy with integer labels, forward and backward, batch mean:
 * p = softmax(z[n]) (shifted by the row max), L = mean over rows of -log p[t[n]],
 * dz = (p - onehot(t[n])) / N.  Returns L. */
float peer_softmax_ce(ptrdiff_t N, ptrdiff_t C, const float *z, const long long *t, float *dz)
{
    double loss = 0.0;
    for (ptrdiff_t n = 0; n < N; n++) {
        const float *zr = z + n * C;
        float *dr = dz + n * C;
        float m = zr[0];
        for (ptrdiff_t c = 1; c < C; c++)
            m = zr[c] > m ? zr[c] : m;
        float sum = 0.0f;
        for (ptrdiff_t c = 0; c < C; c++) {
            dr[c] = expf(zr[c] - m);
            sum += dr[c];
        }
        const float scale = 1.0f / (sum * N);
        for (ptrdiff_t c = 0; c < C; c++)
            dr[c] *= scale;
        loss += logf(sum) + m - zr[t[n]];
        dr[t[n]] -= 1.0f / N;
    }
    return (float)(loss / N);
}
