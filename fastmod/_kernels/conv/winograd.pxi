# Included by conv.pyx: the Winograd algorithms -- F(2x2, 3x3) forward (Geom.wino) and weight
# gradient (Geom.wdw), F(2, 5) for 1-D k5 rows (Geom.wino5); their 16 (6) GEMMs through BLAS or
# the implicit-GEMM kernel (Geom.wig). Legend as in conv.pyx.

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


cdef inline void _wino_weights_c(floating* U, const floating* w, int C, int OC,
                                 int c) noexcept nogil:
    # _wino_weights for input channel c: over the output channels o, so that each of the 16
    # components is stored in one contiguous run (o outermost stored 16 values OC apart per
    # (o, c) -- a cache line each: 159 us for 64 -> 64, half of it per call)
    cdef int o, r, k
    cdef double gg[4][3]
    cdef const floating* g
    cdef Py_ssize_t CO = <Py_ssize_t>C * OC
    cdef floating* u = U + <Py_ssize_t>c * OC
    for o in range(OC):
        g = w + (<Py_ssize_t>o * C + c) * 9
        for k in range(3):
            gg[0][k] = g[k]
            gg[1][k] = 0.5 * (<double>g[k] + g[3 + k] + g[6 + k])
            gg[2][k] = 0.5 * (<double>g[k] - g[3 + k] + g[6 + k])
            gg[3][k] = g[6 + k]
        for r in range(4):
            u[(r * 4 + 0) * CO + o] = <floating>gg[r][0]
            u[(r * 4 + 1) * CO + o] = <floating>(0.5 * (gg[r][0] + gg[r][1] + gg[r][2]))
            u[(r * 4 + 2) * CO + o] = <floating>(0.5 * (gg[r][0] - gg[r][1] + gg[r][2]))
            u[(r * 4 + 3) * CO + o] = <floating>gg[r][2]


cdef void _wino_weights(floating* U, const floating* w, int C, int OC) noexcept nogil:
    # U[xi = r*4 + q, c, o] = (G g G^T)[r, q], g = w[o, c] (3x3), in double; threads split
    # the input channels (called outside any parallel region)
    cdef int c, nt = threads_for(16 * <Py_ssize_t>C * OC, WINO_W_GRAIN)
    if nt <= 1:
        for c in range(C):
            _wino_weights_c(U, w, C, OC, c)
        return
    for c in prange(C, num_threads=nt, schedule='static'):
        _wino_weights_c(U, w, C, OC, c)


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


# ---------------------------------------------------------------- Winograd F(2x2, 3x3): dW
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
