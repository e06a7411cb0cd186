# Included by conv.pyx: the plan. For one call -- the shape, the dtype, this module's
# instruction-set level and the BLAS it runs with -- which algorithm the forward, the weight
# gradient (dW) and the input gradient (dx) take, their blocking (output rows per im2col tile,
# images per GEMM) and the per-thread scratch. Every number the choice compares with is in the
# threshold table of this level below, next to the measurement that chose it; the rules below
# hold no number. Legend as in conv.pyx.
#
# The algorithms (Geom's flags; names as conv2d_algorithms / conv2d_paths report them), each
# measured against the one it replaces:
#   forward   depthwise    one input channel per group: direct loops, no GEMM (Geom.dwise)
#             small        float32, few input or output channels, stride 1: direct FMA loops over
#                          register blocks (simd/fm_direct.h; Geom.small)
#             igemm        float32: an implicit GEMM on the position-major plane -- register
#                          blocks of MR positions x NR vectors of output channels, no patch rows,
#                          no BLAS packing (simd/fm_igemm.h; Geom.igemm)
#             wino         3x3 stride 1: Winograd F(2x2, 3x3), 16 GEMMs of depth C over blocks of
#                          2x2-output tiles (Geom.wino); wino-igemm: its GEMMs on the implicit-
#                          GEMM kernel (Geom.wig)
#             wino5        1-D k5 stride 1: Winograd F(2, 5), 6 GEMMs of depth C (Geom.wino5)
#             shifted      stride 1: per-kernel-row GEMMs on a zero-padded position-major copy
#                          of x (Geom.shifted)
#             im2row       patch rows (P, KH*KW*C) from a position-major copy, several small
#                          images per GEMM (Geom.im2row)
#             gemm-1x1     1x1 kernel, stride 1, no padding: cols = x itself (Geom.direct)
#             im2col       im2col + GEMM, any groups (the general path)
#             (-t: y^T computed, then transposed, Geom.tout; for gemm-1x1 and im2col)
#   dW        depthwise, direct (simd/fm_direct.h, Geom.ddw), igemm (Geom.igdw), wino /
#             wino-igemm (dU = V^T (A dY A^T), Geom.wdw), im2row (dW = dy @ rows on the
#             forward's patch rows, Geom.rbwd), im2col / im2col-t (dW^T, Geom.tdw)
#   dx        depthwise; im2row / im2row-igemm (strided: drows = dy^T @ W on the patch rows,
#             added into a padded position-major plane in contiguous runs and transposed into
#             dx -- no strided gather or scatter; -igemm: that GEMM on the implicit-GEMM kernel,
#             Geom.rbwd, Geom.igdx); fwd:<forward> (stride 1: dx as a forward convolution of dy
#             with the flipped weights through one of the forward algorithms above, no col2im
#             scatter, Geom.dxfwd); dxconv (stride 1: dy im2col'd, one GEMM writing dx,
#             Geom.dxconv); col2im (W^T dy, then col2im; 1x1: the GEMM writes dx)
# Where several apply, the precedence is the order above; forward with relu applies max(y, 0)
# to each image in the same call (Sequential Conv+ReLU, blocks).
#
# Rules without a number of their own (measured, one core, CPU time):
#   * dx as a convolution of dy (dxconv) only when the output has fewer channels than the input
#     (fwd+bwd, dxconv / col2im: 0.81 for 60->12 and 0.88 for 24->12 at 32x32; 1.05 for 64->64;
#     2.8 for 3->32: dy's cols are OC/C times x's).
#   * dx as a forward (fwd:...) where that forward's own rules pick im2row, shifted, Winograd,
#     the direct loops or the implicit GEMM for dy (i.e. dy has >= 16 channels): one GEMM of
#     depth OC*KH*KW per output block instead of col2im's depth-OC GEMM and scatter-add.
#     dx alone, dxfwd / the other path: 0.93 for 64->64 at 16x16; 1.04 for the 1-D 64->64 k5
#     and 1.2-1.3 for the 1-D 32->64 k5 (col2im of one kernel row is cheap), so 2-D kernels
#     only, and 1-D k5 layers through F(2, 5) or the implicit GEMM (dxfwd5_c below); dy with 12
#     channels (DenseBlock) stays on dxconv unless the direct loops take it.
#   * dW^T (im2col-t) whenever OCg < K: 0.85-0.93 for K >= 216 > OC, ~1.0 for K 27.
#   * the GEMM orientation at all: BLAS is column-major, so a row-major y_n (OC, P) is a
#     column-major (P, OC) product, and OpenBLAS's kernels run markedly faster when the
#     column-major M is the small dimension (plain sgemm GFLOP/s, M,K,N = 12,540,1024: 50 vs
#     1024,540,12: 29; 32,27,1024: 59 vs 1024,27,32: 42; 64,576,256: 78 vs 256,576,64: 65). So
#     the forward computes y_n^T (P, OC) into scratch and transposes it into y (adding the bias
#     on the way) where tout_oc / tout_k say; dW likewise accumulates dW^T (K, OC) per thread
#     and transposes once at the end.
#
# Overrides (conv2d_forward's algorithm=, conv2d_backward's dw_algorithm= / dx_algorithm=):
# an Override sets each algorithm's mode -- AUTO (the thresholds decide), NEVER, or FORCE
# (wherever the shape allows it). Naming an algorithm forces it and turns the others of that
# phase off; the other phase of a backward call is then the plan's choice among what is left
# (im2row's dW and dx run together, as do depthwise's).

