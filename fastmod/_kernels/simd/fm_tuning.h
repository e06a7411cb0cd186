/* Per-level tuning of the convolution kernels (fastmod/_kernels/conv.pyx, simd/fm_direct.h):
 * register-block shapes of the direct loops and the thresholds that choose a path per layer.
 * One table per instruction-set level, each number next to the measurement that chose it (one
 * core, CPU time; "A/B": two builds or two settings alternating in one process, new / old;
 * layer names as in bench/bench_conv.py). conv.pyx reads these names (cdef extern) and uses no
 * other per-level constant.
 */
#ifndef FM_TUNING_H
#define FM_TUNING_H
#include "fm_vec.h"

#if FM_LEVEL == 2
/* direct forward (fm_direct_fwd): NV vectors of outputs x NO channels per register block; NO
 * is the largest of the candidates that computes the fewest padding channels (OC = 3: 4;
 * 12, 24: 12; 32, 64: 8 at NV = 2, 16 at NV = 1).
 * 32 zmm registers: rows wider than one vector take 2 vectors x up to 12 channels (24
 * accumulators, 2 input vectors, one broadcast: 14 loads per 24 FMAs); rows of at most 16
 * outputs 1 x up to 16. Measured against the 2 x 4 block of the AVX2 kernel (A/B, forward):
 * 0.50-0.54 for the DenseBlock layers (OC 12) and dense.stem (3->24), 0.62 for 3->32 at
 * 32x32, 0.28 for 3->64 at 16x16 (one vector: half of a 2 x 16 block was padding) */
#  define FM_DF_NV2_NO {12, 8, 4}
#  define FM_DF_NV1_NO {16, 8, 4}
/* the direct path (Geom.small, 2-D kernels, stride 1) when C <= FM_SMALL_C and
 * OC <= FM_SMALL_C_OC, or OC <= FM_SMALL_OC and C <= FM_SMALL_OC_C; A/B direct / the path it
 * replaces, forward:
 * 3->32 at 32x32 0.51, 3->64 at 16x16 0.67, 3->24 0.48, 24..60->12 at 32x32 0.40-0.54 (vs the
 * shifted path and Winograd); 64->64 at 16x16 1.30 (vs Winograd). The stride-1 dx computed
 * as such a forward (DenseBlock: dy with 12 channels -> 36, 48, 60): 0.52, 0.55, 0.62 of
 * Geom.dxconv */
#  define FM_SMALL_C 12
#  define FM_SMALL_C_OC 64
#  define FM_SMALL_OC 24
#  define FM_SMALL_OC_C 64
/* direct weight gradient (fm_direct_dw_image): NO channels x 3 kw per block (up to 24
 * accumulators, 3 input vectors, one dy vector in a register: 0.81-0.88 of the same loop
 * with the dy load folded into each FMA). Geom.ddw (2-D kernels, stride 1) when
 * C <= FM_DWD_C and OC <= FM_DWD_C_OC, or OC <= FM_DWD_OC and C <= FM_DWD_OC_C; A/B direct /
 * the path it replaces: dense.l0-l3 0.36, 0.35 (vs im2col-t), 0.59, 0.56 (vs Winograd);
 * bnres.stem 0.66, dense.stem 0.63, cnn.conv1 0.95 (vs im2col); 64->64 at 16x16 1.71 */
