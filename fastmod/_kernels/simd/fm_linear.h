/* Skinny-layer kernels for Linear (fastmod/_kernels/linear.pyx), float32, written once against
 * the vector layer (fm_vec.h) and compiled per instruction set.
 *
 * Skinny layers (OUT <= 16: the 10-class output layers): BLAS runs such shapes at 15-30 GFLOP/s
 * (its packing and C-zeroing passes cost as much as the arithmetic: dW 10x512 with K = 128 took
 * 82 us, forward 128x512 -> 10 42 us, dx 40 us on one core, AVX2); direct register-blocked loops
 * read each operand once from L1 and write each output once: forward as dot products (2 rows x 5
 * outputs), dW and dx as broadcast-FMA tiles (3 x SK_COLS floats, SK_COLS = 4 vectors); tails
 * (IN % SK_COLS columns, OUT % 3 outputs, rows) in narrower or scalar loops. Each output element
 * is summed by one thread in a fixed order: results do not depend on the thread count.
 */
#ifndef FM_LINEAR_H
#define FM_LINEAR_H
#include "fm_vec.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define SK_COLS (4 * FM_W)      /* dW / dx tile width; dW column blocks are multiples of it */
/* the scalar level leaves skinny layers to BLAS (which picks its own SIMD kernels at run time) */
#define SK_HAVE (FM_LEVEL >= 1)

static inline float sk_out(float s, const float* x, const float* w, int k, int K,
                           const float* b, int o, int relu) {
    for (; k < K; k++) s += x[k] * w[k];
    if (b) s += b[o];
    return relu && s < 0 ? 0 : s;        /* max(s, 0), NaN kept */
}

/* forward, 2 rows x 5 outputs: y[r, o] = x[r, :] . w[o, :] (+ b[o]) (relu); 10 accumulators
   + 2 x + 1 w registers (4 x 3 spilled an accumulator with 16 ymm registers) */
static inline void sk_fwd_2x5(float* y, int ldy, const float* x, int ldx, const float* w,
                              int ldw, const float* b, int K, int relu) {
    fm_vf a00 = fm_vzero(), a01 = fm_vzero(), a02 = fm_vzero(), a03 = fm_vzero(), a04 = fm_vzero();
    fm_vf a10 = fm_vzero(), a11 = fm_vzero(), a12 = fm_vzero(), a13 = fm_vzero(), a14 = fm_vzero();
    const float *x0 = x, *x1 = x + ldx;
    const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * (ptrdiff_t)ldw;
    const float *w3 = w + 3 * (ptrdiff_t)ldw, *w4 = w + 4 * (ptrdiff_t)ldw;
    int k;
    for (k = 0; k + FM_W <= K; k += FM_W) {
        fm_vf v0 = fm_vload(x0 + k), v1 = fm_vload(x1 + k), u;
        u = fm_vload(w0 + k); a00 = fm_vfma(v0, u, a00); a10 = fm_vfma(v1, u, a10);
        u = fm_vload(w1 + k); a01 = fm_vfma(v0, u, a01); a11 = fm_vfma(v1, u, a11);
        u = fm_vload(w2 + k); a02 = fm_vfma(v0, u, a02); a12 = fm_vfma(v1, u, a12);
        u = fm_vload(w3 + k); a03 = fm_vfma(v0, u, a03); a13 = fm_vfma(v1, u, a13);
        u = fm_vload(w4 + k); a04 = fm_vfma(v0, u, a04); a14 = fm_vfma(v1, u, a14);
    }
    y[0] = sk_out(fm_vhsum(a00), x0, w0, k, K, b, 0, relu);
    y[1] = sk_out(fm_vhsum(a01), x0, w1, k, K, b, 1, relu);
    y[2] = sk_out(fm_vhsum(a02), x0, w2, k, K, b, 2, relu);
    y[3] = sk_out(fm_vhsum(a03), x0, w3, k, K, b, 3, relu);
    y[4] = sk_out(fm_vhsum(a04), x0, w4, k, K, b, 4, relu);
    y += ldy;
    y[0] = sk_out(fm_vhsum(a10), x1, w0, k, K, b, 0, relu);
    y[1] = sk_out(fm_vhsum(a11), x1, w1, k, K, b, 1, relu);
    y[2] = sk_out(fm_vhsum(a12), x1, w2, k, K, b, 2, relu);
    y[3] = sk_out(fm_vhsum(a13), x1, w3, k, K, b, 3, relu);
    y[4] = sk_out(fm_vhsum(a14), x1, w4, k, K, b, 4, relu);
}

