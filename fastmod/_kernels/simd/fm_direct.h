/* Direct convolution loops for layers with few input or output channels (fastmod/_kernels/
 * conv/direct.pxi, Geom.small), float32, stride 1, written once against the vector layer (fm_vec.h);
 * the register-block shapes come from the per-level table in fm_tuning.h.
 *
 * Forward: x_n is copied into zero-padded planes xp (C, Hp, Ws), Ws >= OW rounded up to
 * 2*FM_W plus DW*(KW-1), so that every vector load of a block is inside the plane and the
 * lanes past OW read zeros. A block is NV vectors of consecutive outputs of one row for NO
 * output channels: NV*NO accumulators in registers, summed over the C*KH*KW taps (NV loads of
 * the input row and NO broadcasts of packed weights per tap). The block functions take NV and
 * NO as constants (always inlined), so the accumulator arrays live in registers.
 *
 * Weight gradient: dW[o, c, kh, kw] = sum over images and outputs of dy[o, oh, ow] *
 * xp[c, oh + kh*DH, ow + kw*DW]. A block is NO output channels x KB consecutive kw of one
 * (c, kh): NO*KB vector accumulators (one lane per output column), FM_W outputs of a row at a
 * time (NO loads of dy, KB of the input row, NO*KB FMAs). The accumulators of every block stay
 * in memory between images (vacc, FM_W floats each) and are summed across their lanes once,
 * at the end of the call (fm_direct_dw_finish): no horizontal sum per image.
 */
#ifndef FM_DIRECT_H
#define FM_DIRECT_H
#include "fm_vec.h"
#include "fm_tuning.h"

#if defined(__GNUC__)
#  define FM_ALWAYS_INLINE static inline __attribute__((always_inline))
#  define FM_UNROLL_ALL _Pragma("GCC unroll 32")
#else
#  define FM_ALWAYS_INLINE static inline
#  define FM_UNROLL_ALL
#endif

/* keep a loaded vector in a register: GCC otherwise folds the load into each of its KB FMAs
   (memory operands: KB loads of dy per vector, the loop became load-bound) */
#if defined(__GNUC__) && FM_LEVEL >= 1
#  define FM_IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#  define FM_IN_REGISTER(v) (void)0
#endif

#define FM_DMAX_NO 24
#define FM_DMAX_NV 2
#define FM_IG_MAX_MR 24
#define FM_IG_MAX_NR 4

/* the channel block of the forward for a row of OW outputs and OC channels: of the level's
   candidates (fm_tuning.h), the largest that computes the fewest padding channels */
static inline int fm_direct_fwd_no(int OW, int OC) {
    static const int nv2[] = FM_DF_NV2_NO, nv1[] = FM_DF_NV1_NO;
    const int* cand = OW <= FM_W ? nv1 : nv2;
    int n = OW <= FM_W ? (int)(sizeof(nv1) / sizeof(int)) : (int)(sizeof(nv2) / sizeof(int));
    int i, best = cand[0], pad = (OC + cand[0] - 1) / cand[0] * cand[0];
    for (i = 1; i < n; i++) {
        int p = (OC + cand[i] - 1) / cand[i] * cand[i];
        if (p < pad) {
            pad = p;
            best = cand[i];
        }
    }
    return best;
}

/* wp[(ob*CKK + tap)*NO + o] = w[ob*NO + o, tap] (0 for o past OC), bp[o] = b[o] (0 past OC or
   without bias): the weights of each block of NO channels, tap-major (broadcasts of one tap
   come from one cache line). wp holds ceil(OC/NO)*NO*CKK floats, bp ceil(OC/NO)*NO. */
static void fm_direct_pack(float* wp, float* bp, const float* w, const float* b, int OC, int CKK,
                           int NO) {
    int nb = (OC + NO - 1) / NO, ob, t, o;
    for (ob = 0; ob < nb; ob++)
        for (t = 0; t < CKK; t++)
            for (o = 0; o < NO; o++) {
                int oc = ob * NO + o;
                wp[((ptrdiff_t)ob * CKK + t) * NO + o] = oc < OC ? w[(ptrdiff_t)oc * CKK + t] : 0.0f;
            }
    for (o = 0; o < nb * NO; o++)
        bp[o] = (b && o < OC) ? b[o] : 0.0f;
}

