# Included by conv.pyx: the forward driver -- the weights packed for the chosen algorithm, the
# batch split into one contiguous chunk of images per thread, each image (or block of images)
# through the algorithm the plan chose. Legend as in conv.pyx.

cdef void _forward_image(floating* y, const floating* x, const floating* w, const floating* wr,
                         const floating* b, floating* col, Geom* g, int gemm_nt) noexcept nogil:
    _forward_image_body(y, x, w, wr, b, col, g, gemm_nt)
    if g.relu and not g.im2row and not ((g.small or g.igemm) and floating is float):   # applied as written
        _relu_inplace(y, <Py_ssize_t>g.OC * g.P)


cdef void _forward_image_body(floating* y, const floating* x, const floating* w, const floating* wr,
                              const floating* b, floating* col, Geom* g, int gemm_nt) noexcept nogil:
    # one image through the per-image algorithm the plan chose (Geom's flags, in precedence order)
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
    _im2col_forward_image(y, x, w, b, col, g, gemm_nt)


cdef inline void _block_forward(floating* y, const floating* x, const floating* wr,
                                const floating* b, floating* buf, Geom* g, int cnt,
                                int gemm_nt) noexcept nogil:
    if g.wino:
        _wino_forward_images(y, x, wr, b, buf, g, cnt, gemm_nt)
    elif g.wino5:
        _wino5_forward_images(y, x, wr, b, buf, g, cnt, gemm_nt)
    else:
        _im2row_forward_images(y, x, wr, b, buf, g, cnt, gemm_nt)


cdef struct Post:
    # an epilogue after the bias and ReLU, on each image while it is in cache (planned
    # inference: a BatchNorm after the ReLU, a residual add): y[o, :] = y[o, :] * scale[o] +
    # shift[o] (scale NULL: skipped), then y += res (res NULL: skipped; batch stride rs)
    const void* scale
    const void* shift
    const void* res
    Py_ssize_t rs


cdef inline void _post_images(floating* y, const Post* q, Geom* g, int n0, int cnt) noexcept nogil:
    # Post's epilogue on images n0 .. n0 + cnt of y
    cdef const floating* sc = <const floating*>q.scale
    cdef const floating* sh = <const floating*>q.shift
    cdef const floating* r
    cdef floating* yo
    cdef int n, o, i, P = g.P
    cdef fm_vf vs, vt
    for n in range(n0, n0 + cnt):
        for o in range(g.OC):
            yo = y + n * g.ys + <Py_ssize_t>o * P
            r = NULL if q.res == NULL else <const floating*>q.res + n * q.rs + <Py_ssize_t>o * P
            if floating is float:
                i = 0
                if sc != NULL:
                    vs = fm_vset1(sc[o])
                    vt = fm_vset1(sh[o])
                    if r != NULL:
                        while i + FM_W <= P:
                            fm_vstore(yo + i, fm_vadd(fm_vfma(fm_vload(yo + i), vs, vt),
                                                      fm_vload(r + i)))
                            i = i + FM_W
                    else:
                        while i + FM_W <= P:
                            fm_vstore(yo + i, fm_vfma(fm_vload(yo + i), vs, vt))
                            i = i + FM_W
                elif r != NULL:
                    while i + FM_W <= P:
                        fm_vstore(yo + i, fm_vadd(fm_vload(yo + i), fm_vload(r + i)))
                        i = i + FM_W
            else:
                i = 0
            while i < P:
                if sc != NULL:
                    yo[i] = yo[i] * sc[o] + sh[o]
                if r != NULL:
                    yo[i] = yo[i] + r[i]
                i = i + 1


