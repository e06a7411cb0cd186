/* Per-level register-block shapes of the convolution's SIMD kernels (simd/fm_direct.h,
 * simd/fm_igemm.h), each next to the measurement that chose it (one core, CPU time; "A/B": two
 * builds or two settings alternating in one process, new / old; layer names as in
 * bench/bench_conv.py). When a kernel is used at all -- the thresholds that choose an algorithm
 * per layer -- is the plan's business: one table per level in fastmod/_kernels/conv/plan.pxi.
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
/* direct weight gradient (fm_direct_dw_image): NO channels x 3 kw per block (up to 24
 * accumulators, 3 input vectors, one dy vector in a register: 0.81-0.88 of the same loop
 * with the dy load folded into each FMA) */
#  define FM_DW_NO {8, 6, 4}
/* implicit GEMM (fm_igemm.h): MR positions x NR vectors of output channels (up to 4: OC 64 in
 * one pass); 24 accumulators, NR weight vectors and one broadcast in registers. The kernel runs
 * at ~93% of the FMA peak on cnn.conv2 (perf: 68% of the phase; the rest is the two
 * transposes) */
#  define FM_IG_NR 4
#  define FM_IG_MR1 16
#  define FM_IG_MR2 12
#  define FM_IG_MR3 8
#  define FM_IG_MR4 6
/* direct forward over output channels (fm_direct_cv_fwd): MR outputs of a row x NR vectors of
 * channels; MR = 8 at NR = 2 divides the stems' 32-wide rows (no remainder blocks) */
#  define FM_DC_NR 4
#  define FM_DC_MR1 12
#  define FM_DC_MR2 8
#  define FM_DC_MR3 8
#  define FM_DC_MR4 6
#elif FM_LEVEL == 1
/* 16 ymm registers: 2 x 6 (12 accumulators, 2 input vectors, one broadcast: 15 registers) or
 * 2 x 4; A/B 2 x 6 / 2 x 4: 0.83-0.86 for 3->24 and the DenseBlock layers (OC 12). Against the
 * Cython loop it replaces (2 x 4, weights broadcast from 4 rows): 0.50 */
#  define FM_DF_NV2_NO {6, 4}
#  define FM_DF_NV1_NO {8, 4}
/* direct weight gradient: 3 x 3 (9 accumulators, 3 input vectors, one dy vector) */
#  define FM_DW_NO {3}
/* implicit GEMM: 6 positions x 2 vectors (12 accumulators, 15 registers), 12 x 1 */
#  define FM_IG_NR 2
#  define FM_IG_MR1 12
#  define FM_IG_MR2 6
/* direct forward over output channels: 6 x 2 or 12 x 1, as the implicit GEMM */
#  define FM_DC_NR 2
#  define FM_DC_MR1 12
#  define FM_DC_MR2 6
#else
/* one float at a time: the plan does not choose these kernels at this level (the tests force
 * them) */
#  define FM_DF_NV2_NO {4}
#  define FM_DF_NV1_NO {4}
#  define FM_DW_NO {4}
#  define FM_IG_NR 4
#  define FM_IG_MR1 4
#  define FM_IG_MR2 4
#  define FM_IG_MR3 4
#  define FM_IG_MR4 4
#  define FM_DC_NR 4
#  define FM_DC_MR1 4
#  define FM_DC_MR2 4
#  define FM_DC_MR3 4
#  define FM_DC_MR4 4
#endif

#endif /* FM_TUNING_H */
