/* Prepacked float32 GEMM for planned inference (fastmod.inference): y (N, OUT) = x (N, IN) @ w.T
 * + b, then ReLU, with the weights packed ONCE into wk (IN, OCP): column o of the output is
 * contiguous along each row k (OCP = OUT rounded up to whole register blocks, zeros past OUT)
 * and the bias padded to bp (OCP). Written once against the vector layer (fm_vec.h), compiled
 * per level; the register block is fm_igemm.h's (MR rows x NR vectors of outputs, fm_tuning.h).
 *
 * Per block and k: NR vector loads of wk's row k (from L2: a panel of NR*FM_W columns is
 * IN*NR*FM_W floats, 200 KB for IN = 784 at AVX-512), MR broadcasts of x (L1), MR*NR FMAs; the
 * bias is the accumulators' initial value and the ReLU is applied in registers before the one
 * store of the block. OpenBLAS packs both operands at every call (its sgemm_incopy / oncopy);
 * here the weight side is packed once per plan, and only each block of MR rows of x is
 * interleaved (K, MR) into a small work array -- the broadcasts then read one sequential
 * stream instead of MR rows (measured, 1 thread, 128x256 -> 64: 122 GF/s reading the rows in
 * place).
 */
#ifndef FM_PGEMM_H
#define FM_PGEMM_H
#include "fm_vec.h"
#include "fm_tuning.h"
#include "fm_igemm.h"

#ifndef FM_PG_KC
#  define FM_PG_KC 256                      /* k per slab (see fm__pg_rows) */
#endif

static inline int fm_pgemm_nr(int OUT) { return fm_igemm_nr(OUT); }
static inline int fm_pgemm_ocp(int OUT) { return fm_igemm_ocp(OUT); }
/* the output columns of one panel (one register block's width) */
static inline int fm_pgemm_panel_cols(int OUT) { return fm_pgemm_nr(OUT) * FM_W; }

/* columns o0..o1 of wk (IN, OCP): wk[k*OCP + o] = w[o*IN + k], 0 for o >= OUT. Whole
   FM_W x FM_W blocks go through registers (FM_W row loads, fm_vtranspose, FM_W stores: 256x256
   packed in ~9 us instead of 46 us element by element, AVX-512, 1 thread); o0 a multiple of FM_W */
static void fm_pgemm_pack_cols(float* wk, const float* w, int OUT, int IN, int o0, int o1) {
    int OCP = fm_pgemm_ocp(OUT), k0, o, k, i;
    for (o = o0; o < o1; o += FM_W) {
        int full_o = o + FM_W <= OUT;
        for (k0 = 0; k0 < IN; k0 += FM_W) {
            if (full_o && k0 + FM_W <= IN) {
                fm_vf r[FM_W];
                for (i = 0; i < FM_W; i++)
                    r[i] = fm_vload(w + (ptrdiff_t)(o + i) * IN + k0);
                fm_vtranspose(r);
                for (i = 0; i < FM_W; i++)
                    fm_vstore(wk + (ptrdiff_t)(k0 + i) * OCP + o, r[i]);
            } else {
                for (k = k0; k < IN && k < k0 + FM_W; k++)
                    for (i = o; i < o + FM_W && i < o1; i++)
                        wk[(ptrdiff_t)k * OCP + i] = i < OUT ? w[(ptrdiff_t)i * IN + k] : 0.0f;
            }
        }
    }
}

/* the whole of wk, and bp[o] = b[o] (0 past OUT, or b NULL) */
static void fm_pgemm_pack(float* wk, float* bp, const float* w, const float* b, int OUT, int IN) {
    int OCP = fm_pgemm_ocp(OUT), o;
    fm_pgemm_pack_cols(wk, w, OUT, IN, 0, OCP);
    for (o = 0; o < OCP; o++)
        bp[o] = (b != NULL && o < OUT) ? b[o] : 0.0f;
}

/* one register block: y rows (mr <= MR), NR vectors of columns (ncols valid) from the packed
   rows xk (K, MR) -- row i's k-th value at xk[k*MR + i], one sequential stream of broadcasts */
