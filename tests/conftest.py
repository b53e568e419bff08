"""Shared test fixtures."""
from __future__ import annotations

import types

import aiohttp
import pytest


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