#if FM_LEVEL >= 2
/* forward, 4 rows x 5 outputs (32 registers: 20 accumulators + 4 x + 1 w): each weight vector
   serves 4 rows, halving the weights' trips from L2 against 2 x 5 (cnn_b32's 4096 -> 10 head
   streams its 160 KB of weights once per block of rows); the same sums, in the same order, as
   2 x 5 */
#  if defined(__GNUC__)
#    define SK_UNROLL _Pragma("GCC unroll 8")
#  else
#    define SK_UNROLL
#  endif
static inline void sk_fwd_4x5(float* y, int ldy, const float* x, int ldx, const float* w,
                              int ldw, const float* b, int K, int relu) {
    fm_vf a[4][5], v[4], u;
    int k, r, o;
    SK_UNROLL
    for (r = 0; r < 4; r++) {
        SK_UNROLL
        for (o = 0; o < 5; o++)
            a[r][o] = fm_vzero();
    }
    for (k = 0; k + FM_W <= K; k += FM_W) {
        SK_UNROLL
        for (r = 0; r < 4; r++)
            v[r] = fm_vload(x + (ptrdiff_t)r * ldx + k);
        SK_UNROLL
        for (o = 0; o < 5; o++) {
            u = fm_vload(w + (ptrdiff_t)o * ldw + k);
            SK_UNROLL
            for (r = 0; r < 4; r++)
                a[r][o] = fm_vfma(v[r], u, a[r][o]);
        }
    }
    for (r = 0; r < 4; r++)
        for (o = 0; o < 5; o++)
            y[(ptrdiff_t)r * ldy + o] = sk_out(fm_vhsum(a[r][o]), x + (ptrdiff_t)r * ldx,
                                               w + (ptrdiff_t)o * ldw, k, K, b, o, relu);
}
#endif

/* forward, 1 row x 1 output, two accumulators */
static inline float sk_fwd_1x1(const float* x, const float* w, const float* b, int o, int K, int relu) {
    fm_vf a = fm_vzero(), c = fm_vzero();
    int k;
    for (k = 0; k + 2 * FM_W <= K; k += 2 * FM_W) {
        a = fm_vfma(fm_vload(x + k), fm_vload(w + k), a);
        c = fm_vfma(fm_vload(x + k + FM_W), fm_vload(w + k + FM_W), c);
    }
    for (; k + FM_W <= K; k += FM_W)
        a = fm_vfma(fm_vload(x + k), fm_vload(w + k), a);
    return sk_out(fm_vhsum(fm_vadd(a, c)), x, w, k, K, b, o, relu);
}