cdef enum:
    SERIAL_MACS = 1 << 17       # a whole conv below this many multiply-adds runs on one thread
    NEVER_C = 1 << 30           # a channel threshold no layer reaches: the path is off


# ---------------------------------------------------------------- thresholds, one table per level
cdef struct Thresholds:
    int tout_oc, tout_k             # y^T (im2col-t) when OCg < tout_oc and K >= tout_k
    int shifted_c, shifted_oc       # shifted when C >= shifted_c and OC < shifted_oc
    int im2row_c, im2row_c2         # im2row when C >= im2row_c, or >= im2row_c2 with a stride
                                    # or a 2-D kernel
    int wino_c, wino_coc            # wino when C >= wino_c and (float32) C*OC >= wino_coc
    int wdw_c                       # Winograd dW when C >= wdw_c
    int wino5_c                     # wino5 when C >= wino5_c
    int rbwd_c                      # im2row backward (strided) when C >= rbwd_c
    int dxfwd5_c                    # 1-D dx as a forward when C >= dxfwd5_c
    int small_c, small_c_oc         # small when C <= small_c and OC <= small_c_oc,
    int small_oc, small_oc_c        # or OC <= small_oc and C <= small_oc_c
    int dwd_c, dwd_c_oc             # direct dW, the same form
    int dwd_oc, dwd_oc_c
    int ig_fwd_c                    # igemm forward when C >= ig_fwd_c ...
    bint ig_fwd_s1                  # ... at stride 1 too (except where Winograd takes the layer)
    int ig_dw_c                     # igemm dW when C >= ig_dw_c ...
    int ig_dw_wino_oc               # ... over Winograd's dW when OC < ig_dw_wino_oc (or where
                                    # Winograd's GEMMs are on BLAS)
    bint ig_dx                      # im2row dx's GEMM on the implicit-GEMM kernel
    bint ig_wino                    # Winograd's GEMMs on the implicit-GEMM kernel
    Py_ssize_t tile_elems           # target elements of one im2col tile (per-thread scratch)
    Py_ssize_t im2row_positions     # output positions per im2row GEMM
    Py_ssize_t wino_tiles           # 2x2 output tiles per Winograd block


