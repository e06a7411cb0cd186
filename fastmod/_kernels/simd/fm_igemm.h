/* Implicit-GEMM convolution on position-major planes (fastmod/_kernels/conv/gemm.pxi, Geom.igemm),
 * float32, written once against the vector layer (fm_vec.h); register-block shapes per level
 * in fm_tuning.h.
 *
 * The im2row path materializes the patch rows (P, K) and OpenBLAS packs them again before its
 * kernel runs (sgemm_oncopy: 12% of the 32->64 stride-2 forward, the rows copy 9%), reaching
 * ~60% of the FMA peak on these shapes (K 160-576, OC 64). Here the patch rows stay implicit:
 * the input is one zero-padded position-major plane xp (Hq, Wq, C) per image, and the patch of
 * output position p is KH runs of KW*C contiguous floats (DW = 1; else KH*KW runs of C) at
 * fixed offsets from p's origin in xp. A register block is MR positions x NR vectors of output
 * channels:
 *     yt[p_i, o] = sum_k xp[origin_i + off(k)] * wk[k, o]
 * per k: NR vector loads of the packed weights wk (K, OCP), MR broadcasts from the planes (one
 * register each), MR*NR FMAs. The position pointers make blocks of any positions (across rows,
 * any stride) cost the same.
 *
 * Weight gradient, the same register block turned around: MR consecutive patch columns k of one
 * run x NR vectors of output channels, summed over the positions of an image:
 *     dWt[k, o] += sum_p xp[origin_p + off(k)] * dyt[p, o]
 * (dyt: dy position-major, (P, OCP)); per position NR loads of dyt and MR broadcasts. The
 * per-thread partial dWt (K, OCP) is loaded and stored once per block and image.
 */
#ifndef FM_IGEMM_H
#define FM_IGEMM_H
#include "fm_vec.h"
#include "fm_tuning.h"
#include "fm_direct.h"

/* the forward's k loop two steps per iteration (A/B, one core: 0.97 of the time on cnn.conv2
   and cnn.conv3's shapes) */
#if defined(__GNUC__) && !defined(__clang__)
#  define FM_UNROLL2 _Pragma("GCC unroll 2")
#elif defined(__clang__)
#  define FM_UNROLL2 _Pragma("unroll 2")
#else
#  define FM_UNROLL2
#endif


/* the output channels of one register block (NR vectors) for OC channels */
static inline int fm_igemm_nr(int OC) {
    int nr = (OC + FM_W - 1) / FM_W;
    return nr > FM_IG_NR ? FM_IG_NR : nr;
}

/* the column stride of the packed weights and of yt: OC rounded up to whole blocks */
static inline int fm_igemm_ocp(int OC) {
    int b = fm_igemm_nr(OC) * FM_W;
    return (OC + b - 1) / b * b;
}

/* wk[k, o] for k = (kh*KW + kw)*C + c (the patch order), o < OCP (0 past OC), from
   w (OC, C, KH, KW) */
static void fm_igemm_pack(float* wk, const float* w, int OC, int C, int KH, int KW) {
    /* FM_W x FM_W blocks of w (OC, C*KK) transposed in registers, each column k = c*KK + t
       stored as FM_W channels of wk's row t*C + c (reading w down its columns, a cache line per
       float, was 20 us of conv2d_pack_forward for cnn.conv3, 64 -> 64 3x3; writing wk that
       way, 67). Rows past OC load as zeros: the padding columns (OCP is whole vectors). */
    int KK = KH * KW, K = C * KK, OCP = fm_igemm_ocp(OC), o0, k0, i, j;
    fm_vf r[FM_W];
    for (o0 = 0; o0 < OCP; o0 += FM_W)
        for (k0 = 0; k0 < K; k0 += FM_W) {
            int nk = K - k0 < FM_W ? K - k0 : FM_W;
            for (i = 0; i < FM_W; i++)
                r[i] = o0 + i < OC ? fm_vload_n(w + (ptrdiff_t)(o0 + i) * K + k0, nk) : fm_vzero();
            fm_vtranspose(r);
            for (j = 0; j < nk; j++) {
                int k = k0 + j, c = k / KK, t = k % KK;
                fm_vstore(wk + ((ptrdiff_t)t * C + c) * OCP + o0, r[j]);
            }
        }
}

/* one block: yt[i*ldy + o] = sum over the runs r and j < len of
   xr[i][roff[r] + j] * wk[(r*len + j)*ldw + o] for i < mr, o < NR*FM_W */
