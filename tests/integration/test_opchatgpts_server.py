"""Opchatgpts against a real LocalServer on 127.0.0.1: replies, every fault, timeouts, cancellation, nonces."""
from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from opchat_magic.errors import (
    EndpointUnreachableError,
    HTTPStatusError,
    NotAnEndpointError,
    ServerError,
    SSEDecodeError,
    StreamError,
    StreamTimeoutError,
    TruncatedStreamError,
)
from opchat_magic.providers.base import Usage
from opchat_magic.providers.opchatgpts import SUBMIT_PATH, Opchatgpts
from opchat_magic.server import GOOD, LocalServer, fault_names, reply_text, split_chunks
from opchat_magic.server.faults import HTTP_MESSAGES, OVERLOADED, reasoning_text
from opchat_magic.server.replies import prompt_tokens, usage

pytestmark = pytest.mark.timeout(30)

CHUNK = 5
FAULT_DELAY = 2.0


@pytest.fixture(scope="module")
def server():
    srv = LocalServer(delay=0, chunk_size=CHUNK, fault_delay=FAULT_DELAY, max_hang=1.5,
                      trickle_interval=0.002, keepalive_interval=0.2)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def clean(server, monkeypatch):
    monkeypatch.delenv("OPCHAT_URL", raising=False)
    server.clear_fault()
    server.reset_stats()
    yield
    server.clear_fault()


def user(text):
    return [{"role": "user", "content": text}]


async def run(server, messages, **kw):
    if server is not None:
        kw.setdefault("url", server.url)
    stream = Opchatgpts.create_async_generator("", messages, **kw)
    chunks = [c async for c in stream]
    return chunks, stream.reply


# --------------------------------------------------------------------------- normal replies


async def test_streamed_reply(server):
    messages = user("Hello there")
    chunks, reply = await run(server, messages)
    expected = reply_text(messages)
    assert "".join(chunks) == expected
    assert chunks == split_chunks(expected, CHUNK)
    assert reply.complete and reply.final["reply"] == expected
    # The counts, and AI Engine's own figures from the end payload.
    assert reply.usage == Usage(**usage(prompt_tokens(messages), expected), queries=1, accuracy="estimated")
    # The client can finish reading before the server's handler has counted the stream.
    stats = await server.await_for(lambda st: st.completed == 1, timeout=5)
    assert stats.completed == 1 and stats.requests == {"submit": 1}


async def test_history_reflected(server):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First"},
        {"role": "assistant", "content": "Echo: First"},
        {"role": "user", "content": "Second"},
    ]
    chunks, _ = await run(server, messages)
    text = "".join(chunks)
    assert text == reply_text(messages)
    assert text.startswith("Echo: Second") and "4 messages" in text
    body = server.stats.last_body
    # The history before the new message; the server (as the plugin) appends newMessage.
    assert body["messages"] == messages[:-1] and body["newMessage"] == "Second"
    headers = server.stats.last_headers
    assert headers["Referer"] == server.url + "/chatgpt-free-use/" and headers["Origin"] == server.url


async def test_long_reply_many_chunks(server):
    chunks, reply = await run(server, user("[[words:2000]]"))
    assert len("".join(chunks).split()) == 2000 and reply.complete


async def test_env_url(server, monkeypatch):
    monkeypatch.setenv("OPCHAT_URL", server.url)
    stream = Opchatgpts.create_async_generator("", user("env"))
    assert "".join([c async for c in stream]) == reply_text(user("env"))


async def test_shared_session(server, monkeypatch):
    async with aiohttp.ClientSession() as session:
        # Any new ClientSession would fail: the caller's is the one used.
        monkeypatch.setattr(aiohttp, "ClientSession", None)
        for i in range(3):
            chunks, reply = await run(server, user(f"turn {i}"), session=session)
            assert reply.complete
        assert not session.closed


async def test_create_async(server):
    assert await Opchatgpts.create_async("", user("hi"), url=server.url) == reply_text(user("hi"))


def test_create_completion_sync(server):
    messages = user("sync please")
    assert "".join(Opchatgpts.create_completion("", messages, url=server.url)) == reply_text(messages)
    assert list(Opchatgpts.create_completion("", messages, stream=False, url=server.url)) == [reply_text(messages)]


async def test_create_completion_inside_running_loop(server):
    messages = user("from a loop")
    assert "".join(Opchatgpts.create_completion("", messages, url=server.url)) == reply_text(messages)


# --------------------------------------------------------------------------- every fault


def _partial(messages):
    return "".join(split_chunks(reply_text(messages), CHUNK)[:GOOD])


def _ok(check=None):
    return ("ok", check)


def _err(exc, match=None, check=None):
    return ("error", exc, match, check)