#  define FM_DW_NO {8, 6, 4}
#  define FM_DWD_C 12
#  define FM_DWD_C_OC 64
#  define FM_DWD_OC 24
#  define FM_DWD_OC_C 64
/* implicit GEMM (fm_igemm.h): MR positions x NR vectors of output channels (up to 4: OC 64 in
 * one pass); 24 accumulators, NR weight vectors and one broadcast in registers. The kernel runs
 * at ~93% of the FMA peak on cnn.conv2 (perf: 68% of the phase; the rest is the two transposes).
 * Forward (Geom.igemm) from FM_IG_FWD_C input channels, stride 1 too (FM_IG_FWD_S1) except the
 * 3x3 layers Winograd takes; A/B igemm / the path it replaces: cnn.conv2, cnn.conv3 0.77 (vs
 * im2row), conv1d.1, conv1d.2 0.91, 0.94 (vs F(2, 5)), 16->28 at 8x8 0.52 (vs shifted), 16->32
 * at 16x16 0.64, 32->64 5x5 0.69, 16->64 stride 2 0.73 (vs im2row); bnres.conv 1.06 (vs
 * Winograd: not taken). Stride-1 dx computed as such a forward: conv1d 0.90, 0.92; 32->64 5x5
 * 0.46. dW (Geom.igdw) from FM_IG_DW_C input channels where the direct dW does not take the
 * layer: cnn.conv2, conv3 0.76, 0.62 (vs im2row rows + BLAS), conv1d 0.79, 0.77 (vs im2col-t),
 * bnres.conv 0.94 (vs Winograd's dW on BLAS) but 1.27 vs Winograd's dW on the kernel
 * (FM_IG_WINO: Winograd's 16 GEMMs through it, forward 0.78 and dW 0.76 of them on BLAS for
 * 64->64 at 16x16), so FM_IG_DW_WINO_OC 0: Winograd's dW where it applies. Strided dx
 * (Geom.rbwd) with its dy^T W GEMM through the kernel (FM_IG_DX): cnn.conv2, conv3 0.93, 0.90 */
#  define FM_IG_NR 4
#  define FM_IG_MR1 16
#  define FM_IG_MR2 12
#  define FM_IG_MR3 8
#  define FM_IG_MR4 6
#  define FM_IG_FWD_C 16
#  define FM_IG_FWD_S1 1
#  define FM_IG_DW_C 16
#  define FM_IG_DW_WINO_OC 0
#  define FM_IG_DX 1
#  define FM_IG_WITH_BLAS512 1
#  define FM_IG_WINO 1
/* Winograd F(2x2, 3x3) forward (float32, GEMMs on the implicit-GEMM kernel) against the
 * implicit GEMM, 3x3 stride 1 at 16x16, A/B igemm / Winograd: 16->64 0.77, 32->32 0.83,
 * 32->64 1.17, 48->64 1.25, 64->32 1.11: from FM_WINO_C input channels and C*OC >= FM_WINO_COC.
 * Its dW against the implicit GEMM's: 16->64 0.77, 32->32 0.75, 32->64 0.98, 48->64 1.24,
 * 64->32 1.01: FM_WDW_C 48 stands */
#  define FM_WINO_COC 2048
#elif FM_LEVEL == 1
/* 16 ymm registers: 2 x 6 (12 accumulators, 2 input vectors, one broadcast: 15 registers) or
 * 2 x 4; A/B 2 x 6 / 2 x 4: 0.83-0.86 for 3->24 and the DenseBlock layers (OC 12). Against the
 * Cython loop it replaces (2 x 4, weights broadcast from 4 rows): 0.50 */
#  define FM_DF_NV2_NO {6, 4}
#  define FM_DF_NV1_NO {8, 4}
/* The direct loops compete with BLAS paths, and at this level the BLAS may run either ISA:
 * the FM_SMALL_* / FM_DWD_* thresholds are measured with OpenBLAS at its AVX2 kernels (an
 * AVX2-only CPU; OPENBLAS_CORETYPE=Haswell here), the *_B512 ones with OpenBLAS at AVX-512
 * (this level forced on an AVX-512 CPU; conv.pyx picks by _blas_runs_avx512).
 * AVX2 BLAS, A/B direct / the path it replaces: forward 3->64 at 16x16 0.79 (vs im2col); dx
 * computed as a forward, dy with 12 channels -> 48, 60: 0.64, 0.68 (vs Geom.dxconv); dW
 * 3->32 0.68, 3->64 0.80, 3->24 0.62 (vs im2col), 48->12, 60->12 0.78, 0.85 (vs the implicit
 * GEMM) -- the avx512 level's thresholds.
 * AVX-512 BLAS: forward 3->32 at 32x32 0.95, 3->64 at 16x16 1.25 (vs im2col), 3->24 0.78,
 * 24->12 0.66, 36->12 0.83, 48->12 0.97, 60->12 0.95 (vs Winograd); dx dy 12 -> 36: 0.92,
 * -> 48: 1.03, -> 60: 1.12 of Geom.dxconv; dW dense.l0 0.58, l1 0.53 (vs im2col-t), l2, l3
 * 1.00 (vs Winograd), stems 3->64 0.91, 3->32 1.53, 3->24 1.24 (vs im2col) */