FM_ALWAYS_INLINE void fm__ig_block(const int MR, const int NR, float* yt, ptrdiff_t ldy,
                                   const float* const* xr, const float* wk, ptrdiff_t ldw,
                                   const ptrdiff_t* roff, int nruns, int len, int mr) {
    fm_vf a[FM_IG_MAX_MR][FM_IG_MAX_NR];
    int i, v, r, j;
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            a[i][v] = fm_vzero();
    }
    for (r = 0; r < nruns; r++) {
        const float* xs[FM_IG_MAX_MR];
        const float* w = wk + (ptrdiff_t)r * len * ldw;
        FM_UNROLL_ALL
        for (i = 0; i < MR; i++)
            xs[i] = xr[i] + roff[r];
        FM_UNROLL2
        for (j = 0; j < len; j++, w += ldw) {
            fm_vf wv[FM_IG_MAX_NR];
            FM_UNROLL_ALL
            for (v = 0; v < NR; v++)
                wv[v] = fm_vload(w + v * FM_W);
            FM_UNROLL_ALL
            for (i = 0; i < MR; i++) {
                fm_vf b = fm_vset1(xs[i][j]);
                FM_IN_REGISTER(b);
                FM_UNROLL_ALL
                for (v = 0; v < NR; v++)
                    a[i][v] = fm_vfma(b, wv[v], a[i][v]);
            }
        }
    }
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        if (i >= mr)
            break;
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            fm_vstore(yt + i * ldy + v * FM_W, a[i][v]);
    }
}

FM_ALWAYS_INLINE void fm__ig_fwd(const int MR, const int NR, float* yt, const float* xp,
                                 const float* wk, int OC, int OH, int OW, int C, int Wq, int KH,
                                 int KW, int SH, int SW, int DH, int DW) {
    int OCP = fm_igemm_ocp(OC), P = OH * OW, nruns, len, r, p0, i, ob;
    ptrdiff_t roff[64];
    const float* xr[FM_IG_MAX_MR];
    if (DW == 1) {          /* KH runs of KW*C floats */
        nruns = KH;
        len = KW * C;
        for (r = 0; r < KH; r++)
            roff[r] = (ptrdiff_t)r * DH * Wq * C;
    } else {                /* KH*KW runs of C floats */
        nruns = KH * KW;
        len = C;
        for (r = 0; r < nruns; r++)
            roff[r] = ((ptrdiff_t)(r / KW) * DH * Wq + (ptrdiff_t)(r % KW) * DW) * C;
    }
    for (ob = 0; ob < OCP; ob += NR * FM_W)
        for (p0 = 0; p0 < P; p0 += MR) {
            int mr = P - p0 < MR ? P - p0 : MR;
            FM_UNROLL_ALL
            for (i = 0; i < MR; i++) {
                int p = p0 + (i < mr ? i : mr - 1), oh = p / OW, ow = p % OW;
                xr[i] = xp + ((ptrdiff_t)oh * SH * Wq + (ptrdiff_t)ow * SW) * C;
            }
            fm__ig_block(MR, NR, yt + (ptrdiff_t)p0 * OCP + ob, OCP, xr, wk + ob, OCP, roff,
                         nruns, len, mr);
        }
}

/* yt (P, OCP) = the convolution of one image without bias, position-major: xp its zero-padded
   position-major plane (Hq, Wq, C) (conv/pack.pxi's _pack_nhwc), wk packed by fm_igemm_pack.
   KH*KW <= 64. */
static void fm_igemm_fwd(float* yt, const float* xp, const float* wk, int OC, int OH, int OW,
                         int C, int Wq, int KH, int KW, int SH, int SW, int DH, int DW) {
    int nr = fm_igemm_nr(OC);
#define FM__IG(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__ig_fwd(mr_, nr_, yt, xp, wk, OC, OH, OW, C, Wq, KH, KW, SH, SW, DH, DW); \
        return; \
    }
    FM__IG(1, FM_IG_MR1) FM__IG(2, FM_IG_MR2)
#if FM_IG_NR >= 3
    FM__IG(3, FM_IG_MR3)
#endif
#if FM_IG_NR >= 4
    FM__IG(4, FM_IG_MR4)
#endif
#undef FM__IG
}

/* ---------------------------------------------------------------- weight gradient */

/* dwt[(i)*ldw + o] (+)= sum_p xo_p[i] * dyt[p*ldd + o] for i < mr, o < NR*FM_W: the positions'
   origins (plus the block's column offset) walked row by row */