FAULTS = {
    "broken_json": _err(StreamError, "not JSON", lambda e, m: e.line == '{"broken json'),
    "missing_type": _err(StreamError, 'no "type"', lambda e, m: e.line == '{"data":"no type"}'),
    "unknown_type": _ok(lambda r, m: r.final["_ignored_events"] == {"mystery": 1} and r.text == reply_text(m)),
    "live_without_data": _err(StreamError, "without string data", lambda e, m: e.line == '{"type":"live"}'),
    "non_string_data": _err(StreamError, "without string data"),
    "bad_end": _err(StreamError, "end event", lambda e, m: not isinstance(e, TruncatedStreamError)),
    "error_event": _err(ServerError, OVERLOADED),
    "disconnect": _err(TruncatedStreamError, "broke mid-stream", lambda e, m: e.partial == _partial(m)),
    "reset": _err(TruncatedStreamError, "", lambda e, m: e.partial == _partial(m)),
    "no_end": _err(TruncatedStreamError, "before its end event", lambda e, m: e.partial == reply_text(m)),
    "empty_body": _err(TruncatedStreamError, "", lambda e, m: e.partial == ""),
    # As the real plugin when its model server drops the stream: the chunks so far, then an error event.
    "upstream_drop": _err(ServerError, "cURL error 18", lambda e, m: getattr(e, "partial", None) is None),
    "html": _err(NotAnEndpointError, "text/html", lambda e, m: SUBMIT_PATH in str(e) and "Just a moment" in str(e)),
    "json_200": _ok(lambda r, m: r.text == reply_text(m) and r.usage is not None),
    # 401 rest_forbidden: a nonce is fetched and the turn retried once; the fault answers that too.
    "http_401": _err(HTTPStatusError, HTTP_MESSAGES[401], lambda e, m: e.status == 401 and "fresh nonce" in str(e)),
    "http_403": _err(HTTPStatusError, HTTP_MESSAGES[403], lambda e, m: e.status == 403),
    "http_429": _err(HTTPStatusError, "Retry-After: 1", lambda e, m: e.status == 429),
    "http_500": _err(HTTPStatusError, HTTP_MESSAGES[500], lambda e, m: e.status == 500),
    "http_502": _err(HTTPStatusError, HTTP_MESSAGES[502], lambda e, m: e.status == 502),
    "http_500_text": _err(HTTPStatusError, "Internal Server Error", lambda e, m: e.status == 500),
    "slow_first_byte": _err(StreamTimeoutError, "no response for read_timeout=0.5 s"),
    "no_headers": _err(StreamTimeoutError, "no response for read_timeout=0.5 s"),
    "stall": _err(StreamTimeoutError, "for read_timeout=0.5 s", lambda e, m: e.partial == _partial(m)),
    # one byte every 2 ms: the whole turn takes longer than read_timeout, each gap is far shorter
    "trickle": _ok(lambda r, m: r.text == reply_text(m)),
    "huge_line": _ok(lambda r, m: "x" * (1 << 20) in r.text and r.complete),
    "invalid_utf8": _err(SSEDecodeError, "invalid UTF-8", lambda e, m: SUBMIT_PATH in str(e)),
    "nul_bytes": _ok(lambda r, m: "nul\x00here" in r.text),
    "nul_raw": _err(StreamError, "not JSON"),
    "cr_only": _ok(lambda r, m: r.text == reply_text(m)),
    # keep-alives are no events: the watchdog ends the wait (issue 12, finding 7)
    "keepalive_only": _err(StreamTimeoutError, "no event within first_event_timeout=0.5 s", lambda e, m: e.partial == ""),
    "many_events": _ok(lambda r, m: len(r.chunks) == 100_000 and len(r.text) == 100_000),
    # issue 12: the server's own text in errors, keep-alives after events, bad bytes in one read
    "say_http_500": _err(HTTPStatusError, "Echo: Tell me", lambda e, m: e.status == 500),
    "say_error_event": _err(ServerError, "Echo: Tell me"),
    "keepalive_after_good": _err(StreamTimeoutError, "no event for read_timeout=0.5 s", lambda e, m: e.partial == _partial(m)),
    "invalid_utf8_one_read": _err(SSEDecodeError, "byte offset", lambda e, m: SUBMIT_PATH in str(e)),
    # OpenAI-spelled faults, forced onto AI Engine by the directive
    "bare_done": _err(StreamError, "not JSON", lambda e, m: e.line == "[DONE]"),
    "no_usage": _ok(lambda r, m: r.text == reply_text(m) and r.usage is not None),
    # thinking events: reasoning, kept apart from the text
    "reasoning": _ok(lambda r, m: r.text == reply_text(m) and r.reasoning == reasoning_text(reply_text(m))),
    "reasoning_field": _ok(lambda r, m: r.text == reply_text(m) and r.reasoning == reasoning_text(reply_text(m))),
}


