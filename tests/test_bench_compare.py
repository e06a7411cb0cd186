"""bench/compare.py's machine header: OpenBLAS identification, the emulation checks, --isa and
--emulate-avx2 (one short run in a subprocess). Behaviour only; no timing is asserted."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE = os.path.join(ROOT, "bench", "compare.py")
pytestmark = pytest.mark.skipif(not os.path.isfile(COMPARE), reason="no bench/ in this tree")

# the smallest run that still goes through the header: one inference row, one repeat
SMOKE = ["--quick", "--repeats", "1", "--min-time", "0.001", "--threads", "1", "--workloads",
         "mlp_b1_infer", "--modes", "infer", "--frameworks", "fastmod", "--no-overhead"]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("bench_compare", COMPARE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "FASTMOD_ISA",
                        "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_under_finds_wheel_library_dirs(compare):
    sp = os.path.join(os.sep, "venv", "lib", "site-packages")
    assert compare._under(os.path.join(sp, "scipy.libs", "libscipy_openblas-1.so"), "scipy")
    assert compare._under(os.path.join(sp, "numpy.libs", "libscipy_openblas64_-2.so"), "numpy")
    assert not compare._under(os.path.join(sp, "numpy.libs", "libscipy_openblas64_-2.so"), "scipy")


def test_scipy_openblas_is_fastmods(compare):
    pytest.importorskip("threadpoolctl")
    import fastmod
    libs = compare.openblas_libraries()
    path = fastmod._runtime._SCIPY_BLAS_PATH
    if path is None or "scipy" not in libs:
        pytest.skip("SciPy's OpenBLAS not found here")
    assert os.path.realpath(libs["scipy"]["filepath"]) == os.path.realpath(path)


def test_machine_info_without_torch(compare):
    info = compare.machine_info(None)
    import fastmod
    assert info["isa"] == fastmod._kernels.get_isa()
    assert info["supported_isas"] == list(fastmod._kernels.supported_isas())
    assert info["torch_cpu_capability"] is None and info["onednn_isa"] is None


def test_emulation_mismatches_name_the_library(compare):
    info = {"isa": "avx512", "torch_cpu_capability": "AVX512",
            "onednn_isa": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
            "openblas": {"scipy": {"architecture": "SkylakeX"}, "numpy": {"architecture": "Haswell"}},
            "env": dict(compare.EMULATE_AVX2)}
    bad = {(var, got.split()[0]) for var, _, got in compare.emulation_mismatches(info)}
    assert bad == {("FASTMOD_ISA", "fastmod"), ("ATEN_CPU_CAPABILITY", "torch's"),
                   ("ONEDNN_MAX_CPU_ISA", "oneDNN"), ("OPENBLAS_CORETYPE", "scipy's")}
    info.update(isa="avx2", torch_cpu_capability="AVX2", onednn_isa="Intel AVX2",
                openblas={"scipy": {"architecture": "Haswell"}})
    assert compare.emulation_mismatches(info) == []
    assert compare.emulation_mismatches(dict(info, env={})) == []


def test_emulate_avx2_refuses_another_isa(compare, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(["--emulate-avx2", "--isa", "avx512"])
    assert e.value.code == 2 and "--emulate-avx2 runs fastmod at avx2" in capsys.readouterr().err


def test_emulate_avx2_runs_every_library_at_avx2(tmp_path):
    import fastmod
    if "avx2" not in fastmod._kernels.supported_isas():
        pytest.skip("this CPU has no AVX2")
    out_json = str(tmp_path / "r.json")
    r = subprocess.run([sys.executable, COMPARE, "--emulate-avx2", *SMOKE, "--json", out_json],
                       capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "--emulate-avx2: re-running as" in out and "OPENBLAS_CORETYPE=Haswell" in out
    assert "fastmod ISA avx2" in out and "FMA peak float32" in out and "%fma" in out
    assert "WARNING: OPENBLAS" not in out          # intended here: a note, not the warning
    import json
    res = json.load(open(out_json))
    assert res["isa"] == "avx2" and res["emulate_avx2"] is True
    assert res["fma_peak_gflops"]["avx2"] > 0
    assert res["rows"] and "percent_of_fma_peak" in res["rows"][0]
    if res["machine"]["torch_cpu_capability"] is not None:
        assert res["machine"]["torch_cpu_capability"].lower() == "avx2"


def test_openblas_variables_warn(tmp_path):
    env = dict(_env(), OPENBLAS_L2_SIZE="1048576")
    r = subprocess.run([sys.executable, COMPARE, *SMOKE, "--no-peak", "--isa", "scalar"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "WARNING: OPENBLAS_L2_SIZE=1048576 set" in r.stdout
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py" in r.stdout
    assert "fastmod ISA scalar" in r.stdout


def test_onnx_runtime_peer_row():
    """--frameworks fastmod,torch,ort,planned: ONNX Runtime's inference time, fastmod / best and
    the planned model's time against torch and ORT are printed (and a train row says ORT and
    the planned model have none, without an error)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    args = [a for a in SMOKE if a not in ("fastmod",)]
    i = args.index("--frameworks")
    args[i + 1:i + 1] = ["fastmod,torch,ort,planned"]
    args[args.index("--modes") + 1] = "train,infer"
    args[args.index("--workloads") + 1] = "mlp_b128"
    r = subprocess.run([sys.executable, COMPARE] + args, capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fastmod / best (" in r.stdout and "ort - ms" in r.stdout, r.stdout
    assert "geometric mean fastmod / best of torch, ort over 2 rows" in r.stdout, r.stdout
    assert "fastmod.inference " in r.stdout and "planned / ort: " in r.stdout, r.stdout
    assert "geometric mean fastmod.inference / ONNX Runtime over 1 rows" in r.stdout, r.stdout