#  define FM_SMALL_C 12
#  define FM_SMALL_C_OC 64
#  define FM_SMALL_OC 24
#  define FM_SMALL_OC_C 64
#  define FM_SMALL_C_B512 12
#  define FM_SMALL_C_OC_B512 36
#  define FM_SMALL_OC_B512 24
#  define FM_SMALL_OC_C_B512 64
/* direct weight gradient: 3 x 3 (9 accumulators, 3 input vectors, one dy vector) */
#  define FM_DW_NO {3}
#  define FM_DWD_C 12
#  define FM_DWD_C_OC 64
#  define FM_DWD_OC 24
#  define FM_DWD_OC_C 64
#  define FM_DWD_C_B512 0
#  define FM_DWD_C_OC_B512 0
#  define FM_DWD_OC_B512 12
#  define FM_DWD_OC_C_B512 36
/* implicit GEMM: 6 positions x 2 vectors (12 accumulators, 15 registers), 12 x 1.
 * Measured against BLAS at its AVX2 kernels (OPENBLAS_CORETYPE=Haswell: what an AVX2-only CPU
 * runs). When the BLAS runs AVX-512 kernels (this level forced on an AVX-512 CPU; conv.pyx's
 * _blas_runs_avx512) the BLAS paths win -- igemm 1.2-1.6x: FM_IG_WITH_BLAS512 0 turns the
 * implicit GEMM off there. With AVX2 BLAS: forward cnn.conv2, conv3 0.88,
 * 0.89 (vs im2row), conv1d.1, conv1d.2 1.01, 1.11 (vs F(2, 5): stride-1 layers stay off),
 * bnres.conv 1.42; dW cnn.conv2, conv3 0.92, 0.74, conv1d 0.92, 0.94, dense.l3 0.80 (vs
 * Winograd's dW), bnres.conv 1.22 (Winograd's dW kept from 32 output channels); strided dx
 * through the kernel 1.02, 1.04 (BLAS kept); Winograd's GEMMs through the kernel (64->64 at
 * 16x16): forward 0.93, dW 0.85 */
#  define FM_IG_NR 2
#  define FM_IG_MR1 12
#  define FM_IG_MR2 6
#  define FM_IG_FWD_C 16
#  define FM_IG_FWD_S1 0
#  define FM_IG_DW_C 16
#  define FM_IG_DW_WINO_OC 32
#  define FM_IG_DX 0
#  define FM_IG_WITH_BLAS512 0
#  define FM_IG_WINO 1
#  define FM_WINO_COC 0
#else
#  define FM_DF_NV2_NO {4}
#  define FM_DF_NV1_NO {4}
/* one float at a time: the direct loops do not pay (forced by the tests only) */
#  define FM_SMALL_C 0
#  define FM_SMALL_C_OC 0
#  define FM_SMALL_OC 0
#  define FM_SMALL_OC_C 0
#  define FM_DW_NO {4}
#  define FM_DWD_C 0
#  define FM_DWD_C_OC 0
#  define FM_DWD_OC 0
#  define FM_DWD_OC_C 0
#  define FM_IG_NR 4
#  define FM_IG_MR1 4
#  define FM_IG_MR2 4
#  define FM_IG_MR3 4
#  define FM_IG_MR4 4
#  define FM_IG_FWD_C (1 << 30)
#  define FM_IG_FWD_S1 0
#  define FM_IG_DW_C (1 << 30)
#  define FM_IG_DW_WINO_OC 0
#  define FM_IG_DX 0
#  define FM_IG_WITH_BLAS512 0
#  define FM_IG_WINO 0
#  define FM_WINO_COC 0
#endif

