# cython: language_level=3
"""Convolution (the seed's Conv1D / Conv2D, cross-correlation as torch) forward and backward:
several algorithms, one chosen per call by a plan, parallel over the batch.

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
The other algorithms compute the same with less copying or fewer multiplications; this module
is one extension per instruction-set level, its parts included from conv/:
  conv/plan.pxi      shape, dtype, level -> algorithm per phase, blocking, scratch size; the
                     threshold table of each level with its measurements; the algorithm names
  conv/pack.pxi      im2col / col2im, position-major copies, transposing epilogues
  conv/direct.pxi    depthwise loops, the few-channel float32 FMA loops (simd/fm_direct.h)
  conv/gemm.pxi      im2col + GEMM, shifted, im2row (forward and backward), implicit GEMM
  conv/winograd.pxi  F(2x2, 3x3) forward and dW, F(2, 5)
  conv/forward.pxi   the forward driver;  conv/backward.pxi  the backward driver
and the Python entry points below: conv2d_forward, conv2d_backward (each with an optional
algorithm override), conv2d_algorithms (what applies to a shape), conv2d_paths (what the plan
picks), conv2d_thresholds (this level's table).

Threads (measured on the 2-core dev box against a since-removed batched variant): the batch is
split into one contiguous chunk of images per thread; each thread im2cols one image at a time
into its own buffer and calls a single-threaded GEMM. That beat one big batched GEMM (im2col of
the whole batch, then one GEMM split over threads, then a transposing copy) by 1.1-3.5x in
forward; backward uses the same per-image structure. dW and db go through per-thread partials
summed in thread order, so a fixed thread count gives bit-identical results. With fewer images
than threads (batch 1), images run in turn and each GEMM is split over the threads.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

from fastmod._kernels._alloc cimport fm_malloc
from fastmod._kernels._blas cimport gemm, pgemm
from fastmod._kernels._planes cimport sum_contig
from fastmod._kernels._threads cimport num_threads, threads_for

cdef enum:
    WINO_W_GRAIN = 1 << 15   # Winograd weights per thread before a second one helps

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
    int fm_direct_cv_ocp(int OC) noexcept nogil
    void fm_direct_cv_pack(float* wk, float* bk, const float* w, const float* b, int OC,
                           int CKK) noexcept nogil
    void fm_direct_cv_fwd(float* y, Py_ssize_t ldr, Py_ssize_t ldp, const float* xp,
                          const float* wk, const float* bk, int OC, int OH, int OW, int C,
                          int Hp, int Ws, int KH, int KW, int DH, int DW, int relu) noexcept nogil

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

include "conv/plan.pxi"
include "conv/pack.pxi"
include "conv/direct.pxi"
include "conv/gemm.pxi"
include "conv/winograd.pxi"
include "conv/forward.pxi"
include "conv/backward.pxi"


# ---------------------------------------------------------------- Python entry points
cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _override_init(Override* o, object blocks, str caller) except *:
    # the default plan, with the blocking of `blocks` ({"tile_elements", "im2row_positions",
    # "wino_tiles"}: the table's values by default) where given
    _override_auto(o)
    if blocks is None:
        return
    for key, value in dict(blocks).items():
        if key not in ("tile_elements", "im2row_positions", "wino_tiles"):
            raise ValueError(f"{caller}: expected blocks keys tile_elements, im2row_positions, "
                             f"wino_tiles, got {key!r}")
        if value < 1:
            raise ValueError(f"{caller}: expected blocks[{key!r}] >= 1, got {value}")
        if key == "tile_elements":
            o.tile_elems = value
        elif key == "im2row_positions":
            o.im2row_positions = value
        else:
            o.wino_tiles = value


cdef void _check_name(str caller, str arg, object name, tuple names) except *:
    if name not in names:
        raise ValueError(f"{caller}: expected {arg} one of {', '.join(names)}, got {name!r}")


cdef void _plan_arrays(Geom* g, cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, int SH, int SW,
                       int PH, int PW, int DH, int DW, int G, const Override* o):
    # _plan from the arrays: their shapes, batch strides and dtype
    _plan(g, <int>cnp.PyArray_DIM(x, 0), <int>cnp.PyArray_DIM(x, 1),
          <int>cnp.PyArray_DIM(x, 2), <int>cnp.PyArray_DIM(x, 3),
          <int>cnp.PyArray_DIM(y, 1), <int>cnp.PyArray_DIM(y, 2), <int>cnp.PyArray_DIM(y, 3),
          <int>cnp.PyArray_DIM(w, 2), <int>cnp.PyArray_DIM(w, 3), SH, SW, PH, PW, DH, DW, G,
          cnp.PyArray_STRIDES(x)[0] // cnp.PyArray_ITEMSIZE(x),
          cnp.PyArray_STRIDES(y)[0] // cnp.PyArray_ITEMSIZE(y),
          cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32, o)


cdef void _plan_call(Geom* g, cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, int SH, int SW,
                     int PH, int PW, int DH, int DW, int G, object algorithm, object blocks,
                     str caller) except *:
    # the forward's plan for these arrays, through `algorithm` (one of FORWARD_ALGORITHMS)
    # when given: ValueError naming the applicable ones where it does not apply
    cdef Override o
    _override_init(&o, blocks, caller)
    if algorithm is not None:
        _check_name(caller, "algorithm", algorithm, FORWARD_ALGORITHMS)
        _override_forward(&o, algorithm)
    _plan_arrays(g, x, y, w, SH, SW, PH, PW, DH, DW, G, &o)
    if algorithm is not None and _forward_name(g) != algorithm:
        ok = conv2d_algorithms(x, y, w, SH, SW, PH, PW, DH, DW, G, blocks)["forward"]
        raise ValueError(f"{caller}: algorithm {algorithm!r} does not apply to this call "
                         f"(applicable: {', '.join(ok)})")


def conv2d_forward(cnp.ndarray y, cnp.ndarray x, cnp.ndarray w, object b,
                   int SH, int SW, int PH, int PW, int DH, int DW, int G, bint relu=False,
                   object algorithm=None, object blocks=None, object scale=None,
                   object shift=None, object residual=None, object packed=None):
    """y (N, OC, OH, OW) = conv(x (N, C, H, W), w (OC, C/G, KH, KW)) + b (b may be None);
    then y = max(y, 0) when relu (image by image, while it is in cache; NaN stays NaN).

    PH / PW are the top / left paddings; OH, OW (y's shape) imply the bottom / right ones.
    Images of x and y are C-contiguous; their batch strides may be larger (channel views).
    algorithm: one of FORWARD_ALGORITHMS instead of the plan's choice (ValueError where it does
    not apply: conv2d_algorithms lists what does); blocks: the plan's blocking, e.g.
    {"tile_elements": 1} (conv2d_algorithms).
    scale, shift (OC,) and residual (y's shape and dtype; its batch stride may be larger): after
    the bias and ReLU, y = y * scale + shift per channel, then y += residual, on each image while
    it is in cache (a BatchNorm after the ReLU and a skip connection, fused; planned inference).
    Unchecked: the caller gives x's dtype, C-contiguous scale / shift, residual images
    C-contiguous.
    packed: conv2d_pack_forward's array for these shapes, w and b, with algorithm= the name it
    returned (the weights then are not packed again: planned inference).
    """
    cdef Geom g
    _plan_call(&g, x, y, w, SH, SW, PH, PW, DH, DW, G, algorithm, blocks, "conv2d_forward")
    g.relu = relu
    cdef Post q
    q.scale = _ptr(scale)
    q.shift = _ptr(shift)
    q.res = _ptr(residual)
    q.rs = 0 if residual is None else \
        cnp.PyArray_STRIDES(<cnp.ndarray>residual)[0] // cnp.PyArray_ITEMSIZE(<cnp.ndarray>residual)
    cdef Post* pq = &q if (q.scale != NULL or q.res != NULL) else NULL
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pb = _ptr(b)
    cdef void* pp = NULL
    cdef int rc
    if packed is not None:
        if algorithm is None or cnp.PyArray_SIZE(<cnp.ndarray>packed) != _packed_size(&g) \
                or cnp.PyArray_TYPE(<cnp.ndarray>packed) != cnp.PyArray_TYPE(x):
            raise ValueError("conv2d_forward: packed must come from conv2d_pack_forward for "
                             "this call, with algorithm= its name")
        pp = cnp.PyArray_DATA(<cnp.ndarray>packed) if _packed_size(&g) > 0 else NULL
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            rc = _conv_forward(<float*>py, <float*>px, <float*>pw, <float*>pb, &g, pq,
                               <float*>pp)
    else:
        with nogil:
            rc = _conv_forward(<double*>py, <double*>px, <double*>pw, <double*>pb, &g, pq,
                               <double*>pp)
    if rc != 0:
        raise MemoryError("conv2d_forward: out of memory for the convolution's scratch")


def conv2d_pack_forward(cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, object b, int SH, int SW,
                        int PH, int PW, int DH, int DW, int G, object algorithm=None):
    """(algorithm, packed): the forward algorithm the plan takes for these arrays (their shapes,
    dtype and batch strides) and the weights (and bias, where that algorithm keeps it with them)
    packed once in its layout, for conv2d_forward(..., algorithm=algorithm, packed=packed) --
    planned inference, where the weights do not change between calls. An empty array when the
    algorithm reads w as it is. algorithm: one of FORWARD_ALGORITHMS instead of the plan's
    choice (ValueError where it does not apply)."""
    cdef Geom g
    _plan_call(&g, x, y, w, SH, SW, PH, PW, DH, DW, G, algorithm, None, "conv2d_pack_forward")
    name = _forward_name(&g)
    cdef Py_ssize_t n = _packed_size(&g)
    cdef int item = cnp.PyArray_ITEMSIZE(x)
    # at a 64-byte boundary: the kernels' vector loads of packed rows off a cache line touch
    # two lines each (NumPy's 16-byte alignment: eager cnn_b32 inference through the chain 7%
    # slower than the planned model's aligned copies)
    cdef cnp.ndarray raw = cnp.PyArray_EMPTY(1, [n * item + 64], cnp.NPY_UINT8, 0)
    cdef Py_ssize_t off = (-<Py_ssize_t>cnp.PyArray_DATA(raw)) & 63
    cdef cnp.ndarray packed = raw[off:off + n * item].view(x.dtype)
    cdef void* pk = cnp.PyArray_DATA(packed)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pb = _ptr(b)
    if n > 0:
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
            with nogil:
                _pack_weights(<float*>pk, <float*>pw, <float*>pb, &g)
        else:
            with nogil:
                _pack_weights(<double*>pk, <double*>pw, <double*>pb, &g)
    return name, packed


cdef enum:
    CHAIN_GROUP = 1          # images per layer step of conv2d_chain_forward (planned cnn_b32,
                             # 2 threads: 1 image 2.12 ms, 2: 2.14, 4: 2.15, 8: 2.17, layer by
                             # layer 2.22; bnresnet_b32 6.99 / 7.00 / 7.16 / 7.83, 6.97)


# the chain's plan blocking: scratch for every image of a block (the blocks are `group`
# images, set after planning)
CHAIN_BLOCKS = {"wino_tiles": 1 << 30, "im2row_positions": 1 << 30}


cdef struct ChainConv:
    Geom g
    float* y
    const float* x
    const float* w
    const float* wr         # the weights packed for g's algorithm (NULL: it reads w)
    const float* b
    Post q
    bint post
    Py_ssize_t cs           # this layer's per-thread scratch (floats, a multiple of 16)
    Py_ssize_t off          # its offset in a thread's scratch
    bint handoff            # implicit GEMM (or direct, small) whose output only the next layer
                            # (an implicit GEMM) reads: written into that layer's padded plane,
                            # not into y
    bint from_plane         # the layer after a handoff: its plane is ready (no pack)
    float* wcv              # a small handoff's weights and bias for fm_direct_cv_fwd (owned)


cdef void _handoff(float* xp, const float* yt, int OCP, Geom* g, Geom* h, const float* b,
                   bint relu) noexcept nogil:
    # layer g's position-major output yt (P, OCP) + b (then max(., 0)) into the interior of the
    # next layer h's zero-padded position-major plane xp (Hq, Wq, C = g.OC): what y's NCHW
    # write (a transpose) and h's pack (another) would have made, in one contiguous copy
    cdef int oh, ow, o, k
    cdef int rows = min(g.OH, h.Hq - h.PH), cols = min(g.OW, h.Wq - h.PW)
    cdef const float* src
    cdef float* dst
    cdef fm_vf v
    for oh in range(rows):
        for ow in range(cols):
            src = yt + (<Py_ssize_t>oh * g.OW + ow) * OCP
            dst = xp + ((<Py_ssize_t>(oh + h.PH)) * h.Wq + ow + h.PW) * h.C
            o = 0
            while o < g.OC:
                k = min(FM_W, g.OC - o)
                v = fm_vload_n(src + o, k) if k < FM_W else fm_vload(src + o)
                if b != NULL:
                    v = fm_vadd(v, fm_vload_n(b + o, k) if k < FM_W else fm_vload(b + o))
                if relu:
                    v = fm_vrelu(v)
                if k < FM_W:
                    fm_vstore_n(dst + o, v, k)
                else:
                    fm_vstore(dst + o, v)
                o = o + FM_W


cdef inline void _chain_igemm(ChainConv* L, int im, float* col, float* nxt,
                              Geom* h) noexcept nogil:
    # image im through an implicit-GEMM layer of a chain: its plane packed from x (or already
    # there: from_plane), the kernel, then y (transposed, bias, ReLU) or the next layer's plane
    cdef Geom* g = &L.g
    cdef float* xp = col
    cdef float* yt = col + <Py_ssize_t>g.Hq * g.Wq * g.C
    cdef int ocp = fm_igemm_ocp(g.OC)
    if not L.from_plane:
        _pack_nhwc(xp, L.x + im * g.xs, g.C, g.H, g.W, g.Hq, g.Wq, g.PH, g.PW)
    fm_igemm_fwd(yt, xp, L.wr, g.OC, g.OH, g.OW, g.C, g.Wq, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW)
    if L.handoff:
        _handoff(nxt, yt, ocp, g, h, L.b, g.relu)
    else:
        _transpose_add(L.y + im * g.ys, g.P, yt, ocp, g.P, g.OC, L.b, g.acc, g.relu)


cdef inline void _chain_small(ChainConv* L, int im, float* col, float* nxt,
                              Geom* h) noexcept nogil:
    # image im through a few-channel direct layer whose output goes into the next (implicit-
    # GEMM) layer's padded plane: the direct loops vectorized over output channels, which
    # write position-major (+ bias, ReLU) at the plane's interior
    cdef Geom* g = &L.g
    cdef int ocp = fm_direct_cv_ocp(g.OC)
    _small_plane(col, L.x + im * g.xs, g)
    fm_direct_cv_fwd(nxt + (<Py_ssize_t>h.PH * h.Wq + h.PW) * h.C, <Py_ssize_t>h.Wq * h.C, h.C,
                     col, L.wcv, L.wcv + <Py_ssize_t>g.C * g.KH * g.KW * ocp, g.OC, g.OH, g.OW,
                     g.C, g.Hp, g.Ws, g.KH, g.KW, g.DH, g.DW, g.relu)


cdef inline void _chain_images(ChainConv* L, int im, int cnt, float* col, float* nxt,
                               Geom* h) noexcept nogil:
    # images im .. im + cnt through layer L: one block (im2row / Winograd) or image by image,
    # then the epilogue; nxt / h: the next layer's plane and plan (handoff)
    cdef Geom* g = &L.g
    cdef int j
    if L.handoff and g.small:
        for j in range(im, im + cnt):
            _chain_small(L, j, col, nxt, h)
    elif L.handoff or L.from_plane:
        for j in range(im, im + cnt):
            _chain_igemm(L, j, col, nxt, h)
    elif g.im2row or g.wino or g.wino5:
        _block_forward(L.y + im * g.ys, L.x + im * g.xs, L.wr, L.b, col, g, cnt, 1)
    else:
        for j in range(im, im + cnt):
            _forward_image(L.y + j * g.ys, L.x + j * g.xs, L.w, L.wr, L.b, col, g, 1)
    if L.post:
        _post_images(L.y, &L.q, g, im, cnt)


cdef void _chain_run(ChainConv* c, int n, int lo, int hi, int group,
                     float* base) noexcept nogil:
    # images lo .. hi through the n layers, `group` at a time, in one thread's scratch base;
    # the planes a handoff writes into have their padding zeroed once (only the interior is
    # written, image after image)
    cdef int i, im = lo
    for i in range(n):
        if c[i].from_plane:
            memset(base + c[i].off, 0, <Py_ssize_t>c[i].g.Hq * c[i].g.Wq * c[i].g.C * sizeof(float))
    while im < hi:
        for i in range(n):
            _chain_images(&c[i], im, min(group, hi - im), base + c[i].off,
                          base + c[i + 1].off if i + 1 < n else NULL,
                          &c[i + 1].g if i + 1 < n else NULL)
        im = im + group


cdef void _pack_cv(ChainConv* L) except *:
    # a small handoff's weights and bias for fm_direct_cv_fwd (C*KH*KW*OCP + OCP floats; at
    # most a few thousand: packed per call)
    cdef int ckk = L.g.C * L.g.KH * L.g.KW, ocp = fm_direct_cv_ocp(L.g.OC)
    L.wcv = <float*>fm_malloc((<Py_ssize_t>ckk * ocp + ocp) * sizeof(float))
    if L.wcv == NULL:
        raise MemoryError("conv2d_chain_forward: out of memory")
    fm_direct_cv_pack(L.wcv, L.wcv + <Py_ssize_t>ckk * ocp, L.w, L.b, L.g.OC, ckk)


def conv2d_chain_forward(tuple layers, int group=CHAIN_GROUP, object dead=None):
    """Several float32 convolutions in a row, depth first: each thread takes a range of images
    and runs each image through every layer in turn, so a layer reads its input while the
    layer before has just written it (in L2) instead of after the whole batch (from L3) --
    planned inference. layers: a tuple of (y, x, w, b, algorithm, packed, relu, SH, SW, PH, PW,
    DH, DW, scale, shift, residual), each as conv2d_forward's arguments with algorithm and
    packed from conv2d_pack_forward (x of a layer: the y of one before it, or any array
    computed before the chain; residual likewise). Unchecked but the algorithms and packed
    sizes: fastmod.inference plans the shapes.

    dead: per layer, True when nothing but the next layer reads its y; when the next layer is
    an implicit GEMM and this one an implicit GEMM or a few-channel direct layer (without
    scale/shift/residual, one image at a time), such a y is then never written: the output goes
    straight into the next layer's padded position-major plane (no transpose out, no pack in)."""
    cdef int n = len(layers), i, t, lo, hi, chunk, nt, N
    cdef Py_ssize_t total = 0
    cdef ChainConv* c
    cdef float* buf
    if n == 0:
        return
    c = <ChainConv*>fm_malloc(n * sizeof(ChainConv))
    if c == NULL:
        raise MemoryError("conv2d_chain_forward: out of memory")
    for i in range(n):
        c[i].wcv = NULL
    try:
        for i in range(n):
            (y, x, w, b, algorithm, packed, relu, SH, SW, PH, PW, DH, DW, scale, shift,
             residual) = layers[i]
            # Winograd / im2row blocks of `group` images (wimb, imb set below)
            _plan_call(&c[i].g, x, y, w, SH, SW, PH, PW, DH, DW, 1, algorithm, CHAIN_BLOCKS,
                       "conv2d_chain_forward")
            if cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT32 \
                    or cnp.PyArray_SIZE(<cnp.ndarray>packed) != _packed_size(&c[i].g):
                raise ValueError(f"conv2d_chain_forward: layer {i}: algorithm {algorithm!r} and "
                                 f"packed must be conv2d_pack_forward's for this float32 call")
            c[i].g.relu = relu
            c[i].y = <float*>cnp.PyArray_DATA(<cnp.ndarray>y)
            c[i].x = <const float*>cnp.PyArray_DATA(<cnp.ndarray>x)
            c[i].w = <const float*>cnp.PyArray_DATA(<cnp.ndarray>w)
            c[i].wr = <const float*>cnp.PyArray_DATA(<cnp.ndarray>packed) \
                if _packed_size(&c[i].g) > 0 else NULL
            c[i].b = <const float*>_ptr(b)
            c[i].q.scale = _ptr(scale)
            c[i].q.shift = _ptr(shift)
            c[i].q.res = _ptr(residual)
            c[i].q.rs = 0 if residual is None else \
                cnp.PyArray_STRIDES(<cnp.ndarray>residual)[0] // 4
            c[i].post = c[i].q.scale != NULL or c[i].q.res != NULL
            c[i].g.wimb = min(group, c[i].g.N)
            c[i].g.imb = min(group, c[i].g.N)
            c[i].cs = _col_size(&c[i].g)
            c[i].off = total
            c[i].handoff = False
            c[i].from_plane = False
            total += c[i].cs
        for i in range(n - 1):
            if dead is not None and dead[i] and group == 1 and \
                    (c[i].g.igemm or c[i].g.small) and \
                    c[i + 1].g.igemm and not c[i].post and c[i + 1].x == c[i].y and \
                    c[i + 1].g.C == c[i].g.OC:
                c[i].handoff = True
                c[i + 1].from_plane = True
                if c[i].g.small:
                    _pack_cv(&c[i])
        N = c[0].g.N
        nt = max(1, min(N, num_threads()))
        buf = <float*>fm_malloc(nt * total * sizeof(float))
        if buf == NULL:
            raise MemoryError("conv2d_chain_forward: out of memory for the scratch")
        chunk = (N + nt - 1) // nt
        with nogil:
            if nt <= 1:
                _chain_run(c, n, 0, N, group, buf)
            else:
                for t in prange(nt, num_threads=nt, schedule='static'):
                    lo = t * chunk
                    hi = min(N, lo + chunk)
                    if lo < hi:
                        _chain_run(c, n, lo, hi, group, buf + t * total)
        free(buf)
    finally:
        for i in range(n):
            free(c[i].wcv)
        free(c)


def conv2d_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x,
                    cnp.ndarray w, int SH, int SW, int PH, int PW, int DH, int DW, int G,
                    bint acc_w, bint acc_b, bint acc_dx, object dw_algorithm=None,
                    object dx_algorithm=None, object blocks=None):
    """dx (+)= conv^T(dy); dw (+)= dy (*) x; db (+)= dy summed over (N, OH, OW).

    Any of dx, dw, db may be None to skip it. acc_*: add into the array (True) or overwrite it.
    dx has x's shape and batch stride. dw_algorithm / dx_algorithm: one of DW_ALGORITHMS /
    DX_ALGORITHMS instead of the plan's choice (ValueError where it does not apply, or where
    the two cannot run together: im2row's dW and dx run together, as do depthwise's); blocks:
    as conv2d_forward's.
    """
    cdef Override o
    cdef Geom g, gt, gc
    _override_init(&o, blocks, "conv2d_backward")
    if dw_algorithm is not None:
        _check_name("conv2d_backward", "dw_algorithm", dw_algorithm, DW_ALGORITHMS)
        _override_dw(&o, dw_algorithm)
    if dx_algorithm is not None:
        _check_name("conv2d_backward", "dx_algorithm", dx_algorithm, DX_ALGORITHMS)
        _override_dx(&o, dx_algorithm)
    _plan_arrays(&g, x, dy, w, SH, SW, PH, PW, DH, DW, G, &o)
    if dx is not None:
        g.xs = cnp.PyArray_STRIDES(<cnp.ndarray>dx)[0] // cnp.PyArray_ITEMSIZE(x)
        if g.xs != cnp.PyArray_STRIDES(x)[0] // cnp.PyArray_ITEMSIZE(x):
            raise ValueError("conv2d_backward: dx and x must have the same batch stride")
        _plan_dx(&g, &gt, &o)
    if dw_algorithm is not None or dx_algorithm is not None:
        gc = g
        if dx is None:
            _plan_dx(&gc, &gt, &o)        # (what dx would take: the names are checked as a pair)
        if ((dw_algorithm is not None and _dw_name(&gc) != dw_algorithm)
                or (dx_algorithm is not None and _dx_name(&gc, &gt) != dx_algorithm)):
            ok = conv2d_algorithms(x, dy, w, SH, SW, PH, PW, DH, DW, G, blocks)
            raise ValueError(f"conv2d_backward: dw_algorithm={dw_algorithm!r}, dx_algorithm="
                             f"{dx_algorithm!r} do not apply to this call together (applicable: "
                             f"dW {', '.join(ok['dW'])}; dx {', '.join(ok['dx'])})")
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
                                <float*>pw, &g, &gt, acc_w, acc_b, acc_dx)
    else:
        with nogil:
            rc = _conv_backward(<double*>pdx, <double*>pdw, <double*>pdb, <double*>pdy,
                                <double*>px, <double*>pw, &g, &gt, acc_w, acc_b, acc_dx)
    if rc != 0:
        raise MemoryError("conv2d_backward: out of memory for the convolution's scratch")