def test_every_server_fault_is_covered():
    assert set(FAULTS) == set(fault_names())


@pytest.mark.parametrize("name", sorted(FAULTS))
async def test_fault(server, name):
    messages = user(f"Tell me [[fault:{name}]]")
    expected = FAULTS[name]
    started = time.monotonic()
    if expected[0] == "ok":
        _, check = expected
        chunks, reply = await run(server, messages, read_timeout=0.5, connect_timeout=2)
        assert reply.complete, name
        assert "".join(chunks) == reply.text
        if check:
            assert check(reply, messages), name
    else:
        _, exc, match, check = expected
        with pytest.raises(exc) as info:
            await run(server, messages, read_timeout=0.5, connect_timeout=2)
        if match:
            assert match in str(info.value), (name, str(info.value))
        if check:
            assert check(info.value, messages), (name, info.value)
        assert server.url in str(info.value)  # every error names the URL
    assert time.monotonic() - started < 10
    # A 401 (no nonce) is tried once more, with a nonce from start_session.
    assert server.stats.faults == {name: 2 if name == "http_401" else 1}


async def test_server_wide_fault_counts_down(server):
    server.set_fault("http_500", count=1)
    with pytest.raises(HTTPStatusError):
        await run(server, user("a"))
    chunks, reply = await run(server, user("b"))
    assert reply.complete


# --------------------------------------------------------------------------- timeouts


async def test_slow_first_byte_within_timeout_completes(server):
    server.set_fault("slow_first_byte", fault_delay=0.6)
    try:
        chunks, reply = await run(server, user("slow"), read_timeout=3)
    finally:
        server.config.tune(fault_delay=FAULT_DELAY)
    assert reply.complete and "".join(chunks) == reply_text(user("slow"))


async def test_stall_is_bounded_in_time(server):
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError):
        await run(server, user("[[fault:stall]]"), read_timeout=0.5)
    assert 0.4 < time.monotonic() - started < 1.9  # the stall itself lasts FAULT_DELAY=2 s


async def test_no_headers_with_tiny_timeouts(server):
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError, match="read_timeout=0.3"):
        await run(server, user("[[fault:no_headers]]"), connect_timeout=0.3, read_timeout=0.3)
    assert time.monotonic() - started < 1.5
    await server.await_for(lambda s: s.active == 0, 3)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused():
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(EndpointUnreachableError) as info:
        await run(None, user("hi"), url=url, connect_timeout=2)
    text = str(info.value)
    assert url + SUBMIT_PATH in text and "connection refused" in text
    assert "opchat-magic serve" in text and "%config OpchatMagics.url" in text  # the hint
    assert time.monotonic() - started < 2


def test_connection_refused_sync():
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(EndpointUnreachableError):
        list(Opchatgpts.create_completion("", user("hi"), url=url))


# --------------------------------------------------------------------------- cancellation


async def test_cancel_closes_connection(server):
    stream = Opchatgpts.create_async_generator("", user("[[chunks:200]] [[delay:0.02]]"), url=server.url)
    got = []

    async def consume():
        async for chunk in stream:
            got.append(chunk)

    task = asyncio.create_task(consume())
    while len(got) < 3:
        await asyncio.sleep(0.005)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await server.await_for(lambda s: s.disconnects >= 1, 1.0)
    assert stats.last_disconnect_at - cancelled_at < 1.0
    assert stats.completed == 0 and not stream.reply.complete


async def test_aclose_closes_connection(server):
    stream = Opchatgpts.create_async_generator("", user("[[chunks:200]] [[delay:0.02]]"), url=server.url)
    async for _ in stream:
        break
    await stream.aclose()
    await server.await_for(lambda s: s.disconnects >= 1, 1.0)


def test_sync_consumer_break_closes_connection(server):
    gen = Opchatgpts.create_completion("", user("[[chunks:200]] [[delay:0.02]]"), url=server.url)
    next(gen)
    gen.close()
    server.wait_for(lambda s: s.disconnects >= 1, 1.0)


# --------------------------------------------------------------------------- nonces


@pytest.fixture(scope="module")
def nonce_server():
    with LocalServer(delay=0, require_nonce=True) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh_sites():
    Opchatgpts.sites.forget()
    yield
    Opchatgpts.sites.forget()


async def test_nonce_fetched_when_asked_then_reused(nonce_server):
    nonce_server.reset_stats()
    chunks, reply = await run(nonce_server, user("hi"))
    assert reply.complete and "".join(chunks) == reply_text(user("hi"))
    recent = nonce_server.stats.recent
    assert [r["endpoint"] for r in recent] == ["submit", "start_session", "submit"]
    assert "X-WP-Nonce" not in recent[0]["headers"] and recent[2]["headers"]["X-WP-Nonce"]
    nonce = recent[2]["headers"]["X-WP-Nonce"]
    nonce_server.reset_stats()
    await run(nonce_server, user("again"))
    assert [(r["endpoint"], r["headers"]["X-WP-Nonce"]) for r in nonce_server.stats.recent] == [("submit", nonce)]


async def test_no_nonce_mode(nonce_server):
    with pytest.raises(HTTPStatusError, match="leave nonce unset") as info:
        await run(nonce_server, user("hi"), nonce=False)
    assert info.value.status == 401 and "rest_forbidden" in info.value.message


async def test_stale_nonce_refreshed_and_new_token_kept(nonce_server):
    await run(nonce_server, user("hi"))
    nonce_server.expire_nonces()  # the cached nonce goes stale
    nonce_server.reset_stats()
    _, reply = await run(nonce_server, user("hi"))
    assert reply.complete
    assert [(r["endpoint"]) for r in nonce_server.stats.recent] == ["submit", "start_session", "submit"]
    assert nonce_server.stats.statuses.get(403) == 1
    nonce_server.age_nonces()  # old but valid: the end payload carries a new_token
    _, reply = await run(nonce_server, user("hi"))
    token = reply.final["new_token"]
    assert Opchatgpts.sites.nonce(Opchatgpts.endpoint(nonce_server.url)) == token
    nonce_server.reset_stats()
    await run(nonce_server, user("hi"))
    assert nonce_server.stats.last_headers["X-WP-Nonce"] == token


async def test_nonce_string_wins_and_stale_one_is_reported(nonce_server):
    nonce = nonce_server.issue_nonce()
    _, reply = await run(nonce_server, user("hi"), nonce=nonce)
    assert reply.complete
    nonce_server.expire_nonces()
    with pytest.raises(HTTPStatusError, match="stale") as info:
        await run(nonce_server, user("hi"), nonce=nonce)
    assert info.value.status == 403 and nonce not in str(info.value)
    _, reply = await run(nonce_server, user("hi"))  # unset: a fresh one works again
    assert reply.complete


def test_nonce_auto_sync(nonce_server):
    assert "".join(Opchatgpts.create_completion("", user("x"), url=nonce_server.url, nonce="auto")) == reply_text(user("x"))


async def test_plain_permalink_site_from_its_bare_url_on_the_local_server():
    with LocalServer(delay=0, plain_permalinks=True) as plain:
        chunks, reply = await run(plain, user("hi"))
        assert reply.complete
        # /wp-json/ was the home page; its Link header named the REST root: one extra request.
        assert [r["path"] for r in plain.stats.recent] == ["/index.php"]
        assert plain.stats.requests == {"submit": 1}
        assert Opchatgpts.endpoint(plain.url).root == plain.url + "/index.php?rest_route=/"
        await run(plain, user("again"))  # remembered: straight there
        assert plain.stats.requests == {"submit": 2}


async def test_plain_permalink_spellings_on_the_local_server(server):
    for url in (server.url + "/?rest_route=/", server.url + "/index.php?rest_route=/mwai-ui/v1/chats/submit",
                server.url + "/wp-json/", server.url + "/wp-json/mwai-ui/v1/chats/submit"):
        server.reset_stats()
        chunks, reply = await run(server, user("hi"), url=url)
        assert reply.complete and server.stats.requests == {"submit": 1}
        assert server.stats.recent[0]["path"] == ("/wp-json/mwai-ui/v1/chats/submit" if "wp-json" in url
                                                  else "/index.php" if "index.php" in url else "/")


async def test_too_long_message_hint(server):
    with pytest.raises(ServerError, match="513 characters.*512"):
        await run(server, user("x" * 513))


async def test_empty_message_refused_before_sending(server):
    with pytest.raises(ValueError, match="empty"):
        Opchatgpts.create_async_generator("", user("  "), url=server.url)
    assert server.stats.requests == {}


# --------------------------------------------------------------------------- request checks on the server


async def test_unknown_bot_id_answered_by_default(server):
    chunks, reply = await run(server, user("hi"), bot_id="nope")  # as the plugin: the default chatbot answers
    assert reply.complete and "".join(chunks) == reply_text(user("hi"))


async def test_html_page_message(server):
    server.set_fault("html", count=None)
    with pytest.raises(NotAnEndpointError) as info:
        await run(server, user("hi"))
    assert "Just a moment..." in str(info.value) and "<html>" not in str(info.value)
    # Its Link header names this very REST root: not a plain-permalink site, no second try.
    assert server.stats.faults == {"html": 1}

