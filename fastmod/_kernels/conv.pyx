# cython: language_level=3
"""Convolution (the seed's Conv1D / Conv2D, cross-correlation as torch) forward and backward:
im2col + GEMM, parallel over the batch.

Legend: N = batch, C = input channels, H, W = input size, OC = output channels, KH, KW = kernel,
SH, SW = stride, PH, PW = top / left padding (the bottom / right padding is implied by OH, OW),
DH, DW = dilation, G = groups, Cg = C / G, OCg = OC / G, K = Cg*KH*KW (GEMM depth per group),
P = OH*OW (output positions per image).
Layouts (row-major, one dtype): x (N, C, H, W), weight (OC, Cg, KH, KW), bias (OC,),
y (N, OC, OH, OW). Conv1d is the H = KH = 1 case. Inside one image, x and y must be
C-contiguous, but consecutive images may be further apart (batch stride >= C*H*W): DenseBlock
passes a channel prefix of its concatenation buffer as x and a channel slice of it as y.

Per image n and group g (cols = im2col(x_n), (C*KH*KW, P); group g owns rows g*K..(g+1)*K):
    y_n[g]  (OCg, P) = W_g (OCg, K) @ cols_g (K, P) + b_g
    dW_g   (OCg, K) += dy_n[g] (OCg, P) @ cols_g^T (P, K)
    dcols_g (K, P)   = W_g^T (K, OCg) @ dy_n[g] (OCg, P);   dx_n = col2im(dcols)
Paths chosen per layer (_geom_set), each measured against the one it replaces; every threshold
is a per-level constant of simd/fm_tuning.h, next to its measurement (one table per level):
  * 1x1 kernel, stride 1, no padding: no im2col at all, cols = x_n (a plain GEMM).
  * GEMM orientation: y^T and dW^T (column-major M = OC) when OC is the small side (_pick).
  * stride-1 2-D forward with C >= 16 and OC < 32: per-kernel-row GEMMs on a zero-padded,
    position-major copy of x_n (Geom.shifted).
  * other groups-1 forwards with C >= 64, or C >= 16 and a stride or a 2-D kernel: patch rows
    (P, KH*KW*C) from a position-major copy, several small images per GEMM (Geom.im2row).
  * forward with relu: max(y, 0) on each image in the same call (Sequential Conv+ReLU, blocks).
  * stride-1 dx with OC < C: a convolution of dy with the flipped weights (Geom.dxconv).
  * strided backward with C >= 16: dW = dy @ rows and drows = dy^T @ W on the forward's patch
    rows (position-major), drows added into a padded position-major plane in contiguous runs
    and transposed into dx (Geom.rbwd): no strided gather or scatter.
  * 3x3 stride-1 forward with C >= 32: Winograd F(2x2, 3x3), 16 GEMMs of depth C over blocks of
    2x2-output tiles (Geom.wino); dW likewise with C >= 48 (Geom.wdw, dU = V^T (A dY A^T)).
  * 1-D k5 stride-1 forward with C >= 32: Winograd F(2, 5), 6 GEMMs of depth C (Geom.wino5).
  * stride-1 dx as a forward convolution of dy through one of the forward paths when it would
    take one (Geom.dxfwd): no col2im scatter.
  * one input channel per group (depthwise): direct loops, no GEMM (Geom.dwise).
  * im2col in tiles of output rows, bounding the per-thread scratch (Geom.rows); its stride-2
    rows (and col2im's) through vector deinterleaves (fm_gather2 / fm_scatter2_add).
float32 only (Geom.f32), hand-written SIMD compiled per level, taking precedence over the above
where fm_tuning.h says so:
  * few input or output channels, stride 1 (RGB stems, DenseBlock's 12-channel layers): direct
    FMA loops over register blocks of NV vectors x NO channels (simd/fm_direct.h): the forward
    (Geom.small) and the weight gradient (Geom.ddw, NO channels x 3 taps per block).
  * an implicit GEMM on the position-major plane (simd/fm_igemm.h): register blocks of MR
    output positions x NR vectors of output channels over the patch's contiguous runs, no
    patch rows and no BLAS packing: the forward (Geom.igemm), dW (Geom.igdw), the strided dx's
    dy^T W (Geom.igdx) and Winograd's 16 GEMMs (Geom.wig). At the avx2 level not where SciPy's
    OpenBLAS runs AVX-512 kernels (_blas_runs_avx512: there its GEMMs are faster).
The position-major copies of x (and dy) and the transposing epilogue are FM_W x FM_W register
transposes (simd/fm_conv.h, _pack_nhwc, _transpose_add). A path forced by a set_* mode wins
over the automatic choice of another.

Threads (measured on the 2-core dev box, bench/bench_conv.py --only recipe): the batch is split
into one contiguous chunk of images per thread; each thread im2cols one image at a time into its
own buffer and calls a single-threaded GEMM. That beat one big batched GEMM (im2col of the whole
batch, then one GEMM split over threads, then a transposing copy) by 1.1-3.5x in forward;
backward uses the same per-image structure. dW and db go through per-thread partials summed in
thread order, so a fixed thread count gives bit-identical results. With fewer images than
threads (batch 1), images run in turn and each GEMM is split over the threads.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from fastmod._kernels._alloc cimport fm_malloc
from fastmod._kernels._blas cimport gemm, pgemm
from fastmod._kernels._planes cimport sum_contig
from fastmod._kernels._threads cimport num_threads

cnp.import_array()

# FM_W floats at a time (simd/fm_vec.h: 16 with AVX-512, 8 with AVX2, 1 at the scalar level)
# for the few-input-channel direct loops (_small_forward_image)
cdef extern from "fm_vec.h":
    int FM_W
    int FM_LEVEL
    ctypedef struct fm_vf:
        pass
    fm_vf fm_vload(const float* p) noexcept nogil
    fm_vf fm_vset1(float a) noexcept nogil
    fm_vf fm_vfma(fm_vf a, fm_vf b, fm_vf c) noexcept nogil
    fm_vf fm_vrelu(fm_vf a) noexcept nogil
    void fm_vstore(float* p, fm_vf a) noexcept nogil
    fm_vf fm_vadd(fm_vf a, fm_vf b) noexcept nogil
    fm_vf fm_vload_n(const float* p, int n) noexcept nogil
    void fm_vstore_n(float* p, fm_vf a, int n) noexcept nogil

cdef extern from "fm_cpu.h":
    unsigned fm_cpu_features() noexcept nogil
    unsigned FM_CPU_AVX512F

cdef extern from "fm_tuning.h":
    # the per-level path thresholds (measurements next to each in simd/fm_tuning.h)
    int FM_SMALL_C
    int FM_SMALL_C_OC
    int FM_SMALL_OC
    int FM_SMALL_OC_C
    int FM_SMALL_C_B512
    int FM_SMALL_C_OC_B512
    int FM_SMALL_OC_B512
    int FM_SMALL_OC_C_B512
    int FM_DWD_C_B512
    int FM_DWD_C_OC_B512
    int FM_DWD_OC_B512
    int FM_DWD_OC_C_B512
    int FM_DXFWD5_C
    int FM_DWD_C
    int FM_DWD_C_OC
    int FM_DWD_OC
    int FM_DWD_OC_C
    int FM_IG_FWD_C
    int FM_IG_FWD_S1
    int FM_IG_DW_C
    int FM_IG_DW_WINO_OC
    int FM_IG_DX
    int FM_IG_WITH_BLAS512
    int FM_IG_WINO
    int FM_WINO_COC
    int FM_TOUT_OC
    int FM_TOUT_K
    int FM_SHIFTED_C
    int FM_SHIFTED_OC
    int FM_IM2ROW_C
    int FM_IM2ROW_C2
    int FM_WINO_C
    int FM_WDW_C
    int FM_WINO5_C
    int FM_RBWD_C

cdef extern from "fm_direct.h":
    int fm_direct_fwd_no(int OW, int OC) noexcept nogil
    void fm_direct_pack(float* wp, float* bp, const float* w, const float* b, int OC, int CKK,
                        int NO) noexcept nogil
    void fm_direct_fwd(float* y, const float* xp, const float* wp, const float* bp, int OC,
                       int OH, int OW, int C, int Hp, int Ws, int KH, int KW, int DH, int DW,
                       int acc, int relu) noexcept nogil
    Py_ssize_t fm_direct_dw_size(int OC, int CKK) noexcept nogil
    Py_ssize_t fm_direct_dw_scratch(int OC, int OH, int OW) noexcept nogil
    void fm_direct_dw_image(float* vacc, const float* dy, const float* xp, float* scratch,
                            int OC, int OH, int OW, int C, int Hp, int Ws, int KH, int KW,
                            int DH, int DW) noexcept nogil
    void fm_direct_dw_finish(float* dw, const float* vacc, int nt, Py_ssize_t psize, int OC,
                             int CKK, int acc) noexcept nogil

cdef extern from "fm_igemm.h":
    int fm_igemm_ocp(int OC) noexcept nogil
    void fm_igemm_pack(float* wk, const float* w, int OC, int C, int KH, int KW) noexcept nogil
    void fm_igemm_fwd(float* yt, const float* xp, const float* wk, int OC, int OH, int OW,
                      int C, int Wq, int KH, int KW, int SH, int SW, int DH, int DW) noexcept nogil
    void fm_igemm_dw(float* dwt, const float* dyt, const float* xp, int OC, int OH, int OW,
                     int C, int Wq, int KH, int KW, int SH, int SW, int DH, int DW,
                     int beta) noexcept nogil

cdef extern from "fm_conv.h":
    void fm_transpose_add(float* dst, Py_ssize_t ldd, const float* src, Py_ssize_t lds,
                          int rows, int cols, const float* bias, int acc, int relu) noexcept nogil
    void fm_gather2(float* dst, const float* src, int n, int m) noexcept nogil
    void fm_scatter2_add(float* dst, const float* src, int n, int m) noexcept nogil

cdef enum:
    SERIAL_MACS = 1 << 17       # a whole conv below this many multiply-adds runs on one thread


# ---------------------------------------------------------------- im2col / col2im
cdef inline void _valid_range(int off, int stride, int size, int out, int* lo, int* hi) noexcept nogil:
    # the output columns o in [lo, hi) whose input column o*stride + off lies in [0, size)
    cdef int a, b
    a = 0 if off >= 0 else (-off + stride - 1) // stride
    b = (size - off + stride - 1) // stride if size - off > 0 else 0
    if b > out:
        b = out
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


cdef void im2col_2d(floating* col, const floating* x, int C, int H, int W, int oh0, int OH,
                    int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
                    Py_ssize_t ldc) noexcept nogil:
    """col (C*KH*KW, OH*OW) for the output rows oh0 .. oh0+OH-1, rows of col ldc apart:
    col[(c, kh, kw), (oh - oh0, ow)] = x[c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW] (0 outside x).
    Loops over the kernel window; each output row is a strided copy."""
    cdef int c, kh, kw, oh, ow, ih, off, lo, hi
    cdef floating* row
    cdef const floating* src
    cdef Py_ssize_t r = 0
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                off = kw * DW - PW
                _valid_range(off, SW, W, OW, &lo, &hi)
                row = col + r * ldc
                r += 1
                for oh in range(oh0, oh0 + OH):
                    ih = oh * SH - PH + kh * DH
                    if ih < 0 or ih >= H or lo >= hi:
                        memset(row, 0, OW * sizeof(floating))
                    else:
                        src = x + (<Py_ssize_t>c * H + ih) * W
                        for ow in range(lo):
                            row[ow] = 0
                        if SW == 1:
                            memcpy(row + lo, src + lo + off, (hi - lo) * sizeof(floating))
                        elif floating is float and SW == 2:
                            fm_gather2(row + lo, src + 2 * lo + off, hi - lo, W - 2 * lo - off)
                        else:
                            for ow in range(lo, hi):
                                row[ow] = src[ow * SW + off]
                        for ow in range(hi, OW):
                            row[ow] = 0
                    row += OW


cdef void col2im_2d(floating* x, const floating* col, int C, int H, int W, int oh0, int OH,
                    int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
                    Py_ssize_t ldc) noexcept nogil:
    """The adjoint of im2col_2d: x[c, ih, iw] += col[(c, kh, kw), (oh - oh0, ow)] (x must be
    initialized)."""
    cdef int c, kh, kw, oh, ow, ih, off, lo, hi
    cdef const floating* row
    cdef floating* dst
    cdef Py_ssize_t r = 0
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                off = kw * DW - PW
                _valid_range(off, SW, W, OW, &lo, &hi)
                row = col + r * ldc
                r += 1
                for oh in range(oh0, oh0 + OH):
                    ih = oh * SH - PH + kh * DH
                    if ih >= 0 and ih < H:
                        dst = x + (<Py_ssize_t>c * H + ih) * W + off
                        if SW == 1:
                            for ow in range(lo, hi):
                                dst[ow] += row[ow]
                        elif floating is float and SW == 2:
                            fm_scatter2_add(dst + 2 * lo, row + lo, hi - lo, W - 2 * lo - off)
                        else:
                            for ow in range(lo, hi):
                                dst[ow * SW] += row[ow]
                    row += OW


# ---------------------------------------------------------------- position-major copies
cdef inline void _transpose_add(floating* dst, Py_ssize_t ldd, const floating* src,
                                Py_ssize_t lds, int rows, int cols, const floating* bias,
                                bint acc, bint relu) noexcept nogil:
    # dst[j*ldd + i] (+= when acc) src[i*lds + j] (+ bias[j]) for i < rows, j < cols, then
    # max(., 0) when relu (NaN stays NaN): float32 in FM_W x FM_W register blocks (fm_conv.h)
    cdef int i, j
    cdef floating v
    if floating is float:
        fm_transpose_add(dst, ldd, src, lds, rows, cols, bias, acc, relu)
    else:
        for j in range(cols):
            for i in range(rows):
                v = src[i * lds + j]
                if bias != NULL:
                    v = v + bias[j]
                if acc:
                    v = dst[j * ldd + i] + v
                if relu and v < 0:
                    v = 0
                dst[j * ldd + i] = v


cdef inline void _pack_nhwc(floating* xp, const floating* x, int C, int H, int W, int Hq,
                            int Wq, int PH, int PW) noexcept nogil:
    # x (C, H, W) copied position-major into the zero-padded (Hq, Wq, C) plane xp:
    # xp[i, iw, c] = x[c, i - PH, iw - PW] (0 outside x); only the padding is zeroed (the whole
    # plane was 3.5% of the 32->64 stride-2 forward)
    cdef int ih0 = max(0, PH), ih1 = min(Hq, H + PH)
    cdef int iw0 = max(0, PW), iw1 = min(Wq, W + PW)
    cdef int i
    cdef Py_ssize_t rs = <Py_ssize_t>Wq * C
    if iw1 <= iw0 or ih1 <= ih0:
        memset(xp, 0, Hq * rs * sizeof(floating))
        return
    memset(xp, 0, ih0 * rs * sizeof(floating))
    memset(xp + ih1 * rs, 0, (Hq - ih1) * rs * sizeof(floating))
    for i in range(ih0, ih1):
        memset(xp + i * rs, 0, <Py_ssize_t>iw0 * C * sizeof(floating))
        memset(xp + i * rs + <Py_ssize_t>iw1 * C, 0, <Py_ssize_t>(Wq - iw1) * C * sizeof(floating))
        _transpose_add(xp + i * rs + <Py_ssize_t>iw0 * C, C,
                       x + <Py_ssize_t>(i - PH) * W + iw0 - PW, <Py_ssize_t>H * W,
                       C, iw1 - iw0, <const floating*>NULL, False, False)


cdef inline void _copy_run(floating* dst, const floating* src, int n) noexcept nogil:
    # dst[:n] = src[:n] for the short runs of the patch copies (an inline vector loop: memcpy
    # calls of 96 floats were 8% of the 32->64 stride-2 forward)
    cdef int i = 0
    if floating is float:
        while i + FM_W <= n:
            fm_vstore(dst + i, fm_vload(src + i))
            i = i + FM_W
        if i < n:
            fm_vstore_n(dst + i, fm_vload_n(src + i, n - i), n - i)
    else:
        memcpy(dst, src, n * sizeof(floating))


# ---------------------------------------------------------------- geometry of one call
cdef struct Geom:
    int N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, G
    int Cg, OCg, K, P
    Py_ssize_t xs, ys       # batch strides of x / dx and y / dy, in elements
    bint direct             # 1x1 kernel, stride 1, no padding: cols are x itself
    bint tout               # forward GEMM writes y_n^T (P, OC) into scratch, then transposes
    bint tdw                # dW partials are kept transposed, (G, K, OCg)
    int rows                # output rows per im2col tile (bounds the per-thread scratch)
    bint dwise              # depthwise (one input channel per group): direct loops, no GEMM
    bint dxconv             # stride 1: dx as a convolution of dy with the flipped weights
    bint shifted            # stride 1 forward: per-tap GEMMs on a padded copy (no im2col)
    int Hp, Wp              # its padded plane, OH + DH*(KH-1) by OW + DW*(KW-1)
    int PHt, PWt            # its padding, DH*(KH-1) - PH and DW*(KW-1) - PW
    bint im2row             # forward: patches as rows (P, KH*KW*C) from a position-major copy
    int Hq, Wq              # its padded plane, (OH-1)*SH + DH*(KH-1) + 1 by (OW-1)*SW + DW*(KW-1) + 1
    int imb                 # images per im2row GEMM (small images: one GEMM over several)
    bint relu               # forward: y = max(y, 0) on each image while it is in cache
    bint acc                # forward (im2row / shifted only): y += the result (dx through dxfwd)
    bint dxfwd              # stride-1 dx as a forward convolution of dy (im2row / shifted path)
    bint wino               # 3x3 stride-1 forward as Winograd F(2x2, 3x3): 16 GEMMs of depth C
    int TH, TW              # its 2x2 output tiles per image (rows, columns)
    int wimb                # images per block (their tiles stacked in each of the 16 GEMMs)
    bint wdw                # dW through Winograd: dU_xi (C, OC) += V_xi^T (C, T) @ (A dY A^T)_xi
    bint wino5              # 1-D k5 stride-1 forward as Winograd F(2, 5): 6 GEMMs of depth C
    bint small              # few channels, stride 1 (float32): direct FMA loops (fm_direct.h)
    bint rbwd               # dW and dx through the im2row patch rows (position-major backward)
    bint ddw                # dW through the direct loops (fm_direct.h; float32, stride 1)
    bint igemm              # forward as an implicit GEMM on position-major planes (fm_igemm.h)
    bint igdw               # dW likewise (float32)
    bint igdx               # Geom.rbwd's dx GEMM through the implicit-GEMM kernel (float32)
    bint wig                # Winograd's 16 GEMMs (forward and dW) through that kernel (float32)
    int Ws                  # its padded row length, OW rounded up to 2*FM_W plus DW*(KW-1)
    bint f32                # float32 data: the SIMD paths (small, ddw, igemm, igdw, igdx) apply


cdef inline Py_ssize_t _col_size(Geom* g) noexcept nogil:
    # per-thread scratch: the cols, then (tout) the transposed output
    cdef Py_ssize_t pt = <Py_ssize_t>g.rows * g.OW
    if g.dwise:
        if g.SH == 1 and g.SW == 1:     # padded x plane, dy rows at padded width, dx plane
            return 2 * (<Py_ssize_t>g.Hp * g.Wp + (g.KW - 1) * g.DW) + <Py_ssize_t>g.OH * g.Wp
        return 1
    # the largest of what the paths this call may take need (forward and backward share g)
    cdef Py_ssize_t sh = 0, t
    cdef Py_ssize_t tiles = <Py_ssize_t>g.wimb * g.TH * g.TW
    if g.small:
        sh = max(sh, <Py_ssize_t>g.C * g.Hp * g.Ws)
    if g.ddw:
        sh = max(sh, <Py_ssize_t>g.C * g.Hp * g.Ws + fm_direct_dw_scratch(g.OC, g.OH, g.OW))
    if g.im2row or g.rbwd:
        # (the implicit-GEMM dx writes its rows fm_igemm_ocp(K) apart)
        sh = max(sh, <Py_ssize_t>g.Hq * g.Wq * g.C
                 + <Py_ssize_t>g.imb * g.P * (max(g.K, fm_igemm_ocp(g.K)) + g.OC))
    if g.igemm or g.igdw:
        sh = max(sh, <Py_ssize_t>g.Hq * g.Wq * g.C + <Py_ssize_t>g.P * fm_igemm_ocp(g.OC))
    if g.shifted:
        sh = max(sh, (<Py_ssize_t>g.Hp * g.Wp + (g.KW - 1) * g.DW) * g.C
                 + <Py_ssize_t>g.C * g.KW * g.Hp * g.Wp + <Py_ssize_t>g.OH * g.Wp * g.OC)
    cdef Py_ssize_t n = 1 if g.direct else <Py_ssize_t>g.C * g.KH * g.KW * pt
    if g.tout:
        n += <Py_ssize_t>g.OC * pt
    if g.dxconv and <Py_ssize_t>g.OC * g.KH * g.KW * g.H * g.W > n:
        n = <Py_ssize_t>g.OC * g.KH * g.KW * g.H * g.W
    if g.wino5:
        t = <Py_ssize_t>g.wimb * g.OH * g.TW
        sh = max(sh, <Py_ssize_t>g.OH * (2 * g.TW + 4) * g.C + 6 * t * (g.C + g.OC)
                 + <Py_ssize_t>g.P * g.OC)
    if g.wino or g.wdw:
        # padded plane, V (16, T, C), M (16, T, OC), one image's output (P, OC), 8 rows of OC;
        # for dW, M holds the transformed dy, then its (2TH, 2TW, OC) position-major copy
        t = <Py_ssize_t>g.P * g.OC
        if <Py_ssize_t>g.TH * g.TW * 4 * g.OC > t:
            t = <Py_ssize_t>g.TH * g.TW * 4 * g.OC
        sh = max(sh, <Py_ssize_t>(2 * g.TH + 2) * (2 * g.TW + 2) * g.C
                 + 16 * tiles * (g.C + g.OC) + t + 8 * g.OC)
    return n if n > sh else sh


# GEMM orientation. BLAS is column-major: a row-major y_n (OC, P) is a column-major (P, OC)
# product, and OpenBLAS's kernels run markedly faster when the column-major M is the small
# dimension (measured, one core, plain sgemm GFLOP/s: M,K,N = 12,540,1024: 50 vs 1024,540,12: 29;
# 32,27,1024: 59 vs 1024,27,32: 42; 64,576,256: 78 vs 256,576,64: 65). So the forward computes
# y_n^T (P, OC) -- column-major (OC, P) -- into scratch and transposes it into y (adding the
# bias on the way); dW likewise accumulates dW^T (K, OC) per thread and transposes once at the
# end. LAYOUT_AUTO picks by the rule below; the others force one way (for bench_conv.py).
cdef enum:
    LAYOUT_AUTO = 0
    LAYOUT_PLAIN = 1
    LAYOUT_TRANSPOSED = 2

cdef int _fwd_layout = LAYOUT_AUTO
cdef int _dw_layout = LAYOUT_AUTO


cdef Py_ssize_t _tile_elems = 1 << 20
cdef bint _depthwise_direct = True
cdef bint _dx_as_conv = True
cdef bint _dx_as_force = False
cdef int _fwd_shifted = 0
cdef int _fwd_im2row = 0
cdef int _dx_fwd = 0
cdef int _fwd_wino = 0
cdef Py_ssize_t _wino_tiles = 256
cdef int _dw_wino = 0
cdef int _fwd_small = 0
cdef int _fwd_wino5 = 0
cdef int _bwd_im2row = 0
cdef int _dw_direct = 0
cdef int _fwd_igemm = 0


def _blas_runs_avx512():
    # SciPy's OpenBLAS picks its kernels from the CPU (OPENBLAS_CORETYPE overrides it): on an
    # AVX-512 CPU its sgemm runs AVX-512 kernels whatever level fastmod's kernels run at, and the
    # crossovers between the BLAS paths and the implicit GEMM depend on that (fm_tuning.h)
    import os
    core = os.environ.get("OPENBLAS_CORETYPE", "").strip().lower()
    if core:
        return core in ("skylakex", "cooperlake", "sapphirerapids")
    return bool(fm_cpu_features() & FM_CPU_AVX512F)


cdef bint _blas512 = _blas_runs_avx512()
# the direct loops' thresholds for the BLAS this process runs (fm_tuning.h)
cdef int _small_c = FM_SMALL_C_B512 if _blas512 else FM_SMALL_C
cdef int _small_c_oc = FM_SMALL_C_OC_B512 if _blas512 else FM_SMALL_C_OC
cdef int _small_oc = FM_SMALL_OC_B512 if _blas512 else FM_SMALL_OC
cdef int _small_oc_c = FM_SMALL_OC_C_B512 if _blas512 else FM_SMALL_OC_C
cdef int _dwd_c = FM_DWD_C_B512 if _blas512 else FM_DWD_C
cdef int _dwd_c_oc = FM_DWD_C_OC_B512 if _blas512 else FM_DWD_C_OC
cdef int _dwd_oc = FM_DWD_OC_B512 if _blas512 else FM_DWD_OC
cdef int _dwd_oc_c = FM_DWD_OC_C_B512 if _blas512 else FM_DWD_OC_C
cdef int _dw_igemm = 0
cdef int _dx_igemm = 0
cdef int _wino_igemm = 0


def set_winograd_igemm(int mode):
    """Float32 Winograd F(2x2, 3x3) GEMMs (forward and dW) through the implicit-GEMM kernel
    instead of BLAS (Geom.wig; output channels a whole number of its blocks): 0 auto, 1 never,
    2 wherever possible."""
    global _wino_igemm
    _wino_igemm = mode


def set_dx_igemm(int mode):
    """Geom.rbwd's float32 dx GEMM (dy^T @ W) through the implicit-GEMM kernel (Geom.igdx)
    instead of BLAS: 0 auto, 1 never, 2 wherever the rows path runs."""
    global _dx_igemm
    _dx_igemm = mode


def set_dw_igemm(int mode):
    """Float32 weight gradients as an implicit GEMM on position-major planes (Geom.igdw;
    groups 1): 0 auto, 1 never, 2 wherever possible."""
    global _dw_igemm
    _dw_igemm = mode


def set_forward_igemm(int mode):
    """Float32 forwards (and the stride-1 dx computed as one) as an implicit GEMM on
    position-major planes (Geom.igemm; groups 1): 0 auto, 1 never, 2 wherever possible."""
    global _fwd_igemm
    _fwd_igemm = mode


def set_dw_direct(int mode):
    """Stride-1 float32 weight gradients through the direct loops (Geom.ddw; groups 1):
    0 auto, 1 never, 2 wherever possible."""
    global _dw_direct
    _dw_direct = mode


def set_backward_im2row(int mode):
    """dW and dx through the im2row patch rows, position-major (Geom.rbwd; groups 1): 0 auto,
    1 never, 2 wherever possible."""
    global _bwd_im2row
    _bwd_im2row = mode


def set_forward_winograd5(int mode):
    """1-D k5 stride-1 forwards (and the dx computed as one) through Winograd F(2, 5)
    (Geom.wino5; groups 1, no dilation, one kernel row): 0 auto, 1 never, 2 wherever possible."""
    global _fwd_wino5
    _fwd_wino5 = mode


def set_forward_small(int mode):
    """Stride-1 float32 forwards with few input or output channels through direct FMA loops
    (Geom.small; groups 1): 0 auto, 1 never, 2 wherever possible."""
    global _fwd_small
    _fwd_small = mode


def set_dw_winograd(int mode):
    """3x3 stride-1 weight gradients through Winograd F(2x2, 3x3) (Geom.wdw; groups 1, no
    dilation): 0 auto, 1 never, 2 wherever possible."""
    global _dw_wino
    _dw_wino = mode


def set_forward_winograd(int mode, Py_ssize_t tiles=256):
    """3x3 stride-1 forwards (and the dx computed as one) through Winograd F(2x2, 3x3)
    (Geom.wino; groups 1, no dilation): 0 auto, 1 never, 2 wherever possible; tiles: 2x2 output
    tiles per block of images (small images go several to one set of GEMMs)."""
    global _fwd_wino, _wino_tiles
    _fwd_wino = mode
    _wino_tiles = tiles
cdef Py_ssize_t _im2row_positions = 512


def set_im2row_positions(Py_ssize_t n):
    """Output positions per im2row GEMM: images smaller than n go several to one GEMM."""
    global _im2row_positions
    _im2row_positions = n


def set_forward_im2row(int mode):
    """Forward through position-major patch rows (groups 1, where the stride-1 shifted path is
    not used): 0 auto, 1 never, 2 wherever possible."""
    global _fwd_im2row
    _fwd_im2row = mode


def set_dx_forward(int mode):
    """Stride-1 input gradients as a forward convolution of dy through the im2row / shifted
    paths (Geom.dxfwd): 0 auto, 1 never, 2 wherever possible (groups 1, stride 1)."""
    global _dx_fwd
    _dx_fwd = mode


def set_forward_shifted(int mode):
    """Stride-1 forward as per-tap GEMMs on a padded copy: 0 auto, 1 never, 2 wherever possible."""
    global _fwd_shifted
    _fwd_shifted = mode


def set_dx_as_conv(bint on, bint force=False):
    """Stride-1 input gradients as a convolution of dy with flipped weights where it pays
    (on=True, default; force=True: wherever possible) or always as W^T dy then col2im (on=False).
    For tests and benchmarks."""
    global _dx_as_conv, _dx_as_force
    _dx_as_conv = on
    _dx_as_force = force


def set_depthwise_direct(bint on):
    """Use the direct depthwise loops (True, default) or im2col + GEMM (for tests / benchmarks)."""
    global _depthwise_direct
    _depthwise_direct = on


def set_tile_elements(Py_ssize_t n):
    """Target size (elements) of one im2col tile (the per-thread scratch). Measured: tiles sized
    for L2 (64K elements) were no faster than one tile per image on the workloads' layers, and
    16K-element tiles were 1.1-1.3x slower (shorter GEMMs), so the default 1M elements (4 MB in
    float32) only bounds the scratch of large images. A huge value turns tiling off."""
    global _tile_elems
    _tile_elems = n


def set_layouts(int forward, int dweight):
    """Force the GEMM orientation (0 auto, 1 plain, 2 transposed) of forward and dW."""
    global _fwd_layout, _dw_layout
    _fwd_layout = forward
    _dw_layout = dweight


cdef inline bint _pick(int mode, bint auto_value) noexcept nogil:
    if mode == LAYOUT_PLAIN:
        return False
    if mode == LAYOUT_TRANSPOSED:
        return True
    return auto_value


cdef inline int _threads_for_batch(Geom* g) noexcept nogil:
    cdef int nt = num_threads()
    cdef double macs = <double>g.N * g.OC * g.K * g.P
    if nt > g.N:
        nt = g.N
    if macs < SERIAL_MACS:
        nt = 1
    return nt if nt > 1 else 1


# ---------------------------------------------------------------- depthwise: direct loops
# With one input channel per group the GEMMs are (OCg, KH*KW) @ (KH*KW, P): tiny, one BLAS call
# per channel, and im2col copies each input KH*KW times for 2*OCg flops per copied element.
# Direct loops instead: for every tap, one multiply-add sweep along an output row (contiguous,
# vectorized, for stride 1). Measured, one core, (32, 64, 16, 16) 3x3 depthwise forward: 5.9 ms
# through im2col + GEMM vs torch 0.8 ms.
cdef void _dw_forward_image_s1(floating* y, const floating* x, const floating* w,
                               const floating* b, floating* buf, Geom* g) noexcept nogil:
    # stride 1: each channel copied once into a zero-padded (Hp, Wp) plane; every tap is then
    # one long multiply-add sweep over OH*Wp positions (the wrapped columns are dropped)
    cdef Py_ssize_t plane = <Py_ssize_t>g.Hp * g.Wp
    cdef Py_ssize_t npad = plane + (g.KW - 1) * g.DW
    cdef Py_ssize_t PPr = <Py_ssize_t>g.OH * g.Wp, i
    cdef floating* xp = buf
    cdef floating* yp = buf + npad
    cdef const floating* src
    cdef int c, o, oh, kh, kw, r
    cdef int ih0 = max(0, g.PH), ih1 = min(g.Hp, g.H + g.PH)
    cdef int iw0 = max(0, g.PW), iw1 = min(g.Wp, g.W + g.PW)
    cdef floating wv, bo
    memset(xp, 0, npad * sizeof(floating))
    for c in range(g.C):
        if iw1 > iw0:
            for r in range(ih0, ih1):
                memcpy(xp + <Py_ssize_t>r * g.Wp + iw0,
                       x + (<Py_ssize_t>c * g.H + r - g.PH) * g.W + iw0 - g.PW,
                       (iw1 - iw0) * sizeof(floating))
        for o in range(c * g.OCg, (c + 1) * g.OCg):
            bo = b[o] if b != NULL else 0
            for i in range(PPr):
                yp[i] = bo
            for kh in range(g.KH):
                for kw in range(g.KW):
                    wv = w[(<Py_ssize_t>o * g.KH + kh) * g.KW + kw]
                    src = xp + <Py_ssize_t>kh * g.DH * g.Wp + kw * g.DW
                    for i in range(PPr):
                        yp[i] += wv * src[i]
            for oh in range(g.OH):
                memcpy(y + (<Py_ssize_t>o * g.OH + oh) * g.OW, yp + <Py_ssize_t>oh * g.Wp,
                       g.OW * sizeof(floating))


cdef void _dw_forward_image(floating* y, const floating* x, const floating* w, const floating* b,
                            Geom* g) noexcept nogil:
    # y[o, oh, ow] = b[o] + sum_{kh, kw} w[o, kh, kw] x[o // OCg, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]
    cdef int o, oh, ow, kh, kw, ih, off, lo, hi
    cdef floating wv
    cdef floating* row
    cdef const floating* xr
    cdef const floating* xc
    cdef const floating* wo
    for o in range(g.OC):
        xc = x + <Py_ssize_t>(o // g.OCg) * g.H * g.W
        wo = w + <Py_ssize_t>o * g.KH * g.KW
        for oh in range(g.OH):
            row = y + (<Py_ssize_t>o * g.OH + oh) * g.OW
            wv = b[o] if b != NULL else 0
            for ow in range(g.OW):
                row[ow] = wv
            for kh in range(g.KH):
                ih = oh * g.SH - g.PH + kh * g.DH
                if ih < 0 or ih >= g.H:
                    continue
                xr = xc + <Py_ssize_t>ih * g.W
                for kw in range(g.KW):
                    off = kw * g.DW - g.PW
                    _valid_range(off, g.SW, g.W, g.OW, &lo, &hi)
                    wv = wo[kh * g.KW + kw]
                    if g.SW == 1:
                        for ow in range(lo, hi):
                            row[ow] += wv * xr[ow + off]
                    else:
                        for ow in range(lo, hi):
                            row[ow] += wv * xr[ow * g.SW + off]


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    # sum(a * b) in double, 4 partial sums combined in a fixed order
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        s0 += <double>a[i] * b[i]
        s1 += <double>a[i + 1] * b[i + 1]
        s2 += <double>a[i + 2] * b[i + 2]
        s3 += <double>a[i + 3] * b[i + 3]
        i += 4
    while i < n:
        s0 += <double>a[i] * b[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


cdef void _dw_backward_image_s1(floating* dx, floating* dw, const floating* dy,
                                const floating* x, const floating* w, floating* buf, Geom* g,
                                bint dw_beta, bint acc_dx) noexcept nogil:
    # stride 1 on padded planes, as _dw_forward_image_s1: dy_o is laid out at the padded width
    # (zeros in the wrapped columns), so each tap is one long dot product (dW) and one long
    # multiply-add sweep into the padded dx plane
    cdef Py_ssize_t plane = <Py_ssize_t>g.Hp * g.Wp
    cdef Py_ssize_t npad = plane + (g.KW - 1) * g.DW
    cdef Py_ssize_t PPr = <Py_ssize_t>g.OH * g.Wp, i, sh
    cdef floating* xp = buf
    cdef floating* dxp = buf + npad
    cdef floating* yp = buf + 2 * npad
    cdef floating* dst
    cdef const floating* src
    cdef int c, o, oh, kh, kw, r, iw
    cdef int ih0 = max(0, g.PH), ih1 = min(g.Hp, g.H + g.PH)
    cdef int iw0 = max(0, g.PW), iw1 = min(g.Wp, g.W + g.PW)
    cdef int KK = g.KH * g.KW
    cdef floating wv
    cdef double acc
    memset(xp, 0, npad * sizeof(floating))
    memset(yp, 0, PPr * sizeof(floating))
    for c in range(g.C):
        if dw != NULL and iw1 > iw0:
            for r in range(ih0, ih1):
                memcpy(xp + <Py_ssize_t>r * g.Wp + iw0,
                       x + (<Py_ssize_t>c * g.H + r - g.PH) * g.W + iw0 - g.PW,
                       (iw1 - iw0) * sizeof(floating))
        if dx != NULL:
            memset(dxp, 0, npad * sizeof(floating))
        for o in range(c * g.OCg, (c + 1) * g.OCg):
            for oh in range(g.OH):
                memcpy(yp + <Py_ssize_t>oh * g.Wp, dy + (<Py_ssize_t>o * g.OH + oh) * g.OW,
                       g.OW * sizeof(floating))
            for kh in range(g.KH):
                for kw in range(g.KW):
                    sh = <Py_ssize_t>kh * g.DH * g.Wp + kw * g.DW
                    if dw != NULL:
                        acc = _dot(yp, xp + sh, PPr)
                        i = <Py_ssize_t>o * KK + kh * g.KW + kw
                        dw[i] = <floating>(acc + dw[i]) if dw_beta else <floating>acc
                    if dx != NULL:
                        wv = w[<Py_ssize_t>o * KK + kh * g.KW + kw]
                        dst = dxp + sh
                        for i in range(PPr):
                            dst[i] += wv * yp[i]
        if dx != NULL:
            # the interior of the padded plane is dx_c (rows no output reads stay zero)
            dst = dx + <Py_ssize_t>c * g.H * g.W
            if not acc_dx:
                memset(dst, 0, <Py_ssize_t>g.H * g.W * sizeof(floating))
            for r in range(ih0, ih1):
                src = dxp + <Py_ssize_t>r * g.Wp
                for iw in range(iw0, iw1):
                    dst[<Py_ssize_t>(r - g.PH) * g.W + iw - g.PW] += src[iw]


cdef void _dw_backward_image(floating* dx, floating* dw, const floating* dy, const floating* x,
                             const floating* w, Geom* g, bint dw_beta, bint acc_dx) noexcept nogil:
    # dw[o, kh, kw] (+)= sum_{oh, ow} dy[o, oh, ow] x[c, ih, iw]; dx[c, ih, iw] (+)= w[o, kh, kw] dy[o, oh, ow]
    cdef int o, oh, ow, kh, kw, ih, off, lo, hi
    cdef floating wv
    cdef double acc
    cdef const floating* row
    cdef const floating* xr
    cdef floating* dxr
    cdef Py_ssize_t plane = <Py_ssize_t>g.H * g.W
    cdef int KK = g.KH * g.KW
    if dw != NULL and not dw_beta:
        memset(dw, 0, <Py_ssize_t>g.OC * KK * sizeof(floating))
    if dx != NULL and not acc_dx:
        memset(dx, 0, <Py_ssize_t>g.C * plane * sizeof(floating))
    for o in range(g.OC):
        for oh in range(g.OH):
            row = dy + (<Py_ssize_t>o * g.OH + oh) * g.OW
            for kh in range(g.KH):
                ih = oh * g.SH - g.PH + kh * g.DH
                if ih < 0 or ih >= g.H:
                    continue
                xr = x + (o // g.OCg) * plane + <Py_ssize_t>ih * g.W
                dxr = dx + (o // g.OCg) * plane + <Py_ssize_t>ih * g.W if dx != NULL else NULL
                for kw in range(g.KW):
                    off = kw * g.DW - g.PW
                    _valid_range(off, g.SW, g.W, g.OW, &lo, &hi)
                    if dw != NULL:
                        acc = 0
                        for ow in range(lo, hi):
                            acc += row[ow] * xr[ow * g.SW + off]
                        dw[<Py_ssize_t>o * KK + kh * g.KW + kw] += <floating>acc
                    if dxr != NULL:
                        wv = w[<Py_ssize_t>o * KK + kh * g.KW + kw]
                        if g.SW == 1:
                            for ow in range(lo, hi):
                                dxr[ow + off] += wv * row[ow]
                        else:
                            for ow in range(lo, hi):
                                dxr[ow * g.SW + off] += wv * row[ow]


# ---------------------------------------------------------------- forward
cdef inline void _relu_inplace(floating* y, Py_ssize_t n) noexcept nogil:
    # as ReLU's kernel: NaN stays NaN (as torch)
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = y[i]
        y[i] = 0 if v < 0 else v


cdef inline void _store_transposed(floating* y, const floating* yt, const floating* b, Geom* g,
                                   Py_ssize_t p0, Py_ssize_t pt, bint relu) noexcept nogil:
    # y[o, p0 + p] (+= when g.acc) yt[p, o] + b[o] for p < pt, yt (pt, OC) position-major (the
    # epilogue of the paths that compute y^T), then max(., 0) when relu
    _transpose_add(y + p0, g.P, yt, g.OC, <int>pt, g.OC, b, g.acc, relu)


cdef void _shifted_forward_image(floating* y, const floating* x, const floating* wr,
                                 const floating* b, floating* buf, Geom* g,
                                 int gemm_nt) noexcept nogil:
    # Stride 1, groups 1: copy x_n once into a zero-padded (C, Hp, Wp) plane, then into KW
    # copies shifted by kw*DW: x3 (C*KW, Hp*Wp). Kernel row kh then reads x3 shifted by kh*DH*Wp:
    #   yt (OH*Wp, OC) += x3_shift^T (OH*Wp, C*KW) @ wr[kh] (C*KW, OC)
    # (the Wp - OW columns that wrap around are computed and dropped), and
    # y[o, oh, ow] = yt[oh*Wp + ow, o] + b[o]. KW copies of x instead of im2col's KH*KW, and
    # KH GEMMs of depth C*KW (one GEMM per tap, depth C, was measured slower for small C).
    cdef Py_ssize_t plane = <Py_ssize_t>g.Hp * g.Wp
    cdef Py_ssize_t npad = plane + (g.KW - 1) * g.DW
    cdef int CK = g.C * g.KW
    cdef floating* xp = buf
    cdef floating* x3 = buf + npad * g.C
    cdef floating* yt = x3 + <Py_ssize_t>CK * plane
    cdef int kh, kw, oh, PPr = g.OH * g.Wp
    cdef Py_ssize_t p
    # position-major ("NHWC") layout, so that both GEMM operands are untransposed for BLAS
    # (measured, one core: (OC, P, K) = (12, 1088, 144) 38 vs 21 GF/s, (64, 288, 192) 70 vs 60):
    # xp (npad, C) the padded plane, x3 (plane, KW*C) with x3[p, kw*C + c] = xp[p + kw*DW, c]
    _pack_nhwc(xp, x, g.C, g.H, g.W, g.Hp, g.Wp, g.PH, g.PW)
    memset(xp + plane * g.C, 0, (npad - plane) * g.C * sizeof(floating))
    for p in range(plane):
        if g.DW == 1:
            memcpy(x3 + p * CK, xp + p * g.C, CK * sizeof(floating))
        else:
            for kw in range(g.KW):
                memcpy(x3 + p * CK + kw * g.C, xp + (p + kw * g.DW) * g.C, g.C * sizeof(floating))
    for kh in range(g.KH):
        pgemm(False, False, PPr, g.OC, CK, <floating>1,
              x3 + <Py_ssize_t>kh * g.DH * g.Wp * CK, CK,
              wr + <Py_ssize_t>kh * CK * g.OC, g.OC,
              <floating>(1 if kh > 0 else 0), yt, g.OC, gemm_nt)
    for oh in range(g.OH):
        _transpose_add(y + <Py_ssize_t>oh * g.OW, g.P, yt + <Py_ssize_t>oh * g.Wp * g.OC, g.OC,
                       g.OW, g.OC, b, g.acc, False)


cdef inline void _im2row_rows(floating* rows, floating* xp, const floating* x, Geom* g,
                              int cnt) noexcept nogil:
    # the patch rows of cnt consecutive images, (cnt*P, K) position-major:
    # rows[p, (kh*KW + kw)*C + c] = x_n[c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW] (0 outside),
    # through the zero-padded position-major copy xp (Hq, Wq, C) of each image: KH runs of KW*C
    # contiguous values per position (DW = 1)
    cdef int kh, kw, oh, ow, im
    cdef int KWC = g.KW * g.C
    cdef const floating* src
    cdef floating* rdst = rows
    for im in range(cnt):
        _pack_nhwc(xp, x + im * g.xs, g.C, g.H, g.W, g.Hq, g.Wq, g.PH, g.PW)
        for oh in range(g.OH):
            for ow in range(g.OW):
                for kh in range(g.KH):
                    src = xp + (<Py_ssize_t>(oh * g.SH + kh * g.DH) * g.Wq + ow * g.SW) * g.C
                    if g.DW == 1:
                        _copy_run(rdst, src, KWC)
                    else:
                        for kw in range(g.KW):
                            _copy_run(rdst + kw * g.C, src + <Py_ssize_t>kw * g.DW * g.C, g.C)
                    rdst += KWC


cdef void _im2row_forward_images(floating* y, const floating* x, const floating* wr,
                                 const floating* b, floating* buf, Geom* g, int cnt,
                                 int gemm_nt) noexcept nogil:
    # Groups 1, any stride: the patch rows (_im2row_rows) of cnt consecutive images, then
    #   yt (P, OC) = rows (P, K) @ wr (K, OC);  y[o, p] = yt[p, o] + b[o]
    # (their rows stacked: one GEMM of cnt*P rows; measured,
    # one core, (OC, P, K) = (64, 64, 576) 47 GF/s vs (64, 256, 576) 60; 64->64 stride 2 at
    # 16x16: 512 positions per GEMM 0.83x the time of one image per GEMM, 256 0.86x)
    # both BLAS operands untransposed (measured, one core, (OC, P, K) = (32, 256, 288): 63 vs
    # 44-48 GF/s for the im2col orientations)
    cdef Py_ssize_t plane = <Py_ssize_t>g.Hq * g.Wq
    cdef floating* xp = buf
    cdef floating* rows = buf + plane * g.C
    cdef floating* yt = rows + <Py_ssize_t>cnt * g.P * g.K
    cdef int im
    _im2row_rows(rows, xp, x, g, cnt)
    pgemm(False, False, cnt * g.P, g.OC, g.K, <floating>1, rows, g.K, wr, g.OC,
          <floating>0, yt, g.OC, gemm_nt)
    for im in range(cnt):
        _store_transposed(y + im * g.ys, yt + <Py_ssize_t>im * g.P * g.OC, b, g, 0, g.P, g.relu)


cdef inline void _add_run(floating* dst, const floating* src, int n) noexcept nogil:
    # dst[:n] += src[:n]
    cdef int i = 0
    if floating is float:
        while i + FM_W <= n:
            fm_vstore(dst + i, fm_vadd(fm_vload(dst + i), fm_vload(src + i)))
            i = i + FM_W
        if i < n:
            fm_vstore_n(dst + i, fm_vadd(fm_vload_n(dst + i, n - i), fm_vload_n(src + i, n - i)),
                        n - i)
    else:
        for i in range(n):
            dst[i] += src[i]


cdef void _im2row_backward_images(floating* dx, floating* dwr, const floating* dy,
                                  const floating* x, const floating* wr, const floating* wk2,
                                  floating* buf, Geom* g, int cnt, bint beta1, bint acc_dx,
                                  int gemm_nt) noexcept nogil:
    # The backward of the im2row forward for cnt consecutive images (groups 1, any stride),
    # position-major throughout, so that no step gathers or scatters with a stride:
    #   dWr (OC, K) (+)= dy (OC, cnt*P) @ rows (cnt*P, K)      dWr[o, (kh*KW + kw)*C + c] (dwr)
    #   drows (cnt*P, K) = dy^T (cnt*P, OC) @ wr^T (OC, K)     then each image's drows added,
    #     KW*C contiguous values per (position, kernel row), into a zero-padded position-major
    #     plane (Hq, Wq, C) whose interior is transposed into dx_n (C, H, W) (+= when acc_dx)
    # dwr or dx may be NULL (skipped); beta1: add into dwr (else overwrite it); wk2 (float32,
    # Geom.igdx): wr packed for fm_igemm_fwd, drows through the implicit GEMM kernel (a 1x1
    # convolution of dy^T with K output channels; rows KP = fm_igemm_ocp(K) apart), else BLAS
    cdef Py_ssize_t plane = <Py_ssize_t>g.Hq * g.Wq
    cdef Py_ssize_t CP = <Py_ssize_t>cnt * g.P
    cdef floating* xp = buf
    cdef floating* rows = buf + plane * g.C
    cdef floating* t2 = rows + CP * max(g.K, fm_igemm_ocp(g.K))   # (OC, cnt*P) or (cnt*P, OC)
    cdef int im, o, oh, ow, kh, kw, i
    cdef int KWC = g.KW * g.C
    cdef int ih0 = max(0, g.PH), ih1 = min(g.Hq, g.H + g.PH)
    cdef int iw0 = max(0, g.PW), iw1 = min(g.Wq, g.W + g.PW)
    cdef int xr1 = max(0, min(g.H, ih1 - g.PH)), xc1 = max(0, min(g.W, iw1 - g.PW))
    cdef const floating* a
    cdef const floating* src
    cdef floating* dst
    cdef floating* dxn
    cdef int lda
    if dwr != NULL:
        _im2row_rows(rows, xp, x, g, cnt)
        if cnt == 1:
            a = dy
            lda = g.P
        else:
            # dy of the cnt images side by side: (OC, cnt*P)
            for o in range(g.OC):
                for im in range(cnt):
                    memcpy(t2 + o * CP + <Py_ssize_t>im * g.P, dy + im * g.ys + <Py_ssize_t>o * g.P,
                           g.P * sizeof(floating))
            a = t2
            lda = <int>CP
        pgemm(False, False, g.OC, g.K, <int>CP, <floating>1, a, lda, rows, g.K,
              <floating>(1 if beta1 else 0), dwr, g.K, gemm_nt)
    if dx == NULL:
        return
    for im in range(cnt):
        _transpose_add(t2 + <Py_ssize_t>im * g.P * g.OC, g.OC, dy + im * g.ys, g.P, g.OC, g.P,
                       <const floating*>NULL, False, False)
    cdef int ldr = g.K
    if floating is float:
        if wk2 != NULL:
            ldr = fm_igemm_ocp(g.K)
            fm_igemm_fwd(rows, t2, wk2, g.K, 1, <int>CP, g.OC, <int>CP, 1, 1, 1, 1, 1, 1)
    if wk2 == NULL:
        pgemm(False, True, <int>CP, g.K, g.OC, <floating>1, t2, g.OC, wr, g.OC, <floating>0,
              rows, g.K, gemm_nt)
    src = rows
    for im in range(cnt):
        memset(xp, 0, plane * g.C * sizeof(floating))
        for oh in range(g.OH):
            for ow in range(g.OW):
                for kh in range(g.KH):
                    dst = xp + (<Py_ssize_t>(oh * g.SH + kh * g.DH) * g.Wq + ow * g.SW) * g.C
                    if g.DW == 1:
                        _add_run(dst, src, KWC)
                    else:
                        for kw in range(g.KW):
                            _add_run(dst + <Py_ssize_t>kw * g.DW * g.C, src + kw * g.C, g.C)
                    src += KWC
                src += ldr - g.K
        # the plane's interior is x_n's rows [0, xr1) and columns [0, xc1) (PH, PW >= 0); the
        # rest of dx_n (past the last window) gets no gradient
        dxn = dx + im * g.xs
        if not acc_dx:
            for o in range(g.C):
                memset(dxn + (<Py_ssize_t>o * g.H + xr1) * g.W, 0,
                       <Py_ssize_t>(g.H - xr1) * g.W * sizeof(floating))
                if xc1 < g.W:
                    for i in range(xr1):
                        memset(dxn + (<Py_ssize_t>o * g.H + i) * g.W + xc1, 0,
                               (g.W - xc1) * sizeof(floating))
        if iw1 > iw0:
            for i in range(ih0, ih1):
                _transpose_add(dxn + <Py_ssize_t>(i - g.PH) * g.W + iw0 - g.PW, <Py_ssize_t>g.H * g.W,
                               xp + (<Py_ssize_t>i * g.Wq + iw0) * g.C, g.C, iw1 - iw0, g.C,
                               <const floating*>NULL, acc_dx, False)


# ---------------------------------------------------------------- Winograd F(2x2, 3x3)
# y = A^T [(G g G^T) . (B^T d B)] A per 2x2 output tile (Lavin & Gray 2015), d the tile's 4x4
# input patch, g the 3x3 kernel, with
#   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
#   A^T = [1 1 1 0; 0 1 -1 -1].
# Over channels the elementwise product becomes, for each of the 16 components xi,
#   M_xi (T, OC) = V_xi (T, C) @ U_xi (C, OC)
# (T tiles of a block of images): 16*C*OC multiply-adds per tile of 4 outputs instead of 36*C*OC.
# The transforms are additions over contiguous channel vectors (V, M position-major).
# Row / column pairs of B^T: (index, sign) x 2 per row.
cdef int _BT_I0[4]
cdef int _BT_I1[4]
cdef int _BT_S1[4]
_BT_I0[:] = [0, 1, 2, 1]
_BT_I1[:] = [2, 2, 1, 3]
_BT_S1[:] = [-1, 1, -1, -1]


cdef int _A[4][2]
_A[0][:] = [1, 0]
_A[1][:] = [1, 1]
_A[2][:] = [1, -1]
_A[3][:] = [0, -1]


cdef inline void _comb4s(floating* out, const floating* a, const floating* b, const floating* c,
                         const floating* d, floating sa, floating sb, floating sc, floating sd,
                         int n) noexcept nogil:
    # out = sa*a + sb*b + sc*c + sd*d over n contiguous values
    cdef int i
    for i in range(n):
        out[i] = sa * a[i] + sb * b[i] + sc * c[i] + sd * d[i]


cdef inline void _comb4(floating* out, const floating* a, const floating* b, const floating* c,
                        const floating* d, floating sb, floating sc, floating sd,
                        int n) noexcept nogil:
    # out = a + sb*b + sc*c + sd*d over n contiguous values (signs +-1)
    cdef int i
    for i in range(n):
        out[i] = a[i] + sb * b[i] + sc * c[i] + sd * d[i]


cdef void _wino_weights(floating* U, const floating* w, int C, int OC) noexcept nogil:
    # U[xi = r*4 + q, c, o] = (G g G^T)[r, q], g = w[o, c] (3x3), in double
    cdef int o, c, r, k
    cdef double gg[4][3]
    cdef const floating* g
    cdef Py_ssize_t CO = <Py_ssize_t>C * OC
    for o in range(OC):
        for c in range(C):
            g = w + (<Py_ssize_t>o * C + c) * 9
            for k in range(3):
                gg[0][k] = g[k]
                gg[1][k] = 0.5 * (<double>g[k] + g[3 + k] + g[6 + k])
                gg[2][k] = 0.5 * (<double>g[k] - g[3 + k] + g[6 + k])
                gg[3][k] = g[6 + k]
            for r in range(4):
                U[(r * 4 + 0) * CO + <Py_ssize_t>c * OC + o] = <floating>gg[r][0]
                U[(r * 4 + 1) * CO + <Py_ssize_t>c * OC + o] = <floating>(0.5 * (gg[r][0] + gg[r][1] + gg[r][2]))
                U[(r * 4 + 2) * CO + <Py_ssize_t>c * OC + o] = <floating>(0.5 * (gg[r][0] - gg[r][1] + gg[r][2]))
                U[(r * 4 + 3) * CO + <Py_ssize_t>c * OC + o] = <floating>gg[r][2]


cdef inline void _wino_pack(floating* xp, const floating* x, Geom* g) noexcept nogil:
    # one image x (C, H, W) copied position-major into the zero-padded (2TH+2, 2TW+2, C)
    # plane xp (the forward's and dW's input transform read 4x4 windows of it)
    _pack_nhwc(xp, x, g.C, g.H, g.W, 2 * g.TH + 2, 2 * g.TW + 2, g.PH, g.PW)


cdef inline void _wino_input_tile(floating* Vt, Py_ssize_t TC, const floating* xp, Geom* g,
                                  int th, int tw) noexcept nogil:
    # the input transform of tile (th, tw): Vt[(r*4 + q) * TC + :C] = sum over the B^T pairs of
    # rows r and columns q of +-d[row, col, :], d the tile's 4x4 window of xp (Vt = V + t*C)
    cdef int Ww = 2 * g.TW + 2, C = g.C
    cdef Py_ssize_t rs = <Py_ssize_t>Ww * C
    cdef const floating* d = xp + (<Py_ssize_t>(2 * th) * Ww + 2 * tw) * C
    cdef int r, q, a0, a1, q0, q1
    cdef floating s1r, s1q
    for r in range(4):
        a0 = _BT_I0[r]
        a1 = _BT_I1[r]
        s1r = _BT_S1[r]
        for q in range(4):
            q0 = _BT_I0[q]
            q1 = _BT_I1[q]
            s1q = _BT_S1[q]
            _comb4(Vt + (r * 4 + q) * TC,
                   d + a0 * rs + q0 * C, d + a0 * rs + q1 * C,
                   d + a1 * rs + q0 * C, d + a1 * rs + q1 * C,
                   s1q, s1r, s1r * s1q, C)


cdef void _wino_forward_images(floating* y, const floating* x, const floating* U,
                               const floating* b, floating* buf, Geom* g, int cnt,
                               int gemm_nt) noexcept nogil:
    # cnt consecutive images: x_n copied position-major into a zero-padded (2TH+2, 2TW+2, C)
    # plane, the input transform of every tile into V, 16 GEMMs into M, the output transform
    # into yt (P, OC), then y[o, p] (+)= yt[p, o] + b[o] (and the ReLU) as the im2row path
    cdef int Hw = 2 * g.TH + 2, Ww = 2 * g.TW + 2, C = g.C, OC = g.OC
    cdef Py_ssize_t plane = <Py_ssize_t>Hw * Ww
    cdef int tpi = g.TH * g.TW
    cdef Py_ssize_t T = <Py_ssize_t>cnt * tpi
    cdef Py_ssize_t TC = T * C, TO = T * OC
    cdef floating* xp = buf
    cdef floating* V = xp + plane * C
    cdef floating* M = V + 16 * TC
    cdef floating* yt = M + 16 * TO
    cdef floating* sr = yt + <Py_ssize_t>g.P * OC
    cdef int im, i, th, tw, r, q, oh
    cdef Py_ssize_t t
    cdef const floating* m
    for im in range(cnt):
        _wino_pack(xp, x + im * g.xs, g)
        for th in range(g.TH):
            for tw in range(g.TW):
                t = <Py_ssize_t>im * tpi + th * g.TW + tw
                _wino_input_tile(V + t * C, TC, xp, g, th, tw)
    for r in range(16):
        if floating is float:
            if g.wig:
                # M_r (T, OC) = V_r (T, C) @ U_r (C, OC): a 1x1 implicit GEMM over T positions
                fm_igemm_fwd(M + r * TO, V + r * TC, U + <Py_ssize_t>r * C * OC, OC, 1, <int>T,
                             C, <int>T, 1, 1, 1, 1, 1, 1)
                continue
        pgemm(False, False, <int>T, OC, C, <floating>1, V + r * TC, C,
              U + <Py_ssize_t>r * C * OC, OC, <floating>0, M + r * TO, OC, gemm_nt)
    for im in range(cnt):
        # sr[i*4 + q] = (A^T m)[i, q]; then Y[i, 0] = sr[i,0] + sr[i,1] + sr[i,2] and
        # Y[i, 1] = sr[i,1] - sr[i,2] - sr[i,3], written into yt where inside the output
        for th in range(g.TH):
            for tw in range(g.TW):
                t = <Py_ssize_t>im * tpi + th * g.TW + tw
                m = M + t * OC
                for q in range(4):
                    _comb4(sr + q * OC, m + q * TO, m + (4 + q) * TO, m + (8 + q) * TO,
                           m + (8 + q) * TO, 1, 1, 0, OC)
                    _comb4(sr + (4 + q) * OC, m + (4 + q) * TO, m + (8 + q) * TO,
                           m + (12 + q) * TO, m + (12 + q) * TO, -1, -1, 0, OC)
                for i in range(2):
                    oh = 2 * th + i
                    if oh >= g.OH:
                        break
                    dst = yt + (<Py_ssize_t>oh * g.OW + 2 * tw) * OC
                    _comb4(dst, sr + (i * 4) * OC, sr + (i * 4 + 1) * OC, sr + (i * 4 + 2) * OC,
                           sr + (i * 4 + 2) * OC, 1, 1, 0, OC)
                    if 2 * tw + 1 < g.OW:
                        _comb4(dst + OC, sr + (i * 4 + 1) * OC, sr + (i * 4 + 2) * OC,
                               sr + (i * 4 + 3) * OC, sr + (i * 4 + 3) * OC, -1, -1, 0, OC)
        _store_transposed(y + im * g.ys, yt, b, g, 0, g.P, g.relu)



# ---------------------------------------------------------------- few input channels: direct
# With C = 3 (an RGB stem) the GEMM depth is C*KH*KW = 27: im2col copies every input 9 times
# for 2*OC flops per copied value and the GEMM runs far from its peak; with OC = 12 (DenseBlock)
# OpenBLAS reaches a quarter of the FMA peak. Direct loops instead (simd/fm_direct.h): NV*FM_W
# consecutive outputs of a row for NO output channels in registers, summed over the C*KH*KW taps
# (NV loads of the zero-padded input row and NO broadcasts per tap; NV, NO per level).
cdef void _small_plane(float* xp, const float* x, Geom* g) noexcept nogil:
    # x_n copied into the direct loops' zero-padded planes (C, Hp, Ws)
    cdef int Ws = g.Ws, Hp = g.Hp
    cdef Py_ssize_t plane = <Py_ssize_t>Hp * Ws
    cdef int c, i
    cdef int ih0 = max(0, g.PH), ih1 = min(Hp, g.H + g.PH)
    cdef int iw0 = max(0, g.PW), iw1 = min(Ws, g.W + g.PW)
    cdef float* row
    if iw1 <= iw0 or ih1 <= ih0:
        memset(xp, 0, g.C * plane * sizeof(float))
        return
    # only the padding is zeroed (the whole plane was 4% of the DenseBlock layers' forward)
    for c in range(g.C):
        memset(xp + c * plane, 0, <Py_ssize_t>ih0 * Ws * sizeof(float))
        memset(xp + c * plane + <Py_ssize_t>ih1 * Ws, 0, <Py_ssize_t>(Hp - ih1) * Ws * sizeof(float))
        for i in range(ih0, ih1):
            row = xp + c * plane + <Py_ssize_t>i * Ws
            memset(row, 0, iw0 * sizeof(float))
            memcpy(row + iw0, x + (<Py_ssize_t>c * g.H + i - g.PH) * g.W + iw0 - g.PW,
                   (iw1 - iw0) * sizeof(float))
            memset(row + iw1, 0, (Ws - iw1) * sizeof(float))


cdef void _small_forward_image(float* y, const float* x, const float* wp, float* buf,
                               Geom* g) noexcept nogil:
    # x_n into zero-padded planes (C, Hp, Ws), then fm_direct_fwd's register blocks (wp: the
    # weights and bias packed by fm_direct_pack, see _conv_forward)
    cdef int NO = fm_direct_fwd_no(g.OW, g.OC)
    cdef Py_ssize_t nw = <Py_ssize_t>(g.OC + NO - 1) // NO * NO * g.C * g.KH * g.KW
    _small_plane(buf, x, g)
    fm_direct_fwd(y, buf, wp, wp + nw, g.OC, g.OH, g.OW, g.C, g.Hp, g.Ws, g.KH, g.KW, g.DH,
                  g.DW, g.acc, g.relu)


cdef void _igemm_forward_image(float* y, const float* x, const float* wk, const float* b,
                               float* buf, Geom* g) noexcept nogil:
    # x_n position-major into the zero-padded plane (Hq, Wq, C), the implicit GEMM into
    # yt (P, OCP), then y[o, p] (+)= yt[p, o] + b[o] (and the ReLU) as the im2row path
    cdef float* xp = buf
    cdef float* yt = buf + <Py_ssize_t>g.Hq * g.Wq * g.C
    _pack_nhwc(xp, x, g.C, g.H, g.W, g.Hq, g.Wq, g.PH, g.PW)
    fm_igemm_fwd(yt, xp, wk, g.OC, g.OH, g.OW, g.C, g.Wq, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW)
    _transpose_add(y, g.P, yt, fm_igemm_ocp(g.OC), g.P, g.OC, b, g.acc, g.relu)


cdef void _forward_image(floating* y, const floating* x, const floating* w, const floating* wr,
                         const floating* b, floating* col, Geom* g, int gemm_nt) noexcept nogil:
    _forward_image_body(y, x, w, wr, b, col, g, gemm_nt)
    if g.relu and not g.im2row and not ((g.small or g.igemm) and floating is float):   # applied as written
        _relu_inplace(y, <Py_ssize_t>g.OC * g.P)


cdef void _forward_image_body(floating* y, const floating* x, const floating* w, const floating* wr,
                              const floating* b, floating* col, Geom* g, int gemm_nt) noexcept nogil:
    # y (OC, P) = per group W_g @ cols_g + b, one tile of g.rows output rows at a time (the
    # tile's cols (K*G, pt) are the per-thread scratch)
    cdef const floating* cols
    cdef int gr, o, p, oh0, nr, pt, ldcol
    cdef Py_ssize_t p0
    cdef floating beta = 0
    cdef floating bo
    cdef floating* yrow
    cdef floating* yt
    cdef const floating* tcol
    if g.dwise:
        if g.SH == 1 and g.SW == 1:
            _dw_forward_image_s1(y, x, w, b, col, g)
        else:
            _dw_forward_image(y, x, w, b, g)
        return
    if floating is float:
        if g.small:
            _small_forward_image(y, x, wr, col, g)
            return
        if g.igemm:
            _igemm_forward_image(y, x, wr, b, col, g)
            return
    if g.shifted:
        _shifted_forward_image(y, x, wr, b, col, g, gemm_nt)
        return
    if g.im2row:
        _im2row_forward_images(y, x, wr, b, col, g, 1, gemm_nt)
        return
    if g.acc and not g.tout:
        # y += conv: the bias added first, then every GEMM accumulates
        beta = 1
        if b != NULL:
            for o in range(g.OC):
                yrow = y + <Py_ssize_t>o * g.P
                for p in range(g.P):
                    yrow[p] += b[o]
    elif b != NULL and not g.tout:
        beta = 1
        for o in range(g.OC):
            yrow = y + <Py_ssize_t>o * g.P
            for p in range(g.P):
                yrow[p] = b[o]
    cdef int tile
    for tile in range((g.OH + g.rows - 1) // g.rows):
        oh0 = tile * g.rows
        nr = min(g.rows, g.OH - oh0)
        pt = nr * g.OW
        p0 = <Py_ssize_t>oh0 * g.OW
        if g.direct:
            cols = x + p0
            ldcol = g.P
            yt = col
        else:
            im2col_2d(col, x, g.C, g.H, g.W, oh0, nr, g.OW, g.KH, g.KW, g.SH, g.SW, g.PH, g.PW,
                      g.DH, g.DW, pt)
            cols = col
            ldcol = pt
            yt = col + <Py_ssize_t>g.C * g.KH * g.KW * pt
        if g.tout:
            # yt (pt, OC) = cols_g^T (pt, K) @ W_g^T (K, OCg) per group; y[o, p0 + p] = yt[p, o] + b[o]
            for gr in range(g.G):
                pgemm(True, True, pt, g.OCg, g.K, <floating>1,
                      cols + <Py_ssize_t>gr * g.K * ldcol, ldcol,
                      w + <Py_ssize_t>gr * g.OCg * g.K, g.K,
                      <floating>0, yt + gr * g.OCg, g.OC, gemm_nt)
            _store_transposed(y, yt, b, g, p0, pt, False)
        else:
            for gr in range(g.G):
                pgemm(False, False, g.OCg, pt, g.K, <floating>1,
                      w + <Py_ssize_t>gr * g.OCg * g.K, g.K,
                      cols + <Py_ssize_t>gr * g.K * ldcol, ldcol,
                      beta, y + <Py_ssize_t>gr * g.OCg * g.P + p0, g.P, gemm_nt)



cdef void _wino_dw_images(floating* dU, const floating* dy, const floating* x, floating* buf,
                          Geom* g, int cnt, bint beta1, int gemm_nt) noexcept nogil:
    # The weight gradient of the Winograd form: with y_t = A^T (U . V_t) A per tile,
    #   dU_xi (C, OC) (+)= sum_t V_xi[t, :]^T (A dY_t A^T)_xi[t, :]
    # as 16 GEMMs of depth T (cnt images' tiles), V as the forward builds it; dW = G^T dU G
    # at the end (_wino_dw_finish). A = [1 0; 1 1; 1 -1; 0 -1]; dY_t is 0 outside the output.
    cdef int Hw = 2 * g.TH + 2, Ww = 2 * g.TW + 2, C = g.C, OC = g.OC
    cdef Py_ssize_t plane = <Py_ssize_t>Hw * Ww
    cdef int tpi = g.TH * g.TW
    cdef Py_ssize_t T = <Py_ssize_t>cnt * tpi
    cdef Py_ssize_t TC = T * C, TO = T * OC
    cdef floating* xp = buf
    cdef floating* V = xp + plane * C
    cdef floating* DM = V + 16 * TC
    cdef floating* dyp = DM + 16 * TO
    cdef int W2 = 2 * g.TW
    cdef int im, th, tw, r, q
    cdef Py_ssize_t t
    cdef const floating* e0
    cdef const floating* e1
    for im in range(cnt):
        _wino_pack(xp, x + im * g.xs, g)
        # dy_n position-major, zero past the output: dyp (2TH, 2TW, OC)
        _pack_nhwc(dyp, dy + im * g.ys, OC, g.OH, g.OW, 2 * g.TH, W2, 0, 0)
        for th in range(g.TH):
            for tw in range(g.TW):
                t = <Py_ssize_t>im * tpi + th * g.TW + tw
                _wino_input_tile(V + t * C, TC, xp, g, th, tw)
                # DM[r, q] = sum_ij A[r, i] A[q, j] dY[i, j]
                e0 = dyp + (<Py_ssize_t>(2 * th) * W2 + 2 * tw) * OC     # dY[0, 0]; dY[0, 1] at + OC
                e1 = e0 + <Py_ssize_t>W2 * OC                             # dY[1, 0]; dY[1, 1] at + OC
                for r in range(4):
                    for q in range(4):
                        _comb4s(DM + (r * 4 + q) * TO + t * OC, e0, e0 + OC, e1, e1 + OC,
                                _A[r][0] * _A[q][0], _A[r][0] * _A[q][1],
                                _A[r][1] * _A[q][0], _A[r][1] * _A[q][1], OC)
    for r in range(16):
        if floating is float:
            if g.wig:
                # dU_r (C, OC) (+)= V_r^T (C, T) @ DM_r (T, OC): the implicit GEMM's dW form
                fm_igemm_dw(dU + <Py_ssize_t>r * C * OC, DM + r * TO, V + r * TC, OC, 1, <int>T,
                            C, <int>T, 1, 1, 1, 1, 1, 1, beta1)
                continue
        pgemm(True, False, C, OC, <int>T, <floating>1, V + r * TC, C, DM + r * TO, OC,
              <floating>(1 if beta1 else 0), dU + <Py_ssize_t>r * C * OC, OC, gemm_nt)



cdef void _wino_dw_finish(floating* dw, const floating* part, int nt, Py_ssize_t psize,
                          int C, int OC, bint acc_w) noexcept nogil:
    # dU = the per-thread partials summed in thread order (double); then
    # dw[o, c, kh, kw] (+)= sum_{r, q} G[r, kh] dU[r*4 + q, c, o] G[q, kw], G as in _wino_weights
    cdef double G[4][3]
    cdef double du[16]
    cdef double h[3][4]
    cdef double v
    cdef int o, c, r, q, t, kh, kw
    cdef Py_ssize_t CO = <Py_ssize_t>C * OC, i
    G[0][0], G[0][1], G[0][2] = 1, 0, 0
    G[1][0], G[1][1], G[1][2] = 0.5, 0.5, 0.5
    G[2][0], G[2][1], G[2][2] = 0.5, -0.5, 0.5
    G[3][0], G[3][1], G[3][2] = 0, 0, 1
    for o in range(OC):
        for c in range(C):
            for r in range(16):
                i = r * CO + <Py_ssize_t>c * OC + o
                v = 0
                for t in range(nt):
                    v = v + part[t * psize + i]
                du[r] = v
            for kh in range(3):
                for q in range(4):
                    h[kh][q] = (G[0][kh] * du[q] + G[1][kh] * du[4 + q] + G[2][kh] * du[8 + q]
                                + G[3][kh] * du[12 + q])
            for kh in range(3):
                for kw in range(3):
                    v = (h[kh][0] * G[0][kw] + h[kh][1] * G[1][kw] + h[kh][2] * G[2][kw]
                         + h[kh][3] * G[3][kw])
                    i = (<Py_ssize_t>o * C + c) * 9 + kh * 3 + kw
                    dw[i] = <floating>(dw[i] + v) if acc_w else <floating>v



# ---------------------------------------------------------------- Winograd F(2, 5), 1-D
# Kernel rows of 5 taps (Conv1d k5), 2 outputs per tile of 6 inputs (points 0, +-1, +-2, inf):
#   Y = A^T [(G g) . (B^T d)],  B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0;
#   0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],  A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 1],
#   G rows (1/4, 0, 0, 0, 0), -(1, 1, 1, 1, 1)/6, (-1, 1, -1, 1, -1)/6, (1, 2, 4, 8, 16)/24,
#   (1, -2, 4, -8, 16)/24, (0, 0, 0, 0, 1):
# 6 GEMMs M_xi (T, OC) = V_xi (T, C) @ U_xi (C, OC), 6*C*OC multiply-adds per 2 outputs
# instead of 10*C*OC.
cdef double _BT5[6][6]
_BT5[0][:] = [4, 0, -5, 0, 1, 0]
_BT5[1][:] = [0, -4, -4, 1, 1, 0]
_BT5[2][:] = [0, 4, -4, -1, 1, 0]
_BT5[3][:] = [0, -2, -1, 2, 1, 0]
_BT5[4][:] = [0, 2, -1, -2, 1, 0]
_BT5[5][:] = [0, 4, 0, -5, 0, 1]
cdef double _AT5[2][6]
_AT5[0][:] = [1, 1, 1, 1, 1, 0]
_AT5[1][:] = [0, 1, -1, 2, -2, 1]
cdef double _G5[6][5]
_G5[0][:] = [0.25, 0, 0, 0, 0]
_G5[1][:] = [-1 / 6., -1 / 6., -1 / 6., -1 / 6., -1 / 6.]
_G5[2][:] = [-1 / 6., 1 / 6., -1 / 6., 1 / 6., -1 / 6.]
_G5[3][:] = [1 / 24., 1 / 12., 1 / 6., 1 / 3., 2 / 3.]
_G5[4][:] = [1 / 24., -1 / 12., 1 / 6., -1 / 3., 2 / 3.]
_G5[5][:] = [0, 0, 0, 0, 1]


cdef inline void _comb6(floating* out, const floating* d, Py_ssize_t ds, const double* cf,
                        int n) noexcept nogil:
    # out = sum_l cf[l] * d[l*ds : l*ds + n] over the 6 vectors d, d + ds, ..., d + 5*ds
    cdef int i
    cdef floating c0 = <floating>cf[0], c1 = <floating>cf[1], c2 = <floating>cf[2]
    cdef floating c3 = <floating>cf[3], c4 = <floating>cf[4], c5 = <floating>cf[5]
    cdef const floating* d1 = d + ds
    cdef const floating* d2 = d + 2 * ds
    cdef const floating* d3 = d + 3 * ds
    cdef const floating* d4 = d + 4 * ds
    cdef const floating* d5 = d + 5 * ds
    for i in range(n):
        out[i] = c0 * d[i] + c1 * d1[i] + c2 * d2[i] + c3 * d3[i] + c4 * d4[i] + c5 * d5[i]


cdef void _wino5_weights(floating* U, const floating* w, int C, int OC) noexcept nogil:
    # U[xi, c, o] = sum_j G[xi, j] w[o, c, j]
    cdef int o, c, xi, j
    cdef double v
    for xi in range(6):
        for c in range(C):
            for o in range(OC):
                v = 0
                for j in range(5):
                    v = v + _G5[xi][j] * w[(<Py_ssize_t>o * C + c) * 5 + j]
                U[(<Py_ssize_t>xi * C + c) * OC + o] = <floating>v


cdef void _wino5_forward_images(floating* y, const floating* x, const floating* U,
                                const floating* b, floating* buf, Geom* g, int cnt,
                                int gemm_nt) noexcept nogil:
    # cnt images; each output row (OH = H, stride 1, no vertical padding) split into TW tiles
    # of 2 outputs, read from a zero-padded position-major copy of its input row (Ww, C)
    cdef int Ww = 2 * g.TW + 4, C = g.C, OC = g.OC
    cdef int tpi = g.OH * g.TW
    cdef Py_ssize_t T = <Py_ssize_t>cnt * tpi
    cdef Py_ssize_t TC = T * C, TO = T * OC
    cdef Py_ssize_t plane = <Py_ssize_t>g.OH * Ww
    cdef floating* xp = buf
    cdef floating* V = xp + plane * C
    cdef floating* M = V + 6 * TC
    cdef floating* yt = M + 6 * TO
    cdef int im, i, tw, xi, ow
    cdef Py_ssize_t t
    for im in range(cnt):
        _pack_nhwc(xp, x + im * g.xs, C, g.H, g.W, g.OH, Ww, 0, g.PW)
        for i in range(g.OH):
            for tw in range(g.TW):
                t = <Py_ssize_t>im * tpi + i * g.TW + tw
                for xi in range(6):
                    _comb6(V + xi * TC + t * C, xp + (<Py_ssize_t>i * Ww + 2 * tw) * C, C,
                           _BT5[xi], C)
    for xi in range(6):
        pgemm(False, False, <int>T, OC, C, <floating>1, V + xi * TC, C,
              U + <Py_ssize_t>xi * C * OC, OC, <floating>0, M + xi * TO, OC, gemm_nt)
    for im in range(cnt):
        for i in range(g.OH):
            for tw in range(g.TW):
                t = <Py_ssize_t>im * tpi + i * g.TW + tw
                ow = 2 * tw
                _comb6(yt + (<Py_ssize_t>i * g.OW + ow) * OC, M + t * OC, TO, _AT5[0], OC)
                if ow + 1 < g.OW:
                    _comb6(yt + (<Py_ssize_t>i * g.OW + ow + 1) * OC, M + t * OC, TO, _AT5[1], OC)
        _store_transposed(y + im * g.ys, yt, b, g, 0, g.P, g.relu)


cdef inline void _block_forward(floating* y, const floating* x, const floating* wr,
                                const floating* b, floating* buf, Geom* g, int cnt,
                                int gemm_nt) noexcept nogil:
    if g.wino:
        _wino_forward_images(y, x, wr, b, buf, g, cnt, gemm_nt)
    elif g.wino5:
        _wino5_forward_images(y, x, wr, b, buf, g, cnt, gemm_nt)
    else:
        _im2row_forward_images(y, x, wr, b, buf, g, cnt, gemm_nt)


cdef int _conv_forward(floating* y, const floating* x, const floating* w, const floating* b,
                       Geom* g) noexcept nogil:
    # 0, or -1 when out of memory (then nothing is written and nothing is held)
    cdef int nt = _threads_for_batch(g)
    cdef int t, n, lo, hi, chunk
    cdef Py_ssize_t cs = _col_size(g)
    cdef floating* colbuf = <floating*>fm_malloc(nt * cs * sizeof(floating))
    cdef floating* wr = NULL
    cdef int c, o, tap, KK = g.KH * g.KW
    cdef int NO
    cdef Py_ssize_t nwp
    if colbuf == NULL:
        return -1
    if floating is float:
        if g.small:
            # fm_direct_pack's layout: ceil(OC/NO)*NO*C*KH*KW weights, then the bias
            NO = fm_direct_fwd_no(g.OW, g.OC)
            nwp = <Py_ssize_t>(g.OC + NO - 1) // NO * NO
            wr = <floating*>fm_malloc(nwp * (g.C * KK + 1) * sizeof(floating))
            if wr == NULL:
                free(colbuf)
                return -1
            fm_direct_pack(wr, wr + nwp * g.C * KK, w, b, g.OC, g.C * KK, NO)
        elif g.igemm:
            wr = <floating*>fm_malloc(<Py_ssize_t>KK * g.C * fm_igemm_ocp(g.OC) * sizeof(floating))
            if wr == NULL:
                free(colbuf)
                return -1
            fm_igemm_pack(wr, w, g.OC, g.C, g.KH, g.KW)
    if g.wino:
        wr = <floating*>fm_malloc(16 * <Py_ssize_t>g.C * g.OC * sizeof(floating))
    elif g.wino5:
        wr = <floating*>fm_malloc(6 * <Py_ssize_t>g.C * g.OC * sizeof(floating))
    elif g.shifted or g.im2row:
        wr = <floating*>fm_malloc(<Py_ssize_t>KK * g.C * g.OC * sizeof(floating))
    if wr == NULL and (g.wino or g.wino5 or g.shifted or g.im2row):
        free(colbuf)
        return -1
    if g.wino:
        _wino_weights(wr, w, g.C, g.OC)
    elif g.wino5:
        _wino5_weights(wr, w, g.C, g.OC)
    elif g.shifted or g.im2row:
        # wr[kh, kw*C + c, o] = w[o, c, kh, kw]: one (KW*C, OC) matrix per kernel row
        for tap in range(KK):
            for c in range(g.C):
                for o in range(g.OC):
                    wr[((<Py_ssize_t>(tap // g.KW) * g.KW + tap % g.KW) * g.C + c) * g.OC + o] = \
                        w[(<Py_ssize_t>o * g.C + c) * KK + tap]
    cdef int imb = g.wimb if (g.wino or g.wino5) else g.imb
    if g.im2row or g.wino or g.wino5:
        # blocks of imb images (the last of a thread's chunk may be shorter)
        if nt <= 1:
            n = 0
            while n < g.N:
                _block_forward(y + n * g.ys, x + n * g.xs, wr, b, colbuf, g,
                               min(imb, g.N - n), num_threads())
                n = n + imb
        else:
            chunk = (g.N + nt - 1) // nt
            for t in prange(nt, num_threads=nt, schedule='static'):
                lo = t * chunk
                hi = min(g.N, lo + chunk)
                n = lo
                while n < hi:
                    _block_forward(y + n * g.ys, x + n * g.xs, wr, b, colbuf + t * cs,
                                   g, min(imb, hi - n), 1)
                    n = n + imb
    elif nt <= 1:
        for n in range(g.N):
            _forward_image(y + n * g.ys, x + n * g.xs, w, wr, b, colbuf, g, num_threads())
    else:
        chunk = (g.N + nt - 1) // nt
        for t in prange(nt, num_threads=nt, schedule='static'):
            lo = t * chunk
            hi = min(g.N, lo + chunk)
            for n in range(lo, hi):
                _forward_image(y + n * g.ys, x + n * g.xs, w, wr, b, colbuf + t * cs, g, 1)
    free(wr)
    free(colbuf)
    return 0


# ---------------------------------------------------------------- backward
cdef void _backward_image(floating* dx, floating* dw, double* db, const floating* dy,
                          const floating* x, const floating* w, const floating* wt,
                          floating* col, Geom* g, bint dw_beta, bint acc_dx,
                          int gemm_nt) noexcept nogil:
    # dw (OC, K) (+)= dy_n @ cols^T per group; db (OC,) += sum_p dy_n; dx_n (+)= col2im(W^T dy_n),
    # tile by tile of g.rows output rows (the same tiles as forward)
    cdef const floating* cols
    cdef const floating* dyrow
    cdef const floating* dyt
    cdef int gr, o, p, oh0, nr, pt, ldcol
    cdef Py_ssize_t p0
    cdef double s
    cdef floating beta
    if db != NULL:
        for o in range(g.OC):
            db[o] += sum_contig(dy + <Py_ssize_t>o * g.P, g.P)
    if g.dwise:
        if g.SH == 1 and g.SW == 1:
            _dw_backward_image_s1(dx, dw, dy, x, w, col, g, dw_beta, acc_dx)
        else:
            _dw_backward_image(dx, dw, dy, x, w, g, dw_beta, acc_dx)
        return
    if dx != NULL and not acc_dx and not g.direct and not g.dxconv:
        memset(dx, 0, <Py_ssize_t>g.C * g.H * g.W * sizeof(floating))
    cdef int tile
    for tile in range((g.OH + g.rows - 1) // g.rows):
        oh0 = tile * g.rows
        nr = min(g.rows, g.OH - oh0)
        pt = nr * g.OW
        p0 = <Py_ssize_t>oh0 * g.OW
        dyt = dy + p0
        if g.direct:
            cols = x + p0
            ldcol = g.P
        else:
            cols = col
            ldcol = pt
        if dw != NULL:
            if not g.direct:
                im2col_2d(col, x, g.C, g.H, g.W, oh0, nr, g.OW, g.KH, g.KW, g.SH, g.SW, g.PH,
                          g.PW, g.DH, g.DW, pt)
            beta = 1 if (dw_beta or oh0 > 0) else 0
            for gr in range(g.G):
                if g.tdw:
                    # dW_g^T (K, OCg) (+)= cols_g (K, pt) @ dy_n[g, tile]^T (pt, OCg)
                    pgemm(False, True, g.K, g.OCg, pt, <floating>1,
                          cols + <Py_ssize_t>gr * g.K * ldcol, ldcol,
                          dyt + <Py_ssize_t>gr * g.OCg * g.P, g.P,
                          beta, dw + <Py_ssize_t>gr * g.OCg * g.K, g.OCg, gemm_nt)
                else:
                    pgemm(False, True, g.OCg, g.K, pt, <floating>1,
                          dyt + <Py_ssize_t>gr * g.OCg * g.P, g.P,
                          cols + <Py_ssize_t>gr * g.K * ldcol, ldcol,
                          beta, dw + <Py_ssize_t>gr * g.OCg * g.K, g.K, gemm_nt)
        if dx != NULL and not g.dxconv:
            if g.direct:
                # dx_n (C, H*W) (+)= W_g^T @ dy_n[g]: the GEMM writes straight into dx
                for gr in range(g.G):
                    pgemm(True, False, g.K, pt, g.OCg, <floating>1,
                          w + <Py_ssize_t>gr * g.OCg * g.K, g.K,
                          dyt + <Py_ssize_t>gr * g.OCg * g.P, g.P,
                          <floating>(1 if acc_dx else 0), dx + <Py_ssize_t>gr * g.K * g.P + p0,
                          g.P, gemm_nt)
            else:
                # dcols (K*G, pt) = W_g^T @ dy_n[g, tile] (overwrites this tile's cols), then
                # scatter-add them into dx
                for gr in range(g.G):
                    pgemm(True, False, g.K, pt, g.OCg, <floating>1,
                          w + <Py_ssize_t>gr * g.OCg * g.K, g.K,
                          dyt + <Py_ssize_t>gr * g.OCg * g.P, g.P,
                          <floating>0, col + <Py_ssize_t>gr * g.K * pt, pt, gemm_nt)
                col2im_2d(dx, col, g.C, g.H, g.W, oh0, nr, g.OW, g.KH, g.KW, g.SH, g.SW, g.PH,
                          g.PW, g.DH, g.DW, pt)
    if dx != NULL and g.dxconv:
        # dx_n[c, ih, iw] = sum_{o, kh, kw} W[o, c, kh, kw] dy_n[o, ih + PH - kh*DH, iw + PW - kw*DW]:
        # a stride-1 convolution of dy_n (OC channels, OH x OW) with the flipped, transposed
        # weights wt (C, OCg*KH*KW) and padding PHt, PWt, giving H x W. The GEMM has depth
        # OCg*KH*KW and writes dx directly (no col2im scatter); its cols are dy's, OC/C the size
        # of x's (used when OC < C, see Geom.dxconv)
        im2col_2d(col, dy, g.OC, g.OH, g.OW, 0, g.H, g.W, g.KH, g.KW, 1, 1, g.PHt, g.PWt,
                  g.DH, g.DW, <Py_ssize_t>g.H * g.W)
        for gr in range(g.G):
            pgemm(False, False, g.Cg, g.H * g.W, g.OCg * g.KH * g.KW, <floating>1,
                  wt + <Py_ssize_t>gr * g.Cg * g.OCg * g.KH * g.KW, g.OCg * g.KH * g.KW,
                  col + <Py_ssize_t>gr * g.OCg * g.KH * g.KW * g.H * g.W, g.H * g.W,
                  <floating>(1 if acc_dx else 0), dx + <Py_ssize_t>gr * g.Cg * g.H * g.W,
                  g.H * g.W, gemm_nt)


cdef bint _pick_dxfwd(Geom* g, Geom* gt) noexcept nogil:
    # Stride-1, groups-1 dx as a forward convolution of dy (OC channels, OH x OW) with the
    # flipped, transposed weights, top / left padding PHt / PWt, output H x W; gt is that
    # convolution's geometry. Taken where gt's own forward rules pick the im2row or the shifted
    # path (see _geom_set), i.e. dy has >= 16 channels: one GEMM of depth OC*KH*KW per output
    # block instead of col2im's depth-OC GEMM and scatter-add
    # measured (one core, CPU time, dx alone, dxfwd / the other path): 0.93 for 64->64 at 16x16;
    # 1.04 for the 1-D 64->64 k5 and 1.2-1.3 for the 1-D 32->64 k5 (col2im of one kernel row
    # is cheap), so 2-D kernels only; dy with 12 channels (DenseBlock) stays on Geom.dxconv
    # 1-D k5 layers through Winograd F(2, 5): 0.88 for 64->64; from FM_DXFWD5_C input channels
    # (fm_tuning.h); DenseBlock's dy with 12 channels takes the direct path where fm_tuning.h's
    # FM_SMALL_* say so (else Geom.dxconv)
    if _dx_fwd == 1 or g.G != 1 or g.SH != 1 or g.SW != 1 or g.direct or g.dwise or g.rbwd:
        return False
    if g.PHt < 0 or g.PWt < 0:
        return False
    _geom_set(gt, g.N, g.OC, g.OH, g.OW, g.C, g.H, g.W, g.KH, g.KW, 1, 1, g.PHt, g.PWt,
              g.DH, g.DW, 1, g.ys, g.xs, g.f32)
    if _dx_fwd == 0 and g.KH == 1:
        return (gt.wino5 or gt.igemm) and g.C >= FM_DXFWD5_C
    if _dx_fwd == 2 and not (gt.shifted or gt.wino or gt.small or gt.wino5 or gt.igemm):
        gt.im2row = True
    return gt.im2row or gt.shifted or gt.wino or gt.small or gt.wino5 or gt.igemm


cdef void _igemm_dw_images(float* dwt, const float* dy, const float* x, float* buf, Geom* g,
                           int lo, int hi) noexcept nogil:
    # dwt (K, OCP) = the weight gradient of images lo..hi-1, transposed (patch order): each
    # image's x position-major into the padded plane, its dy position-major into (P, OCP)
    # (padding columns zero), then the implicit GEMM
    cdef int OCP = fm_igemm_ocp(g.OC), n
    cdef float* xp = buf
    cdef float* dyt = buf + <Py_ssize_t>g.Hq * g.Wq * g.C
    if lo >= hi:
        return
    if OCP > g.OC:
        memset(dyt, 0, <Py_ssize_t>g.P * OCP * sizeof(float))
    for n in range(lo, hi):
        _pack_nhwc(xp, x + n * g.xs, g.C, g.H, g.W, g.Hq, g.Wq, g.PH, g.PW)
        _transpose_add(dyt, OCP, dy + n * g.ys, g.P, g.OC, g.P, <const float*>NULL, False, False)
        fm_igemm_dw(dwt, dyt, xp, g.OC, g.OH, g.OW, g.C, g.Wq, g.KH, g.KW, g.SH, g.SW, g.DH,
                    g.DW, n > lo)


cdef void _igemm_dw_finish(float* dw, const float* part, int nt, int chunk, Py_ssize_t psize,
                           Geom* g, bint acc_w) noexcept nogil:
    # dw[o, c, tap] (+)= sum over the threads that had images of part_t[tap*C + c, o], in
    # double, in thread order
    cdef int OCP = fm_igemm_ocp(g.OC), o, c, tap, t, KK = g.KH * g.KW
    cdef double s
    cdef Py_ssize_t i
    for o in range(g.OC):
        for c in range(g.C):
            for tap in range(KK):
                i = (<Py_ssize_t>o * g.C + c) * KK + tap
                s = dw[i] if acc_w else 0
                for t in range(nt):
                    if t * chunk < g.N:
                        s = s + part[t * psize + (<Py_ssize_t>tap * g.C + c) * OCP + o]
                dw[i] = <float>s


cdef int _conv_backward(floating* dx, floating* dw, floating* db, const floating* dy,
                        const floating* x, const floating* w, Geom* g,
                        bint acc_w, bint acc_b, bint acc_dx) noexcept nogil:
    # 0, or -1 when out of memory (every buffer is allocated before dx, dw or db is written)
    cdef Geom gt
    if floating is double:
        g.ddw = False       # (float32 only: float64 takes the GEMM paths)
        g.igdw = False
    if g.ddw or g.igdw:
        g.wdw = False
        g.tdw = False
    if dx != NULL and _pick_dxfwd(g, &gt):
        g.dxfwd = True
        g.dxconv = False
        gt.acc = acc_dx
    cdef int nt = _threads_for_batch(g)
    cdef int t, n, lo, hi, chunk, o, gr, k
    cdef Py_ssize_t i, j, cs = _col_size(g)
    cdef Py_ssize_t wsize = <Py_ssize_t>g.OC * g.K
    cdef floating* colbuf = NULL
    cdef floating* dwpart = NULL
    cdef floating* wt = NULL
    cdef double* dbpart = NULL
    cdef double acc
    cdef int c, kh, kw, KK = g.KH * g.KW
    cdef floating* dxi = NULL if g.dxfwd else dx      # the per-image loop's dx
    # dW goes through per-thread partials (summed in thread order below) when several threads
    # share it, or when it is accumulated transposed
    cdef bint partials = dw != NULL and (nt > 1 or g.tdw or g.rbwd) and not (
        g.wdw or g.ddw or g.igdw)
    cdef floating* dU = NULL
    cdef Py_ssize_t usize = 16 * <Py_ssize_t>g.C * g.OC
    cdef bint oom = False
    cdef floating* wk2 = NULL
    if floating is double:
        g.igdx = False
    if dx != NULL and (g.dxconv or g.dxfwd or g.rbwd):
        # (Geom.igdx: then wr packed for the implicit GEMM, (OC, fm_igemm_ocp(K)))
        wt = <floating*>fm_malloc((wsize + (<Py_ssize_t>g.OC * fm_igemm_ocp(g.K)
                                            if g.rbwd and g.igdx else 0)) * sizeof(floating))
        oom = oom or wt == NULL
    if partials:
        dwpart = <floating*>fm_malloc(nt * wsize * sizeof(floating))
        oom = oom or dwpart == NULL
    if db != NULL:
        dbpart = <double*>fm_malloc(nt * g.OC * sizeof(double))
        oom = oom or dbpart == NULL
    if not (g.dxfwd and dw == NULL and db == NULL):
        colbuf = <floating*>fm_malloc(nt * cs * sizeof(floating))
        oom = oom or colbuf == NULL
    if dw != NULL and g.wdw:
        dU = <floating*>fm_malloc(nt * usize * sizeof(floating))
        oom = oom or dU == NULL
    if dw != NULL and g.ddw:
        # the direct loops' vector accumulators, one set per thread (fm_direct.h)
        usize = fm_direct_dw_size(g.OC, g.C * KK)
        dU = <floating*>fm_malloc(nt * usize * sizeof(floating))
        oom = oom or dU == NULL
    if dw != NULL and g.igdw:
        # the implicit GEMM's transposed partials (K, OCP), one per thread
        usize = <Py_ssize_t>g.K * fm_igemm_ocp(g.OC)
        dU = <floating*>fm_malloc(nt * usize * sizeof(floating))
        oom = oom or dU == NULL
    if oom:
        _free5(wt, dwpart, dbpart, colbuf, dU)
        return -1
    if dx != NULL and (g.dxconv or g.dxfwd):
        # wt[g, c, o, kh, kw] = w[g*OCg + o, c, KH-1-kh, KW-1-kw]
        for gr in range(g.G):
            for c in range(g.Cg):
                for o in range(g.OCg):
                    for kh in range(g.KH):
                        for kw in range(g.KW):
                            wt[(((<Py_ssize_t>gr * g.Cg + c) * g.OCg + o) * g.KH + kh) * g.KW + kw] = \
                                w[(((<Py_ssize_t>gr * g.OCg + o) * g.Cg + c) * g.KH + g.KH - 1 - kh) * g.KW
                                  + g.KW - 1 - kw]
    elif dx != NULL and g.rbwd:
        # the forward's wr (K, OC): wt[(tap*C + c)*OC + o] = w[o, c, tap] (groups 1)
        for k in range(KK):
            for c in range(g.C):
                for o in range(g.OC):
                    wt[(<Py_ssize_t>k * g.C + c) * g.OC + o] = w[(<Py_ssize_t>o * g.C + c) * KK + k]
        if floating is float:
            if g.igdx:
                wk2 = wt + wsize
                fm_igemm_pack(wk2, wt, g.K, g.OC, 1, 1)
    if db != NULL:
        memset(dbpart, 0, nt * g.OC * sizeof(double))
    if g.dxfwd:
        if _conv_forward(dx, dy, wt, NULL, &gt) != 0:
            _free5(wt, dwpart, dbpart, colbuf, dU)
            return -1
        if dw == NULL and db == NULL:
            free(wt)
            return 0
    chunk = (g.N + nt - 1) // nt
    cdef floating* dwi = dwpart if partials else dw     # the per-image loop's dW
    if dw != NULL and g.wdw:
        # dW first, through Winograd in blocks of g.wimb images (per-thread dU partials); the
        # per-image loop below then does db and dx only
        dwi = NULL
        if nt <= 1:
            n = 0
            while n < g.N:
                _wino_dw_images(dU, dy + n * g.ys, x + n * g.xs, colbuf, g,
                                min(g.wimb, g.N - n), n > 0, num_threads())
                n = n + g.wimb
        else:
            for t in prange(nt, num_threads=nt, schedule='static'):
                lo = t * chunk
                hi = min(g.N, lo + chunk)
                if lo >= hi:
                    memset(dU + t * usize, 0, usize * sizeof(floating))
                n = lo
                while n < hi:
                    _wino_dw_images(dU + t * usize, dy + n * g.ys, x + n * g.xs,
                                    colbuf + t * cs, g, min(g.wimb, hi - n), n > lo, 1)
                    n = n + g.wimb
        _wino_dw_finish(dw, dU, nt if nt > 1 else 1, usize, g.C, g.OC, acc_w)
        free(dU)
    if floating is float:
        if dw != NULL and g.ddw:
            # dW first, through the direct loops (per-thread vector accumulators summed at the
            # end in thread order); the per-image loop below then does db and dx only
            dwi = NULL
            memset(dU, 0, nt * usize * sizeof(floating))
            if nt <= 1:
                for n in range(g.N):
                    _small_plane(colbuf, x + n * g.xs, g)
                    fm_direct_dw_image(dU, dy + n * g.ys, colbuf,
                                       colbuf + <Py_ssize_t>g.C * g.Hp * g.Ws, g.OC, g.OH, g.OW,
                                       g.C, g.Hp, g.Ws, g.KH, g.KW, g.DH, g.DW)
            else:
                for t in prange(nt, num_threads=nt, schedule='static'):
                    lo = t * chunk
                    hi = min(g.N, lo + chunk)
                    for n in range(lo, hi):
                        _small_plane(colbuf + t * cs, x + n * g.xs, g)
                        fm_direct_dw_image(dU + t * usize, dy + n * g.ys, colbuf + t * cs,
                                           colbuf + t * cs + <Py_ssize_t>g.C * g.Hp * g.Ws,
                                           g.OC, g.OH, g.OW, g.C, g.Hp, g.Ws, g.KH, g.KW,
                                           g.DH, g.DW)
            fm_direct_dw_finish(dw, dU, nt if nt > 1 else 1, usize, g.OC, g.C * KK, acc_w)
            free(dU)
            dU = NULL
        if dw != NULL and g.igdw:
            # dW first, through the implicit GEMM (per-thread transposed partials summed in
            # thread order); the per-image loop below then does db and dx only
            dwi = NULL
            if nt <= 1:
                _igemm_dw_images(dU, dy, x, colbuf, g, 0, g.N)
            else:
                for t in prange(nt, num_threads=nt, schedule='static'):
                    _igemm_dw_images(dU + t * usize, dy, x, colbuf + t * cs, g, t * chunk,
                                     min(g.N, t * chunk + chunk))
            _igemm_dw_finish(dw, dU, nt if nt > 1 else 1, chunk, usize, g, acc_w)
            free(dU)
            dU = NULL
    if g.rbwd and (dw != NULL or dx != NULL):
        # dW (into the per-thread partials, (OC, KH*KW*C)) and dx through the patch rows in
        # blocks of g.imb images; the per-image loop below then does db only
        dwi = NULL
        dxi = NULL
        if nt <= 1:
            n = 0
            while n < g.N:
                _im2row_backward_images(dx + n * g.xs if dx != NULL else NULL, dwpart,
                                        dy + n * g.ys, x + n * g.xs, wt, wk2, colbuf, g,
                                        min(g.imb, g.N - n), n > 0, acc_dx, num_threads())
                n = n + g.imb
        else:
            for t in prange(nt, num_threads=nt, schedule='static'):
                lo = t * chunk
                hi = min(g.N, lo + chunk)
                n = lo
                while n < hi:
                    _im2row_backward_images(dx + n * g.xs if dx != NULL else NULL,
                                            dwpart + t * wsize if dwpart != NULL else NULL,
                                            dy + n * g.ys, x + n * g.xs, wt, wk2, colbuf + t * cs, g,
                                            min(g.imb, hi - n), n > lo, acc_dx, 1)
                    n = n + g.imb
    if dwi == NULL and dxi == NULL and db == NULL:
        pass
    elif nt <= 1:
        for n in range(g.N):
            # the first image overwrites dw (or the partial) unless accumulating
            _backward_image(dxi + n * g.xs if dxi != NULL else NULL, dwi,
                            dbpart, dy + n * g.ys, x + n * g.xs, w, wt, colbuf, g,
                            n > 0 if partials else (acc_w or n > 0), acc_dx, num_threads())
    else:
        for t in prange(nt, num_threads=nt, schedule='static'):
            lo = t * chunk
            hi = min(g.N, lo + chunk)
            for n in range(lo, hi):
                _backward_image(dxi + n * g.xs if dxi != NULL else NULL,
                                dwi + t * wsize if dwi != NULL else NULL,
                                dbpart + t * g.OC if dbpart != NULL else NULL,
                                dy + n * g.ys, x + n * g.xs, w, wt, colbuf + t * cs, g,
                                n > lo, acc_dx, 1)
    if partials and (dwi != NULL or g.rbwd):
        # fixed-order sum of the per-thread partials (threads with no image left none)
        for gr in range(g.G):
            for o in range(g.OCg):
                for k in range(g.K):
                    i = (<Py_ssize_t>gr * g.OCg + o) * g.K + k
                    if g.rbwd:      # (OC, KH*KW*C), groups 1
                        j = <Py_ssize_t>o * g.K + (k % KK) * g.C + k // KK
                    else:
                        j = <Py_ssize_t>gr * g.OCg * g.K + (<Py_ssize_t>k * g.OCg + o if g.tdw
                                                             else <Py_ssize_t>o * g.K + k)
                    acc = dw[i] if acc_w else 0
                    for t in range(nt):
                        if t * chunk < g.N:
                            acc = acc + dwpart[t * wsize + j]
                    dw[i] = <floating>acc
    free(dwpart)
    if db != NULL:
        for o in range(g.OC):
            acc = db[o] if acc_b else 0
            for t in range(nt):
                acc += dbpart[t * g.OC + o]
            db[o] = <floating>acc
        free(dbpart)
    free(wt)
    free(colbuf)
    return 0


cdef inline void _free5(void* a, void* b, void* c, void* d, void* e) noexcept nogil:
    free(a)
    free(b)
    free(c)
    free(d)
    free(e)


# ---------------------------------------------------------------- batched variant (for measurement)
cdef int _conv_forward_batched(floating* y, const floating* x, const floating* w,
                               const floating* b, Geom* g) noexcept nogil:
    # cols of the whole batch (C*KH*KW, N*P), one GEMM split over threads into (OC, N*P), then
    # a transposing copy into y (N, OC, P). Kept to compare with the per-image recipe.
    cdef int nt = num_threads()
    cdef int n, o, p
    cdef Py_ssize_t NP = <Py_ssize_t>g.N * g.P, KR = <Py_ssize_t>g.C * g.KH * g.KW
    cdef floating* cols = <floating*>fm_malloc(KR * NP * sizeof(floating))
    cdef floating* tmp = <floating*>fm_malloc(<Py_ssize_t>g.OC * NP * sizeof(floating))
    if cols == NULL or tmp == NULL:
        free(cols)
        free(tmp)
        return -1
    for n in prange(g.N, num_threads=nt, schedule='static'):
        im2col_2d(cols + <Py_ssize_t>n * g.P, x + n * g.xs, g.C, g.H, g.W, 0, g.OH, g.OW, g.KH, g.KW,
                  g.SH, g.SW, g.PH, g.PW, g.DH, g.DW, NP)
    pgemm(False, False, g.OC, <int>NP, <int>KR, <floating>1, w, <int>KR, cols, <int>NP,
          <floating>0, tmp, <int>NP, nt)
    for n in prange(g.N, num_threads=nt, schedule='static'):
        for o in range(g.OC):
            for p in range(g.P):
                y[n * g.ys + <Py_ssize_t>o * g.P + p] = tmp[<Py_ssize_t>o * NP + <Py_ssize_t>n * g.P + p] + (b[o] if b != NULL else 0)
    free(cols)
    free(tmp)
    return 0


# ---------------------------------------------------------------- Python entry points
cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _geom(Geom* g, cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, int SH, int SW, int PH,
                int PW, int DH, int DW, int G):
    _geom_set(g, <int>cnp.PyArray_DIM(x, 0), <int>cnp.PyArray_DIM(x, 1),
              <int>cnp.PyArray_DIM(x, 2), <int>cnp.PyArray_DIM(x, 3),
              <int>cnp.PyArray_DIM(y, 1), <int>cnp.PyArray_DIM(y, 2), <int>cnp.PyArray_DIM(y, 3),
              <int>cnp.PyArray_DIM(w, 2), <int>cnp.PyArray_DIM(w, 3), SH, SW, PH, PW, DH, DW, G,
              cnp.PyArray_STRIDES(x)[0] // cnp.PyArray_ITEMSIZE(x),
              cnp.PyArray_STRIDES(y)[0] // cnp.PyArray_ITEMSIZE(y),
              cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32)


cdef void _geom_set(Geom* g, int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW,
                    int SH, int SW, int PH, int PW, int DH, int DW, int G, Py_ssize_t xs,
                    Py_ssize_t ys, bint f32) noexcept nogil:
    # every path decision for one call (the forward's, and the backward's on the same numbers)
    g.N, g.C, g.H, g.W, g.OC, g.OH, g.OW, g.KH, g.KW = N, C, H, W, OC, OH, OW, KH, KW
    g.SH, g.SW, g.PH, g.PW, g.DH, g.DW, g.G = SH, SW, PH, PW, DH, DW, G
    g.f32 = f32
    g.Cg = g.C // G
    g.OCg = g.OC // G
    g.K = g.Cg * g.KH * g.KW
    g.P = g.OH * g.OW
    g.xs = xs
    g.ys = ys
    g.direct = (g.KH == 1 and g.KW == 1 and SH == 1 and SW == 1 and PH == 0 and PW == 0
                and g.OH == g.H and g.OW == g.W)
    # Every threshold below is a per-level constant of simd/fm_tuning.h, next to the
    # measurement that chose it. Transposed orientation when the output channels are the small
    # side of the GEMM:
    g.tout = _pick(_fwd_layout, g.OCg < FM_TOUT_OC and g.K >= FM_TOUT_K and g.OCg < g.P)
    g.tdw = _pick(_dw_layout, g.OCg < g.K)
    g.dwise = _depthwise_direct and g.Cg == 1 and G > 1 and not g.direct
    if g.dwise:
        g.tout = False
        g.tdw = False
    g.rows = g.OH
    if not g.direct and not g.dwise:
        g.rows = <int>max(1, min(<Py_ssize_t>g.OH, _tile_elems // (<Py_ssize_t>g.C * g.KH * g.KW * g.OW)))
    g.PHt = g.DH * (g.KH - 1) - PH
    g.PWt = g.DW * (g.KW - 1) - PW
    # stride-1 dx as a convolution of dy only when the output has fewer channels than the
    # input (measured, fwd+bwd, dxconv / col2im: 0.81 for 60->12 and 0.88 for 24->12 at 32x32;
    # 1.05 for 64->64; 2.8 for 3->32: dy's cols OC/C times x's)
    g.dxconv = (_dx_as_force or g.OC < g.C) and (
                _dx_as_conv and not g.direct and not g.dwise and SH == 1 and SW == 1
                and g.PHt >= 0 and g.PWt >= 0 and g.rows == g.OH
                and <Py_ssize_t>g.OC * g.KH * g.KW * g.H * g.W <= _tile_elems)
    g.Hp = g.OH + g.DH * (g.KH - 1)
    g.Wp = g.OW + g.DW * (g.KW - 1)
    g.Hq = (g.OH - 1) * SH + g.DH * (g.KH - 1) + 1
    g.Wq = (g.OW - 1) * SW + g.DW * (g.KW - 1) + 1
    g.im2row = False
    g.relu = False
    g.acc = False
    g.dxfwd = False
    g.imb = <int>max(1, min(<Py_ssize_t>g.N, _im2row_positions // max(1, g.P)))
    g.shifted = (_fwd_shifted == 2 or (_fwd_shifted == 0 and g.C >= FM_SHIFTED_C and g.KH > 1
                                       and (g.OC < FM_SHIFTED_OC or _fwd_im2row == 1))) and (
        G == 1 and SH == 1 and SW == 1 and not g.direct and g.rows == g.OH
        and <Py_ssize_t>g.C * g.KW * g.Hp * g.Wp <= _tile_elems)
    g.im2row = (_fwd_im2row == 2 or (_fwd_im2row == 0 and (
        g.C >= FM_IM2ROW_C or (g.C >= FM_IM2ROW_C2 and (SH > 1 or SW > 1 or g.KH > 1))))) and (
        G == 1 and not g.direct and not g.dwise and not g.shifted and g.rows == g.OH)
    g.TH = (g.OH + 1) // 2
    g.TW = (g.OW + 1) // 2
    g.wimb = <int>max(1, min(<Py_ssize_t>g.N, _wino_tiles // max(1, g.TH * g.TW)))
    # (256 tiles per Winograd block: 64 and 128 measured 1.04-1.14, 512 and 1024 1.08-1.24)
    g.wino = (_fwd_wino == 2 or (_fwd_wino == 0 and g.C >= FM_WINO_C and (
        not f32 or g.C * g.OC >= FM_WINO_COC))) and (
        G == 1 and g.KH == 3 and g.KW == 3 and SH == 1 and SW == 1 and DH == 1 and DW == 1)
    if g.wino:
        g.shifted = False
        g.im2row = False
    g.wino5 = (_fwd_wino5 == 2 or (_fwd_wino5 == 0 and g.C >= FM_WINO5_C)) and (
        G == 1 and g.KH == 1 and g.KW == 5 and SH == 1 and SW == 1 and DW == 1 and PH == 0
        and g.OH == g.H)
    if g.wino5:
        g.shifted = False
        g.im2row = False
        g.wino = False
        g.wimb = <int>max(1, min(<Py_ssize_t>g.N, _wino_tiles // max(1, g.OH * g.TW)))
    g.Ws = (g.OW + 2 * FM_W - 1) // (2 * FM_W) * (2 * FM_W) + g.DW * (g.KW - 1)
    # the direct loops (simd/fm_direct.h) for 2-D kernels with few input or output channels:
    # the per-level thresholds and their measurements are in simd/fm_tuning.h
    # (a path forced by a set_* mode wins over the automatic choice of another one)
    cdef bint forced_fwd = (_fwd_wino == 2 or _fwd_im2row == 2 or _fwd_shifted == 2
                            or _fwd_wino5 == 2)
    cdef bint forced_dw = _dw_wino == 2 or _bwd_im2row == 2
    g.small = (_fwd_small == 2 or (_fwd_small == 0 and not forced_fwd and g.KH > 1 and (
        (g.C <= _small_c and g.OC <= _small_c_oc)
        or (g.OC <= _small_oc and g.C <= _small_oc_c)))) and (
        f32 and G == 1 and SH == 1 and SW == 1 and not g.direct and not g.wino5)
    if g.small:
        g.shifted = False
        g.im2row = False
        g.wino = False
        g.tout = False
    # the implicit GEMM (simd/fm_igemm.h) where the direct loops do not take the layer and, for
    # 3x3 stride-1 layers, Winograd does not: thresholds per level in simd/fm_tuning.h
    g.igemm = (_fwd_igemm == 2 or (_fwd_igemm == 0 and not forced_fwd and g.C >= FM_IG_FWD_C and not g.wino
                                   and not g.small and (SH > 1 or SW > 1 or FM_IG_FWD_S1)
                                   and (FM_IG_WITH_BLAS512 or not _blas512))) and (
        f32 and G == 1 and not g.direct and not g.dwise and g.KH * g.KW <= 64)
    if g.igemm:
        g.small = False
        g.shifted = False
        g.im2row = False
        g.wino = False
        g.wino5 = False
        g.tout = False
    g.wdw = (_dw_wino == 2 or (_dw_wino == 0 and g.C >= FM_WDW_C)) and (
        G == 1 and g.KH == 3 and g.KW == 3 and SH == 1 and SW == 1 and DH == 1 and DW == 1)
    g.rbwd = (_bwd_im2row == 2 or (_bwd_im2row == 0 and g.C >= FM_RBWD_C and (SH > 1 or SW > 1))) and (
        G == 1 and not g.direct and not g.dwise and g.rows == g.OH and PH >= 0 and PW >= 0)
    if g.rbwd:
        g.wdw = False
        g.dxconv = False
    g.igdx = f32 and g.rbwd and (_dx_igemm == 2 or (_dx_igemm == 0 and FM_IG_DX and (
        FM_IG_WITH_BLAS512 or not _blas512)))
    g.ddw = (_dw_direct == 2 or (_dw_direct == 0 and not forced_dw and g.KH > 1 and (
        (g.C <= _dwd_c and g.OC <= _dwd_c_oc) or (g.OC <= _dwd_oc and g.C <= _dwd_oc_c)))) and (
        f32 and G == 1 and SH == 1 and SW == 1 and not g.direct and not g.dwise and not g.rbwd)
    g.wig = (_wino_igemm == 2 or (_wino_igemm == 0 and FM_IG_WINO and (
        FM_IG_WITH_BLAS512 or not _blas512))) and f32 and fm_igemm_ocp(g.OC) == g.OC
    # dW as an implicit GEMM where the direct loops do not take it, and over Winograd's dW for
    # fewer than FM_IG_DW_WINO_OC output channels or where Winograd's GEMMs stay on BLAS
    # (fm_tuning.h)
    g.igdw = (_dw_igemm == 2 or (_dw_igemm == 0 and not forced_dw and not g.ddw and g.C >= FM_IG_DW_C and (
        not g.wdw or g.OC < FM_IG_DW_WINO_OC or not g.wig) and (
        FM_IG_WITH_BLAS512 or not _blas512))) and (
        f32 and G == 1 and not g.direct and not g.dwise and g.KH * g.KW <= 64)
    if g.igdw:
        g.ddw = False
        g.wdw = False


def conv2d_forward(cnp.ndarray y, cnp.ndarray x, cnp.ndarray w, object b,
                   int SH, int SW, int PH, int PW, int DH, int DW, int G, bint batched=False,
                   bint relu=False):
    """y (N, OC, OH, OW) = conv(x (N, C, H, W), w (OC, C/G, KH, KW)) + b (b may be None);
    then y = max(y, 0) when relu (image by image, while it is in cache; NaN stays NaN).

    PH / PW are the top / left paddings; OH, OW (y's shape) imply the bottom / right ones.
    Images of x and y are C-contiguous; their batch strides may be larger (channel views).
    batched=True runs the one-big-GEMM variant (groups=1 only; for benchmarks).
    """
    cdef Geom g
    _geom(&g, x, y, w, SH, SW, PH, PW, DH, DW, G)
    g.relu = relu
    if batched and relu:
        raise ValueError("conv2d_forward: batched=True does not fuse the ReLU")
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pb = _ptr(b)
    cdef int rc
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            if batched:
                rc = _conv_forward_batched(<float*>py, <float*>px, <float*>pw, <float*>pb, &g)
            else:
                rc = _conv_forward(<float*>py, <float*>px, <float*>pw, <float*>pb, &g)
    else:
        with nogil:
            if batched:
                rc = _conv_forward_batched(<double*>py, <double*>px, <double*>pw, <double*>pb, &g)
            else:
                rc = _conv_forward(<double*>py, <double*>px, <double*>pw, <double*>pb, &g)
    if rc != 0:
        raise MemoryError("conv2d_forward: out of memory for the convolution's scratch")


cdef str _fwd_name(Geom* h):
    if h.dwise:
        return "depthwise"
    if h.small:
        return "small"
    if h.igemm:
        return "igemm"
    if h.wino:
        return "wino"
    if h.wino5:
        return "wino5"
    if h.shifted:
        return "shifted"
    if h.im2row:
        return "im2row"
    if h.direct:
        return "gemm-1x1"
    return "im2col-t" if h.tout else "im2col"


def conv2d_paths(cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, int SH, int SW, int PH, int PW,
                 int DH, int DW, int G):
    """'forward=..., dW=..., dx=...': the paths a call with these arrays (their dtype) takes (for
    benchmarks and tests; the same decisions as conv2d_forward / conv2d_backward)."""
    cdef Geom g, gt
    _geom(&g, x, y, w, SH, SW, PH, PW, DH, DW, G)
    fw = _fwd_name(&g)
    dwn = "depthwise" if g.dwise else ("direct" if g.ddw else ("igemm" if g.igdw else ("wino" if g.wdw else (
        "im2row" if g.rbwd else ("im2col-t" if g.tdw else "im2col")))))
    if g.rbwd:
        dxn = "im2row"
    elif _pick_dxfwd(&g, &gt):
        dxn = "fwd:" + _fwd_name(&gt)
    else:
        dxn = "depthwise" if g.dwise else ("dxconv" if g.dxconv else "col2im")
    return f"forward={fw} dW={dwn} dx={dxn}"


def conv2d_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x,
                    cnp.ndarray w, int SH, int SW, int PH, int PW, int DH, int DW, int G,
                    bint acc_w, bint acc_b, bint acc_dx):
    """dx (+)= conv^T(dy); dw (+)= dy (*) x; db (+)= dy summed over (N, OH, OW).

    Any of dx, dw, db may be None to skip it. acc_*: add into the array (True) or overwrite it.
    dx has x's shape and batch stride.
    """
    cdef Geom g
    _geom(&g, x, dy, w, SH, SW, PH, PW, DH, DW, G)
    if dx is not None:
        g.xs = cnp.PyArray_STRIDES(<cnp.ndarray>dx)[0] // cnp.PyArray_ITEMSIZE(x)
        if g.xs != cnp.PyArray_STRIDES(x)[0] // cnp.PyArray_ITEMSIZE(x):
            raise ValueError("conv2d_backward: dx and x must have the same batch stride")
    cdef void* pdx = _ptr(dx)
    cdef void* pdw = _ptr(dw)
    cdef void* pdb = _ptr(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef int rc
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _conv_backward(<float*>pdx, <float*>pdw, <float*>pdb, <float*>pdy, <float*>px,
                                <float*>pw, &g, acc_w, acc_b, acc_dx)
    else:
        with nogil:
            rc = _conv_backward(<double*>pdx, <double*>pdw, <double*>pdb, <double*>pdy,
                                <double*>px, <double*>pw, &g, acc_w, acc_b, acc_dx)
    if rc != 0:
        raise MemoryError("conv2d_backward: out of memory for the convolution's scratch")