cdef void _table_every_level(Thresholds* t) noexcept nogil:
    # The BLAS paths' crossovers (float64 always; float32 where the direct loops and the
    # implicit GEMM do not take the layer), measured on the AVX2 dev box (one core, CPU time,
    # the path / the one it replaces) unless noted; layer names as in bench/bench_conv.py.
    # y^T then a transposing copy: 0.85 for OC 12 and K 216-540, 1.0 for OC 64, 1.25-1.45 for
    # K 27 (the copy costs more than a short GEMM gains)
    t.tout_oc, t.tout_k = 32, 64
    # shifted (2-D kernels): vs im2col 0.80-0.86 for 24..60 -> 12 at 32x32, 0.88 for 64 -> 64
    # at 16x16, 1.5-1.7 for 3 input channels, 1.27 / 0.99 for the 1-D k5 layers; vs im2row
    # 0.87-0.97 with OC >= 32 (im2row faster), 1.05 with OC 12-16
    t.shifted_c, t.shifted_oc = 16, 32
    # im2row: vs im2col 0.81 for 32 -> 64 stride 2 at 32x32, 0.88 for 64 -> 64 stride 2 at
    # 16x16, 0.84 for the 1-D 64 -> 64 k5, 1.02 for the 1-D 32 -> 64 k5, 1.3-1.4 for 3 input
    # channels
    t.im2row_c, t.im2row_c2 = 64, 16
    # Winograd F(2x2, 3x3) forward: 0.69 for 64->64 at 16x16 (0.69 for its dx), 0.78 for 60->12
    # and 0.92 for 36->12 at 32x32, 1.03 for 24->12, 2.2-2.5 for 3 input channels (the
    # transforms cost more than the GEMM saves)
    t.wino_c, t.wino_coc = 32, 0
    # its dW: 0.81 for 64->64 at 16x16, 0.89 for 60->12, 0.95 for 48->12, 1.0 for 36->12, 1.26
    # for 24->12
    t.wdw_c = 48
    # Winograd F(2, 5) (1-D k5 stride 1): 0.81 for 64->64 at L 256, 0.94-0.97 for 32->64
    t.wino5_c = 32
    # the strided backward through the patch rows, measured at avx512 and avx2 (A/B vs im2col +
    # col2im with vector stride-2 rows): dW 0.79 / 0.82, dx 0.64 / 0.69 for 64->64 stride 2 at
    # 16x16; dx 0.94 / 0.85 for 32->64 at 32x32
    t.rbwd_c = 16
    # 1-D stride-1 dx as a forward (through F(2, 5), or the implicit GEMM where it takes the
    # forward): A/B dxfwd / col2im, 32->64 k5 at L 256 through F(2, 5): avx512 0.76, avx2 0.81
    # (1.0 before the position-major copies became register transposes); through the implicit
    # GEMM 0.9 of that; 1-D 64->64 k5 through F(2, 5): 0.88
    t.dxfwd5_c = 32
    # tiles sized for L2 (64K elements) were no faster than one tile per image on the
    # workloads' layers, and 16K-element tiles were 1.1-1.3x slower (shorter GEMMs), so 1M
    # elements (4 MB in float32) only bounds the scratch of large images
    t.tile_elems = 1 << 20
    # (P, OC, K) = (64, 64, 576) 47 GF/s vs (64, 256, 576) 60; 64->64 stride 2 at 16x16: 512
    # positions per GEMM 0.83x the time of one image per GEMM, 256 0.86x
    t.im2row_positions = 512
    # 64 and 128 tiles per block measured 1.04-1.14 the time of 256, 512 and 1024 1.08-1.24
    t.wino_tiles = 256
    # the direct loops and the implicit GEMM: off unless the level's table turns them on
    t.small_c, t.small_c_oc, t.small_oc, t.small_oc_c = 0, 0, 0, 0
    t.dwd_c, t.dwd_c_oc, t.dwd_oc, t.dwd_oc_c = 0, 0, 0, 0
    t.ig_fwd_c, t.ig_fwd_s1, t.ig_dw_c, t.ig_dw_wino_oc = NEVER_C, False, NEVER_C, 0
    t.ig_dx, t.ig_wino = False, False


cdef void _table_scalar(Thresholds* t) noexcept nogil:
    # one float at a time: the direct loops and the implicit GEMM do not pay (forced by the
    # tests only)
    _table_every_level(t)


