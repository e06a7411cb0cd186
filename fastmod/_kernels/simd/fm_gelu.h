/* float32 exact GELU forward and backward (fastmod/_kernels/activations.pyx), written once
 * against fm_vec.h. glibc's scalar erff/expf made GELU forward + backward ~7x slower than
 * torch's vectorized one on (16, 64, 1024).
 *
 * GELU(x) = 0.5 x erfc(-x / sqrt 2), with q = erfc(|x| / sqrt 2): 0.5 x q (x < 0) or
 * 0.5 x (2 - q) (x >= 0), so the tail never forms 1 + erf (which cancels). erfc(z) = t R(t)
 * exp(-z^2), t = 1 / (1 + z / 2), R a degree-10 polynomial fitted in relative error on [0, 1]
 * (max 1.7e-7 evaluated in float32), with z^2 = x^2 / 2 split exactly (fm_vsqr_split) and exp
 * of the two-part argument (fm_vexp_hilo): relative error < 1e-6 down to x = -13; the backward
 * reuses exp(-x^2 / 2) for phi(x). x is clamped to [-1e4, 1e4] with NaN kept.
 *
 * The vector levels do every element (partial vectors at the end); the scalar level leaves
 * them to the caller's scalar loop (libm's erfc, in double).
 */
#ifndef FM_GELU_H
#define FM_GELU_H
#include "fm_vec.h"

/* xc = x clamped to [-1e4, 1e4], NaN kept (max/min return the second operand on NaN) */
static inline fm_vf fm_gelu_clamp(fm_vf x) {
    return fm_vmin(fm_vset1(1e4f), fm_vmax(fm_vset1(-1e4f), x));
}

/* q = erfc(|xc| / sqrt 2); *e_out = exp(-xc^2 / 2) */
static inline fm_vf fm_gelu_erfc(fm_vf xc, fm_vf* e_out) {
    fm_vf z = fm_vmul(fm_vabs(xc), fm_vset1(0.70710678118654752f));
    fm_vf t = fm_vrecip(fm_vfma(fm_vset1(0.5f), z, fm_vset1(1.0f)));       /* in (0, 1] */
    fm_vf p = fm_vset1(4.319548607e-02f), h, l, e;
    p = fm_vfma(p, t, fm_vset1(-2.347338647e-01f));
    p = fm_vfma(p, t, fm_vset1(4.936955571e-01f));
    p = fm_vfma(p, t, fm_vset1(-4.549748003e-01f));
    p = fm_vfma(p, t, fm_vset1(1.321776807e-01f));
    p = fm_vfma(p, t, fm_vset1(-5.921166390e-02f));
    p = fm_vfma(p, t, fm_vset1(9.346252680e-02f));
    p = fm_vfma(p, t, fm_vset1(1.753159612e-01f));
    p = fm_vfma(p, t, fm_vset1(2.468845695e-01f));
    p = fm_vfma(p, t, fm_vset1(2.820937634e-01f));
    p = fm_vfma(p, t, fm_vset1(2.820948064e-01f));
    fm_vsqr_split(xc, &h, &l);                    /* -x^2/2 = -(h + l)/2 exactly */
    e = fm_vexp_hilo(fm_vmul(h, fm_vset1(-0.5f)), fm_vmul(l, fm_vset1(-0.5f)));
    *e_out = e;
    return fm_vmul(fm_vmul(t, p), e);
}

/* y = GELU(x) on FM_W lanes */
static inline fm_vf fm_gelu_fwd_v(fm_vf v) {
    fm_vf e, xc = fm_gelu_clamp(v), q = fm_gelu_erfc(xc, &e);
    /* x < 0: 0.5 xc q (xc: -inf -> -1e4, so the product is -0, not NaN);
       else 0.5 x (2 - q) (+inf and NaN pass through) */
    fm_vf f = fm_vselect(fm_vlt(v, fm_vzero()), fm_vmul(xc, q), fm_vmul(v, fm_vsub(fm_vset1(2.0f), q)));
    return fm_vmul(fm_vset1(0.5f), f);
}

/* dx = dy * GELU'(x) on FM_W lanes */
static inline fm_vf fm_gelu_bwd_v(fm_vf g, fm_vf v) {
    fm_vf e, xc = fm_gelu_clamp(v), q = fm_gelu_erfc(xc, &e);
    /* Phi(x) = q / 2 (x < 0) or 1 - q / 2; phi(x) = e / sqrt(2 pi); d = Phi + xc phi */
    fm_vf hq = fm_vmul(fm_vset1(0.5f), q);
    fm_vf cdf = fm_vselect(fm_vlt(v, fm_vzero()), hq, fm_vsub(fm_vset1(1.0f), hq));
    return fm_vmul(g, fm_vfma(fm_vmul(xc, fm_vset1(0.39894228040143268f)), e, cdf));
}

/* Both do all of [lo, hi) at the vector levels (the last partial vector with partial loads and
   stores, so every element takes the same arithmetic) and return hi; at the scalar level they
   do nothing and return lo (the caller's scalar loop does it). */
static ptrdiff_t fma_gelu_fwd_f32(float* y, const float* x, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t i = lo;
#if FM_LEVEL >= 1
    for (; i + FM_W <= hi; i += FM_W)
        fm_vstore(y + i, fm_gelu_fwd_v(fm_vload(x + i)));
    if (i < hi) {
        fm_vstore_n(y + i, fm_gelu_fwd_v(fm_vload_n(x + i, (int)(hi - i))), (int)(hi - i));
        i = hi;
    }
#else
    (void)y; (void)x; (void)hi;
#endif
    return i;
}

static ptrdiff_t fma_gelu_bwd_f32(float* dx, const float* dy, const float* x, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t i = lo;
#if FM_LEVEL >= 1
    for (; i + FM_W <= hi; i += FM_W)
        fm_vstore(dx + i, fm_gelu_bwd_v(fm_vload(dy + i), fm_vload(x + i)));
    if (i < hi) {
        int n = (int)(hi - i);
        fm_vstore_n(dx + i, fm_gelu_bwd_v(fm_vload_n(dy + i, n), fm_vload_n(x + i, n)), n);
        i = hi;
    }
#else
    (void)dx; (void)dy; (void)x; (void)hi;
#endif
    return i;
}

#endif /* FM_GELU_H */
