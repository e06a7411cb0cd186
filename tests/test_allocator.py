"""fastmod's allocator setting (fastmod._runtime: glibc keeps freed blocks for reuse instead of
giving them back to the kernel and faulting them in again at the next step)."""
import os
import platform
import subprocess
import sys

import pytest

import fastmod
from fastmod import _runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
# under AddressSanitizer (LD_PRELOAD=libasan.so, see CONTRIBUTING.md) malloc is ASan's, not glibc's
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")

# A training-step-like pattern: a step allocates activations of several sizes (1-16 MB),
# touches every page, then frees them all; repeat. Print the minor page faults taken by the
# steps after the first.
PROBE = r"""
import resource, numpy as np
import fastmod
def step():
    live = []
    for mb in (4, 8, 16, 8, 4, 2, 1, 12):
        a = np.empty(mb << 18, np.float32); a.fill(1); live.append(a)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(fastmod._runtime.MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting):
    env = dict(os.environ)
    env.pop("FASTMOD_MALLOC", None)
    if setting is not None:
        env["FASTMOD_MALLOC"] = setting
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastmod.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not GLIBC or ASAN, reason="the setting applies to glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    tuned, faults = _probe(None)
    assert tuned and _runtime.MALLOC_TUNED
    assert faults < 200                        # 0 measured; ~38,000 without the setting


@pytest.mark.skipif(not GLIBC or ASAN, reason="the setting applies to glibc's malloc only")
def test_opt_out_leaves_malloc_alone():
    tuned, faults = _probe("system")
    assert not tuned
    assert faults > 10 * 1000                  # glibc default: unmap, fault in again (~38,000)


def test_bad_setting_is_refused():
    env = dict(os.environ, FASTMOD_MALLOC="fast")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastmod.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", "import fastmod"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "FASTMOD_MALLOC='fast'" in out.stderr