FM_ALWAYS_INLINE void fm__igdw_block(const int MR, const int NR, float* dwt, ptrdiff_t ldw,
                                     const float* dyt, ptrdiff_t ldd, const float* x0, int OH,
                                     int OW, ptrdiff_t rstep, ptrdiff_t cstep, int mr, int beta) {
    fm_vf a[FM_IG_MAX_MR][FM_IG_MAX_NR];
    int i, v, oh, ow, ii[FM_IG_MAX_MR];
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        ii[i] = i < mr ? i : mr - 1;      /* columns past the run repeat its last (not stored) */
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            a[i][v] = beta ? fm_vload(dwt + (ptrdiff_t)ii[i] * ldw + v * FM_W) : fm_vzero();
    }
    for (oh = 0; oh < OH; oh++) {
        const float* xo = x0 + oh * rstep;
        for (ow = 0; ow < OW; ow++, xo += cstep, dyt += ldd) {
            fm_vf dv[FM_IG_MAX_NR];
            FM_UNROLL_ALL
            for (v = 0; v < NR; v++)
                dv[v] = fm_vload(dyt + v * FM_W);
            FM_UNROLL_ALL
            for (i = 0; i < MR; i++) {
                fm_vf b = fm_vset1(xo[ii[i]]);
                FM_IN_REGISTER(b);
                FM_UNROLL_ALL
                for (v = 0; v < NR; v++)
                    a[i][v] = fm_vfma(b, dv[v], a[i][v]);
            }
        }
    }
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        if (i >= mr)
            break;
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            fm_vstore(dwt + (ptrdiff_t)i * ldw + v * FM_W, a[i][v]);
    }
}

FM_ALWAYS_INLINE void fm__igdw(const int MR, const int NR, float* dwt, const float* dyt,
                               const float* xp, int OC, int OH, int OW, int C, int Wq, int KH,
                               int KW, int SH, int SW, int DH, int DW, int beta) {
    int OCP = fm_igemm_ocp(OC), nruns, len, r, j, ob;
    ptrdiff_t roff;
    if (DW == 1) {
        nruns = KH;
        len = KW * C;
    } else {
        nruns = KH * KW;
        len = C;
    }
    for (ob = 0; ob < OCP; ob += NR * FM_W)
        for (r = 0; r < nruns; r++) {
            roff = DW == 1 ? (ptrdiff_t)r * DH * Wq * C
                           : ((ptrdiff_t)(r / KW) * DH * Wq + (ptrdiff_t)(r % KW) * DW) * C;
            for (j = 0; j < len; j += MR) {
                float* d = dwt + ((ptrdiff_t)r * len + j) * OCP + ob;
                const float* x0 = xp + roff + j;
                ptrdiff_t rstep = (ptrdiff_t)SH * Wq * C, cstep = (ptrdiff_t)SW * C;
                if (len - j >= MR)      /* (a constant mr: the columns at constant offsets) */
                    fm__igdw_block(MR, NR, d, OCP, dyt + ob, OCP, x0, OH, OW, rstep, cstep, MR, beta);
                else
                    fm__igdw_block(MR, NR, d, OCP, dyt + ob, OCP, x0, OH, OW, rstep, cstep,
                                   len - j, beta);
            }
        }
}

/* dwt (K, OCP) (+)= the weight gradient of one image, transposed, K in the patch order
   (fm_igemm_pack's): dyt its dy position-major (P, OCP), xp its zero-padded position-major
   plane; beta 0 overwrites dwt */
static void fm_igemm_dw(float* dwt, const float* dyt, const float* xp, int OC, int OH, int OW,
                        int C, int Wq, int KH, int KW, int SH, int SW, int DH, int DW, int beta) {
    int nr = fm_igemm_nr(OC);
#define FM__IGDW(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__igdw(mr_, nr_, dwt, dyt, xp, OC, OH, OW, C, Wq, KH, KW, SH, SW, DH, DW, beta); \
        return; \
    }
    FM__IGDW(1, FM_IG_MR1) FM__IGDW(2, FM_IG_MR2)
#if FM_IG_NR >= 3
    FM__IGDW(3, FM_IG_MR3)
#endif
#if FM_IG_NR >= 4
    FM__IGDW(4, FM_IG_MR4)
#endif
#undef FM__IGDW
}

#endif /* FM_IGEMM_H */
