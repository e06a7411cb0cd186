# Included by conv.pyx (one extension per instruction-set level): the copies every algorithm
# family shares -- im2col / col2im, the position-major ("NHWC") copies of an image, and the
# epilogues that write y from a position-major result. Legend as in conv.pyx.

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


# ---------------------------------------------------------------- epilogues
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