cdef void _table_avx2(Thresholds* t) noexcept nogil:
    # The direct loops compete with BLAS paths, and at this level the BLAS may run either ISA:
    # this table is measured with OpenBLAS at its AVX2 kernels (an AVX2-only CPU;
    # OPENBLAS_CORETYPE=Haswell here), _table_avx2_blas512 with OpenBLAS at AVX-512 (this level
    # forced on an AVX-512 CPU).
    _table_every_level(t)
    # direct forward / the path it replaces: 3->64 at 16x16 0.79 (vs im2col); dx computed as a
    # forward, dy with 12 channels -> 48, 60: 0.64, 0.68 (vs dxconv) -- the avx512 level's
    # thresholds
    t.small_c, t.small_c_oc, t.small_oc, t.small_oc_c = 12, 64, 24, 64
    # direct dW: 3->32 0.68, 3->64 0.80, 3->24 0.62 (vs im2col), 48->12, 60->12 0.78, 0.85 (vs
    # the implicit GEMM) -- the avx512 level's thresholds
    t.dwd_c, t.dwd_c_oc, t.dwd_oc, t.dwd_oc_c = 12, 64, 24, 64
    # implicit GEMM forward: cnn.conv2, conv3 0.88, 0.89 (vs im2row), bnres.conv 1.42 (Winograd
    # kept); conv1d.1, conv1d.2 0.88, 0.98 (vs F(2, 5); 1 thread, CPU time, 2026-12-04, after
    # the kernel's k loop was unrolled by two: 1.01, 1.11 before), so stride-1 layers too
    t.ig_fwd_c, t.ig_fwd_s1 = 16, True
    # its dW: cnn.conv2, conv3 0.92, 0.74, conv1d 0.92, 0.94, dense.l3 0.80 (vs Winograd's dW),
    # bnres.conv 1.22 (Winograd's dW kept from 32 output channels)
    t.ig_dw_c, t.ig_dw_wino_oc = 16, 32
    # strided dx through the kernel 1.02, 1.04 (BLAS kept)
    t.ig_dx = False
    # Winograd's GEMMs through the kernel (64->64 at 16x16): forward 0.93, dW 0.85
    t.ig_wino = True
    t.wino_coc = 0


cdef void _table_avx2_blas512(Thresholds* t) noexcept nogil:
    # the avx2 level where SciPy's OpenBLAS runs AVX-512 kernels (see _table_avx2)
    _table_every_level(t)
    # direct forward / the path it replaces: 3->32 at 32x32 0.95, 3->64 at 16x16 1.25 (vs
    # im2col), 3->24 0.78, 24->12 0.66, 36->12 0.83, 48->12 0.97, 60->12 0.95 (vs Winograd); dx
    # dy 12 -> 36: 0.92, -> 48: 1.03, -> 60: 1.12 of dxconv
    t.small_c, t.small_c_oc, t.small_oc, t.small_oc_c = 12, 36, 24, 64
    # direct dW: dense.l0 0.58, l1 0.53 (vs im2col-t), l2, l3 1.00 (vs Winograd), stems 3->64
    # 0.91, 3->32 1.53, 3->24 1.24 (vs im2col)
    t.dwd_c, t.dwd_c_oc, t.dwd_oc, t.dwd_oc_c = 0, 0, 12, 36
    # the implicit GEMM against BLAS at AVX-512: the BLAS paths win (igemm 1.2-1.6x), so it is
    # off (forward, dW, dx, Winograd's GEMMs)


cdef void _table_avx512(Thresholds* t) noexcept nogil:
    _table_every_level(t)
    # direct forward, A/B direct / the path it replaces: 3->32 at 32x32 0.51, 3->64 at 16x16
    # 0.67, 3->24 0.48, 24..60->12 at 32x32 0.40-0.54 (vs the shifted path and Winograd);
    # 64->64 at 16x16 1.30 (vs Winograd). The stride-1 dx computed as such a forward
    # (DenseBlock: dy with 12 channels -> 36, 48, 60): 0.52, 0.55, 0.62 of dxconv
    t.small_c, t.small_c_oc, t.small_oc, t.small_oc_c = 12, 64, 24, 64
    # direct dW, A/B direct / the path it replaces: dense.l0-l3 0.36, 0.35 (vs im2col-t), 0.59,
    # 0.56 (vs Winograd); bnres.stem 0.66, dense.stem 0.63, cnn.conv1 0.95 (vs im2col); 64->64
    # at 16x16 1.71
    t.dwd_c, t.dwd_c_oc, t.dwd_oc, t.dwd_oc_c = 12, 64, 24, 64
    # implicit GEMM forward, stride 1 too except the 3x3 layers Winograd takes; A/B igemm / the
    # path it replaces: cnn.conv2, cnn.conv3 0.77 (vs im2row), conv1d.1, conv1d.2 0.91, 0.94 (vs
    # F(2, 5)), 16->28 at 8x8 0.52 (vs shifted), 16->32 at 16x16 0.64, 32->64 5x5 0.69, 16->64
    # stride 2 0.73 (vs im2row); bnres.conv 1.06 (vs Winograd: not taken). Stride-1 dx computed
    # as such a forward: conv1d 0.90, 0.92; 32->64 5x5 0.46
    t.ig_fwd_c, t.ig_fwd_s1 = 16, True
    # its dW where the direct dW does not take the layer: cnn.conv2, conv3 0.76, 0.62 (vs im2row
    # rows + BLAS), conv1d 0.79, 0.77 (vs im2col-t), bnres.conv 0.94 (vs Winograd's dW on BLAS)
    # but 1.27 vs Winograd's dW on the kernel, so ig_dw_wino_oc 0: Winograd's dW where it applies
    t.ig_dw_c, t.ig_dw_wino_oc = 16, 0
    # strided dx (im2row) with its dy^T W GEMM through the kernel: cnn.conv2, conv3 0.93, 0.90
    t.ig_dx = True
    # Winograd's 16 GEMMs through the kernel: forward 0.78 and dW 0.76 of them on BLAS for
    # 64->64 at 16x16
    t.ig_wino = True
    # Winograd forward (GEMMs on the kernel) against the implicit GEMM, 3x3 stride 1 at 16x16,
    # A/B igemm / Winograd: 16->64 0.77, 32->32 0.83, 32->64 1.17, 48->64 1.25, 64->32 1.11:
    # from wino_c input channels and C*OC >= wino_coc. Its dW against the implicit GEMM's:
    # 16->64 0.77, 32->32 0.75, 32->64 0.98, 48->64 1.24, 64->32 1.01: wdw_c 48 stands
    t.wino_coc = 2048


