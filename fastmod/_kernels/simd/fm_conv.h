/* Layout changes of the convolution kernels (fastmod/_kernels/conv.pyx), float32, written once
 * against the vector layer (fm_vec.h) and compiled per instruction set.
 *
 * The GEMM paths of conv.pyx work on position-major ("NHWC") copies of an image and produce
 * position-major outputs (P, OC), while the arrays are channel-major (C, H, W): every image goes
 * through two transposes. Written as scalar loops, the position-major copy stored one float
 * every C floats and took 45% of the 32->64 stride-2 forward at the avx512 level (perf); here
 * FM_W x FM_W blocks are transposed in registers (fm_vtranspose) and written FM_W floats at a
 * time, partial loads / stores for the ragged edges (C = 12 or 24 at FM_W = 16).
 */
#ifndef FM_CONV_H
#define FM_CONV_H
#include "fm_vec.h"

#if defined(__GNUC__)
#  define FM_UNROLL _Pragma("GCC unroll 16")
#else
#  define FM_UNROLL
#endif

/* the epilogue of one transposed row: d[0:n] (+)= v (+ bias), max(., 0) when relu */
static inline void fm__tstore(float* d, fm_vf v, const float* bias, int acc, int relu, int n) {
    if (bias)
        v = fm_vadd(v, fm_vset1(*bias));
    if (acc)
        v = fm_vadd(v, n == FM_W ? fm_vload(d) : fm_vload_n(d, n));
    if (relu)
        v = fm_vrelu(v);
    if (n == FM_W)
        fm_vstore(d, v);
    else
        fm_vstore_n(d, v, n);
}

/* dst[j*ldd + i] (+)= src[i*lds + j] (+ bias[j]) for i < rows, j < cols, then max(., 0) when
   relu (NaN kept); acc: add into dst instead of overwriting it; bias may be NULL. Full blocks
   keep their FM_W vectors in registers (constant trip counts, unrolled; with nr / nc bounds
   the array went through the stack: 2x slower); ragged blocks use the partial loads / stores */
static void fm_transpose_add(float* dst, ptrdiff_t ldd, const float* src, ptrdiff_t lds,
                             int rows, int cols, const float* bias, int acc, int relu) {
    fm_vf r[FM_W];
    int i, j, k, nr, nc;
    for (j = 0; j < cols; j += FM_W) {
        nc = cols - j < FM_W ? cols - j : FM_W;
        for (i = 0; i < rows; i += FM_W) {
            const float* s = src + (ptrdiff_t)i * lds + j;
            float* d = dst + (ptrdiff_t)j * ldd + i;
            nr = rows - i < FM_W ? rows - i : FM_W;
            if (nr == FM_W && nc == FM_W) {
                FM_UNROLL
                for (k = 0; k < FM_W; k++)
                    r[k] = fm_vload(s + (ptrdiff_t)k * lds);
                fm_vtranspose(r);
                FM_UNROLL
                for (k = 0; k < FM_W; k++)
                    fm__tstore(d + (ptrdiff_t)k * ldd, r[k], bias ? bias + j + k : NULL, acc,
                               relu, FM_W);
                continue;
            }
            for (k = 0; k < nr; k++)
                r[k] = fm_vload_n(s + (ptrdiff_t)k * lds, nc);
            for (; k < FM_W; k++)
                r[k] = fm_vzero();
            fm_vtranspose(r);
            for (k = 0; k < nc; k++)
                fm__tstore(d + (ptrdiff_t)k * ldd, r[k], bias ? bias + j + k : NULL, acc, relu, nr);
        }
    }
}

/* The stride-2 rows of im2col and col2im: every other float of a row, FM_W at a time from two
   vectors and a deinterleave (scalar loops moved one float per iteration: im2col_2d was 36% of the
   32->64 stride-2 dW and col2im_2d 40% of its dx). Both touch src / dst[0 .. m) only, m >= 2n - 1
   (the row's end): the last block uses partial loads / stores. */

/* dst[i] = src[2 i] for i < n */
static void fm_gather2(float* dst, const float* src, int n, int m) {
    fm_vf a, b, e, o;
    int i, cnt, span;
    for (i = 0; i < n; i += FM_W) {
        cnt = n - i < FM_W ? n - i : FM_W;
        span = m - 2 * i < 2 * cnt ? m - 2 * i : 2 * cnt;
        if (span == 2 * FM_W) {
            a = fm_vload(src + 2 * i);
            b = fm_vload(src + 2 * i + FM_W);
        } else {
            a = fm_vload_n(src + 2 * i, span < FM_W ? span : FM_W);
            b = fm_vload_n(src + 2 * i + FM_W, span > FM_W ? span - FM_W : 0);
        }
        fm_vdeinterleave2(a, b, &e, &o);
        if (cnt == FM_W)
            fm_vstore(dst + i, e);
        else
            fm_vstore_n(dst + i, e, cnt);
    }
}

/* dst[2 i] += src[i] for i < n (the odd floats in between are rewritten unchanged) */
static void fm_scatter2_add(float* dst, const float* src, int n, int m) {
    fm_vf a, b, e, o;
    int i, cnt, span, na, nb;
    for (i = 0; i < n; i += FM_W) {
        cnt = n - i < FM_W ? n - i : FM_W;
        span = m - 2 * i < 2 * cnt ? m - 2 * i : 2 * cnt;
        if (span == 2 * FM_W) {
            a = fm_vload(dst + 2 * i);
            b = fm_vload(dst + 2 * i + FM_W);
            fm_vdeinterleave2(a, b, &e, &o);
            e = fm_vadd(e, fm_vload(src + i));
            fm_vinterleave2(e, o, &a, &b);
            fm_vstore(dst + 2 * i, a);
            fm_vstore(dst + 2 * i + FM_W, b);
        } else {
            na = span < FM_W ? span : FM_W;
            nb = span > FM_W ? span - FM_W : 0;
            a = fm_vload_n(dst + 2 * i, na);
            b = fm_vload_n(dst + 2 * i + FM_W, nb);
            fm_vdeinterleave2(a, b, &e, &o);
            e = fm_vadd(e, fm_vload_n(src + i, cnt));
            fm_vinterleave2(e, o, &a, &b);
            fm_vstore_n(dst + 2 * i, a, na);
            fm_vstore_n(dst + 2 * i + FM_W, b, nb);
        }
    }
}

#endif /* FM_CONV_H */
