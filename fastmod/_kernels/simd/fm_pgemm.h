/* Prepacked float32 GEMM for planned inference (fastmod.inference) and the eager Linear
 * forward: y (N, OUT) = x (N, IN) @ w.T + b, then ReLU, with the weights packed ONCE into wk
 * (IN * OCP floats, panel-major: see fm__pg_at; OCP = OUT rounded up to whole register blocks,
 * zeros past OUT) and the bias padded to bp (OCP) -- or, for the eager Linear, w packed slab by
 * slab as it is needed (fm_pgemm_rows_raw). Written once against the vector layer (fm_vec.h),
 * compiled per level; the register block is fm_igemm.h's (MR rows x NR vectors of outputs,
 * fm_tuning.h).
 *
 * GotoBLAS's blocking: per slab of k (FM_PG_KC) and range of rows (FM_PG_MC), each panel of
 * the slab's weights (KC x NR*FM_W floats, 32 KB: in L1) meets every block of MR rows. Per k of
 * a block: NR vector loads of weights (L1), MR broadcasts of x (its rows read in place), MR*NR
 * FMAs; the bias is the accumulators' initial value and the ReLU is applied in registers
 * before the one store of the block. Measured (AVX-512 Sapphire Rapids, 1 thread, best of 200
 * from C): 166-176 GF/s on 128x784->512, 128x256->256, 1024x256->1024, 1024x1024->256 -- above
 * the ~165 that OpenBLAS and oneDNN reach on 2048^3 on this host -- where the previous order
 * (each block of rows over the whole slab, weights streamed from L2 with a 2-4 KB stride) gave
 * 110-150.
 */
#ifndef FM_PGEMM_H
#define FM_PGEMM_H
#include "fm_vec.h"
#include "fm_tuning.h"
#include "fm_igemm.h"

#ifndef FM_PG_KC
#  define FM_PG_KC 128                      /* k per slab: a panel of weights fills L1 */
#endif
#ifndef FM_PG_MC
#  define FM_PG_MC 120                      /* rows per packed range of x (in L2) */
#endif

static inline int fm_pgemm_nr(int OUT) { return fm_igemm_nr(OUT); }
static inline int fm_pgemm_ocp(int OUT) { return fm_igemm_ocp(OUT); }
/* the output columns of one panel (one register block's width) */
static inline int fm_pgemm_panel_cols(int OUT) { return fm_pgemm_nr(OUT) * FM_W; }

/* where w[o, k] goes in wk: panel-major -- panel p (columns p*PW .. p*PW + PW - 1, PW =
   fm_pgemm_panel_cols) is one contiguous (IN, PW) block, so a slab of it is one run of memory
   that stays in L1 (as (IN, OCP) rows, OUT = 1024 put every k of a panel 4 KB apart: the same
   few L1 sets, measured 110 GF/s instead of 150, 1 thread, 1024 x 256 -> 1024) */
static inline ptrdiff_t fm__pg_at(int IN, int PW, int k, int o) {
    return ((ptrdiff_t)(o / PW) * IN + k) * PW + o % PW;
}

/* columns o0..o1 of wk: wk[fm__pg_at(k, o)] = w[o*IN + k], 0 for o >= OUT. Whole FM_W x FM_W
   blocks go through registers (FM_W row loads, fm_vtranspose, FM_W stores: 256x256 packed in
   ~9 us instead of 46 us element by element, AVX-512, 1 thread); o0 a multiple of FM_W */
