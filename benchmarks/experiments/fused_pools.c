#include <math.h>
#include <stdint.h>
#include <string.h>
/* Experiment (not used by the product): the patch-word level's pools fused per (video, text)
   block, kept in L1. Sizes come from the compiler command line (-DP=... -DL=...). */
#ifndef RB
#define RB 8
#endif
static inline void vexp(float *restrict x, int n) {
    for (int i = 0; i < n; i++) {
        float v = x[i] < -87.0f ? -87.0f : x[i];
        float k = floorf(v * 1.44269504f + 0.5f);
        float r = v - k * 0.693359375f - k * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f; p = p * r * r + r + 1.0f;
        union { int32_t i; float f; } u; u.i = ((int32_t)k + 127) << 23;
        x[i] = p * u.f;
    }
}
static float small_pool(const float *restrict x, const float *restrict w, int n) {
    float s[64], m2[64]; float m = x[0];
    for (int i = 1; i < n; i++) m = fmaxf(m, x[i]);
    for (int i = 0; i < n; i++) s[i] = x[i] - m;
    vexp(s, n); float tot = 0; for (int i = 0; i < n; i++) tot += s[i];
    float inv = 1.0f / tot; for (int i = 0; i < n; i++) s[i] *= inv;
    for (int j = 0; j < n; j++) m2[j] = 0;
    for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) m2[j] += s[i] * w[i * n + j];
    m = m2[0]; for (int j = 1; j < n; j++) m = fmaxf(m, m2[j]);
    for (int j = 0; j < n; j++) m2[j] -= m;
    vexp(m2, n); float a = 0; tot = 0;
    for (int j = 0; j < n; j++) { tot += m2[j]; a += m2[j] * x[j]; }
    return a / tot;
}
/* fine [V,P,T,L] scaled; ww [L,L], wp [P,P], wp2 [P,P], ww2 [L,L] scaled; out [V,T] */
void pools(const float *restrict fine, int V, int T, const float *restrict ww, const float *restrict wp,
           const float *restrict wp2, const float *restrict ww2, float *restrict out) {
    float X[P][L] __attribute__((aligned(64))), E[P][L] __attribute__((aligned(64))), M[P][L] __attribute__((aligned(64)));
    float wl[P], pl[L], cm[L] __attribute__((aligned(64))), cs[L] __attribute__((aligned(64)));
    for (int v = 0; v < V; v++) for (int t = 0; t < T; t++) {
        for (int p = 0; p < P; p++) memcpy(X[p], fine + (((size_t)v * P + p) * T + t) * L, L * sizeof(float));
        /* word axis */
        for (int p = 0; p < P; p++) { float m = X[p][0]; for (int l = 1; l < L; l++) m = fmaxf(m, X[p][l]);
            for (int l = 0; l < L; l++) E[p][l] = X[p][l] - m; }
        vexp(&E[0][0], P * L);
        for (int p = 0; p < P; p++) { float s = 0; for (int l = 0; l < L; l++) s += E[p][l];
            float inv = 1.0f / s; for (int l = 0; l < L; l++) E[p][l] *= inv; }
        for (int p0 = 0; p0 < P; p0 += RB) { float acc[RB][L] __attribute__((aligned(64))) = {{0}};
            for (int k = 0; k < L; k++) { const float *wr = ww + k * L;
                for (int r = 0; r < RB; r++) { float e = E[p0 + r][k]; for (int l = 0; l < L; l++) acc[r][l] += e * wr[l]; } }
            for (int r = 0; r < RB; r++) { float m = acc[r][0]; for (int l = 1; l < L; l++) m = fmaxf(m, acc[r][l]);
                for (int l = 0; l < L; l++) M[p0 + r][l] = acc[r][l] - m; } }
        vexp(&M[0][0], P * L);
        for (int p = 0; p < P; p++) { float s = 0, a = 0; for (int l = 0; l < L; l++) { s += M[p][l]; a += M[p][l] * X[p][l]; }
            wl[p] = a / s; }
        /* patch axis, vectorised over l */
        for (int l = 0; l < L; l++) cm[l] = X[0][l];
        for (int p = 1; p < P; p++) for (int l = 0; l < L; l++) cm[l] = fmaxf(cm[l], X[p][l]);
        for (int p = 0; p < P; p++) for (int l = 0; l < L; l++) E[p][l] = X[p][l] - cm[l];
        vexp(&E[0][0], P * L);
        for (int l = 0; l < L; l++) cs[l] = 0;
        for (int p = 0; p < P; p++) for (int l = 0; l < L; l++) cs[l] += E[p][l];
        for (int l = 0; l < L; l++) cs[l] = 1.0f / cs[l];
        for (int p = 0; p < P; p++) for (int l = 0; l < L; l++) E[p][l] *= cs[l];
        for (int q0 = 0; q0 < P; q0 += RB) { float acc[RB][L] __attribute__((aligned(64))) = {{0}};
            for (int p = 0; p < P; p++) { const float *wr = wp + p * P + q0;
                for (int r = 0; r < RB; r++) { float w = wr[r]; for (int l = 0; l < L; l++) acc[r][l] += w * E[p][l]; } }
            memcpy(M[q0], acc, sizeof acc); }
        for (int l = 0; l < L; l++) cm[l] = M[0][l];
        for (int p = 1; p < P; p++) for (int l = 0; l < L; l++) cm[l] = fmaxf(cm[l], M[p][l]);
        for (int p = 0; p < P; p++) for (int l = 0; l < L; l++) M[p][l] -= cm[l];
        vexp(&M[0][0], P * L);
        for (int l = 0; l < L; l++) { cs[l] = 0; pl[l] = 0; }
        for (int p = 0; p < P; p++) for (int l = 0; l < L; l++) { cs[l] += M[p][l]; pl[l] += M[p][l] * X[p][l]; }
        for (int l = 0; l < L; l++) pl[l] /= cs[l];
        out[v * T + t] = small_pool(wl, wp2, P) + small_pool(pl, ww2, L);
    }
}