def _blas_runs_avx512():
    # SciPy's OpenBLAS picks its kernels from the CPU (OPENBLAS_CORETYPE overrides it): on an
    # AVX-512 CPU its sgemm runs AVX-512 kernels whatever level fastmod's kernels run at, and the
    # crossovers between the BLAS paths and the implicit GEMM depend on that (_table_avx2_blas512)
    import os
    core = os.environ.get("OPENBLAS_CORETYPE", "").strip().lower()
    if core:
        return core in ("skylakex", "cooperlake", "sapphirerapids")
    return bool(fm_cpu_features() & FM_CPU_AVX512F)


cdef Thresholds THR     # this level's table (FM_LEVEL), for the BLAS this process runs
if FM_LEVEL == 2:
    _table_avx512(&THR)
elif FM_LEVEL == 1 and _blas_runs_avx512():
    _table_avx2_blas512(&THR)
elif FM_LEVEL == 1:
    _table_avx2(&THR)
else:
    _table_scalar(&THR)


# ---------------------------------------------------------------- geometry and choice of one call
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


cdef enum:
    AUTO = 0        # the thresholds decide
    NEVER = 1
    FORCE = 2       # wherever the shape allows it


cdef struct Override:
    # per-call override of the plan; every mode AUTO (and the table's blocking) is the default
    int small, igemm, wino, wino5, shifted, im2row      # forward algorithms
    int fwd_layout, dw_layout                            # NEVER: plain, FORCE: transposed
    int ddw, igdw, wdw, rbwd                             # dW (rbwd: and dx) algorithms
    int dxfwd, dxconv, igdx                              # dx algorithms
    int wig                                              # Winograd's GEMMs on the implicit GEMM
    bint no_dwise                                        # depthwise shapes through im2col
    Py_ssize_t tile_elems, im2row_positions, wino_tiles  # blocking (the table's by default)


cdef void _override_auto(Override* o) noexcept nogil:
    memset(o, 0, sizeof(Override))
    o.tile_elems = THR.tile_elems
    o.im2row_positions = THR.im2row_positions
    o.wino_tiles = THR.wino_tiles


cdef inline bint _choose(int mode, bint auto_value) noexcept nogil:
    # an algorithm's mode: AUTO -> what the thresholds say, NEVER -> no, FORCE -> yes (the
    # caller adds whether the shape allows it)
    if mode == NEVER:
        return False
    if mode == FORCE:
        return True
    return auto_value