/* one block: y[o*P + v*FM_W + i] (+)= bp[o] + sum_taps wp[tap*NO + o] * xr[tap's offset + v*FM_W + i]
   for o < noc, v*FM_W + i < nout; then max(., 0) when relu (NaN kept) */
FM_ALWAYS_INLINE void fm__dfwd_block(const int NV, const int NO, float* y, ptrdiff_t P,
                                     const float* xr, ptrdiff_t plane, int Ws, const float* wp,
                                     const float* bp, int C, int KH, int KW, int DH, int DW,
                                     int nout, int noc, int acc, int relu) {
    fm_vf a[FM_DMAX_NO][FM_DMAX_NV];
    int o, v, c, kh, kw;
    const float* wt = wp;
    FM_UNROLL_ALL
    for (o = 0; o < NO; o++) {
        fm_vf bv = fm_vset1(bp[o]);
        FM_UNROLL_ALL
        for (v = 0; v < NV; v++)
            a[o][v] = bv;
    }
    for (c = 0; c < C; c++)
        for (kh = 0; kh < KH; kh++) {
            const float* s = xr + c * plane + (ptrdiff_t)kh * DH * Ws;
            for (kw = 0; kw < KW; kw++, wt += NO) {
                fm_vf xv[FM_DMAX_NV];
                FM_UNROLL_ALL
                for (v = 0; v < NV; v++)
                    xv[v] = fm_vload(s + kw * DW + v * FM_W);
                FM_UNROLL_ALL
                for (o = 0; o < NO; o++) {
                    fm_vf wv = fm_vset1(wt[o]);
                    FM_UNROLL_ALL
                    for (v = 0; v < NV; v++)
                        a[o][v] = fm_vfma(wv, xv[v], a[o][v]);
                }
            }
        }
    FM_UNROLL_ALL
    for (o = 0; o < NO; o++) {
        if (o >= noc)
            break;
        FM_UNROLL_ALL
        for (v = 0; v < NV; v++) {
            int n = nout - v * FM_W;
            float* d = y + o * P + v * FM_W;
            fm_vf r = a[o][v];
            if (n <= 0)
                break;
            if (n > FM_W)
                n = FM_W;
            if (relu)
                r = fm_vrelu(r);
            if (acc)
                r = fm_vadd(n == FM_W ? fm_vload(d) : fm_vload_n(d, n), r);
            if (n == FM_W)
                fm_vstore(d, r);
            else
                fm_vstore_n(d, r, n);
        }
    }
}

FM_ALWAYS_INLINE void fm__dfwd_rows(const int NV, const int NO, float* y, const float* xp,
                                    const float* wp, const float* bp, int OC, int OH, int OW,
                                    int C, int Hp, int Ws, int KH, int KW, int DH, int DW,
                                    int acc, int relu) {
    ptrdiff_t P = (ptrdiff_t)OH * OW, plane = (ptrdiff_t)Hp * Ws;
    int CKK = C * KH * KW, ob, oh, ow0;
    for (ob = 0; ob * NO < OC; ob++) {
        const float* wb = wp + (ptrdiff_t)ob * CKK * NO;
        int noc = OC - ob * NO < NO ? OC - ob * NO : NO;
        for (oh = 0; oh < OH; oh++)
            for (ow0 = 0; ow0 < OW; ow0 += NV * FM_W)
                fm__dfwd_block(NV, NO, y + (ptrdiff_t)ob * NO * P + (ptrdiff_t)oh * OW + ow0, P,
                               xp + (ptrdiff_t)oh * Ws + ow0, plane, Ws, wb, bp + ob * NO, C, KH,
                               KW, DH, DW, OW - ow0, noc, acc, relu);
    }
}

