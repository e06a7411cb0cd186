# Included by conv.pyx: the backward driver -- every buffer allocated first, the weights
# transposed / flipped for the dx algorithm, then dW (Winograd, direct, implicit GEMM or patch
# rows: their own batch loops), dx as a forward of dy (Geom.dxfwd), and the per-image loop for
# what is left; per-thread dW / db partials summed in thread order. Legend as in conv.pyx.

cdef void _backward_image(floating* dx, floating* dw, double* db, const floating* dy,
                          const floating* x, const floating* w, const floating* wt,
                          floating* col, Geom* g, bint dw_beta, bint acc_dx,
                          int gemm_nt) noexcept nogil:
    # one image: db (OC,) += sum_p dy_n, then dW and dx through the per-image algorithm the
    # plan chose (depthwise loops, or im2col + GEMM / Geom.dxconv)
    cdef int o
    if db != NULL:
        for o in range(g.OC):
            db[o] += sum_contig(dy + <Py_ssize_t>o * g.P, g.P)
    if g.dwise:
        if g.SH == 1 and g.SW == 1:
            _dw_backward_image_s1(dx, dw, dy, x, w, col, g, dw_beta, acc_dx)
        else:
            _dw_backward_image(dx, dw, dy, x, w, g, dw_beta, acc_dx)
        return
    _im2col_backward_image(dx, dw, dy, x, w, wt, col, g, dw_beta, acc_dx, gemm_nt)


cdef int _conv_backward(floating* dx, floating* dw, floating* db, const floating* dy,
                        const floating* x, const floating* w, Geom* g, Geom* gt,
                        bint acc_w, bint acc_b, bint acc_dx) noexcept nogil:
    # 0, or -1 when out of memory (every buffer is allocated before dx, dw or db is written);
    # g planned (_plan, and _plan_dx when dx is computed: gt is then dx's forward plan)
    if g.dxfwd:
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
        if _conv_forward(dx, dy, wt, NULL, gt) != 0:
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