FM_ALWAYS_INLINE void fm__pg_block(const int MR, const int NR, float* y, ptrdiff_t ldy,
                                   const float* xk, const float* wk, ptrdiff_t ldw,
                                   const float* bp, int K, int acc, int relu, int mr, int ncols) {
    fm_vf a[FM_IG_MAX_MR][FM_IG_MAX_NR];
    int i, v, k;
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++) {
            int left = ncols - v * FM_W;
            if (!acc)                           /* the first slab of k: start from the bias */
                a[i][v] = fm_vload(bp + v * FM_W);
            else if (i < mr && left >= FM_W)    /* later slabs: the partial sums in y */
                a[i][v] = fm_vload(y + (ptrdiff_t)i * ldy + v * FM_W);
            else                                /* a row past N, or the panel's last columns */
                a[i][v] = fm_vload_n(y + (ptrdiff_t)(i < mr ? i : 0) * ldy + v * FM_W,
                                     left < 0 ? 0 : (left > FM_W ? FM_W : left));
        }
    }
    for (k = 0; k < K; k++, wk += ldw, xk += MR) {
        fm_vf wv[FM_IG_MAX_NR];
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            wv[v] = fm_vload(wk + v * FM_W);
        FM_UNROLL_ALL
        for (i = 0; i < MR; i++) {
            fm_vf bx = fm_vset1(xk[i]);
            FM_IN_REGISTER(bx);
            FM_UNROLL_ALL
            for (v = 0; v < NR; v++)
                a[i][v] = fm_vfma(bx, wv[v], a[i][v]);
        }
    }
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        if (i >= mr)
            break;
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++) {
            fm_vf r = relu ? fm_vmax(a[i][v], fm_vzero()) : a[i][v];
            int left = ncols - v * FM_W;
            if (left >= FM_W)
                fm_vstore(y + (ptrdiff_t)i * ldy + v * FM_W, r);
            else if (left > 0)
                fm_vstore_n(y + (ptrdiff_t)i * ldy + v * FM_W, r, left);
        }
    }
}

FM_ALWAYS_INLINE void fm__pg_rows(const int MR, const int NR, float* y, const float* x,
                                  const float* wk, const float* bp, int n0, int n1, int IN,
                                  int OUT, int p0, int p1, int relu, float* xk) {
    int OCP = fm_pgemm_ocp(OUT), PW = NR * FM_W, n, i, k, p, k0, kc;
    /* slabs of FM_PG_KC k: a slab of the packed weights (KC x OCP) stays in L2 while every
       block of rows passes over it (measured, 1 thread, 128x784 -> 512: 130 GF/s over all
       784 k at once -- the whole 1.6 MB of weights cycled through L2 per block of rows) */
    for (k0 = 0; k0 < IN; k0 += FM_PG_KC) {
        kc = IN - k0 < FM_PG_KC ? IN - k0 : FM_PG_KC;
        for (n = n0; n < n1; n += MR) {
            int mr = n1 - n < MR ? n1 - n : MR;
            for (i = 0; i < MR; i++) {        /* the block's rows interleaved (rows past N: 0) */
                const float* xr = x + (ptrdiff_t)(n + (i < mr ? i : 0)) * IN + k0;
                for (k = 0; k < kc; k++)
                    xk[(ptrdiff_t)k * MR + i] = i < mr ? xr[k] : 0.0f;
            }
            for (p = p0; p < p1; p++) {
                int ob = p * PW, ncols = OUT - ob < PW ? OUT - ob : PW;
                fm__pg_block(MR, NR, y + (ptrdiff_t)n * OUT + ob, OUT, xk,
                             wk + (ptrdiff_t)k0 * OCP + ob, OCP, bp + ob, kc, k0 > 0,
                             relu && k0 + kc == IN, mr, ncols);
            }
        }
    }
}

/* the floats of fm_pgemm_rows' work array: one block of rows, interleaved */
static inline ptrdiff_t fm_pgemm_scratch(int IN) {
    return (ptrdiff_t)(IN < FM_PG_KC ? IN : FM_PG_KC) * FM_IG_MAX_MR;
}

/* rows n0..n1 of y, column panels p0..p1 (of fm_pgemm_panel_cols(OUT) columns each); xk: a
   work array of fm_pgemm_scratch(IN) floats */
static void fm_pgemm_rows(float* y, const float* x, const float* wk, const float* bp, int n0,
                          int n1, int IN, int OUT, int p0, int p1, int relu, float* xk) {
    int nr = fm_pgemm_nr(OUT);
#define FM__PG(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__pg_rows(mr_, nr_, y, x, wk, bp, n0, n1, IN, OUT, p0, p1, relu, xk); \
        return; \
    }
    FM__PG(1, FM_IG_MR1) FM__PG(2, FM_IG_MR2)
#if FM_IG_NR >= 3
    FM__PG(3, FM_IG_MR3)
#endif
#if FM_IG_NR >= 4
    FM__PG(4, FM_IG_MR4)
#endif
#undef FM__PG
}

#endif /* FM_PGEMM_H */