/* y (OC, OH, OW) (+)= conv(xp) + b, stride 1, then max(., 0) when relu; xp (C, Hp, Ws) the
   zero-padded planes (Hp >= OH + DH*(KH-1)); wp, bp packed by fm_direct_pack with
   NO = fm_direct_fwd_no(OW, OC). The ReLU applies to the convolution before the addition (acc
   is the stride-1 dx computed as a forward, which has no ReLU). */
static void fm_direct_fwd(float* y, const float* xp, const float* wp, const float* bp, int OC,
                          int OH, int OW, int C, int Hp, int Ws, int KH, int KW, int DH, int DW,
                          int acc, int relu) {
    int NO = fm_direct_fwd_no(OW, OC);
#define FM__DFWD(nv, no) \
    if (NO == (no)) { \
        fm__dfwd_rows(nv, no, y, xp, wp, bp, OC, OH, OW, C, Hp, Ws, KH, KW, DH, DW, acc, relu); \
        return; \
    }
    if (OW <= FM_W) {
        FM__DFWD(1, 16) FM__DFWD(1, 8) FM__DFWD(1, 4)
    } else {
        FM__DFWD(2, 12) FM__DFWD(2, 8) FM__DFWD(2, 6) FM__DFWD(2, 4)
    }
#undef FM__DFWD
}

/* ---------------------------------------------------------------- forward over channels
 * The same stride-1 convolution from the same padded planes xp (C, Hp, Ws), vectorized over
 * output channels instead of outputs, for a layer whose output feeds an implicit-GEMM layer
 * (conv.pyx's chain: cnn's 3 -> 32 stem before its 32 -> 64 stride-2 layer): the result is
 * written position-major -- straight into the next layer's zero-padded plane -- where the
 * outputs-vectorized kernel above writes rows of one channel (NCHW), which that layer would
 * then transpose in again (the pack was 4-5 us of each image's 21 us of stem + pack).
 * A block is MR consecutive outputs of one row x NR vectors of output channels: per tap, NR
 * vector loads of the packed weights wk (C*KH*KW, OCP) and MR broadcasts from one input row at
 * constant offsets (one pointer per block: the implicit GEMM's per-position pointers spilled
 * at MR = 12), MR*NR FMAs. */

/* the output channels of a block (NR vectors) for OC channels, and OC rounded up to blocks */
static inline int fm_direct_cv_nr(int OC) {
    int nr = (OC + FM_W - 1) / FM_W;
    return nr > FM_DC_NR ? FM_DC_NR : nr;
}

static inline int fm_direct_cv_ocp(int OC) {
    int b = fm_direct_cv_nr(OC) * FM_W;
    return (OC + b - 1) / b * b;
}

/* wk[tap*OCP + o] = w[o, tap], bk[o] = b[o] (0 past OC or without bias): wk holds
   C*KH*KW*OCP floats, bk OCP */
static void fm_direct_cv_pack(float* wk, float* bk, const float* w, const float* b, int OC,
                              int CKK) {
    int OCP = fm_direct_cv_ocp(OC), t, o;
    for (t = 0; t < CKK; t++)
        for (o = 0; o < OCP; o++)
            wk[(ptrdiff_t)t * OCP + o] = o < OC ? w[(ptrdiff_t)o * CKK + t] : 0.0f;
    for (o = 0; o < OCP; o++)
        bk[o] = (b && o < OC) ? b[o] : 0.0f;
}

/* one block: y[i*ldp + o] = max?(bk[o] + sum_taps xr[tap's offset + i] * wk[tap*ldw + o]) for
   i < MR, o < noc (of this block's NR*FM_W channels) */