cdef void _plan(Geom* g, int N, int C, int H, int W, int OC, int OH, int OW, int KH, int KW,
                int SH, int SW, int PH, int PW, int DH, int DW, int G, Py_ssize_t xs,
                Py_ssize_t ys, bint f32, const Override* o) noexcept nogil:
    # every path decision for one call (the forward's, and the backward's on the same numbers)
    g.N, g.C, g.H, g.W, g.OC, g.OH, g.OW, g.KH, g.KW = N, C, H, W, OC, OH, OW, KH, KW
    g.SH, g.SW, g.PH, g.PW, g.DH, g.DW, g.G = SH, SW, PH, PW, DH, DW, G
    g.f32 = f32
    g.Cg = C // G
    g.OCg = OC // G
    g.K = g.Cg * KH * KW
    g.P = OH * OW
    g.xs = xs
    g.ys = ys
    g.direct = (KH == 1 and KW == 1 and SH == 1 and SW == 1 and PH == 0 and PW == 0
                and OH == H and OW == W)
    g.dwise = not o.no_dwise and g.Cg == 1 and G > 1 and not g.direct
    g.rows = OH
    if not g.direct and not g.dwise:
        g.rows = <int>max(1, min(<Py_ssize_t>OH, o.tile_elems // (<Py_ssize_t>C * KH * KW * OW)))
    g.PHt = DH * (KH - 1) - PH
    g.PWt = DW * (KW - 1) - PW
    g.Hp = OH + DH * (KH - 1)
    g.Wp = OW + DW * (KW - 1)
    g.Hq = (OH - 1) * SH + DH * (KH - 1) + 1
    g.Wq = (OW - 1) * SW + DW * (KW - 1) + 1
    g.TH = (OH + 1) // 2
    g.TW = (OW + 1) // 2
    g.Ws = (OW + 2 * FM_W - 1) // (2 * FM_W) * (2 * FM_W) + DW * (KW - 1)
    g.imb = <int>max(1, min(<Py_ssize_t>N, o.im2row_positions // max(1, g.P)))
    g.wimb = <int>max(1, min(<Py_ssize_t>N, o.wino_tiles // max(1, g.TH * g.TW)))
    g.relu = False
    g.acc = False
    g.dxfwd = False
    g.wig = _choose(o.wig, THR.ig_wino) and f32 and fm_igemm_ocp(OC) == OC
    _plan_forward(g, o)
    _plan_backward(g, o)


cdef void _plan_forward(Geom* g, const Override* o) noexcept nogil:
    cdef bint s1 = g.SH == 1 and g.SW == 1
    cdef int C = g.C, OC = g.OC
    g.tout = _choose(o.fwd_layout, g.OCg < THR.tout_oc and g.K >= THR.tout_k
                     and g.OCg < g.P) and not g.dwise
    g.shifted = _choose(o.shifted, C >= THR.shifted_c and g.KH > 1 and OC < THR.shifted_oc) and (
        g.G == 1 and s1 and not g.direct and g.rows == g.OH
        and <Py_ssize_t>C * g.KW * g.Hp * g.Wp <= o.tile_elems)
    g.im2row = _choose(o.im2row, C >= THR.im2row_c
                       or (C >= THR.im2row_c2 and (not s1 or g.KH > 1))) and (
        g.G == 1 and not g.direct and not g.dwise and not g.shifted and g.rows == g.OH)
    g.wino = _choose(o.wino, C >= THR.wino_c and (not g.f32 or C * OC >= THR.wino_coc)) and (
        g.G == 1 and g.KH == 3 and g.KW == 3 and s1 and g.DH == 1 and g.DW == 1)
    if g.wino:
        g.shifted = False
        g.im2row = False
    g.wino5 = _choose(o.wino5, C >= THR.wino5_c) and (
        g.G == 1 and g.KH == 1 and g.KW == 5 and s1 and g.DW == 1 and g.PH == 0 and g.OH == g.H)
    if g.wino5:
        g.shifted = False
        g.im2row = False
        g.wino = False
        g.wimb = <int>max(1, min(<Py_ssize_t>g.N, o.wino_tiles // max(1, g.OH * g.TW)))
    g.small = _choose(o.small, g.KH > 1 and ((C <= THR.small_c and OC <= THR.small_c_oc)
                                             or (OC <= THR.small_oc and C <= THR.small_oc_c))) and (
        g.f32 and g.G == 1 and s1 and not g.direct and not g.wino5)
    if g.small:
        g.shifted = False
        g.im2row = False
        g.wino = False
        g.tout = False
    g.igemm = _choose(o.igemm, C >= THR.ig_fwd_c and not g.wino and not g.small
                      and (not s1 or THR.ig_fwd_s1)) and (
        g.f32 and g.G == 1 and not g.direct and not g.dwise and g.KH * g.KW <= 64)
    if g.igemm:
        g.small = False
        g.shifted = False
        g.im2row = False
        g.wino = False
        g.wino5 = False
        g.tout = False


cdef void _plan_backward(Geom* g, const Override* o) noexcept nogil:
    # dW's algorithm, and dx's apart from dx as a forward (_plan_dx_as_forward)
    cdef bint s1 = g.SH == 1 and g.SW == 1
    cdef int C = g.C, OC = g.OC
    g.tdw = _choose(o.dw_layout, g.OCg < g.K) and not g.dwise
    g.dxconv = _choose(o.dxconv, OC < C) and (
        not g.direct and not g.dwise and s1 and g.PHt >= 0 and g.PWt >= 0 and g.rows == g.OH
        and <Py_ssize_t>OC * g.KH * g.KW * g.H * g.W <= o.tile_elems)
    g.wdw = _choose(o.wdw, C >= THR.wdw_c) and (
        g.G == 1 and g.KH == 3 and g.KW == 3 and s1 and g.DH == 1 and g.DW == 1)
    g.rbwd = _choose(o.rbwd, C >= THR.rbwd_c and not s1) and (
        g.G == 1 and not g.direct and not g.dwise and g.rows == g.OH and g.PH >= 0 and g.PW >= 0)
    if g.rbwd:
        g.wdw = False
        g.dxconv = False
    g.igdx = g.f32 and g.rbwd and _choose(o.igdx, THR.ig_dx)
    g.ddw = _choose(o.ddw, g.KH > 1 and ((C <= THR.dwd_c and OC <= THR.dwd_c_oc)
                                         or (OC <= THR.dwd_oc and C <= THR.dwd_oc_c))) and (
        g.f32 and g.G == 1 and s1 and not g.direct and not g.dwise and not g.rbwd)
    g.igdw = _choose(o.igdw, not g.ddw and C >= THR.ig_dw_c
                     and (not g.wdw or OC < THR.ig_dw_wino_oc or not g.wig)) and (
        g.f32 and g.G == 1 and not g.direct and not g.dwise and g.KH * g.KW <= 64)
    if g.igdw:
        g.ddw = False
    if g.ddw or g.igdw:
        g.wdw = False
        g.tdw = False


cdef bint _plan_dx_as_forward(Geom* g, Geom* gt, const Override* o) noexcept nogil:
    # Stride-1, groups-1 dx as a forward convolution of dy (OC channels, OH x OW) with the
    # flipped, transposed weights, top / left padding PHt / PWt, output H x W; gt is that
    # convolution's plan (the rules and measurements: this file's header, dxfwd5_c)
    if o.dxfwd == NEVER or g.G != 1 or g.SH != 1 or g.SW != 1 or g.direct or g.dwise or g.rbwd:
        return False
    if g.PHt < 0 or g.PWt < 0:
        return False
    _plan(gt, g.N, g.OC, g.OH, g.OW, g.C, g.H, g.W, g.KH, g.KW, 1, 1, g.PHt, g.PWt,
          g.DH, g.DW, 1, g.ys, g.xs, g.f32, o)
    if o.dxfwd == AUTO and g.KH == 1:
        return (gt.wino5 or gt.igemm) and g.C >= THR.dxfwd5_c
    if o.dxfwd == FORCE and not (gt.shifted or gt.wino or gt.small or gt.wino5 or gt.igemm):
        gt.im2row = True
    return gt.im2row or gt.shifted or gt.wino or gt.small or gt.wino5 or gt.igemm


cdef void _plan_dx(Geom* g, Geom* gt, const Override* o) noexcept nogil:
    # the backward of a call that computes dx: dx as a forward of dy where it pays
    if _plan_dx_as_forward(g, gt, o):
        g.dxfwd = True
        g.dxconv = False


cdef inline Py_ssize_t _col_size(Geom* g) noexcept nogil:
    # per-thread scratch, in whole cache lines (16 floats: each thread's part of one fm_malloc
    # starts on a line, as the first)
    return (_col_floats(g) + 15) // 16 * 16


cdef inline Py_ssize_t _col_floats(Geom* g) noexcept nogil:
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


cdef inline int _threads_for_batch(Geom* g) noexcept nogil:
    cdef int nt = num_threads()
    cdef double macs = <double>g.N * g.OC * g.K * g.P
    if nt > g.N:
        nt = g.N
    if macs < SERIAL_MACS:
        nt = 1
    return nt if nt > 1 else 1


# ---------------------------------------------------------------- algorithm names and overrides
FORWARD_ALGORITHMS = ("depthwise", "small", "igemm", "wino", "wino-igemm", "wino5", "shifted",
                      "im2row", "gemm-1x1", "gemm-1x1-t", "im2col", "im2col-t")
DW_ALGORITHMS = ("depthwise", "direct", "igemm", "wino", "wino-igemm", "im2row", "im2col",
                 "im2col-t")
_DX_FORWARDS = ("small", "igemm", "wino", "wino-igemm", "wino5", "shifted", "im2row")
DX_ALGORITHMS = (("depthwise", "im2row", "im2row-igemm") + tuple("fwd:" + f for f in _DX_FORWARDS)
                 + ("dxconv", "col2im"))


cdef str _forward_name(Geom* h):
    if h.dwise:
        return "depthwise"
    if h.small:
        return "small"
    if h.igemm:
        return "igemm"
    if h.wino:
        return "wino-igemm" if h.wig else "wino"
    if h.wino5:
        return "wino5"
    if h.shifted:
        return "shifted"
    if h.im2row:
        return "im2row"
    if h.direct:
        return "gemm-1x1-t" if h.tout else "gemm-1x1"
    return "im2col-t" if h.tout else "im2col"


cdef str _dw_name(Geom* h):
    if h.dwise:
        return "depthwise"
    if h.ddw:
        return "direct"
    if h.igdw:
        return "igemm"
    if h.wdw:
        return "wino-igemm" if h.wig else "wino"
    if h.rbwd:
        return "im2row"
    return "im2col-t" if h.tdw else "im2col"


cdef str _dx_name(Geom* h, Geom* ht):
    # (after _plan_dx: ht is dx's forward plan when h.dxfwd)
    if h.rbwd:
        return "im2row-igemm" if h.igdx else "im2row"
    if h.dxfwd:
        return "fwd:" + _forward_name(ht)
    if h.dwise:
        return "depthwise"
    return "dxconv" if h.dxconv else "col2im"


cdef void _override_forward(Override* o, str name):
    # the forward through `name` (FORWARD_ALGORITHMS), every other forward algorithm off
    o.small = o.igemm = o.wino = o.wino5 = o.shifted = o.im2row = NEVER
    if name != "depthwise":
        o.no_dwise = True
    if name == "small":
        o.small = FORCE
    elif name == "igemm":
        o.igemm = FORCE
    elif name in ("wino", "wino-igemm"):
        o.wino = FORCE
        o.wig = FORCE if name == "wino-igemm" else NEVER
    elif name == "wino5":
        o.wino5 = FORCE
    elif name == "shifted":
        o.shifted = FORCE
    elif name == "im2row":
        o.im2row = FORCE
    elif name in ("gemm-1x1", "im2col"):
        o.fwd_layout = NEVER
    elif name in ("gemm-1x1-t", "im2col-t"):
        o.fwd_layout = FORCE


cdef void _override_dw(Override* o, str name):
    # dW through `name` (DW_ALGORITHMS), every other dW algorithm off
    o.ddw = o.igdw = o.wdw = o.rbwd = NEVER
    if name != "depthwise":
        o.no_dwise = True
    if name == "direct":
        o.ddw = FORCE
    elif name == "igemm":
        o.igdw = FORCE
    elif name in ("wino", "wino-igemm"):
        o.wdw = FORCE
        o.wig = FORCE if name == "wino-igemm" else NEVER
    elif name == "im2row":
        o.rbwd = FORCE
    elif name == "im2col":
        o.dw_layout = NEVER
    elif name == "im2col-t":
        o.dw_layout = FORCE


cdef void _override_dx(Override* o, str name):
    # dx through `name` (DX_ALGORITHMS), every other dx algorithm off
    if name != "depthwise":
        o.no_dwise = True
    o.rbwd = FORCE if name in ("im2row", "im2row-igemm") else NEVER
    o.igdx = FORCE if name == "im2row-igemm" else NEVER
    o.dxfwd = FORCE if name.startswith("fwd:") else NEVER
    if name.startswith("fwd:"):
        _override_forward(o, name[4:])
    elif name == "dxconv":
        o.dxconv = FORCE
    elif name == "col2im":
        o.dxconv = NEVER
