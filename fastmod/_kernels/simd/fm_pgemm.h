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
#include "fm_gelu.h"

/* the exact GELU (fm_gelu.h) as the epilogue: inference, where nothing keeps the GEMM's
   output for a backward (a separate pass over a 1024 x 1024 output was 0.6 ms of
   transformer_b16's 16) */
#define FM_PG_GELU 2
static inline int fm_pgemm_gelu_ok(void) { return FM_LEVEL >= 1; }

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

/* columns o0..o1 (multiples of FM_W) of the slab k0 .. k0 + kc of w (OUT, IN) as it is,
   transposed into ws panel-major: column o's row k at ws + ((o / PW - pbase) * kc + k - k0) *
   PW + o % PW (zeros past OUT). Whole FM_W x FM_W blocks go through registers (FM_W row loads,
   fm_vtranspose, FM_W stores: 256x256 packed in ~6 us instead of 46 us element by element,
   AVX-512, 1 thread) */
static void fm__pg_pack_slab(float* ws, const float* w, int OUT, int IN, int PW, int k0, int kc,
                             int o0, int o1, int pbase) {
    int o, k, i, kk;
    for (o = o0; o < o1; o += FM_W) {
        float* d = ws + (ptrdiff_t)(o / PW - pbase) * kc * PW + o % PW;
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

/* columns o0..o1 of wk: wk[fm__pg_at(k, o)] = w[o*IN + k], 0 for o >= OUT -- all of k as one
   slab; o0 a multiple of FM_W */
static void fm_pgemm_pack_cols(float* wk, const float* w, int OUT, int IN, int o0, int o1) {
    fm__pg_pack_slab(wk, w, OUT, IN, fm_pgemm_panel_cols(OUT), 0, IN, o0, o1, 0);
}

/* the whole of wk, and bp[o] = b[o] (0 past OUT, or b NULL) */
static void fm_pgemm_pack(float* wk, float* bp, const float* w, const float* b, int OUT, int IN) {
    int OCP = fm_pgemm_ocp(OUT), o;
    fm_pgemm_pack_cols(wk, w, OUT, IN, 0, OCP);
    for (o = 0; o < OCP; o++)
        bp[o] = (b != NULL && o < OUT) ? b[o] : 0.0f;
}

/* one register block: y rows (mr <= MR), NR vectors of columns (ncols valid) from the rows
   xs[i] of the left operand, read in place (its k-th value at xs[i][k * sk]); acc: start from
   y (a later slab of k, or y += ...), else from the bias bp (NULL: zero) */
FM_ALWAYS_INLINE void fm__pg_block(const int MR, const int NR, float* y, ptrdiff_t ldy,
                                   const float* const* xs, ptrdiff_t sk, const float* wk,
                                   ptrdiff_t ldw, const float* bp, int K, int acc, int relu,
                                   int mr, int ncols) {
    fm_vf a[FM_IG_MAX_MR][FM_IG_MAX_NR];
    int i, v, k;
    FM_UNROLL_ALL
    for (i = 0; i < MR; i++) {
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++) {
            int left = ncols - v * FM_W;
            if (!acc)                           /* the first slab of k: start from the bias */
                a[i][v] = bp != NULL ? fm_vload(bp + v * FM_W) : fm_vzero();
            else if (i < mr && left >= FM_W)    /* later slabs: the partial sums in y */
                a[i][v] = fm_vload(y + (ptrdiff_t)i * ldy + v * FM_W);
            else                                /* a row past N, or the panel's last columns */
                a[i][v] = fm_vload_n(y + (ptrdiff_t)(i < mr ? i : 0) * ldy + v * FM_W,
                                     left < 0 ? 0 : (left > FM_W ? FM_W : left));
        }
    }
    ptrdiff_t ko = 0;
    FM_UNROLL2
    for (k = 0; k < K; k++, wk += ldw, ko += sk) {
        fm_vf wv[FM_IG_MAX_NR];
        FM_UNROLL_ALL
        for (v = 0; v < NR; v++)
            wv[v] = fm_vload(wk + v * FM_W);
        FM_UNROLL_ALL
        for (i = 0; i < MR; i++) {
            fm_vf bx = fm_vset1(xs[i][ko]);
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
            fm_vf r = a[i][v];                  /* relu 1: max(., 0) (NaN stays NaN); 2: GELU */
            if (relu == 1)
                r = fm_vrelu(r);
#if FM_LEVEL >= 1
            else if (relu == FM_PG_GELU)
                r = fm_gelu_fwd_v(r);
#endif
            int left = ncols - v * FM_W;
            if (left >= FM_W)
                fm_vstore(y + (ptrdiff_t)i * ldy + v * FM_W, r);
            else if (left > 0)
                fm_vstore_n(y + (ptrdiff_t)i * ldy + v * FM_W, r, left);
        }
    }
}

/* the slab k0 .. k0 + kc of panels p0 .. p1 of a right operand b (K, NC) stored row-major
   (leading dimension ldb) -- y (+)= A @ b, the Linear backward's dW = dy^T x and dx = dy W: a
   panel's rows are runs of b's rows, copied (zeros past NC); layout as fm__pg_pack_slab */
static void fm__pg_copy_slab(float* ws, const float* b, ptrdiff_t ldb, int NC, int PW, int k0,
                             int kc, int p0, int p1) {
    int p, k, j;
    for (p = p0; p < p1; p++) {
        int c0 = p * PW, n = NC - c0 < PW ? NC - c0 : PW;
        float* d = ws + (ptrdiff_t)(p - p0) * kc * PW;
        for (k = 0; k < kc; k++, d += PW) {
            const float* src = b + (ptrdiff_t)(k0 + k) * ldb + c0;
            for (j = 0; j + FM_W <= n; j += FM_W)
                fm_vstore(d + j, fm_vload(src + j));
            if (j < n)
                fm_vstore(d + j, fm_vload_n(src + j, n - j));    /* zeros past NC */
            for (j = (n + FM_W - 1) / FM_W * FM_W; j < PW; j += FM_W)
                fm_vstore(d + j, fm_vzero());
        }
    }
}

/* One GEMM y (M, NC) (+)= A (M, K) @ B (K, NC) (+ bias, then ReLU) for fm__pg_rows:
   A[i][k] = a[i * ars + k * aks] (the forward's x: ars = K, aks = 1; the backward's dy^T:
   ars = 1, aks = OUT), read in place; B one of
     wk     packed once, panel-major (fm__pg_at with K rows): the planned Linear;
     bt     B^T (NC, K) as it is, each slab of panels transposed into ws as it is needed (the
            eager forward's w: y = x w^T);
     bn     B (K, NC) row-major, leading dimension ldb, each slab copied into ws (the
            backward's x for dW and W for dx). */
typedef struct {
    float* y;
    ptrdiff_t ldy;
    const float* a;
    ptrdiff_t ars, aks;
    const float* wk;
    const float* bt;
    const float* bn;
    ptrdiff_t ldb;
    const float* bias;      /* whole panels (fm_pgemm_ocp(NC) floats), or NULL: none */
    float* ws;              /* fm_pgemm_ws_size(K, NC, panels) floats (bt, bn) */
    int K, NC;
    int beta;               /* y += the product (the first slab loads y) */
    int relu;               /* on the result: 0 nothing, 1 max(., 0), FM_PG_GELU GELU (vector
                               levels only: fm_pgemm_gelu_ok) */
} fm_pg_args;

/* rows n0..n1, column panels p0..p1 of one fm_pg_args GEMM */
FM_ALWAYS_INLINE void fm__pg_rows(const int MR, const int NR, const fm_pg_args* g, int n0,
                                  int n1, int p0, int p1) {
    int PW = NR * FM_W, n, i, p, k0, kc, m0, m1, K = g->K, NC = g->NC;
    /* the rows in ranges of at most FM_PG_MC (+ MR - 1), balanced: 128 rows are one range, not
       120 + 8 (a range's rows of a slab stay in L2 while the panels pass) */
    int ranges = (n1 - n0 + FM_PG_MC - 1) / FM_PG_MC;
    int mc = ranges > 0 ? ((n1 - n0 + ranges - 1) / ranges + MR - 1) / MR * MR : MR;
    /* and k in balanced slabs: 784 = 7 x 112, not 6 x 128 + 16 (a slab of 16 k reloads and
       stores every accumulator for 16 FMAs each) */
    int slabs = K > FM_PG_KC ? (K + FM_PG_KC - 1) / FM_PG_KC : 1, sl;
    int KC = (K + slabs - 1) / slabs;         /* K = 0: one empty slab (y = the bias) */
    /* GotoBLAS's loop order: per slab of FM_PG_KC k and range of FM_PG_MC rows, each panel of
       the slab's weights (KC x NR*FM_W, in L1) meets every block of MR rows; the blocks read
       their rows of A in place (MR short runs per slab -- interleaving them into a work array
       first cost more than it saved: 1 thread from C, 1024x1024->256 142 -> 168 GF/s,
       128x256->256 162 -> 176, the others +2-3%) */
    for (sl = 0; sl < slabs; sl++) {
        k0 = sl * KC;
        kc = K - k0 < KC ? K - k0 : KC;
        if (g->bt != NULL)
            fm__pg_pack_slab(g->ws, g->bt, NC, K, PW, k0, kc, p0 * PW, p1 * PW, p0);
        else if (g->bn != NULL)
            fm__pg_copy_slab(g->ws, g->bn, g->ldb, NC, PW, k0, kc, p0, p1);
        for (m0 = n0; m0 < n1; m0 += mc) {
            m1 = n1 - m0 < mc ? n1 : m0 + mc;
            for (p = p0; p < p1; p++) {
                int ob = p * PW, ncols = NC - ob < PW ? NC - ob : PW;
                const float* bw = g->wk != NULL ? g->wk + fm__pg_at(K, PW, k0, ob)
                                                : g->ws + (ptrdiff_t)(p - p0) * kc * PW;
                for (n = m0; n < m1; n += MR) {
                    int mr = m1 - n < MR ? m1 - n : MR;
                    const float* xs[FM_IG_MAX_MR];
                    FM_UNROLL_ALL
                    for (i = 0; i < MR; i++)     /* rows past M: the last row again (not stored) */
                        xs[i] = g->a + (ptrdiff_t)(n + (i < mr ? i : mr - 1)) * g->ars
                                + (ptrdiff_t)k0 * g->aks;
                    fm__pg_block(MR, NR, g->y + (ptrdiff_t)n * g->ldy + ob, g->ldy, xs, g->aks,
                                 bw, PW, g->bias != NULL ? g->bias + ob : NULL, kc,
                                 k0 > 0 || g->beta, k0 + kc == K ? g->relu : 0, mr, ncols);
                }
            }
        }
    }
}

/* fm__pg_rows at the register block of g->NC's width */
static void fm_pgemm_run(const fm_pg_args* g, int n0, int n1, int p0, int p1) {
    int nr = fm_pgemm_nr(g->NC);
#define FM__PG(nr_, mr_) \
    if (nr == (nr_)) { \
        fm__pg_rows(mr_, nr_, g, n0, n1, p0, p1); \
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

/* the floats of the work array ws for np panels of NC columns, K deep */
static inline ptrdiff_t fm_pgemm_ws_size(int K, int NC, int np) {
    return (ptrdiff_t)(K < 1 ? 1 : K < FM_PG_KC ? K : FM_PG_KC) * fm_pgemm_panel_cols(NC) * np;
}

/* rows n0..n1 of y (N, OUT) = x (N, IN) @ w.T + bp (then ReLU), column panels p0..p1 (of
   fm_pgemm_panel_cols(OUT) columns each), from wk packed once (fm_pgemm_pack) */
static void fm_pgemm_rows(float* y, const float* x, const float* wk, const float* bp, int n0,
                          int n1, int IN, int OUT, int p0, int p1, int relu) {
    fm_pg_args g = {y, OUT, x, IN, 1, wk, NULL, NULL, 0, bp, NULL, IN, OUT, 0, relu};
    fm_pgemm_run(&g, n0, n1, p0, p1);
}

/* the same from w (OUT, IN) as it is (the eager Linear): each slab of panels p0..p1 packed
   into ws (fm_pgemm_ws_size(IN, OUT, p1 - p0) floats) as it is needed; bp: the bias padded to
   whole panels (fm_pgemm_ocp(OUT) floats) */
static void fm_pgemm_rows_raw(float* y, const float* x, const float* w, const float* bp, int n0,
                              int n1, int IN, int OUT, int p0, int p1, int relu, float* ws) {
    fm_pg_args g = {y, OUT, x, IN, 1, NULL, w, NULL, 0, bp, ws, IN, OUT, 0, relu};
    fm_pgemm_run(&g, n0, n1, p0, p1);
}

/* rows m0..m1, column panels p0..p1 of y (M, NC) (+= when beta) A @ B, A[i][k] = a[i*ars +
   k*aks], B (K, NC) row-major (leading dimension ldb), ws: fm_pgemm_ws_size(K, NC, p1 - p0)
   floats (the Linear backward: dW = dy^T x, dx = dy W) */
static void fm_pgemm_nn(float* y, ptrdiff_t ldy, const float* a, ptrdiff_t ars, ptrdiff_t aks,
                        const float* b, ptrdiff_t ldb, int K, int NC, int m0, int m1, int p0,
                        int p1, int beta, float* ws) {
    fm_pg_args g = {y, ldy, a, ars, aks, NULL, NULL, b, ldb, NULL, ws, K, NC, beta, 0};
    fm_pgemm_run(&g, m0, m1, p0, p1);
}

#endif /* FM_PGEMM_H */