static void sk_forward_rows(float* y, const float* x, const float* w, const float* b,
                            int IN, int OUT, int r0, int r1, int relu) {
    int r = r0, o, rr;
#if FM_LEVEL >= 2
    if (OUT >= 5)
        for (; r + 4 <= r1; r += 4) {
            const float* xr = x + (ptrdiff_t)r * IN;
            float* yr = y + (ptrdiff_t)r * OUT;
            for (o = 0; o + 5 <= OUT; o += 5)
                sk_fwd_4x5(yr + o, OUT, xr, IN, w + (ptrdiff_t)o * IN, IN, b ? b + o : 0, IN, relu);
            for (; o < OUT; o++)            /* as the 2-row blocks do them */
                for (rr = 0; rr < 4; rr++)
                    yr[(ptrdiff_t)rr * OUT + o] = sk_fwd_1x1(xr + (ptrdiff_t)rr * IN, w + (ptrdiff_t)o * IN, b, o, IN, relu);
        }
#endif
    for (; r + 2 <= r1; r += 2) {
        const float* xr = x + (ptrdiff_t)r * IN;
        float* yr = y + (ptrdiff_t)r * OUT;
        for (o = 0; o + 5 <= OUT; o += 5)
            sk_fwd_2x5(yr + o, OUT, xr, IN, w + (ptrdiff_t)o * IN, IN, b ? b + o : 0, IN, relu);
        for (; o < OUT; o++)
            for (rr = 0; rr < 2; rr++)
                yr[(ptrdiff_t)rr * OUT + o] = sk_fwd_1x1(xr + (ptrdiff_t)rr * IN, w + (ptrdiff_t)o * IN, b, o, IN, relu);
    }
    for (; r < r1; r++)
        for (o = 0; o < OUT; o++)
            y[(ptrdiff_t)r * OUT + o] = sk_fwd_1x1(x + (ptrdiff_t)r * IN, w + (ptrdiff_t)o * IN, b, o, IN, relu);
}

/* store (or add to) 4 vectors at p, p + W, p + 2W, p + 3W */
static inline void sk_st4(float* p, int acc_in, fm_vf a0, fm_vf a1, fm_vf a2, fm_vf a3) {
    if (acc_in) {
        a0 = fm_vadd(fm_vload(p), a0); a1 = fm_vadd(fm_vload(p + FM_W), a1);
        a2 = fm_vadd(fm_vload(p + 2 * FM_W), a2); a3 = fm_vadd(fm_vload(p + 3 * FM_W), a3);
    }
    fm_vstore(p, a0); fm_vstore(p + FM_W, a1); fm_vstore(p + 2 * FM_W, a2); fm_vstore(p + 3 * FM_W, a3);
}

/* dW, 3 outputs x SK_COLS columns: dw[o, 0:SK_COLS] (+)= sum_n dy[n, o] x[n, 0:SK_COLS] */
static inline void sk_dw_3xc(float* dw, int ldw, const float* dy, int ldy, const float* x,
                             int ldx, int N, int acc_in) {
    fm_vf a00 = fm_vzero(), a01 = fm_vzero(), a02 = fm_vzero(), a03 = fm_vzero();
    fm_vf a10 = fm_vzero(), a11 = fm_vzero(), a12 = fm_vzero(), a13 = fm_vzero();
    fm_vf a20 = fm_vzero(), a21 = fm_vzero(), a22 = fm_vzero(), a23 = fm_vzero();
    int n;
    for (n = 0; n < N; n++) {
        const float* xr = x + (ptrdiff_t)n * ldx;
        const float* g = dy + (ptrdiff_t)n * ldy;
        fm_vf v0 = fm_vload(xr), v1 = fm_vload(xr + FM_W), v2 = fm_vload(xr + 2 * FM_W), v3 = fm_vload(xr + 3 * FM_W);
        fm_vf s = fm_vset1(g[0]);
        a00 = fm_vfma(s, v0, a00); a01 = fm_vfma(s, v1, a01); a02 = fm_vfma(s, v2, a02); a03 = fm_vfma(s, v3, a03);
        s = fm_vset1(g[1]);
        a10 = fm_vfma(s, v0, a10); a11 = fm_vfma(s, v1, a11); a12 = fm_vfma(s, v2, a12); a13 = fm_vfma(s, v3, a13);
        s = fm_vset1(g[2]);
        a20 = fm_vfma(s, v0, a20); a21 = fm_vfma(s, v1, a21); a22 = fm_vfma(s, v2, a22); a23 = fm_vfma(s, v3, a23);
    }
    sk_st4(dw, acc_in, a00, a01, a02, a03);
    sk_st4(dw + ldw, acc_in, a10, a11, a12, a13);
    sk_st4(dw + 2 * (ptrdiff_t)ldw, acc_in, a20, a21, a22, a23);
}

