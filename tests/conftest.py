"""Shared test fixtures."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import aiohttp
import pytest

# Tests are grouped by layer (unit/, integration/, kernel/, browser/); a few share
# sample data across layers (`from test_render_renderer import realistic_reply`),
# so every layer's folder is importable, as the flat tests/ folder was.
for _layer in ("unit", "integration", "kernel", "browser"):
    _path = str(Path(__file__).resolve().parent / _layer)
    if _path not in sys.path:
        sys.path.append(_path)


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds ClientResponse without ``stream_writer``, which aiohttp 3.14 requires."""

    def __init__(self, method, url, **kwargs):
        kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@pytest.fixture(autouse=True)
def aioresponses_compat(monkeypatch):
    """Make aioresponses work with aiohttp >= 3.14 in every test that uses it."""
    import aioresponses.core

    monkeypatch.setattr(aioresponses.core, "ClientResponse", _CompatResponse)


@pytest.fixture(scope="module")
def kernel_on(tmp_path_factory):
    """``kernel_on(server, notebook, env=None, setup="") -> Kernel``: a real kernel for the
    notebook ``<tmp>/<notebook>``, the extension loaded and pointed at ``server.url``,
    then ``setup`` run; every kernel started is shut down at the end of the module."""
    from opchat_magic.testing.kernel import Kernel

    started = []

    def start(server, notebook, env=None, setup=""):
        path = tmp_path_factory.mktemp("nb") / notebook
        kernel = Kernel(env={"JPY_SESSION_NAME": str(path), **(env or {})})
        started.append(kernel)
        kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}\n{setup}")
        return kernel

    yield start
    for kernel in started:
        kernel.shutdown()
