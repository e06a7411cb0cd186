# Included by conv.pyx: the GEMM-based algorithms -- im2col + GEMM (the general path, any
# groups; 1x1 as a plain GEMM), the shifted per-kernel-row GEMMs (Geom.shifted), position-major
# patch rows forward and backward (Geom.im2row, Geom.rbwd), and the float32 implicit GEMM of
# simd/fm_igemm.h (Geom.igemm forward, Geom.igdw dW, Geom.igdx the rows path's dx GEMM).
# Legend as in conv.pyx.

# ---------------------------------------------------------------- im2col + GEMM
cdef void _im2col_forward_image(floating* y, const floating* x, const floating* w,
                                const floating* b, floating* col, Geom* g,
                                int gemm_nt) noexcept nogil:
    # y (OC, P) = per group W_g @ cols_g + b, one tile of g.rows output rows at a time (the
    # tile's cols (K*G, pt) are the per-thread scratch); cols = x itself for 1x1 (Geom.direct);
    # y^T per tile, then transposed (Geom.tout)
    cdef const floating* cols
    cdef int gr, o, p, oh0, nr, pt, ldcol
    cdef Py_ssize_t p0
    cdef floating beta = 0
    cdef floating* yrow
    cdef floating* yt
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


cdef void _im2col_backward_image(floating* dx, floating* dw, const floating* dy,
                                 const floating* x, const floating* w, const floating* wt,
                                 floating* col, Geom* g, bint dw_beta, bint acc_dx,
                                 int gemm_nt) noexcept nogil:
    # dw (OC, K) (+)= dy_n @ cols^T per group (dW^T when Geom.tdw); dx_n (+)= col2im(W^T dy_n),
    # tile by tile of g.rows output rows (the same tiles as forward), or (Geom.dxconv) dx_n as a
    # convolution of dy_n with the flipped weights wt
    cdef const floating* cols
    cdef const floating* dyt
    cdef int gr, oh0, nr, pt, ldcol
    cdef Py_ssize_t p0
    cdef floating beta
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


# ---------------------------------------------------------------- shifted: per-kernel-row GEMMs
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


# ---------------------------------------------------------------- im2row: position-major patch rows
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


# ---------------------------------------------------------------- implicit GEMM (float32)
cdef void _igemm_forward_image(float* y, const float* x, const float* wk, const float* b,
                               float* buf, Geom* g) noexcept nogil:
    # x_n position-major into the zero-padded plane (Hq, Wq, C), the implicit GEMM into
    # yt (P, OCP), then y[o, p] (+)= yt[p, o] + b[o] (and the ReLU) as the im2row path
    cdef float* xp = buf
    cdef float* yt = buf + <Py_ssize_t>g.Hq * g.Wq * g.C
    _pack_nhwc(xp, x, g.C, g.H, g.W, g.Hq, g.Wq, g.PH, g.PW)
    fm_igemm_fwd(yt, xp, wk, g.OC, g.OH, g.OW, g.C, g.Wq, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW)
    _transpose_add(y, g.P, yt, fm_igemm_ocp(g.OC), g.P, g.OC, b, g.acc, g.relu)


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