def conv2d_algorithms(cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, int SH, int SW, int PH,
                      int PW, int DH, int DW, int G, object blocks=None):
    """{'forward': (...), 'dW': (...), 'dx': (...)}: the algorithms a call with these arrays
    (their shapes, dtype and batch strides) can run in each phase, every name accepted by
    conv2d_forward's algorithm= / conv2d_backward's dw_algorithm= / dx_algorithm= (in the
    order of FORWARD_ALGORITHMS, DW_ALGORITHMS, DX_ALGORITHMS; for the tests and benchmarks)."""
    cdef Override o
    cdef Geom g, gt
    out = {"forward": [], "dW": [], "dx": []}
    for name in FORWARD_ALGORITHMS:
        _override_init(&o, blocks, "conv2d_algorithms")
        _override_forward(&o, name)
        _plan_arrays(&g, x, y, w, SH, SW, PH, PW, DH, DW, G, &o)
        if _forward_name(&g) == name:
            out["forward"].append(name)
    for name in DW_ALGORITHMS:
        _override_init(&o, blocks, "conv2d_algorithms")
        _override_dw(&o, name)
        _plan_arrays(&g, x, y, w, SH, SW, PH, PW, DH, DW, G, &o)
        if _dw_name(&g) == name:
            out["dW"].append(name)
    for name in DX_ALGORITHMS:
        _override_init(&o, blocks, "conv2d_algorithms")
        _override_dx(&o, name)
        _plan_arrays(&g, x, y, w, SH, SW, PH, PW, DH, DW, G, &o)
        _plan_dx(&g, &gt, &o)
        if _dx_name(&g, &gt) == name:
            out["dx"].append(name)
    return {phase: tuple(names) for phase, names in out.items()}


def conv2d_paths(cnp.ndarray x, cnp.ndarray y, cnp.ndarray w, int SH, int SW, int PH, int PW,
                 int DH, int DW, int G, object blocks=None):
    """'forward=... dW=... dx=...': the algorithms a call with these arrays (their dtype) takes
    by default (the same plan as conv2d_forward / conv2d_backward; for benchmarks and tests)."""
    cdef Override o
    cdef Geom g, gt
    _override_init(&o, blocks, "conv2d_paths")
    _plan_arrays(&g, x, y, w, SH, SW, PH, PW, DH, DW, G, &o)
    fw, dwn = _forward_name(&g), _dw_name(&g)
    _plan_dx(&g, &gt, &o)
    return f"forward={fw} dW={dwn} dx={_dx_name(&g, &gt)}"


def conv2d_thresholds():
    """This level's threshold table (conv/plan.pxi), as a dict: the numbers the plan compares
    with, for the BLAS this process runs."""
    return THR