/* (at the levels that do not tell them apart, the same thresholds whatever the BLAS runs) */
#ifndef FM_SMALL_C_B512
#  define FM_SMALL_C_B512 FM_SMALL_C
#  define FM_SMALL_C_OC_B512 FM_SMALL_C_OC
#  define FM_SMALL_OC_B512 FM_SMALL_OC
#  define FM_SMALL_OC_C_B512 FM_SMALL_OC_C
#  define FM_DWD_C_B512 FM_DWD_C
#  define FM_DWD_C_OC_B512 FM_DWD_C_OC
#  define FM_DWD_OC_B512 FM_DWD_OC
#  define FM_DWD_OC_C_B512 FM_DWD_OC_C
#endif

/* ---------------------------------------------------------------- every level
 * The BLAS paths' crossovers (float64 always; float32 where the direct loops and the implicit
 * GEMM above do not take the layer), measured on the AVX2 dev box (one core, CPU time, the path
 * / the one it replaces) unless noted. */

/* GEMM orientation: y^T (P, OC) then a transposing copy when OC < FM_TOUT_OC and
 * K >= FM_TOUT_K: 0.85 for OC 12 and K 216-540, 1.0 for OC 64, 1.25-1.45 for K 27 (the copy
 * costs more than a short GEMM gains); dW^T whenever OC < K: 0.85-0.93 for K >= 216 > OC,
 * ~1.0 for K 27 */
#define FM_TOUT_OC 32
#define FM_TOUT_K 64
/* stride-1 forward as per-kernel-row GEMMs on a padded copy (Geom.shifted) for 2-D kernels
 * with C >= FM_SHIFTED_C and OC < FM_SHIFTED_OC: vs im2col 0.80-0.86 for 24..60 -> 12 at 32x32,
 * 0.88 for 64 -> 64 at 16x16, 1.5-1.7 for 3 input channels, 1.27 / 0.99 for the 1-D k5 layers;
 * vs im2row 0.87-0.97 with OC >= 32 (im2row faster), 1.05 with OC 12-16 */
#define FM_SHIFTED_C 16
#define FM_SHIFTED_OC 32
/* patch rows (Geom.im2row) when C >= FM_IM2ROW_C, or C >= FM_IM2ROW_C2 with a stride or a 2-D
 * kernel: vs im2col 0.81 for 32 -> 64 stride 2 at 32x32, 0.88 for 64 -> 64 stride 2 at 16x16,
 * 0.84 for the 1-D 64 -> 64 k5, 1.02 for the 1-D 32 -> 64 k5, 1.3-1.4 for 3 input channels */
#define FM_IM2ROW_C 64
#define FM_IM2ROW_C2 16
/* Winograd F(2x2, 3x3) forward from FM_WINO_C input channels: 0.69 for 64->64 at 16x16 (0.69
 * for its dx), 0.78 for 60->12 and 0.92 for 36->12 at 32x32, 1.03 for 24->12, 2.2-2.5 for 3
 * input channels (the transforms cost more than the GEMM saves). Its dW from FM_WDW_C: 0.81
 * for 64->64 at 16x16, 0.89 for 60->12, 0.95 for 48->12, 1.0 for 36->12, 1.26 for 24->12 */
#define FM_WINO_C 32
#define FM_WDW_C 48
/* Winograd F(2, 5) (1-D k5 stride 1) from FM_WINO5_C input channels: 0.81 for 64->64 at L 256,
 * 0.94-0.97 for 32->64 */
#define FM_WINO5_C 32
/* the strided backward through the patch rows (Geom.rbwd) from FM_RBWD_C input channels,
 * measured at avx512 and avx2 (A/B vs im2col + col2im with vector stride-2 rows): dW 0.79 /
 * 0.82, dx 0.64 / 0.69 for 64->64 stride 2 at 16x16; dx 0.94 / 0.85 for 32->64 at 32x32 */
#define FM_RBWD_C 16

/* Every level: 1-D stride-1 dx as a forward (Geom.dxfwd: through F(2, 5), or the implicit GEMM
 * where it takes the forward) when the input has at least FM_DXFWD5_C channels: A/B dxfwd /
 * col2im, 32->64 k5 at L 256 through F(2, 5): avx512 0.76, avx2 0.81 (1.0 before the
 * position-major copies became register transposes); through the implicit GEMM 0.9 of that */
#define FM_DXFWD5_C 32

#endif /* FM_TUNING_H */
