/* Direct convolution loops for layers with few input or output channels (fastmod/_kernels/
 * conv.pyx, Geom.small), float32, stride 1, written once against the vector layer (fm_vec.h);
 * the register-block shapes come from the per-level table in fm_tuning.h.
 *
 * Forward: x_n is copied into zero-padded planes xp (C, Hp, Ws), Ws >= OW rounded up to
 * 2*FM_W plus DW*(KW-1), so that every vector load of a block is inside the plane and the
 * lanes past OW read zeros. A block is NV vectors of consecutive outputs of one row for NO
 * output channels: NV*NO accumulators in registers, summed over the C*KH*KW taps (NV loads of
 * the input row and NO broadcasts of packed weights per tap). The block functions take NV and
 * NO as constants (always inlined), so the accumulator arrays live in registers.
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

#define FM_DMAX_NO 24
#define FM_DMAX_NV 2

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

#endif /* FM_DIRECT_H */