/* dW, 1 output x SK_COLS columns */
static inline void sk_dw_1xc(float* dw, const float* dy, int ldy, const float* x, int ldx,
                             int N, int acc_in) {
    fm_vf a0 = fm_vzero(), a1 = fm_vzero(), a2 = fm_vzero(), a3 = fm_vzero();
    int n;
    for (n = 0; n < N; n++) {
        const float* xr = x + (ptrdiff_t)n * ldx;
        fm_vf s = fm_vset1(dy[(ptrdiff_t)n * ldy]);
        a0 = fm_vfma(s, fm_vload(xr), a0); a1 = fm_vfma(s, fm_vload(xr + FM_W), a1);
        a2 = fm_vfma(s, fm_vload(xr + 2 * FM_W), a2); a3 = fm_vfma(s, fm_vload(xr + 3 * FM_W), a3);
    }
    sk_st4(dw, acc_in, a0, a1, a2, a3);
}

/* one dW element (column tails) */
static inline float sk_dw_1x1(const float* dy, int ldy, const float* x, int ldx, int N) {
    float s = 0;
    int n;
    for (n = 0; n < N; n++) s += dy[(ptrdiff_t)n * ldy] * x[(ptrdiff_t)n * ldx];
    return s;
}

/* dW columns [c0, c1) (c0 a multiple of SK_COLS or 0; c1 = IN or a multiple of SK_COLS) */
static void sk_dw_cols(float* dw, const float* dy, const float* x, int N, int IN, int OUT,
                       int c0, int c1, int acc_in) {
    int o = 0, c;
    for (; o + 3 <= OUT; o += 3) {
        for (c = c0; c + SK_COLS <= c1; c += SK_COLS)
            sk_dw_3xc(dw + (ptrdiff_t)o * IN + c, IN, dy + o, OUT, x + c, IN, N, acc_in);
        for (; c < c1; c++) {
            int oo;
            for (oo = o; oo < o + 3; oo++) {
                float s = sk_dw_1x1(dy + oo, OUT, x + c, IN, N);
                float* p = dw + (ptrdiff_t)oo * IN + c;
                *p = acc_in ? *p + s : s;
            }
        }
    }
    for (; o < OUT; o++) {
        for (c = c0; c + SK_COLS <= c1; c += SK_COLS)
            sk_dw_1xc(dw + (ptrdiff_t)o * IN + c, dy + o, OUT, x + c, IN, N, acc_in);
        for (; c < c1; c++) {
            float s = sk_dw_1x1(dy + o, OUT, x + c, IN, N);
            float* p = dw + (ptrdiff_t)o * IN + c;
            *p = acc_in ? *p + s : s;
        }
    }
}

/* store 4 vectors, zeroed where mask <= 0 (NaN too) when mask is given */
static inline void sk_mst4(float* p, const float* m, fm_vf a0, fm_vf a1, fm_vf a2, fm_vf a3) {
    if (m) {
        fm_vf z = fm_vzero();
        a0 = fm_vkeep(a0, fm_vgt(fm_vload(m), z));
        a1 = fm_vkeep(a1, fm_vgt(fm_vload(m + FM_W), z));
        a2 = fm_vkeep(a2, fm_vgt(fm_vload(m + 2 * FM_W), z));
        a3 = fm_vkeep(a3, fm_vgt(fm_vload(m + 3 * FM_W), z));
    }
    fm_vstore(p, a0); fm_vstore(p + FM_W, a1); fm_vstore(p + 2 * FM_W, a2); fm_vstore(p + 3 * FM_W, a3);
}