FM_ALWAYS_INLINE void fm__dcv_block(const int MR, const int NR, float* y, ptrdiff_t ldp,
                                    const float* xr, ptrdiff_t plane, int Ws, const float* wk,
                                    ptrdiff_t ldw, const float* bk, int C, int KH, int KW,
                                    int DH, int DW, int noc, int relu) {
    fm_vf a[FM_IG_MAX_MR][FM_IG_MAX_NR];
    int i, v, c, kh, kw;
    const float* wt = wk;
    FM_UNROLL_ALL
    for (v = 0; v < NR; v++) {
        fm_vf bv = fm_vload(bk + v * FM_W);
        FM_UNROLL_ALL
        for (i = 0; i < MR; i++)
            a[i][v] = bv;
    }
    /* pointers stepped, not int offsets: under Python's -fwrapv GCC kept the tap offset as a
       wrapping int, sign-extended it per tap and added each output's offset from a spilled
       register (the .so ran this loop 45% slower than a plain -O3 build) */
    for (c = 0; c < C; c++)
        for (kh = 0; kh < KH; kh++) {
            const float* sk = xr + c * plane + (ptrdiff_t)kh * DH * Ws;
            for (kw = 0; kw < KW; kw++, wt += ldw, sk += DW) {
                fm_vf wv[FM_IG_MAX_NR];
                FM_UNROLL_ALL
                for (v = 0; v < NR; v++)
                    wv[v] = fm_vload(wt + v * FM_W);
                FM_UNROLL_ALL
                for (i = 0; i < MR; i++) {
                    fm_vf b = fm_vset1(sk[i]);
                    FM_IN_REGISTER(b);
                    FM_UNROLL_ALL
                    for (v = 0; v < NR; v++)
                        a[i][v] = fm_vfma(b, wv[v], a[i][v]);
                }
            }
        }
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++) {
            int n = noc - v * FM_W;
            fm_vf r = a[i][v];
            if (n <= 0)
                break;
            if (relu)
                r = fm_vrelu(r);
            if (n >= FM_W)
                fm_vstore(y + i * ldp + v * FM_W, r);
            else
                fm_vstore_n(y + i * ldp + v * FM_W, r, n);
        }
    }
}

FM_ALWAYS_INLINE void fm__dcv_rows(const int MR, const int NR, float* y, ptrdiff_t ldr,
                                   ptrdiff_t ldp, const float* xp, const float* wk,
                                   const float* bk, int OC, int OH, int OW, int C, int Hp, int Ws,
                                   int KH, int KW, int DH, int DW, int relu) {
    ptrdiff_t plane = (ptrdiff_t)Hp * Ws;
    int OCP = fm_direct_cv_ocp(OC), ob, oh, ow;
    for (ob = 0; ob < OCP; ob += NR * FM_W) {
        int noc = OC - ob;
        for (oh = 0; oh < OH; oh++) {
            const float* xr = xp + (ptrdiff_t)oh * Ws;
            float* yr = y + oh * ldr + ob;
            for (ow = 0; OW - ow >= MR; ow += MR)
                fm__dcv_block(MR, NR, yr + ow * ldp, ldp, xr + ow, plane, Ws, wk + ob, OCP,
                              bk + ob, C, KH, KW, DH, DW, noc, relu);
            if (MR > 4)
                for (; OW - ow >= 4; ow += 4)
                    fm__dcv_block(4, NR, yr + ow * ldp, ldp, xr + ow, plane, Ws, wk + ob, OCP,
                                  bk + ob, C, KH, KW, DH, DW, noc, relu);
            for (; ow < OW; ow++)
                fm__dcv_block(1, NR, yr + ow * ldp, ldp, xr + ow, plane, Ws, wk + ob, OCP,
                              bk + ob, C, KH, KW, DH, DW, noc, relu);
        }
    }
}

/* y[oh*ldr + ow*ldp + o] = conv(xp) + b for o < OC, then max(., 0) when relu (NaN kept): xp
   fm_direct_fwd's padded planes (stride 1), wk / bk packed by fm_direct_cv_pack; y's lanes past
   OC are not written. */
static void fm_direct_cv_fwd(float* y, ptrdiff_t ldr, ptrdiff_t ldp, const float* xp,
                             const float* wk, const float* bk, int OC, int OH, int OW, int C,
                             int Hp, int Ws, int KH, int KW, int DH, int DW, int relu) {
    int nr = fm_direct_cv_nr(OC);
#define FM__DCV(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__dcv_rows(mr_, nr_, y, ldr, ldp, xp, wk, bk, OC, OH, OW, C, Hp, Ws, KH, KW, DH, DW, \
                     relu); \
        return; \
    }
    FM__DCV(1, FM_DC_MR1) FM__DCV(2, FM_DC_MR2)