cdef Py_ssize_t _packed_size(Geom* g) noexcept nogil:
    # the floats of the forward's packed weights for the plan's algorithm (0: it reads w as it is)
    cdef int KK = g.KH * g.KW
    if g.f32 and g.small:
        # fm_direct_pack's layout: ceil(OC/NO)*NO*C*KH*KW weights, then the bias
        return (<Py_ssize_t>(g.OC + fm_direct_fwd_no(g.OW, g.OC) - 1)
                // fm_direct_fwd_no(g.OW, g.OC) * fm_direct_fwd_no(g.OW, g.OC)) * (g.C * KK + 1)
    if g.f32 and g.igemm:
        return <Py_ssize_t>KK * g.C * fm_igemm_ocp(g.OC)
    if g.wino:
        return 16 * <Py_ssize_t>g.C * g.OC
    if g.wino5:
        return 6 * <Py_ssize_t>g.C * g.OC
    if g.shifted or g.im2row:
        return <Py_ssize_t>KK * g.C * g.OC
    return 0


cdef void _pack_weights(floating* wr, const floating* w, const floating* b,
                        Geom* g) noexcept nogil:
    # the forward's weights in the layout of the plan's algorithm, into wr (_packed_size floats)
    cdef int c, o, tap, KK = g.KH * g.KW
    cdef int NO
    cdef Py_ssize_t nwp
    if floating is float:
        if g.small:
            NO = fm_direct_fwd_no(g.OW, g.OC)
            nwp = <Py_ssize_t>(g.OC + NO - 1) // NO * NO
            fm_direct_pack(wr, wr + nwp * g.C * KK, w, b, g.OC, g.C * KK, NO)
            return
        if g.igemm:
            fm_igemm_pack(wr, w, g.OC, g.C, g.KH, g.KW)
            return
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


cdef int _conv_forward(floating* y, const floating* x, const floating* w, const floating* b,
                       Geom* g, const Post* q=NULL, const floating* packed=NULL) noexcept nogil:
    # 0, or -1 when out of memory (then nothing is written and nothing is held); q: an
    # epilogue (planned inference), or NULL; packed: the weights as _pack_weights lays them out
    # for this plan (packed once by the caller), or NULL to pack them here
    cdef int nt = _threads_for_batch(g)
    cdef int t, n, lo, hi, chunk
    cdef Py_ssize_t cs = _col_size(g)
    cdef floating* colbuf = <floating*>fm_malloc(nt * cs * sizeof(floating))
    cdef floating* wr = NULL
    cdef Py_ssize_t nw = _packed_size(g)
    if colbuf == NULL:
        return -1
    if packed != NULL:
        wr = <floating*>packed
    elif nw > 0:
        wr = <floating*>fm_malloc(nw * sizeof(floating))
        if wr == NULL:
            free(colbuf)
            return -1
        _pack_weights(wr, w, b, g)
    cdef int imb = g.wimb if (g.wino or g.wino5) else g.imb
    if g.im2row or g.wino or g.wino5:
        # blocks of imb images (the last of a thread's chunk may be shorter)
        if nt <= 1:
            n = 0
            while n < g.N:
                _block_forward(y + n * g.ys, x + n * g.xs, wr, b, colbuf, g,
                               min(imb, g.N - n), num_threads())
                if q != NULL:
                    _post_images(y, q, g, n, min(imb, g.N - n))
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
                    if q != NULL:
                        _post_images(y, q, g, n, min(imb, hi - n))
                    n = n + imb
    elif nt <= 1:
        for n in range(g.N):
            _forward_image(y + n * g.ys, x + n * g.xs, w, wr, b, colbuf, g, num_threads())
            if q != NULL:
                _post_images(y, q, g, n, 1)
    else:
        chunk = (g.N + nt - 1) // nt
        for t in prange(nt, num_threads=nt, schedule='static'):
            lo = t * chunk
            hi = min(g.N, lo + chunk)
            for n in range(lo, hi):
                _forward_image(y + n * g.ys, x + n * g.xs, w, wr, b, colbuf + t * cs, g, 1)
                if q != NULL:
                    _post_images(y, q, g, n, 1)
    if packed == NULL:
        free(wr)
    free(colbuf)
    return 0