static inline void sk_init4(const float* p, int acc_in, fm_vf* a0, fm_vf* a1, fm_vf* a2, fm_vf* a3) {
    if (acc_in) {
        *a0 = fm_vload(p); *a1 = fm_vload(p + FM_W); *a2 = fm_vload(p + 2 * FM_W); *a3 = fm_vload(p + 3 * FM_W);
    } else {
        *a0 = *a1 = *a2 = *a3 = fm_vzero();
    }
}

/* dx, 3 rows x SK_COLS columns: dx[r, 0:SK_COLS] (+)= sum_o dy[r, o] w[o, 0:SK_COLS], masked */
static inline void sk_dx_3xc(float* dx, int ldx, const float* dy, int ldy, const float* w,
                             int ldw, int K, int acc_in, const float* mask) {
    fm_vf a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23;
    const float *g0 = dy, *g1 = dy + ldy, *g2 = dy + 2 * (ptrdiff_t)ldy;
    int o;
    sk_init4(dx, acc_in, &a00, &a01, &a02, &a03);
    sk_init4(dx + ldx, acc_in, &a10, &a11, &a12, &a13);
    sk_init4(dx + 2 * (ptrdiff_t)ldx, acc_in, &a20, &a21, &a22, &a23);
    for (o = 0; o < K; o++) {
        const float* wr = w + (ptrdiff_t)o * ldw;
        fm_vf v0 = fm_vload(wr), v1 = fm_vload(wr + FM_W), v2 = fm_vload(wr + 2 * FM_W), v3 = fm_vload(wr + 3 * FM_W);
        fm_vf s = fm_vset1(g0[o]);
        a00 = fm_vfma(s, v0, a00); a01 = fm_vfma(s, v1, a01); a02 = fm_vfma(s, v2, a02); a03 = fm_vfma(s, v3, a03);
        s = fm_vset1(g1[o]);
        a10 = fm_vfma(s, v0, a10); a11 = fm_vfma(s, v1, a11); a12 = fm_vfma(s, v2, a12); a13 = fm_vfma(s, v3, a13);
        s = fm_vset1(g2[o]);
        a20 = fm_vfma(s, v0, a20); a21 = fm_vfma(s, v1, a21); a22 = fm_vfma(s, v2, a22); a23 = fm_vfma(s, v3, a23);
    }
    sk_mst4(dx, mask, a00, a01, a02, a03);
    sk_mst4(dx + ldx, (mask ? mask + ldx : 0), a10, a11, a12, a13);
    sk_mst4(dx + 2 * (ptrdiff_t)ldx, (mask ? mask + 2 * (ptrdiff_t)ldx : 0), a20, a21, a22, a23);
}

static inline void sk_dx_1xc(float* dx, const float* dy, const float* w, int ldw, int K,
                             int acc_in, const float* mask) {
    fm_vf a0, a1, a2, a3;
    int o;
    sk_init4(dx, acc_in, &a0, &a1, &a2, &a3);
    for (o = 0; o < K; o++) {
        const float* wr = w + (ptrdiff_t)o * ldw;
        fm_vf s = fm_vset1(dy[o]);
        a0 = fm_vfma(s, fm_vload(wr), a0); a1 = fm_vfma(s, fm_vload(wr + FM_W), a1);
        a2 = fm_vfma(s, fm_vload(wr + 2 * FM_W), a2); a3 = fm_vfma(s, fm_vload(wr + 3 * FM_W), a3);
    }
    sk_mst4(dx, mask, a0, a1, a2, a3);
}

