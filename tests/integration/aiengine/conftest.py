"""The real AI Engine plugin, stood up once per test session (see opchat_magic.testing.aiengine).

``aiengine`` yields ``(site, upstream)``: the WordPress site running the real
plugin, and our LocalServer as the OpenAI-compatible model behind its chatbot
(what the plugin sent upstream is in ``upstream.stats``; upstream faults are
injected with ``upstream.set_fault``). Without the archive or the Debian
packages the tests skip, naming what is missing; with
``OPCHAT_REQUIRE_AIENGINE=1`` (CI) they fail instead.
"""
from __future__ import annotations

import os
import time

import pytest

from opchat_magic.testing.aiengine import REQUIRE_ENV, AIEngineSite, missing

pytestmark = pytest.mark.aiengine


@pytest.fixture(scope="session")
def aiengine():
    why = missing()
    if why:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the real AI Engine plugin cannot run: {why}", pytrace=False)
        pytest.skip(f"real AI Engine plugin not available: {why}")
    from opchat_magic.server import LocalServer

    started = time.monotonic()
    upstream = LocalServer(delay=0, chunk_size=5, fault_delay=1.0, max_hang=5.0, keepalive_interval=0.2)
    upstream.start()
    site = AIEngineSite(upstream.openai_base_url)
    try:
        site.start()
    except BaseException:
        upstream.stop()
        raise
    print(f"\n[aiengine] real plugin up in {time.monotonic() - started:.1f} s at {site.url} "
          f"(plain permalinks: {site.plain_url}); steps {site.timings}")
    yield site, upstream
    site.stop()
    upstream.stop()


@pytest.fixture
def site(aiengine):
    return aiengine[0]


@pytest.fixture
def upstream(aiengine):
    server = aiengine[1]
    server.clear_fault()
    server.reset_stats()
    yield server
    server.clear_fault()


@pytest.fixture(autouse=True)
def fresh_sites(monkeypatch):
    """Each test starts knowing nothing of any site (no cached REST root or nonce)."""
    from opchat_magic.providers.opchatgpts import Opchatgpts

    monkeypatch.delenv("OPCHAT_URL", raising=False)
    Opchatgpts.sites.forget()
    yield
    Opchatgpts.sites.forget()