#if FM_DC_NR >= 3
    FM__DCV(3, FM_DC_MR3)
#endif
#if FM_DC_NR >= 4
    FM__DCV(4, FM_DC_MR4)
#endif
#undef FM__DCV
}

/* ---------------------------------------------------------------- weight gradient */

/* the channel block of the weight gradient for OC channels (fm_tuning.h's candidates, chosen
   as the forward's); its kw block is 3 consecutive taps (or what is left of KW) */
static inline int fm_direct_dw_no(int OC) {
    static const int cand[] = FM_DW_NO;
    int n = (int)(sizeof(cand) / sizeof(int)), i, best = cand[0];
    int pad = (OC + cand[0] - 1) / cand[0] * cand[0];
    for (i = 1; i < n; i++) {
        int p = (OC + cand[i] - 1) / cand[i] * cand[i];
        if (p < pad) {
            pad = p;
            best = cand[i];
        }
    }
    return best;
}

/* floats of vacc for OC channels and C*KH*KW taps */
static inline ptrdiff_t fm_direct_dw_size(int OC, int CKK) {
    int NO = fm_direct_dw_no(OC);
    return (ptrdiff_t)(OC + NO - 1) / NO * NO * CKK * FM_W;
}

/* floats of the scratch fm_direct_dw_image packs dy into (64 bytes of alignment slack included) */
static inline ptrdiff_t fm_direct_dw_scratch(int OC, int OH, int OW) {
    int NO = fm_direct_dw_no(OC);
    return (ptrdiff_t)(OC + NO - 1) / NO * NO * OH * ((OW + FM_W - 1) / FM_W) * FM_W + 16;
}

/* va[(k*NO + o)*FM_W + lane] += sum over the rows and column blocks of one image of
   dyp[o] * x[k*DW + column]: dyp the packed dy of the block's channels ([oh][ow block][o][lane],
   zeros past OW and OC), xr the input plane at (kh*DH, kw0*DW), rows Ws apart */
FM_ALWAYS_INLINE void fm__ddw_block(const int NO, const int KB, float* va, const float* dyp,
                                    const float* xr, int Ws, int DW, int OH, int nb) {
    fm_vf a[FM_DMAX_NO][3];
    int o, k, oh, b;
    FM_UNROLL_ALL
    for (k = 0; k < KB; k++) {
        FM_UNROLL_ALL
        for (o = 0; o < NO; o++)
            a[o][k] = fm_vload(va + (k * NO + o) * FM_W);
    }
    for (oh = 0; oh < OH; oh++) {
        const float* xo = xr + (ptrdiff_t)oh * Ws;
        for (b = 0; b < nb; b++, xo += FM_W, dyp += NO * FM_W) {
            fm_vf xv[3];
            FM_UNROLL_ALL
            for (k = 0; k < KB; k++)
                xv[k] = fm_vload(xo + k * DW);
            FM_UNROLL_ALL
            for (o = 0; o < NO; o++) {
                fm_vf d = fm_vload(dyp + o * FM_W);
                FM_IN_REGISTER(d);
                FM_UNROLL_ALL
                for (k = 0; k < KB; k++)
                    a[o][k] = fm_vfma(d, xv[k], a[o][k]);
            }
        }
    }
    FM_UNROLL_ALL
    for (k = 0; k < KB; k++) {
        FM_UNROLL_ALL
        for (o = 0; o < NO; o++)
            fm_vstore(va + (k * NO + o) * FM_W, a[o][k]);
    }
}

