# cython: language_level=3
"""Linear (the seed's MM_{W,b}) forward and backward on BLAS.

Legend: N = rows (batch, flattened leading dims), IN = in_features, OUT = out_features.
Layouts (row-major, C-contiguous, one dtype): x (N, IN), weight (OUT, IN), bias (OUT,), y (N, OUT).

The def entry points take ndarrays and read their data pointers directly: acquiring a typed
memoryview costs ~1 us per argument, which is most of the budget of a batch-1 forward. The
Python layer (fastmod.nn) has already checked shapes, dtypes and contiguity.
"""
cimport numpy as cnp
from cython cimport floating
from libc.string cimport memcpy

from cython.parallel cimport prange

from fastmod._kernels._blas cimport gemm, pgemm, pgemv, pgemm_plan, pgemm_block
from fastmod._kernels._threads cimport num_threads, threads_for

cnp.import_array()

# Skinny layers (OUT <= SKINNY_OUT, float32, AVX2 + FMA): the 10-class output layers. BLAS runs
# such shapes at 15-30 GFLOP/s (its packing and C-zeroing passes cost as much as the
# arithmetic: dW 10x512 with K = 128 took 82 us, forward 128x512 -> 10 42 us, dx 40 us on one
# core); direct register-blocked loops read each operand once from L1 and write each output
# once: forward as dot products (2 rows x 5 outputs), dW and dx as broadcast-FMA tiles (3 x 32
# floats); tails (IN % 32 columns, OUT % 3 outputs, rows) in narrower or scalar loops.
# Each output element is summed by one thread in a fixed order: results do not depend on the
# thread count.
cdef extern from *:
    """
    #include <string.h>
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    #define SK_HAVE 1
    /* (GCC keeps arrays of __m256 accumulators on the stack: the tiles below name them) */
    static inline float sk_hsum(__m256 v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    #define SK_LD(p) _mm256_loadu_ps(p)
    #define SK_FMA(a, b, c) c = _mm256_fmadd_ps(a, b, c)
    #define SK_Z _mm256_setzero_ps()
    static inline float sk_out(float s, const float* x, const float* w, int k, int K,
                               const float* b, int o, int relu) {
        for (; k < K; k++) s += x[k] * w[k];
        if (b) s += b[o];
        return relu && s < 0 ? 0 : s;        /* max(s, 0), NaN kept */
    }
    /* forward, 2 rows x 5 outputs: y[r, o] = x[r, :] . w[o, :] (+ b[o]) (relu); 10
       accumulators + 2 x + 1 w registers (4 x 3 spilled an accumulator: 17 ymm) */
    static inline void sk_fwd_2x5(float* y, int ldy, const float* x, int ldx, const float* w,
                                  int ldw, const float* b, int K, int relu) {
        __m256 a00 = SK_Z, a01 = SK_Z, a02 = SK_Z, a03 = SK_Z, a04 = SK_Z;
        __m256 a10 = SK_Z, a11 = SK_Z, a12 = SK_Z, a13 = SK_Z, a14 = SK_Z;
        const float *x0 = x, *x1 = x + ldx;
        const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * (Py_ssize_t)ldw;
        const float *w3 = w + 3 * (Py_ssize_t)ldw, *w4 = w + 4 * (Py_ssize_t)ldw;
        int k;
        for (k = 0; k + 8 <= K; k += 8) {
            __m256 v0 = SK_LD(x0 + k), v1 = SK_LD(x1 + k), u;
            u = SK_LD(w0 + k); SK_FMA(v0, u, a00); SK_FMA(v1, u, a10);
            u = SK_LD(w1 + k); SK_FMA(v0, u, a01); SK_FMA(v1, u, a11);
            u = SK_LD(w2 + k); SK_FMA(v0, u, a02); SK_FMA(v1, u, a12);
            u = SK_LD(w3 + k); SK_FMA(v0, u, a03); SK_FMA(v1, u, a13);
            u = SK_LD(w4 + k); SK_FMA(v0, u, a04); SK_FMA(v1, u, a14);
        }
        y[0] = sk_out(sk_hsum(a00), x0, w0, k, K, b, 0, relu);
        y[1] = sk_out(sk_hsum(a01), x0, w1, k, K, b, 1, relu);
        y[2] = sk_out(sk_hsum(a02), x0, w2, k, K, b, 2, relu);
        y[3] = sk_out(sk_hsum(a03), x0, w3, k, K, b, 3, relu);
        y[4] = sk_out(sk_hsum(a04), x0, w4, k, K, b, 4, relu);
        y += ldy;
        y[0] = sk_out(sk_hsum(a10), x1, w0, k, K, b, 0, relu);
        y[1] = sk_out(sk_hsum(a11), x1, w1, k, K, b, 1, relu);
        y[2] = sk_out(sk_hsum(a12), x1, w2, k, K, b, 2, relu);
        y[3] = sk_out(sk_hsum(a13), x1, w3, k, K, b, 3, relu);
        y[4] = sk_out(sk_hsum(a14), x1, w4, k, K, b, 4, relu);
    }
    /* forward, 1 row x 1 output, two accumulators */
    static inline float sk_fwd_1x1(const float* x, const float* w, const float* b, int o, int K, int relu) {
        __m256 a = SK_Z, c = SK_Z;
        int k;
        for (k = 0; k + 16 <= K; k += 16) {
            SK_FMA(SK_LD(x + k), SK_LD(w + k), a);
            SK_FMA(SK_LD(x + k + 8), SK_LD(w + k + 8), c);
        }
        for (; k + 8 <= K; k += 8)
            SK_FMA(SK_LD(x + k), SK_LD(w + k), a);
        return sk_out(sk_hsum(_mm256_add_ps(a, c)), x, w, k, K, b, o, relu);
    }
    static void sk_forward_rows(float* y, const float* x, const float* w, const float* b,
                                int IN, int OUT, int r0, int r1, int relu) {
        int r = r0, o, rr;
        for (; r + 2 <= r1; r += 2) {
            const float* xr = x + (Py_ssize_t)r * IN;
            float* yr = y + (Py_ssize_t)r * OUT;
            for (o = 0; o + 5 <= OUT; o += 5)
                sk_fwd_2x5(yr + o, OUT, xr, IN, w + (Py_ssize_t)o * IN, IN, b ? b + o : 0, IN, relu);
            for (; o < OUT; o++)
                for (rr = 0; rr < 2; rr++)
                    yr[(Py_ssize_t)rr * OUT + o] = sk_fwd_1x1(xr + (Py_ssize_t)rr * IN, w + (Py_ssize_t)o * IN, b, o, IN, relu);
        }
        for (; r < r1; r++)
            for (o = 0; o < OUT; o++)
                y[(Py_ssize_t)r * OUT + o] = sk_fwd_1x1(x + (Py_ssize_t)r * IN, w + (Py_ssize_t)o * IN, b, o, IN, relu);
    }
    /* store (or add to) 4 vectors */
    #define SK_ST4(p, acc_in, a0, a1, a2, a3) do { \
        if (acc_in) { a0 = _mm256_add_ps(SK_LD(p), a0); a1 = _mm256_add_ps(SK_LD((p) + 8), a1); \
                      a2 = _mm256_add_ps(SK_LD((p) + 16), a2); a3 = _mm256_add_ps(SK_LD((p) + 24), a3); } \
        _mm256_storeu_ps(p, a0); _mm256_storeu_ps((p) + 8, a1); \
        _mm256_storeu_ps((p) + 16, a2); _mm256_storeu_ps((p) + 24, a3); } while (0)
    /* dW, 3 outputs x 32 columns: dw[o, 0:32] (+)= sum_n dy[n, o] x[n, 0:32] */
    static inline void sk_dw_3x32(float* dw, int ldw, const float* dy, int ldy, const float* x,
                                  int ldx, int N, int acc_in) {
        __m256 a00 = SK_Z, a01 = SK_Z, a02 = SK_Z, a03 = SK_Z, a10 = SK_Z, a11 = SK_Z;
        __m256 a12 = SK_Z, a13 = SK_Z, a20 = SK_Z, a21 = SK_Z, a22 = SK_Z, a23 = SK_Z;
        int n;
        for (n = 0; n < N; n++) {
            const float* xr = x + (Py_ssize_t)n * ldx;
            const float* g = dy + (Py_ssize_t)n * ldy;
            __m256 v0 = SK_LD(xr), v1 = SK_LD(xr + 8), v2 = SK_LD(xr + 16), v3 = SK_LD(xr + 24);
            __m256 s = _mm256_broadcast_ss(g);
            SK_FMA(s, v0, a00); SK_FMA(s, v1, a01); SK_FMA(s, v2, a02); SK_FMA(s, v3, a03);
            s = _mm256_broadcast_ss(g + 1);
            SK_FMA(s, v0, a10); SK_FMA(s, v1, a11); SK_FMA(s, v2, a12); SK_FMA(s, v3, a13);
            s = _mm256_broadcast_ss(g + 2);
            SK_FMA(s, v0, a20); SK_FMA(s, v1, a21); SK_FMA(s, v2, a22); SK_FMA(s, v3, a23);
        }
        SK_ST4(dw, acc_in, a00, a01, a02, a03);
        SK_ST4(dw + ldw, acc_in, a10, a11, a12, a13);
        SK_ST4(dw + 2 * (Py_ssize_t)ldw, acc_in, a20, a21, a22, a23);
    }
    /* dW, 1 output x 32 columns */
    static inline void sk_dw_1x32(float* dw, const float* dy, int ldy, const float* x, int ldx,
                                  int N, int acc_in) {
        __m256 a0 = SK_Z, a1 = SK_Z, a2 = SK_Z, a3 = SK_Z;
        int n;
        for (n = 0; n < N; n++) {
            const float* xr = x + (Py_ssize_t)n * ldx;
            __m256 s = _mm256_broadcast_ss(dy + (Py_ssize_t)n * ldy);
            SK_FMA(s, SK_LD(xr), a0); SK_FMA(s, SK_LD(xr + 8), a1);
            SK_FMA(s, SK_LD(xr + 16), a2); SK_FMA(s, SK_LD(xr + 24), a3);
        }
        SK_ST4(dw, acc_in, a0, a1, a2, a3);
    }
    /* one dW element (column tails) */
    static inline float sk_dw_1x1(const float* dy, int ldy, const float* x, int ldx, int N) {
        float s = 0;
        int n;
        for (n = 0; n < N; n++) s += dy[(Py_ssize_t)n * ldy] * x[(Py_ssize_t)n * ldx];
        return s;
    }
    /* dW columns [c0, c1) (c0 a multiple of 32 or c0 = 0; c1 = IN or a multiple of 32) */
    static void sk_dw_cols(float* dw, const float* dy, const float* x, int N, int IN, int OUT,
                           int c0, int c1, int acc_in) {
        int o = 0, c;
        for (; o + 3 <= OUT; o += 3) {
            for (c = c0; c + 32 <= c1; c += 32)
                sk_dw_3x32(dw + (Py_ssize_t)o * IN + c, IN, dy + o, OUT, x + c, IN, N, acc_in);
            for (; c < c1; c++) {
                int oo;
                for (oo = o; oo < o + 3; oo++) {
                    float s = sk_dw_1x1(dy + oo, OUT, x + c, IN, N);
                    float* p = dw + (Py_ssize_t)oo * IN + c;
                    *p = acc_in ? *p + s : s;
                }
            }
        }
        for (; o < OUT; o++) {
            for (c = c0; c + 32 <= c1; c += 32)
                sk_dw_1x32(dw + (Py_ssize_t)o * IN + c, dy + o, OUT, x + c, IN, N, acc_in);
            for (; c < c1; c++) {
                float s = sk_dw_1x1(dy + o, OUT, x + c, IN, N);
                float* p = dw + (Py_ssize_t)o * IN + c;
                *p = acc_in ? *p + s : s;
            }
        }
    }
    /* store 4 vectors, zeroed where mask <= 0 (NaN too) when mask is given */
    #define SK_MST4(p, m, a0, a1, a2, a3) do { \
        if (m) { __m256 z = SK_Z; \
            a0 = _mm256_and_ps(a0, _mm256_cmp_ps(SK_LD(m), z, _CMP_GT_OQ)); \
            a1 = _mm256_and_ps(a1, _mm256_cmp_ps(SK_LD((m) + 8), z, _CMP_GT_OQ)); \
            a2 = _mm256_and_ps(a2, _mm256_cmp_ps(SK_LD((m) + 16), z, _CMP_GT_OQ)); \
            a3 = _mm256_and_ps(a3, _mm256_cmp_ps(SK_LD((m) + 24), z, _CMP_GT_OQ)); } \
        _mm256_storeu_ps(p, a0); _mm256_storeu_ps((p) + 8, a1); \
        _mm256_storeu_ps((p) + 16, a2); _mm256_storeu_ps((p) + 24, a3); } while (0)
    #define SK_INIT4(p, acc_in, a0, a1, a2, a3) do { \
        if (acc_in) { a0 = SK_LD(p); a1 = SK_LD((p) + 8); a2 = SK_LD((p) + 16); a3 = SK_LD((p) + 24); } \
        else { a0 = a1 = a2 = a3 = SK_Z; } } while (0)
    /* dx, 3 rows x 32 columns: dx[r, 0:32] (+)= sum_o dy[r, o] w[o, 0:32], masked */
    static inline void sk_dx_3x32(float* dx, int ldx, const float* dy, int ldy, const float* w,
                                  int ldw, int K, int acc_in, const float* mask) {
        __m256 a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23;
        const float *g0 = dy, *g1 = dy + ldy, *g2 = dy + 2 * (Py_ssize_t)ldy;
        int o;
        SK_INIT4(dx, acc_in, a00, a01, a02, a03);
        SK_INIT4(dx + ldx, acc_in, a10, a11, a12, a13);
        SK_INIT4(dx + 2 * (Py_ssize_t)ldx, acc_in, a20, a21, a22, a23);
        for (o = 0; o < K; o++) {
            const float* wr = w + (Py_ssize_t)o * ldw;
            __m256 v0 = SK_LD(wr), v1 = SK_LD(wr + 8), v2 = SK_LD(wr + 16), v3 = SK_LD(wr + 24);
            __m256 s = _mm256_broadcast_ss(g0 + o);
            SK_FMA(s, v0, a00); SK_FMA(s, v1, a01); SK_FMA(s, v2, a02); SK_FMA(s, v3, a03);
            s = _mm256_broadcast_ss(g1 + o);
            SK_FMA(s, v0, a10); SK_FMA(s, v1, a11); SK_FMA(s, v2, a12); SK_FMA(s, v3, a13);
            s = _mm256_broadcast_ss(g2 + o);
            SK_FMA(s, v0, a20); SK_FMA(s, v1, a21); SK_FMA(s, v2, a22); SK_FMA(s, v3, a23);
        }
        SK_MST4(dx, mask, a00, a01, a02, a03);
        SK_MST4(dx + ldx, (mask ? mask + ldx : 0), a10, a11, a12, a13);
        SK_MST4(dx + 2 * (Py_ssize_t)ldx, (mask ? mask + 2 * (Py_ssize_t)ldx : 0), a20, a21, a22, a23);
    }
    static inline void sk_dx_1x32(float* dx, const float* dy, const float* w, int ldw, int K,
                                  int acc_in, const float* mask) {
        __m256 a0, a1, a2, a3;
        int o;
        SK_INIT4(dx, acc_in, a0, a1, a2, a3);
        for (o = 0; o < K; o++) {
            const float* wr = w + (Py_ssize_t)o * ldw;
            __m256 s = _mm256_broadcast_ss(dy + o);
            SK_FMA(s, SK_LD(wr), a0); SK_FMA(s, SK_LD(wr + 8), a1);
            SK_FMA(s, SK_LD(wr + 16), a2); SK_FMA(s, SK_LD(wr + 24), a3);
        }
        SK_MST4(dx, mask, a0, a1, a2, a3);
    }
    static void sk_dx_rows(float* dx, const float* dy, const float* w, const float* mask,
                           int IN, int OUT, int r0, int r1, int acc_in) {
        int r = r0, c, o, rr;
        while (r < r1) {
            int nr = r1 - r >= 3 ? 3 : 1;
            float* d = dx + (Py_ssize_t)r * IN;
            const float* g = dy + (Py_ssize_t)r * OUT;
            const float* m = mask ? mask + (Py_ssize_t)r * IN : 0;
            for (c = 0; c + 32 <= IN; c += 32) {
                if (nr == 3) sk_dx_3x32(d + c, IN, g, OUT, w + c, IN, OUT, acc_in, m ? m + c : 0);
                else sk_dx_1x32(d + c, g, w + c, IN, OUT, acc_in, m ? m + c : 0);
            }
            for (; c < IN; c++) {           /* the last IN % 32 columns */
                for (rr = 0; rr < nr; rr++) {
                    float s = acc_in ? d[(Py_ssize_t)rr * IN + c] : 0;
                    for (o = 0; o < OUT; o++) s += g[(Py_ssize_t)rr * OUT + o] * w[(Py_ssize_t)o * IN + c];
                    if (m && !(m[(Py_ssize_t)rr * IN + c] > 0)) s = 0;
                    d[(Py_ssize_t)rr * IN + c] = s;
                }
            }
            r += nr;
        }
    }
    #else
    #define SK_HAVE 0
    static void sk_forward_rows(float* y, const float* x, const float* w, const float* b,
                                int IN, int OUT, int r0, int r1, int relu) {}
    static void sk_dw_cols(float* dw, const float* dy, const float* x, int N, int IN, int OUT,
                           int c0, int c1, int acc_in) {}
    static void sk_dx_rows(float* dx, const float* dy, const float* w, const float* mask,
                           int IN, int OUT, int r0, int r1, int acc_in) {}
    #endif
    /* y[n, o] = z[o, n] (+ b[o]) (relu) for o in [o0, o1), n in [n0, n1): the transposed
       forward's epilogue, 8 x 8 AVX tiles, scalar edges */
    static void tr_bias_relu(float* y, int ldy, const float* z, int ldz, const float* b,
                             int o0, int o1, int n0, int n1, int relu) {
        int o, n, i;
    #if SK_HAVE
        for (o = o0; o + 8 <= o1; o += 8) {
            __m256 bv = b ? _mm256_loadu_ps(b + o) : _mm256_setzero_ps();
            for (n = n0; n + 8 <= n1; n += 8) {
                const float* zp = z + (Py_ssize_t)o * ldz + n;
                __m256 r0 = SK_LD(zp), r1 = SK_LD(zp + ldz), r2 = SK_LD(zp + 2 * (Py_ssize_t)ldz);
                __m256 r3 = SK_LD(zp + 3 * (Py_ssize_t)ldz), r4 = SK_LD(zp + 4 * (Py_ssize_t)ldz);
                __m256 r5 = SK_LD(zp + 5 * (Py_ssize_t)ldz), r6 = SK_LD(zp + 6 * (Py_ssize_t)ldz);
                __m256 r7 = SK_LD(zp + 7 * (Py_ssize_t)ldz);
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
                    _mm256_storeu_ps(y + (Py_ssize_t)(n + i) * ldy + o, v);
                }
            }
            for (; n < n1; n++)
                for (i = 0; i < 8; i++) {
                    float v = z[(Py_ssize_t)(o + i) * ldz + n] + (b ? b[o + i] : 0.0f);
                    y[(Py_ssize_t)n * ldy + o + i] = relu && v < 0 ? 0 : v;
                }
        }
    #else
        o = o0;
    #endif
        for (; o < o1; o++)
            for (n = n0; n < n1; n++) {
                float v = z[(Py_ssize_t)o * ldz + n] + (b ? b[o] : 0.0f);
                y[(Py_ssize_t)n * ldy + o] = relu && v < 0 ? 0 : v;
            }
    }
    """
    int SK_HAVE
    void sk_forward_rows(float* y, const float* x, const float* w, const float* b,
                         int IN, int OUT, int r0, int r1, int relu) noexcept nogil
    void sk_dw_cols(float* dw, const float* dy, const float* x, int N, int IN, int OUT,
                    int c0, int c1, int acc_in) noexcept nogil
    void sk_dx_rows(float* dx, const float* dy, const float* w, const float* mask,
                    int IN, int OUT, int r0, int r1, int acc_in) noexcept nogil
    void tr_bias_relu(float* y, int ldy, const float* z, int ldz, const float* b,
                      int o0, int o1, int n0, int n1, int relu) noexcept nogil