static void fm_pgemm_pack_cols(float* wk, const float* w, int OUT, int IN, int o0, int o1) {
    int PW = fm_pgemm_panel_cols(OUT), k0, o, k, i;
    for (o = o0; o < o1; o += FM_W) {
        int full_o = o + FM_W <= OUT;
        float* d = wk + fm__pg_at(IN, PW, 0, o);          /* column o's place in its panel */
        for (k0 = 0; k0 < IN; k0 += FM_W) {
            if (full_o && k0 + FM_W <= IN) {
                fm_vf r[FM_W];
                FM_UNROLL_ALL
                for (i = 0; i < FM_W; i++)
                    r[i] = fm_vload(w + (ptrdiff_t)(o + i) * IN + k0);
                fm_vtranspose(r);
                FM_UNROLL_ALL
                for (i = 0; i < FM_W; i++)
                    fm_vstore(d + (ptrdiff_t)(k0 + i) * PW, r[i]);
            } else {
                for (k = k0; k < IN && k < k0 + FM_W; k++)
                    for (i = o; i < o + FM_W && i < o1; i++)
                        wk[fm__pg_at(IN, PW, k, i)] = i < OUT ? w[(ptrdiff_t)i * IN + k] : 0.0f;
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
   rows xs[i] (read in place: k at xs[i][k]) */
FM_ALWAYS_INLINE void fm__pg_block(const int MR, const int NR, float* y, ptrdiff_t ldy,
                                   const float* const* xs, const float* wk, ptrdiff_t ldw,
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
    for (k = 0; k < K; k++, wk += ldw) {
        fm_vf wv[FM_IG_MAX_NR];
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            wv[v] = fm_vload(wk + v * FM_W);
        FM_UNROLL_ALL
        for (i = 0; i < MR; i++) {
            fm_vf bx = fm_vset1(xs[i][k]);
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
            fm_vf r = relu ? fm_vrelu(a[i][v]) : a[i][v];       /* NaN stays NaN */
            int left = ncols - v * FM_W;
            if (left >= FM_W)
                fm_vstore(y + (ptrdiff_t)i * ldy + v * FM_W, r);
            else if (left > 0)
                fm_vstore_n(y + (ptrdiff_t)i * ldy + v * FM_W, r, left);
        }
    }
}

/* the slab k0 .. k0 + kc of panels p0 .. p1 of w (OUT, IN) as it is, packed into ws: panel p's
   rows k at ws + ((p - p0) * kc + k - k0) * PW (zeros past OUT); FM_W x FM_W blocks through
   registers as fm_pgemm_pack_cols */
static void fm__pg_pack_slab(float* ws, const float* w, int OUT, int IN, int PW, int k0, int kc,
                             int p0, int p1) {
    int o, k, i, kk;
    for (o = p0 * PW; o < p1 * PW; o += FM_W) {
        float* d = ws + (ptrdiff_t)(o / PW - p0) * kc * PW + o % PW;
        int full_o = o + FM_W <= OUT;
        for (k = 0; k < kc; k += FM_W) {
            if (full_o && k + FM_W <= kc) {
                fm_vf r[FM_W];
                FM_UNROLL_ALL
                for (i = 0; i < FM_W; i++)
                    r[i] = fm_vload(w + (ptrdiff_t)(o + i) * IN + k0 + k);
                fm_vtranspose(r);
                FM_UNROLL_ALL
                for (i = 0; i < FM_W; i++)
                    fm_vstore(d + (ptrdiff_t)(k + i) * PW, r[i]);
            } else {
                for (kk = k; kk < kc && kk < k + FM_W; kk++)
                    for (i = 0; i < FM_W; i++)
                        d[(ptrdiff_t)kk * PW + i] =
                            o + i < OUT ? w[(ptrdiff_t)(o + i) * IN + k0 + kk] : 0.0f;
            }
        }
    }
}

/* rows n0..n1, panels p0..p1 of y = x @ w.T + bp (then ReLU): wk packed once (fm_pgemm_pack;
   w_raw NULL), or w_raw (OUT, IN) as it is, each slab of the panels packed into ws as it is
   needed (the eager Linear: no pack of the whole matrix, each thread packs what it uses) */
FM_ALWAYS_INLINE void fm__pg_rows(const int MR, const int NR, float* y, const float* x,
                                  const float* wk, const float* bp, int n0, int n1, int IN,
                                  int OUT, int p0, int p1, int relu,
                                  const float* w_raw, float* ws) {
    int PW = NR * FM_W, n, i, p, k0, kc, m0, m1;
    /* the rows in ranges of at most FM_PG_MC (+ MR - 1), balanced: 128 rows are one range, not
       120 + 8 (a range's rows of a slab stay in L2 while the panels pass) */
    int ranges = (n1 - n0 + FM_PG_MC - 1) / FM_PG_MC;
    int mc = ranges > 0 ? ((n1 - n0 + ranges - 1) / ranges + MR - 1) / MR * MR : MR;
    /* and k in balanced slabs: 784 = 7 x 112, not 6 x 128 + 16 (a slab of 16 k reloads and
       stores every accumulator for 16 FMAs each) */
    int slabs = IN > FM_PG_KC ? (IN + FM_PG_KC - 1) / FM_PG_KC : 1, sl;
    int KC = (IN + slabs - 1) / slabs;        /* IN = 0: one empty slab (y = the bias) */
    /* GotoBLAS's loop order: per slab of FM_PG_KC k and range of FM_PG_MC rows, each panel of
       the slab's weights (KC x NR*FM_W, in L1) meets every block of MR rows; the blocks read
       their rows of x in place (MR short runs per slab -- interleaving them into a work array
       first cost more than it saved: 1 thread from C, 1024x1024->256 142 -> 168 GF/s,
       128x256->256 162 -> 176, the others +2-3%) */
    for (sl = 0; sl < slabs; sl++) {
        k0 = sl * KC;
        kc = IN - k0 < KC ? IN - k0 : KC;
        if (w_raw != NULL)
            fm__pg_pack_slab(ws, w_raw, OUT, IN, PW, k0, kc, p0, p1);
        for (m0 = n0; m0 < n1; m0 += mc) {
            m1 = n1 - m0 < mc ? n1 : m0 + mc;
            for (p = p0; p < p1; p++) {
                int ob = p * PW, ncols = OUT - ob < PW ? OUT - ob : PW;
                for (n = m0; n < m1; n += MR) {
                    int mr = m1 - n < MR ? m1 - n : MR;
                    const float* xs[FM_IG_MAX_MR];
                    FM_UNROLL_ALL
                    for (i = 0; i < MR; i++)     /* rows past N: the last row again (not stored) */
                        xs[i] = x + (ptrdiff_t)(n + (i < mr ? i : mr - 1)) * IN + k0;
                    fm__pg_block(MR, NR, y + (ptrdiff_t)n * OUT + ob, OUT, xs,
                                 w_raw != NULL ? ws + (ptrdiff_t)(p - p0) * kc * PW
                                               : wk + fm__pg_at(IN, PW, k0, ob),
                                 PW, bp + ob, kc, k0 > 0,
                                 relu && k0 + kc == IN, mr, ncols);
                }
            }
        }
    }
}

/* rows n0..n1 of y, column panels p0..p1 (of fm_pgemm_panel_cols(OUT) columns each) */
static void fm_pgemm_rows(float* y, const float* x, const float* wk, const float* bp, int n0,
                          int n1, int IN, int OUT, int p0, int p1, int relu) {
    int nr = fm_pgemm_nr(OUT);
#define FM__PG(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__pg_rows(mr_, nr_, y, x, wk, bp, n0, n1, IN, OUT, p0, p1, relu, NULL, NULL); \
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

/* the floats of fm_pgemm_rows_raw's weight work array for np panels */
static inline ptrdiff_t fm_pgemm_ws_size(int IN, int OUT, int np) {
    return (ptrdiff_t)(IN < 1 ? 1 : IN < FM_PG_KC ? IN : FM_PG_KC) * fm_pgemm_panel_cols(OUT) * np;
}

/* fm_pgemm_rows from w (OUT, IN) as it is (the eager Linear): each slab of panels p0..p1 packed
   into ws (fm_pgemm_ws_size(IN, OUT, p1 - p0) floats) as it is needed; bp: the bias padded to
   whole panels (fm_pgemm_ocp(OUT) floats) */
static void fm_pgemm_rows_raw(float* y, const float* x, const float* w, const float* bp, int n0,
                              int n1, int IN, int OUT, int p0, int p1, int relu, float* ws) {
    int nr = fm_pgemm_nr(OUT);
#define FM__PG(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__pg_rows(mr_, nr_, y, x, NULL, bp, n0, n1, IN, OUT, p0, p1, relu, w, ws); \
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
