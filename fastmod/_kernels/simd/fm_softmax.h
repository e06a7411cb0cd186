/* float32 row helpers of the attention softmax (fastmod/_kernels/attention.pyx), written once
 * against fm_vec.h. exp is fm_vexp_hilo's Cephes-style polynomial (relative error < 2e-7) and
 * the sums stay in double; glibc's scalar expf made the row softmax 3x slower than the two
 * GEMMs, and GCC does not vectorize these loops by itself (the selects stay branches under
 * -ftrapping-math). The scalar level runs the same polynomial one element at a time.
 */
#ifndef FM_SOFTMAX_H
#define FM_SOFTMAX_H
#include <math.h>
#include "fm_vec.h"

/* exp(x) for x <= 0 (softmax arguments after the max is subtracted); exactly 0 below -87.33,
   -inf included (masked scores); NaN stays NaN, as in fm_vexp_hilo */
static inline float fm_expf_nonpos(float x) {
    if (x != x) return x;                         /* NaN: no float -> int conversion of it */
    float t = x * 1.44269504088896341f;
    t = t < -126.0f ? -126.0f : t;
    int n = (int)(t + 126.5f) - 126;              /* round(t): t + 126.5 > 0 */
    float r = x - (float)n * 0.693359375f - (float)n * (-2.12194440e-4f);
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    return x < -87.33f ? 0.0f : ldexpf(y, n);
}

static float fm_rowmax_f32(const float* p, ptrdiff_t n) {
    float m = -INFINITY;
    ptrdiff_t i = 0;
#if FM_LEVEL >= 1
    if (n >= FM_W) {
        float b[FM_W];
        int j;
        fm_vf vm = fm_vload(p);
        for (i = FM_W; i + FM_W <= n; i += FM_W) vm = fm_vmax(vm, fm_vload(p + i));
        fm_vstore(b, vm);
        for (j = 0; j < FM_W; j++) m = b[j] > m ? b[j] : m;
    }
#endif
    for (; i < n; i++) m = p[i] > m ? p[i] : m;
    return m;
}

/* p[i] = exp(p[i] - m); returns the sum, accumulated in double */
static double fm_expsum_f32(float* p, ptrdiff_t n, float m) {
    double tot = 0;
    ptrdiff_t i = 0;
#if FM_LEVEL >= 1
    fm_vf vm = fm_vset1(m);
    fm_vd a0 = fm_vdzero(), a1 = fm_vdzero();
    for (; i + FM_W <= n; i += FM_W) {
        fm_vf e = fm_vexp_hilo(fm_vsub(fm_vload(p + i), vm), fm_vzero());
        fm_vstore(p + i, e);
        fm_vdacc(&a0, &a1, e);
    }
    tot = fm_vdhsum(fm_vdadd(a0, a1));
#endif
    for (; i < n; i++) {
        float e = fm_expf_nonpos(p[i] - m);
        p[i] = e;
        tot += (double)e;
    }
    return tot;
}

/* sum(a * b), accumulated in double */
static double fm_dot_f32(const float* a, const float* b, ptrdiff_t n) {
    double tot = 0;
    ptrdiff_t i = 0;
#if FM_LEVEL >= 1
    fm_vd a0 = fm_vdzero(), a1 = fm_vdzero();
    for (; i + FM_W <= n; i += FM_W)
        fm_vdacc_mul(&a0, &a1, fm_vload(a + i), fm_vload(b + i));
    tot = fm_vdhsum(fm_vdadd(a0, a1));
#endif
    for (; i < n; i++) tot += (double)a[i] * (double)b[i];
    return tot;
}

#endif /* FM_SOFTMAX_H */