cdef enum:
    SKINNY_OUT = 16                  # out_features up to this go through the sk_* kernels
    SKINNY_GRAIN = 1 << 18           # multiply-adds per thread before a second thread helps


cdef int _skinny_threads(int N, int IN, int OUT) noexcept nogil:
    return threads_for(<Py_ssize_t>N * IN * OUT, SKINNY_GRAIN)


cdef void _skinny_forward(float* y, const float* x, const float* w, const float* b,
                          int N, int IN, int OUT, bint relu) noexcept nogil:
    cdef int nt = _skinny_threads(N, IN, OUT), t, chunk
    if nt > N // 2:
        nt = max(1, N // 2)
    if nt <= 1:
        sk_forward_rows(y, x, w, b, IN, OUT, 0, N, relu)
        return
    chunk = ((N + nt - 1) // nt + 1) // 2 * 2
    for t in prange(nt, num_threads=nt, schedule='static'):
        if t * chunk < N:
            sk_forward_rows(y, x, w, b, IN, OUT, t * chunk, min(N, (t + 1) * chunk), relu)


cdef void _skinny_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                           const float* w, int N, int IN, int OUT, bint acc_w, bint acc_b,
                           const float* mask, bint acc_dx) noexcept nogil:
    # one parallel region: thread t takes dW's column block t, db's column range t and dx's
    # row block t
    cdef int nt = _skinny_threads(N, IN, OUT), t, cw, cx, cb
    if nt > max(N // 3, IN // 32):
        nt = max(1, max(N // 3, IN // 32))
    if nt <= 1:
        if dw != NULL:
            sk_dw_cols(dw, dy, x, N, IN, OUT, 0, IN, acc_w)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b)
        if dx != NULL:
            sk_dx_rows(dx, dy, w, mask, IN, OUT, 0, N, acc_dx)
        return
    cw = ((IN + nt - 1) // nt + 31) // 32 * 32
    cx = ((N + nt - 1) // nt + 2) // 3 * 3
    cb = (OUT + nt - 1) // nt
    for t in prange(nt, num_threads=nt, schedule='static'):
        if dw != NULL and t * cw < IN:
            sk_dw_cols(dw, dy, x, N, IN, OUT, t * cw, min(IN, (t + 1) * cw), acc_w)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b, t * cb, min(OUT, (t + 1) * cb))
        if dx != NULL and t * cx < N:
            sk_dx_rows(dx, dy, w, mask, IN, OUT, t * cx, min(N, (t + 1) * cx), acc_dx)


cdef void _forward_block(floating* y, const floating* x, const floating* w, const floating* b,
                         int N, int IN, int OUT, int t, int chunk, bint relu) noexcept nogil:
    # Block t of y (rows when N >= OUT, else columns: pgemm_plan's partition): broadcast b into
    # it, GEMM with beta = 1 (0 without bias), then max(., 0) while the block is in cache.
    cdef bint by_rows = N >= OUT
    cdef int parts = N if by_rows else OUT
    cdef int lo = t * chunk, hi = min(parts, lo + chunk)
    cdef int r0 = lo if by_rows else 0, r1 = hi if by_rows else N
    cdef int c0 = 0 if by_rows else lo, c1 = OUT if by_rows else hi
    cdef int n, c
    cdef floating beta = 0, v
    cdef floating* row
    if lo >= hi:
        return
    if b != NULL:
        for n in range(r0, r1):
            memcpy(y + <Py_ssize_t>n * OUT + c0, b + c0, (c1 - c0) * sizeof(floating))
        beta = 1
    pgemm_block(t, chunk, False, True, N, OUT, IN, <floating>1, x, IN, w, IN, beta, y, OUT)
    if relu:
        for n in range(r0, r1):
            row = y + <Py_ssize_t>n * OUT
            for c in range(c0, c1):
                v = row[c]
                row[c] = 0 if v < 0 else v     # as ReLU's kernel: NaN stays NaN (as torch)


cdef void _linear_forward(floating* y, const floating* x, const floating* w, const floating* b,
                          int N, int IN, int OUT, bint relu) noexcept nogil:
    # y (N, OUT) = x (N, IN) @ w.T (IN, OUT) + b, then y = max(y, 0) when relu. A block's bias,
    # GEMM and ReLU run in the same thread: one parallel region per call.
    cdef int n, t, chunk, nb
    cdef floating beta = 0, v
    cdef int nt = num_threads()
    if floating is float:
        if SK_HAVE and OUT <= SKINNY_OUT:
            _skinny_forward(y, x, w, b, N, IN, OUT, relu)
            return
    if N == 1:
        if b != NULL:
            memcpy(y, b, OUT * sizeof(floating))
            beta = 1
        pgemv(False, OUT, IN, <floating>1, w, IN, x, beta, y, nt)
        if relu:
            for n in range(OUT):
                v = y[n]
                y[n] = 0 if v < 0 else v
        return
    nb = pgemm_plan(N, OUT, IN, nt, &chunk)
    if nb <= 1:
        _forward_block(y, x, w, b, N, IN, OUT, 0, chunk, relu)
        return
    for t in prange(nb, num_threads=nb, schedule='static'):
        _forward_block(y, x, w, b, N, IN, OUT, t, chunk, relu)


cdef enum:
    BIAS_BLOCK = 4096                # columns per pass of _bias_grad (32 KB of stack)


cdef void _bias_grad(floating* db, const floating* dy, Py_ssize_t N, int C, bint accumulate,
                     int lo=0, int hi=-1) noexcept nogil:
    # db[lo:hi] (+)= dy[:, lo:hi] (dy (N, C)) summed over rows, in double so long batches keep
    # precision; each column's sum runs in the same order whatever the column range. The
    # accumulators are on the stack, BIAS_BLOCK columns per pass: this runs inside parallel
    # regions, where a failed malloc could not be reported
    if hi < 0:
        hi = C
    cdef double acc[BIAS_BLOCK]
    cdef Py_ssize_t n
    cdef int c, w
    cdef const floating* row
    while lo < hi:
        w = min(hi - lo, BIAS_BLOCK)
        for c in range(w):
            acc[c] = 0
        for n in range(N):
            row = dy + n * C + lo
            for c in range(w):
                acc[c] += row[c]
        if accumulate:
            for c in range(w):
                db[lo + c] = <floating>(db[lo + c] + acc[c])
        else:
            for c in range(w):
                db[lo + c] = <floating>acc[c]
        lo = lo + w


cdef void _mask_block(floating* dx, const floating* mask, int N, int IN, int t,
                      int chunk) noexcept nogil:
    # dx = 0 where mask <= 0 (a ReLU's saved output: relu' read from it, NaN -> 0 as ReLU's
    # backward), over block t of pgemm_plan(N, IN, .)'s partition (t = -1: all of dx)
    cdef bint by_rows = N >= IN
    cdef int parts = N if by_rows else IN
    cdef int lo = 0 if t < 0 else t * chunk
    cdef int hi = parts if t < 0 else min(parts, lo + chunk)
    cdef int r0 = lo if by_rows else 0, r1 = hi if by_rows else N
    cdef int c0 = 0 if by_rows else lo, c1 = IN if by_rows else hi
    cdef int n, c
    cdef floating* row
    cdef const floating* mrow
    for n in range(r0, r1):
        row = dx + <Py_ssize_t>n * IN
        mrow = mask + <Py_ssize_t>n * IN
        for c in range(c0, c1):
            row[c] = row[c] if mrow[c] > 0 else 0


cdef void _linear_backward(floating* dx, floating* dw, floating* db,
                           const floating* dy, const floating* x, const floating* w,
                           int N, int IN, int OUT, bint acc_w, bint acc_b,
                           const floating* mask, bint acc_dx) noexcept nogil:
    # mask (N, IN) or NULL: dx zeroed where mask <= 0, block by block while it is in cache (a
    # ReLU before this Linear: its backward fused here). acc_dx: dx += dy @ W (beta = 1).
    cdef int nt = num_threads()
    cdef int t, cw = 0, cx = 0, cb, nbw = 0, nbx = 0, nbb = 0, nreg
    cdef floating beta_w = <floating>(1 if acc_w else 0)
    cdef floating beta_x = <floating>(1 if acc_dx else 0)
    if floating is float:
        if SK_HAVE and OUT <= SKINNY_OUT and N > 1:
            _skinny_backward(dx, dw, db, dy, x, w, N, IN, OUT, acc_w, acc_b, mask, acc_dx)
            return
    if N == 1:
        # batch 1: dW and db are outer products / copies, dx a GEMV
        if dw != NULL:
            pgemm(True, False, OUT, IN, N, <floating>1, dy, OUT, x, IN, beta_w, dw, IN, nt)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b)
        if dx != NULL:
            pgemv(True, OUT, IN, <floating>1, w, IN, dy, beta_x, dx, nt)
            if mask != NULL:
                _mask_block(dx, mask, N, IN, -1, 0)
        return
    # dW (OUT, IN) (+)= dy.T (OUT, N) @ x (N, IN); dx (N, IN) = dy (N, OUT) @ W (OUT, IN);
    # db (OUT,) (+)= dy summed over rows. All three run in ONE parallel region: thread t
    # computes block t of dW and of dx (the blocks pgemm would use: same results) and a
    # column range of db -- one fork/join instead of two per Linear backward.
    if dw != NULL:
        nbw = pgemm_plan(OUT, IN, N, nt, &cw)
    if dx != NULL:
        nbx = pgemm_plan(N, IN, OUT, nt, &cx)
    nreg = max(nbw, nbx)
    if db != NULL:
        nbb = min(nreg, threads_for(<Py_ssize_t>N * OUT, 32768))
    if nreg <= 1:
        if dw != NULL:
            gemm(True, False, OUT, IN, N, <floating>1, dy, OUT, x, IN, beta_w, dw, IN)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b)
        if dx != NULL:
            gemm(False, False, N, IN, OUT, <floating>1, dy, OUT, w, IN, beta_x, dx, IN)
            if mask != NULL:
                _mask_block(dx, mask, N, IN, -1, 0)
        return
    if nbb < 1 and db != NULL:
        nbb = 1
    cb = (OUT + nbb - 1) // nbb if nbb > 0 else 0
    for t in prange(nreg, num_threads=nreg, schedule='static'):
        if t < nbw:
            pgemm_block(t, cw, True, False, OUT, IN, N, <floating>1, dy, OUT, x, IN, beta_w, dw, IN)
        if t < nbb:
            _bias_grad(db, dy, N, OUT, acc_b, t * cb, min(OUT, (t + 1) * cb))
        if t < nbx:
            pgemm_block(t, cx, False, False, N, IN, OUT, <floating>1, dy, OUT, w, IN,
                        beta_x, dx, IN)
            if mask != NULL:
                _mask_block(dx, mask, N, IN, t, cx)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _forward_t_block(float* y, float* z, const float* x, const float* w, const float* b,
                           int N, int IN, int OUT, int t, int chunk, bint relu) noexcept nogil:
    # block t of z (OUT, N) = w @ x.T (pgemm_plan(OUT, N, IN)'s partition), then its part of
    # y = z.T + b (ReLU) while in cache
    cdef bint by_rows = OUT >= N
    cdef int parts = OUT if by_rows else N
    cdef int lo = t * chunk, hi = min(parts, lo + chunk)
    if lo >= hi:
        return
    pgemm_block(t, chunk, False, True, OUT, N, IN, <float>1, w, IN, x, IN, <float>0, z, N)
    if by_rows:
        tr_bias_relu(y, OUT, z, N, b, lo, hi, 0, N, relu)
    else:
        tr_bias_relu(y, OUT, z, N, b, 0, OUT, lo, hi, relu)


cdef void _linear_forward_t(float* y, float* z, const float* x, const float* w, const float* b,
                            int N, int IN, int OUT, bint relu) noexcept nogil:
    # y (N, OUT) through z = w @ x.T (OUT, N) and a transposing epilogue. SciPy's OpenBLAS
    # 0.3.30 packs the (OUT, IN) weight operand of the direct call (y = x @ w.T: sgemm 'T','N'
    # with W as A) with a slow copy routine (sgemm_incopy 14% of a 128x512x512 forward, 6% in
    # NumPy's 0.3.31): with the operands exchanged the GEMM runs at NumPy's speed (1 thread:
    # 128x784 -> 512 1587 vs 1759 us, 512 -> 512 987 vs 1090 us), and the transpose-bias-ReLU
    # pass costs less than the difference.
    cdef int nt = num_threads(), chunk, t
    cdef int nb = pgemm_plan(OUT, N, IN, nt, &chunk)
    if nb <= 1:
        _forward_t_block(y, z, x, w, b, N, IN, OUT, 0, chunk, relu)
        return
    for t in prange(nb, num_threads=nb, schedule='static'):
        _forward_t_block(y, z, x, w, b, N, IN, OUT, t, chunk, relu)


def linear_forward(cnp.ndarray y, cnp.ndarray x, cnp.ndarray w, object b, bint relu=False,
                   object scratch=None):
    """y (N, OUT) = x (N, IN) @ w.T + b (b may be None); then y = max(y, 0) when relu.

    scratch: None, or a float32 array of N * OUT elements for the transposed path (float32,
    32 <= N <= 192, OUT > 16; see forward_scratch_ok); other calls ignore it.
    """
    cdef int N = <int>cnp.PyArray_DIM(x, 0), IN = <int>cnp.PyArray_DIM(x, 1)
    cdef int OUT = <int>cnp.PyArray_DIM(w, 0)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pb = _ptr(b)
    cdef void* pz = _ptr(scratch)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        if pz != NULL and _transposed_ok(N, IN, OUT):
            with nogil:
                _linear_forward_t(<float*>py, <float*>pz, <float*>px, <float*>pw, <float*>pb,
                                  N, IN, OUT, relu)
            return
        with nogil:
            _linear_forward(<float*>py, <float*>px, <float*>pw, <float*>pb, N, IN, OUT, relu)
    else:
        with nogil:
            _linear_forward(<double*>py, <double*>px, <double*>pw, <double*>pb, N, IN, OUT, relu)


cdef enum:
    TRANSPOSED_MIN_N = 32            # the transposed forward from this batch size
    TRANSPOSED_MAX_N = 192           # up to this one (measured, transposed / direct time at 1
                                     # and 2 threads: N 64 0.80-0.89, 128 0.91-1.0, 256 0.99-1.11,
                                     # 512 1.01-1.22, 1024 1.0-1.25 -- z^T stops fitting in cache)
    TRANSPOSED_MIN_MACS = 1 << 24    # and this much work (the epilogue is a pass over y)


cdef inline bint _transposed_ok(int N, int IN, int OUT) noexcept nogil:
    return TRANSPOSED_MIN_N <= N <= TRANSPOSED_MAX_N and OUT > SKINNY_OUT and \
        <double>N * IN * OUT >= TRANSPOSED_MIN_MACS


def forward_scratch_ok(int N, int IN, int OUT):
    """True when a float32 forward of these sizes takes the transposed path (needs scratch)."""
    return _transposed_ok(N, IN, OUT)


def linear_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x,
                    cnp.ndarray w, bint acc_w, bint acc_b, object mask=None, bint acc_dx=False):
    """dx (+)= dy @ w; dw (+)= dy.T @ x; db (+)= dy.sum(0). Any of dx, dw, db may be None to skip it.

    acc_w / acc_b / acc_dx: add into dw / db / dx (True) or overwrite them (False).
    mask: None, or an (N, IN) array: dx is then zeroed where mask <= 0 (ReLU's backward, from
    the ReLU's saved output, applied after the accumulation).
    """
    cdef int N = <int>cnp.PyArray_DIM(x, 0), IN = <int>cnp.PyArray_DIM(x, 1)
    cdef int OUT = <int>cnp.PyArray_DIM(w, 0)
    cdef void* pdx = _ptr(dx)
    cdef void* pdw = _ptr(dw)
    cdef void* pdb = _ptr(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pm = _ptr(mask)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _linear_backward(<float*>pdx, <float*>pdw, <float*>pdb, <float*>pdy, <float*>px,
                             <float*>pw, N, IN, OUT, acc_w, acc_b, <float*>pm, acc_dx)
    else:
        with nogil:
            _linear_backward(<double*>pdx, <double*>pdw, <double*>pdb, <double*>pdy, <double*>px,
                             <double*>pw, N, IN, OUT, acc_w, acc_b, <double*>pm, acc_dx)


def bias_grad(cnp.ndarray db, cnp.ndarray dy, bint accumulate):
    """db (C,) (+)= dy (R, C) summed over rows (R = dy.size // C), in double."""
    cdef int C = <int>cnp.PyArray_DIM(db, 0)
    cdef Py_ssize_t R = cnp.PyArray_SIZE(dy) // C
    cdef void* pdb = cnp.PyArray_DATA(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    if cnp.PyArray_TYPE(dy) == cnp.NPY_FLOAT32:
        with nogil:
            _bias_grad(<float*>pdb, <float*>pdy, R, C, accumulate)
    else:
        with nogil:
            _bias_grad(<double*>pdb, <double*>pdy, R, C, accumulate)