static void sk_dx_rows(float* dx, const float* dy, const float* w, const float* mask,
                       int IN, int OUT, int r0, int r1, int acc_in) {
    int r = r0, c, o, rr;
    while (r < r1) {
        int nr = r1 - r >= 3 ? 3 : 1;
        float* d = dx + (ptrdiff_t)r * IN;
        const float* g = dy + (ptrdiff_t)r * OUT;
        const float* m = mask ? mask + (ptrdiff_t)r * IN : 0;
        for (c = 0; c + SK_COLS <= IN; c += SK_COLS) {
            if (nr == 3) sk_dx_3xc(d + c, IN, g, OUT, w + c, IN, OUT, acc_in, m ? m + c : 0);
            else sk_dx_1xc(d + c, g, w + c, IN, OUT, acc_in, m ? m + c : 0);
        }
        for (; c < IN; c++) {           /* the last IN % SK_COLS columns */
            for (rr = 0; rr < nr; rr++) {
                float s = acc_in ? d[(ptrdiff_t)rr * IN + c] : 0;
                for (o = 0; o < OUT; o++) s += g[(ptrdiff_t)rr * OUT + o] * w[(ptrdiff_t)o * IN + c];
                if (m && !(m[(ptrdiff_t)rr * IN + c] > 0)) s = 0;
                d[(ptrdiff_t)rr * IN + c] = s;
            }
        }
        r += nr;
    }
}

/* Batch-1 forward, y[o] = w[o, :] . x (+ b[o]) (relu) for o in [o0, o1): a GEMV on row-major w.
   SciPy's OpenBLAS 0.3.30 ran this shape (sgemv_t, 784 -> 512) at ~13 GFLOP/s on an AVX-512
   Xeon, 77% of mlp_b1_infer, while the weights (1.6 MB) stream from L2 at several times that:
   4 rows per step, each with two accumulators (8 FMA chains), x loaded once for the 4 rows; the
   row tail (IN % FM_W) with partial loads, so every element takes the same arithmetic. */
static inline float sk_gemv_out(fm_vf a, fm_vf c, const float* b, int o, int relu) {
    float s = fm_vhsum(fm_vadd(a, c));
    if (b) s += b[o];
    return relu && s < 0 ? 0 : s;        /* max(s, 0), NaN kept */
}

static void sk_gemv_rows(float* y, const float* w, const float* x, const float* b, int IN,
                         int o0, int o1, int relu) {
    int o = o0, k, r;
    for (; o + 4 <= o1; o += 4) {
        const float* wr[4];
        fm_vf a[4], c[4];
        for (r = 0; r < 4; r++) {
            wr[r] = w + (ptrdiff_t)(o + r) * IN;
            a[r] = fm_vzero();
            c[r] = fm_vzero();
        }
        for (k = 0; k + 2 * FM_W <= IN; k += 2 * FM_W) {
            fm_vf v = fm_vload(x + k), u = fm_vload(x + k + FM_W);
            for (r = 0; r < 4; r++) {
                a[r] = fm_vfma(fm_vload(wr[r] + k), v, a[r]);
                c[r] = fm_vfma(fm_vload(wr[r] + k + FM_W), u, c[r]);
            }
        }
        for (; k < IN; k += FM_W) {
            int n = IN - k < FM_W ? IN - k : FM_W;
            fm_vf v = fm_vload_n(x + k, n);
            for (r = 0; r < 4; r++)
                a[r] = fm_vfma(fm_vload_n(wr[r] + k, n), v, a[r]);
        }
        for (r = 0; r < 4; r++)
            y[o + r] = sk_gemv_out(a[r], c[r], b, o + r, relu);
    }
    for (; o < o1; o++) {
        const float* w0 = w + (ptrdiff_t)o * IN;
        fm_vf a = fm_vzero(), c = fm_vzero();
        for (k = 0; k + 2 * FM_W <= IN; k += 2 * FM_W) {
            a = fm_vfma(fm_vload(w0 + k), fm_vload(x + k), a);
            c = fm_vfma(fm_vload(w0 + k + FM_W), fm_vload(x + k + FM_W), c);
        }
        for (; k < IN; k += FM_W) {
            int n = IN - k < FM_W ? IN - k : FM_W;
            a = fm_vfma(fm_vload_n(w0 + k, n), fm_vload_n(x + k, n), a);
        }
        y[o] = sk_gemv_out(a, c, b, o, relu);
    }
}

/* y[n, o] = z[o, n] (+ b[o]) (relu) for o in [o0, o1), n in [n0, n1): the transposed forward's
   epilogue, 8 x 8 AVX tiles (every level from AVX2 up), scalar edges */
