"""The README's quick start runs as written and learns its toy problem."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _quick_start():
    text = open(README, encoding="utf-8").read()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    if m is None:
        pytest.fail("README.md: no python block under '## Quick start'")
    return m.group(1)


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    code = _quick_start()
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md quick start", "exec"), ns)
    assert (tmp_path / "model.npz").exists()
    loss, acc = capsys.readouterr().out.split()
    assert float(loss) < 0.1 and float(acc) > 0.97


def test_writing_your_own_module_runs(tmp_path, monkeypatch, capsys):
    """The README's "Writing your own module" example: gradcheck passes, fit learns, save/load."""
    text = open(README, encoding="utf-8").read()
    section = text.split("## Writing your own module", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None, "README.md: no python block under '## Writing your own module'"
    monkeypatch.chdir(tmp_path)
    exec(compile(m.group(1), "README.md own module", "exec"), {})
    assert (tmp_path / "scaled.npz").exists()
    assert capsys.readouterr().out.split() == ["True", "True"]
