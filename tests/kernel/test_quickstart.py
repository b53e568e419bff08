"""The README's quickstart command runs the packaged notebook end to end, from any directory."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from opchat_magic.quickstart import output_text, packaged_notebook

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args, cwd=None):
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipy"), "OPCHAT_HISTORY_DB": str(tmp_path / "h.sqlite3"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "opchat_magic.quickstart", *args], capture_output=True, text=True,
                          timeout=240, env=env, cwd=cwd or tmp_path)


def test_quickstart_runs_the_packaged_notebook_from_any_directory(tmp_path):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    proc = _run(tmp_path, cwd=elsewhere)  # no argument: the notebook inside the package
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = elsewhere / "quickstart.out.ipynb"
    assert out.exists()
    # Plain text, not escaped Markdown: the footer's "0.03 s", not "0\.03 s".
    assert "Echo: Hello! What can you do?" in proc.stdout
    assert re.search(r"first chunk \d+\.\d\d s", proc.stdout), proc.stdout
    assert "\\." not in proc.stdout and "\\!" not in proc.stdout
    assert "<IPython.core.display.Markdown object>" not in proc.stdout
    nb = nbformat.read(out, as_version=4)
    saved = "\n".join(o.get("data", {}).get("text/markdown", "")
                      for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # Static Markdown outputs in the saved file: history counted, threads, reset.
    assert "This conversation has 5 messages." in saved
    assert "Echo: Tell me about sourdough bread." in saved
    assert "Echo: Are we starting over?" in saved and saved.count("This conversation has 1 message.") >= 3
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_quickstart_missing_notebook_is_one_clear_line(tmp_path):
    proc = _run(tmp_path, str(tmp_path / "nope.ipynb"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"no notebook at {tmp_path / 'nope.ipynb'}" in proc.stderr


def test_quickstart_output_text_prefers_plain_text():
    assert output_text({"output_type": "display_data",
                        "data": {"text/markdown": "*0\\.03 s*", "text/plain": "0.03 s"}}) == "0.03 s"
    # An object whose plain repr says nothing (IPython's Markdown): its Markdown source.
    assert output_text({"output_type": "display_data",
                        "data": {"text/markdown": "| a |", "text/plain": "<IPython.core.display.Markdown object>"}}) == "| a |"
    assert output_text({"output_type": "stream", "name": "stdout", "text": "hi\n"}) == "hi"


def test_the_notebook_ships_in_the_wheel(tmp_path):
    assert packaged_notebook().is_file()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stderr
    wheel, = tmp_path.glob("opchat_magic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "opchat_magic/notebooks/quickstart.ipynb" in names
    assert "opchat_magic/quickstart.py" in names


def test_readme_starts_with_the_two_commands_ci_runs():
    """`.ci/run` runs the lines of the README's first bash block in a fresh venv: keep them two, and right."""
    proc = subprocess.run(["awk", '/^```bash$/ {on=1; next} on && /^```$/ {exit} on && NF', str(ROOT / "README.md")],
                          capture_output=True, text=True, check=True)
    first, second = proc.stdout.splitlines()
    assert re.match(r"pip install -e '\.\[test\]' && python -m opchat_magic\.quickstart\b", first)
    assert re.match(r"python -m pytest\b", second)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and "README.md" in ci
    if not os.access(ROOT / ".ci" / "run", os.X_OK):
        pytest.fail(".ci/run must be executable")


def test_skips_print_their_reasons_and_the_suite_imports_are_in_the_test_extra():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^addopts = "[^"]*-r[a-zA-Z]*[as]', pyproject, re.M)
    test_extra = pyproject[pyproject.index("test = ["):]
    test_extra = test_extra[:test_extra.index("]\n")]
    for needed in ("mistune", "hypothesis", "aioresponses", "quickstart", "browser"):
        assert needed in test_extra