static void tr_bias_relu(float* y, int ldy, const float* z, int ldz, const float* b,
                         int o0, int o1, int n0, int n1, int relu) {
    int o, n, i;
#if FM_LEVEL >= 1
    for (o = o0; o + 8 <= o1; o += 8) {
        __m256 bv = b ? _mm256_loadu_ps(b + o) : _mm256_setzero_ps();
        for (n = n0; n + 8 <= n1; n += 8) {
            const float* zp = z + (ptrdiff_t)o * ldz + n;
            __m256 r0 = _mm256_loadu_ps(zp), r1 = _mm256_loadu_ps(zp + ldz);
            __m256 r2 = _mm256_loadu_ps(zp + 2 * (ptrdiff_t)ldz), r3 = _mm256_loadu_ps(zp + 3 * (ptrdiff_t)ldz);
            __m256 r4 = _mm256_loadu_ps(zp + 4 * (ptrdiff_t)ldz), r5 = _mm256_loadu_ps(zp + 5 * (ptrdiff_t)ldz);
            __m256 r6 = _mm256_loadu_ps(zp + 6 * (ptrdiff_t)ldz), r7 = _mm256_loadu_ps(zp + 7 * (ptrdiff_t)ldz);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            __m256 c[8];
            c[0] = _mm256_permute2f128_ps(s0, s4, 0x20); c[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
            c[2] = _mm256_permute2f128_ps(s2, s6, 0x20); c[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
            c[4] = _mm256_permute2f128_ps(s0, s4, 0x31); c[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
            c[6] = _mm256_permute2f128_ps(s2, s6, 0x31); c[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
            for (i = 0; i < 8; i++) {
                __m256 v = _mm256_add_ps(c[i], bv);
                if (relu)   /* max(v, 0) with NaN kept: v where v >= 0 or unordered */
                    v = _mm256_and_ps(v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NLT_UQ));
                _mm256_storeu_ps(y + (ptrdiff_t)(n + i) * ldy + o, v);
            }
        }
        for (; n < n1; n++)
            for (i = 0; i < 8; i++) {
                float v = z[(ptrdiff_t)(o + i) * ldz + n] + (b ? b[o + i] : 0.0f);
                y[(ptrdiff_t)n * ldy + o + i] = relu && v < 0 ? 0 : v;
            }
    }
#else
    o = o0;
    (void)i;
#endif
    for (; o < o1; o++)
        for (n = n0; n < n1; n++) {
            float v = z[(ptrdiff_t)o * ldz + n] + (b ? b[o] : 0.0f);
            y[(ptrdiff_t)n * ldy + o] = relu && v < 0 ? 0 : v;
        }
}

/* Several batch-1 layers in a row (planned inference, Sequential under no_grad): ONE parallel
   region, each thread its block of rows of every layer in turn, a barrier between layers --
   instead of a fork and join per layer (~1 us each against ~5-8 us of GEMV a layer: mlp_b1).
   L[i].y is layer i's output and layer i + 1's input; x the first input. */
typedef struct {
    float* y;
    const float* w;
    const float* b;
    int IN, OUT, relu;
} sk_gemv_layer;

static void sk_gemv_chain(const sk_gemv_layer* L, int n, const float* x, int nt) {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int t = 0, T = 1, i;
        const float* src = x;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        for (i = 0; i < n; i++) {
            int chunk = ((L[i].OUT + T - 1) / T + 7) / 8 * 8;
            int o0 = t * chunk, o1 = o0 + chunk < L[i].OUT ? o0 + chunk : L[i].OUT;
            if (o0 < o1)
                sk_gemv_rows(L[i].y, L[i].w, src, L[i].b, L[i].IN, o0, o1, L[i].relu);
#ifdef _OPENMP
#pragma omp barrier
#endif
            src = L[i].y;
        }
    }
}

#endif /* FM_LINEAR_H */
