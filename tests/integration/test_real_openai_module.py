"""The opt-in real-server module runs, and passes, pointed at our own server.

So it cannot rot unnoticed between the times someone points it at Ollama or
llama.cpp (see the README). It runs in a subprocess, as a user would run it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opchat_magic.server import LocalServer

MODULE = Path(__file__).parent / "test_real_openai.py"

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]


def run_module(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPCHAT_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(MODULE), "-q", "-rs", "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, timeout=280, cwd=str(MODULE.parent.parent.parent),
    )


def test_skips_with_the_reason_when_unset():
    done = run_module({})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 skipped" in done.stdout and "set OPCHAT_REAL_OPENAI_URL" in done.stdout


def test_passes_against_our_own_server():
    with LocalServer(delay=0.01, chunk_size=5) as server:
        done = run_module({"OPCHAT_REAL_OPENAI_URL": server.openai_base_url})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout
