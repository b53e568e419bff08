"""Issue 12 findings 5, 7 and 8, through our local server on 127.0.0.1, for both providers.

* Finding 7: a server that sends only ``: ping`` keep-alives is abandoned after
  ``first_event_timeout`` (before any event) or ``read_timeout`` (after one), with
  a typed error naming the wait; a slow consumer never trips the watchdog.
* Finding 8: invalid UTF-8 in one network read keeps the events before it, and
  the error names the byte offset.
* Finding 5: ``user:password@`` in the URL never shows in an error; a key plus
  such a URL says which to drop instead of aiohttp's "Cannot combine
  AUTHORIZATION header".
"""
from __future__ import annotations

import asyncio
import time

import pytest

from opchat_magic.errors import CredentialsConflictError, EndpointUnreachableError, SSEDecodeError, StreamTimeoutError
from opchat_magic.providers.opchatgpts import Opchatgpts
from opchat_magic.providers.openai_compat import OpenAICompatible
from opchat_magic.server import GOOD, LocalServer, reply_text, split_chunks
from opchat_magic.testing import free_port

pytestmark = pytest.mark.timeout(60)
CHUNK = 5


@pytest.fixture(scope="module")
def server():
    # keep-alives every 0.1 s: aiohttp's socket idle timer never fires, only the event watchdog can
    with LocalServer(delay=0, chunk_size=CHUNK, keepalive_interval=0.1, max_hang=20) as srv:
        yield srv


PROVIDERS = ["aiengine", "openai"]


def stream(which, server, text, **kwargs):
    messages = [{"role": "user", "content": text}]
    if which == "aiengine":
        url = kwargs.pop("url") if "url" in kwargs else server.url
        return Opchatgpts.create_async_generator("", messages, url=url, **kwargs)
    url = kwargs.pop("url") if "url" in kwargs else server.openai_base_url
    return OpenAICompatible.create_async_generator("m", messages, base_url=url, **kwargs)


async def consume(gen, pause: float = 0.0):
    got = []
    try:
        async for chunk in gen:
            got.append(chunk)
            if pause:
                await asyncio.sleep(pause)
    finally:
        await gen.aclose()
    return got


@pytest.mark.parametrize("which", PROVIDERS)
async def test_keepalives_alone_end_at_the_first_event_bound(server, which):
    start = time.monotonic()
    with pytest.raises(StreamTimeoutError, match=r"no event within first_event_timeout=1 s \(keep-alive"):
        await consume(stream(which, server, "hi [[fault:keepalive_only]]", read_timeout=30, first_event_timeout=1))
    assert time.monotonic() - start < 6  # not the server's 20 s hang


@pytest.mark.parametrize("which", PROVIDERS)
async def test_keepalives_after_events_end_at_read_timeout(server, which):
    text = "hello there [[fault:keepalive_after_good]]"
    got = []
    start = time.monotonic()
    with pytest.raises(StreamTimeoutError, match=r"no event for read_timeout=1 s \(keep-alive"):
        gen = stream(which, server, text, read_timeout=1)
        async for chunk in gen:
            got.append(chunk)
    assert time.monotonic() - start < 6
    expected = split_chunks(reply_text([{"role": "user", "content": text}]), CHUNK)[:GOOD]
    assert "".join(got) == "".join(expected)  # the text before the stall is kept


@pytest.mark.parametrize("which", PROVIDERS)
async def test_first_event_timeout_is_a_provider_kwarg_with_a_class_default(server, which, monkeypatch):
    cls = Opchatgpts if which == "aiengine" else OpenAICompatible
    monkeypatch.setattr(cls, "first_event_timeout", 1.0)
    with pytest.raises(StreamTimeoutError, match="first_event_timeout=1 s"):
        await consume(stream(which, server, "hi [[fault:keepalive_only]]"))


def test_aiengine_waits_for_its_model_by_default():
    # the plugin gives its model 300 s and sends nothing meanwhile
    assert Opchatgpts.first_event_timeout >= 300


@pytest.mark.parametrize("which", PROVIDERS)
async def test_a_slow_consumer_never_trips_the_watchdog(server, which):
    text = "slow reader [[chunks:6]]"
    got = await consume(stream(which, server, text, read_timeout=0.3, first_event_timeout=0.3), pause=0.5)
    assert "".join(got) == reply_text([{"role": "user", "content": text}], chunk_size=CHUNK)


@pytest.mark.parametrize("which", PROVIDERS)
async def test_invalid_utf8_keeps_the_events_of_the_same_read(server, which):
    text = "some good text first [[fault:invalid_utf8_one_read]]"
    got = []
    with pytest.raises(SSEDecodeError, match=r"invalid UTF-8 .*byte offset \d+"):
        gen = stream(which, server, text, read_timeout=5)
        async for chunk in gen:
            got.append(chunk)
    expected = split_chunks(reply_text([{"role": "user", "content": text}]), CHUNK)[:GOOD]
    assert "".join(got) == "".join(expected)


# -- finding 5: credentials in URLs -------------------------------------------------------
PASSWORD = "PASSWORD-5f3a9c"


@pytest.mark.parametrize("which", PROVIDERS)
async def test_userinfo_never_shows_in_an_unreachable_error(which):
    url = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}" + ("/v1" if which == "openai" else "")
    with pytest.raises(EndpointUnreachableError) as info:
        await consume(stream(which, None, "hi", url=url, connect_timeout=2, read_timeout=2))
    views = f"{info.value!s} {info.value!r} {info.value.url} {vars(info.value)!r}"
    assert PASSWORD not in views and "user:" not in views
    assert "answered at http://" in str(info.value) and "127.0.0.1" in str(info.value)


async def test_key_and_userinfo_say_which_to_drop(server):
    url = f"http://user:{PASSWORD}@127.0.0.1:{server.port}/v1"
    with pytest.raises(CredentialsConflictError) as info:
        await consume(stream("openai", server, "hi", url=url, api_key="sk-test-key-1234"))
    message = str(info.value)
    assert "drop one" in message and "Cannot combine" not in message
    assert PASSWORD not in message and "sk-test-key-1234" not in message


async def test_userinfo_alone_becomes_basic_auth(server):
    url = f"http://user:{PASSWORD}@127.0.0.1:{server.port}/v1"
    got = await consume(stream("openai", server, "hi with a password", url=url))
    assert "Echo: hi with a password" in "".join(got)
    assert server.stats.last_headers["Authorization"].startswith("Basic ")
