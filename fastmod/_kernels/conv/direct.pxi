# Included by conv.pyx: the direct (GEMM-free) algorithms -- depthwise loops (Geom.dwise) and
# the few-channel float32 FMA loops of simd/fm_direct.h (Geom.small forward, Geom.ddw dW).
# Legend as in conv.pyx.

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