FM_ALWAYS_INLINE void fm__ddw_image(const int NO, float* vacc, const float* dy, const float* xp,
                                    float* scratch, int OC, int OH, int OW, int C, int Hp, int Ws,
                                    int KH, int KW, int DH, int DW) {
    ptrdiff_t P = (ptrdiff_t)OH * OW, plane = (ptrdiff_t)Hp * Ws;
    int CKK = C * KH * KW, nb = (OW + FM_W - 1) / FM_W, nob = (OC + NO - 1) / NO;
    int ob, c, kh, kw, o, oh, b;
    ptrdiff_t bs = (ptrdiff_t)OH * nb * NO * FM_W;         /* packed floats per channel block */
    float* dyp = (float*)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    /* dy packed per channel block: dyp[ob][oh][b][o][lane] (zeros past OW and OC) */
    for (ob = 0; ob < nob; ob++)
        for (oh = 0; oh < OH; oh++)
            for (b = 0; b < nb; b++) {
                float* d = dyp + ob * bs + ((ptrdiff_t)oh * nb + b) * NO * FM_W;
                int n = OW - b * FM_W < FM_W ? OW - b * FM_W : FM_W;
                for (o = 0; o < NO; o++) {
                    int oc = ob * NO + o;
                    fm_vf v = fm_vzero();
                    if (oc < OC)
                        v = fm_vload_n(dy + oc * P + (ptrdiff_t)oh * OW + b * FM_W, n);
                    fm_vstore(d + o * FM_W, v);
                }
            }
    for (ob = 0; ob < nob; ob++)
        for (c = 0; c < C; c++)
            for (kh = 0; kh < KH; kh++) {
                const float* xr = xp + c * plane + (ptrdiff_t)kh * DH * Ws;
                float* va = vacc + ((ptrdiff_t)ob * CKK + (c * KH + kh) * KW) * NO * FM_W;
                for (kw = 0; kw < KW; kw += 3) {
                    float* v = va + (ptrdiff_t)kw * NO * FM_W;
                    const float* x = xr + kw * DW;
                    if (KW - kw >= 3)
                        fm__ddw_block(NO, 3, v, dyp + ob * bs, x, Ws, DW, OH, nb);
                    else if (KW - kw == 2)
                        fm__ddw_block(NO, 2, v, dyp + ob * bs, x, Ws, DW, OH, nb);
                    else
                        fm__ddw_block(NO, 1, v, dyp + ob * bs, x, Ws, DW, OH, nb);
                }
            }
}

/* vacc (fm_direct_dw_size floats, zeroed before the first image) += the weight gradient of one
   image: dy (OC, OH, OW), xp its input as the forward's zero-padded planes (C, Hp, Ws; Ws at
   least OW rounded up to FM_W plus DW*(KW-1)); scratch fm_direct_dw_scratch floats */
static void fm_direct_dw_image(float* vacc, const float* dy, const float* xp, float* scratch,
                               int OC, int OH, int OW, int C, int Hp, int Ws, int KH, int KW,
                               int DH, int DW) {
    int NO = fm_direct_dw_no(OC);
#define FM__DDW(no) \
    if (NO == (no)) { \
        fm__ddw_image(no, vacc, dy, xp, scratch, OC, OH, OW, C, Hp, Ws, KH, KW, DH, DW); \
        return; \
    }
    FM__DDW(8) FM__DDW(6) FM__DDW(4) FM__DDW(3)
#undef FM__DDW
}

/* dw[o, tap] (+)= sum over the nt partials and the lanes of vacc_t[o, tap] (partials psize
   floats apart; in double, in partial then lane order) */
static void fm_direct_dw_finish(float* dw, const float* vacc, int nt, ptrdiff_t psize, int OC,
                                int CKK, int acc) {
    int NO = fm_direct_dw_no(OC), o, t, tap, l;
    for (o = 0; o < OC; o++)
        for (tap = 0; tap < CKK; tap++) {
            const float* v = vacc + (((ptrdiff_t)(o / NO) * CKK + tap) * NO + o % NO) * FM_W;
            double s = acc ? (double)dw[(ptrdiff_t)o * CKK + tap] : 0.0;
            for (t = 0; t < nt; t++)
                for (l = 0; l < FM_W; l++)
                    s += (double)v[t * psize + l];
            dw[(ptrdiff_t)o * CKK + tap] = (float)s;
        }
}

#endif /* FM_DIRECT_H */
