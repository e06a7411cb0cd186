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

/* dst[j*ldd + i] (+)= src[i*lds + j] (+ bias[j]) for i < rows, j < cols, then max(., 0) when
   relu (NaN kept); acc: add into dst instead of overwriting it; bias may be NULL */
static void fm_transpose_add(float* dst, ptrdiff_t ldd, const float* src, ptrdiff_t lds,
                             int rows, int cols, const float* bias, int acc, int relu) {
    fm_vf r[FM_W];
    int i, j, k, nr, nc;
    for (j = 0; j < cols; j += FM_W) {
        nc = cols - j < FM_W ? cols - j : FM_W;
        for (i = 0; i < rows; i += FM_W) {
            nr = rows - i < FM_W ? rows - i : FM_W;
            for (k = 0; k < nr; k++) {
                const float* s = src + (ptrdiff_t)(i + k) * lds + j;
                r[k] = nc == FM_W ? fm_vload(s) : fm_vload_n(s, nc);
            }
            for (; k < FM_W; k++)
                r[k] = fm_vzero();
            fm_vtranspose(r);
            for (k = 0; k < nc; k++) {
                float* d = dst + (ptrdiff_t)(j + k) * ldd + i;
                fm_vf v = r[k];
                if (bias)
                    v = fm_vadd(v, fm_vset1(bias[j + k]));
                if (acc)
                    v = fm_vadd(v, nr == FM_W ? fm_vload(d) : fm_vload_n(d, nr));
                if (relu)
                    v = fm_vrelu(v);
                if (nr == FM_W)
                    fm_vstore(d, v);
                else
                    fm_vstore_n(d, v, nr);
            }
        }
    }
}

#endif /* FM_CONV_H */
