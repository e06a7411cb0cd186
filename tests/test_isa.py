"""Instruction-set levels: choosing, forcing and reporting them, and the same answers at each.

Every kernel test in the suite already runs at each level this host supports (conftest's `isa`
parametrization); this file checks the dispatch itself -- set_isa / FASTMOD_ISA / show_config
-- and that one model computes the same outputs and gradients at every level (float32 within
rounding: the levels differ in vector width, hence summation order, and FMA contraction).
"""
import io
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastmod
from fastmod import nn, optim
from fastmod._kernels import _cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMD = os.path.join(os.path.dirname(fastmod._kernels.__file__), "simd")   # shipped in wheels too
LEVELS = fastmod.supported_isas()


def _run(code, **env):
    e = dict(os.environ, **env)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


# ---------------------------------------------------------------- choosing a level
def test_default_is_the_best_supported_level():
    from fastmod import _kernels
    assert "scalar" in _kernels.built_isas() and "scalar" in LEVELS
    assert set(LEVELS) <= set(_kernels.built_isas())
    assert _kernels.best_isa() == LEVELS[-1]
    r = _run("import fastmod; print(fastmod.get_isa())", FASTMOD_ISA="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == LEVELS[-1]


def test_cpu_features_match_the_levels():
    f = _cpu.features()
    assert isinstance(_cpu.brand(), str)
    if _cpu.is_x86():
        assert f["sse2"]
    for level in LEVELS:
        assert _cpu.supports(level)
        assert all(f[n] for n in _cpu.LEVEL_NEEDS[level])
    if "avx512" in LEVELS:
        assert "avx2" in LEVELS              # AVX-512 hosts always have AVX2 + FMA


@pytest.mark.parametrize("level", LEVELS)
def test_fastmod_isa_environment_variable(level):
    r = _run("import fastmod; from fastmod._kernels import conv; print(fastmod.get_isa(), conv.__isa__)",
             FASTMOD_ISA=level)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [level, level]


def test_fastmod_isa_bad_value_warns_and_uses_the_best():
    r = _run("import fastmod; print(fastmod.get_isa())", FASTMOD_ISA="avx1024")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == LEVELS[-1]
    assert "FASTMOD_ISA=avx1024" in r.stderr and "RuntimeWarning" in r.stderr


@pytest.mark.skipif("avx512" in LEVELS, reason="this host runs AVX-512")
def test_fastmod_isa_unsupported_level_warns():
    r = _run("import fastmod; print(fastmod.get_isa())", FASTMOD_ISA="avx512")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == LEVELS[-1]
    assert "cannot run 'avx512'" in r.stderr or "no 'avx512' kernels" in r.stderr


def test_set_isa_switches_every_kernel_module():
    from fastmod import _kernels
    prev = fastmod.get_isa()
    try:
        for level in LEVELS:
            assert fastmod.set_isa(level) == level
            assert fastmod.get_isa() == level
            for name in _kernels.MODULES:
                mod = getattr(_kernels, name)
                assert mod.__isa__ == level
                assert mod is sys.modules["fastmod._kernels." + name]
        assert fastmod.set_isa("auto") == LEVELS[-1]
    finally:
        fastmod.set_isa(prev)


@pytest.mark.parametrize("bad", ["avx1024", "AVX2 ", "", None, 2])
def test_set_isa_rejects_unknown_levels(bad):
    prev = fastmod.get_isa()
    with pytest.raises(ValueError, match="set_isa: expected one of scalar, avx2, avx512, auto"):
        fastmod.set_isa(bad)
    assert fastmod.get_isa() == prev


@pytest.mark.skipif("avx512" in LEVELS, reason="this host runs AVX-512")
def test_set_isa_rejects_levels_the_cpu_lacks():
    with pytest.raises(ValueError, match="cannot run 'avx512'|no 'avx512' kernels"):
        fastmod.set_isa("avx512")


# ---------------------------------------------------------------- reporting
def test_show_config_names_cpu_level_blas_threads_and_flags():
    buf = io.StringIO()
    fastmod.show_config(file=buf)
    text = buf.getvalue()
    assert f"instruction-set level {fastmod.get_isa()!r}" in text
    assert "SIMD features" in text and "BLAS:" in text and "Threads:" in text
    assert "Compiler:" in text
    for level in fastmod._kernels.built_isas():
        assert f"  {level}: " in text
    if "avx512" in fastmod._kernels.built_isas():
        assert "-mavx512f" in text
    assert "-march=native" not in text or os.environ.get("FASTMOD_NATIVE")
    info = fastmod._config.config_info()
    assert info["isa"] == fastmod.get_isa()
    assert info["isas supported"] == list(LEVELS)


def test_cli_version_verbose_and_config(capsys):
    from fastmod.cli import main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastmod {fastmod.__version__}"
    assert main(["--version", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "instruction-set level" in out and "BLAS:" in out
    assert main(["config"]) == 0
    assert "instruction-set level" in capsys.readouterr().out


# ---------------------------------------------------------------- same answers at every level
class _DirectConv2d(nn.Conv2d):
    """Conv2d whose forward runs the direct (few-channel) loops at every level (the plan takes
    them at avx2 / avx512 only), through the kernel's algorithm override."""

    def _forward_into(self, y4, x4, geom, relu=False):
        from fastmod._kernels import conv as _kconv
        H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = geom
        b = self.bias
        _kconv.conv2d_forward(y4, x4, self.weight.data.reshape(self.out_channels, -1, KH, KW),
                              None if b is None else b.data, SH, SW, PH, PW, DH, DW, self.groups,
                              relu, algorithm="small")


def _model_run(level):
    """Outputs, input gradients and parameter gradients of a model touching every family of
    hand-written vector kernels (skinny Linear, the transposed forward, GELU, the attention
    softmax, the direct convolution with ragged row tails, normalization, pooling) and one
    optimizer step, float32, at `level`."""
    prev = fastmod.get_isa()
    fastmod.set_isa(level)
    try:
        fastmod.manual_seed(0)
        rng = np.random.default_rng(0)
        conv = nn.Sequential(_DirectConv2d(3, 8, 3, padding=1), nn.ReLU(), nn.GroupNorm(2, 8),
                             _DirectConv2d(8, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.MaxPool2d(2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head = nn.Sequential(nn.Linear(6, 96), nn.GELU(), nn.Linear(96, 100), nn.ReLU(),
                             nn.Linear(100, 10))
        att = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu")
        # (no bias before BatchNorm: its gradient is 0 up to rounding, no scale to compare with)
        x = rng.standard_normal((40, 3, 11, 37)).astype(np.float32)     # 37: ragged vector tails
        tok = rng.standard_normal((3, 13, 32)).astype(np.float32)
        out = {}
        y = head(conv(x))
        out["y"] = y
        dy = rng.standard_normal(y.shape).astype(np.float32)
        out["dx"] = conv.backward(head.backward(dy))
        z = att(tok, is_causal=True)
        out["z"] = z
        out["dtok"] = att.backward(np.cos(z).astype(np.float32))
        g = nn.GELU()
        t = np.linspace(-14, 6, 4001).astype(np.float32)
        out["gelu"] = g(t)
        out["dgelu"] = g.backward(np.ones_like(t))
        for m in (conv, head, att):
            for name, p in m.named_parameters():
                out[f"{type(m).__name__}.{name}.grad"] = p.grad.copy()
        # planned inference: a depth-first conv chain with an implicit-GEMM handoff, the packed
        # GEMM, and a batch-1 Linear chain in one parallel region
        cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(32 * 9, 40), nn.ReLU(), nn.Linear(40, 24))
        planned = fastmod.inference(cnn)
        out["planned"] = planned(x[:6, :, :11, :11].copy())
        mlp = nn.Sequential(nn.Linear(37, 64), nn.ReLU(), nn.Linear(64, 48), nn.Linear(48, 5))
        out["planned_b1"] = fastmod.inference(mlp)(x[:1, 0, 0, :].copy())
        opt = optim.Adam(list(head.parameters()), lr=1e-2)
        opt.step()
        out["adam"] = head[0].weight.data.copy()
        return out
    finally:
        fastmod.set_isa(prev)


@pytest.mark.skipif(len(LEVELS) < 2, reason="one instruction-set level on this host")
def test_every_level_computes_the_same_model():
    runs = {level: _model_run(level) for level in LEVELS}
    ref = runs[LEVELS[0]]
    for level in LEVELS[1:]:
        got = runs[level]
        assert got.keys() == ref.keys()
        for k in ref:
            a, b = ref[k].astype(np.float64), got[k].astype(np.float64)
            scale = max(np.abs(a).max(), 1e-30)
            err = np.abs(a - b).max() / scale
            assert err < 2e-5, f"{level} vs {LEVELS[0]}: {k} differs by {err:.2e} of its scale"
        # the GELU tail: each level within 1e-6 relative where the result is normal
        tiny = np.abs(ref["gelu"]) > 1e-30
        rel = np.abs(got["gelu"][tiny] - ref["gelu"][tiny]) / np.abs(ref["gelu"][tiny])
        assert rel.max() < 2e-6, f"{level}: GELU relative difference {rel.max():.2e}"


# ---------------------------------------------------------------- the headers compile anywhere
HEADERS = ["fm_vec.h", "fm_linear.h", "fm_gelu.h", "fm_softmax.h", "fm_reduce.h", "fm_peak.h",
           "fm_cpu.h", "fm_conv.h", "fm_tuning.h", "fm_direct.h", "fm_igemm.h", "fm_pgemm.h"]
DRIVER = "".join(f'#include "{h}"\n' for h in HEADERS) + r"""
#include <stdio.h>
int main(int argc, char** argv) {
    float x[40], y[40], w[160], b[4];
    int i, n = 40 - (argc > 5);                     /* sizes the compiler cannot fold */
    (void)argv;
    for (i = 0; i < 40; i++) x[i] = (float)i / 7.0f - 3.0f;
    for (i = 0; i < 160; i++) w[i] = (float)(i % 13) / 13.0f - 0.5f;
    for (i = 0; i < 4; i++) b[i] = 0.1f * (float)i;
    i = (int)fma_gelu_fwd_f32(y, x, 0, n);
    sk_forward_rows(y, x, w, b, n, 4, 0, 1, 1);
    printf("%d %d %.6f %.6f %u\n", FM_LEVEL, i, (double)y[0], fm_expsum_f32(x, n, 3.0f),
           fm_cpu_features() & 0u);
    return 0;
}
"""


COMPILERS = [c for c in dict.fromkeys([os.environ.get("CC"), shutil.which("gcc"), shutil.which("clang")])
             if c] or ["cc"]


@pytest.mark.parametrize("cc", COMPILERS, ids=[os.path.basename(c) for c in COMPILERS])
@pytest.mark.parametrize("flags", [
    ["-DFM_LEVEL=0", "-mno-avx", "-mno-sse3"],                  # an old x86-64: the scalar level
    ["-DFM_LEVEL=1", "-mavx2", "-mfma", "-mf16c"],
    ["-DFM_LEVEL=2", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"],
], ids=["scalar-no-avx", "avx2", "avx512"])
def test_simd_headers_compile_warning_free(tmp_path, cc, flags):
    """gcc and clang (whichever are installed) compile every header at every level, -Werror."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        flags = [f for f in flags if not f.startswith("-m")]
    src = tmp_path / "t.c"
    src.write_text(DRIVER)
    exe = tmp_path / "t"
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler {cc}")
    cmd = [cc, "-std=gnu99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function",
           "-Wno-unused-parameter", "-I", SIMD, *flags, str(src), "-o", str(exe), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    level = int(flags[0][-1]) if flags[0].startswith("-DFM_LEVEL") else 0
    if level == 0 or _cpu.supports(("scalar", "avx2", "avx512")[level]):
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30).stdout.split()
        assert out[0] == str(level)


# the layout primitives of fm_vec.h / fm_conv.h against their scalar definitions, at each level
PRIMITIVES = r"""
#include <math.h>
#include <stdio.h>
#include "fm_conv.h"
static float src[40 * 40], dst[40 * 40], want[40 * 40], bias[40];
static int check_transpose(int rows, int cols, int use_bias, int acc, int relu) {
    int i, j, bad = 0;
    const int lds = 41 - 1, ldd = 40;
    for (i = 0; i < 40 * 40; i++) {
        src[i] = (float)((i * 37) % 101) / 17.0f - 3.0f;
        dst[i] = want[i] = (float)((i * 11) % 23) - 11.0f;
    }
    src[3] = NAN;
    for (j = 0; j < 40; j++) bias[j] = 0.25f * (float)j - 2.0f;
    for (j = 0; j < cols; j++)
        for (i = 0; i < rows; i++) {
            float v = src[i * lds + j];
            if (use_bias) v = v + bias[j];
            if (acc) v = want[j * ldd + i] + v;
            if (relu && v < 0) v = 0;
            want[j * ldd + i] = v;
        }
    fm_transpose_add(dst, ldd, src, lds, rows, cols, use_bias ? bias : NULL, acc, relu);
    for (i = 0; i < 40 * 40; i++)
        if (!(dst[i] == want[i] || (isnan(dst[i]) && isnan(want[i])))) bad++;
    return bad;
}
/* fm_gather2 / fm_scatter2_add on a row of m floats guarded on both sides: exact values, and
   nothing outside the row touched */
static int check_stride2(int n, int m) {
    float buf[120], out[60], add[60];
    int i, bad = 0;
    for (i = 0; i < 120; i++) buf[i] = (float)i - 0.5f;
    for (i = 0; i < 60; i++) { out[i] = -7.0f; add[i] = 0.125f * (float)i; }
    fm_gather2(out, buf + 10, n, m);
    for (i = 0; i < 60; i++) bad += out[i] != (i < n ? buf[10 + 2 * i] : -7.0f);
    fm_scatter2_add(buf + 10, add, n, m);
    for (i = 0; i < 120; i++) {
        float w = (float)i - 0.5f;
        if (i >= 10 && i < 10 + 2 * n && (i - 10) % 2 == 0) w += add[(i - 10) / 2];
        bad += buf[i] != w;
    }
    return bad;
}
int main(void) {
    static const int sizes[] = {1, 3, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 40};
    int a, b, f, bad = 0;
    for (a = 0; a < 14; a++)
        for (b = 0; b < 14; b++)
            for (f = 0; f < 8; f++)
                bad += check_transpose(sizes[a], sizes[b], f & 1, (f >> 1) & 1, (f >> 2) & 1);
    for (a = 0; a <= 45; a++)
        for (b = 2 * a - 1; b <= 2 * a + 2; b++)
            if (b >= 0) bad += check_stride2(a, b);
    printf("%d %d\n", FM_LEVEL, bad);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which(COMPILERS[0]) is None, reason="no C compiler")
@pytest.mark.parametrize("level", LEVELS)
def test_layout_primitives_match_their_scalar_definitions(tmp_path, level):
    """fm_vtranspose (through fm_transpose_add: ragged blocks, bias, accumulate, ReLU keeping
    NaN) and fm_vdeinterleave2 / fm_vinterleave2 (through the stride-2 row copies, every length
    with its row end right after the last element or a little further, nothing outside touched)
    give exactly the scalar loop's values at every level this CPU runs."""
    flags = {"scalar": ["-DFM_LEVEL=0"],
             "avx2": ["-DFM_LEVEL=1", "-mavx2", "-mfma", "-mf16c"],
             "avx512": ["-DFM_LEVEL=2", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw",
                        "-mavx512dq", "-mavx512vl"]}[level]
    src = tmp_path / "p.c"
    src.write_text(PRIMITIVES)
    exe = tmp_path / "p"
    r = subprocess.run([COMPILERS[0], "-std=gnu99", "-O2", "-ffp-contract=off", "-I", SIMD, *flags,
                        str(src), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30).stdout.split()
    assert out == [str(("scalar", "avx2", "avx512").index(level)), "0"]


CROSS = shutil.which("aarch64-linux-gnu-gcc")


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)")
def test_simd_headers_compile_for_aarch64(tmp_path):
    """A non-x86 build gets the scalar level only, and its headers compile there."""
    src = tmp_path / "t.c"
    src.write_text(DRIVER)
    r = subprocess.run([CROSS, "-std=gnu99", "-O2", "-Wall", "-Werror", "-Wno-unused-function",
                        "-I", SIMD, "-c", str(src), "-o", str(tmp_path / "t.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)")
def test_kernel_modules_compile_for_aarch64(tmp_path):
    """Every kernel module's generated C (present after an in-place build) compiles for aarch64
    at the scalar level: a non-x86 laptop can build fastmod."""
    import sysconfig
    import numpy
    from fastmod import _kernels
    kdir = os.path.dirname(_kernels.__file__)
    sources = [os.path.join(kdir, m + ".c") for m in _kernels.MODULES + ("_cpu", "_threads", "_alloc")]
    if not all(os.path.exists(s) for s in sources):
        pytest.skip("no generated C next to the .pyx files (not an in-place build)")
    for src in sources:
        r = subprocess.run([CROSS, "-c", "-O0", "-DFM_LEVEL=0", "-fPIC", "-fopenmp",
                            "-Wno-unused-function", "-I", sysconfig.get_paths()["include"],
                            "-I", numpy.get_include(), "-I", SIMD, src,
                            "-o", str(tmp_path / "m.o")], capture_output=True, text=True)
        assert r.returncode == 0, f"{os.path.basename(src)}: {r.stderr[-2000:]}"
