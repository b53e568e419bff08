"""Opchatgpts and providers/http.py against mocked HTTP (aioresponses): request shape, parse rules, errors."""
from __future__ import annotations

import asyncio
import json
import re
from unittest.mock import Mock

import aiohttp
import pytest
from aioresponses import aioresponses

from opchat_magic.errors import (
    EndpointUnreachableError,
    HTTPStatusError,
    NotAnEndpointError,
    OpchatError,
    ServerError,
    SSEDecodeError,
    StreamError,
    StreamTimeoutError,
    TruncatedStreamError,
)
from opchat_magic.providers.base import ReplyStream, Usage
from opchat_magic.providers import http
from opchat_magic.providers.opchatgpts import SESSION_PATH, SUBMIT_PATH, Opchatgpts, random_chat_id

pytestmark = pytest.mark.timeout(30)

BASE = "http://ai.test"
SUBMIT = BASE + SUBMIT_PATH
SESSION = BASE + SESSION_PATH
MSGS = [{"role": "user", "content": "Hello"}]
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
SSE = "text/event-stream"


def sse(*objs) -> bytes:
    out = b""
    for obj in objs:
        line = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        out += b"data: " + (line.encode() if isinstance(line, str) else line) + b"\n\n"
    return out


def live(text, **extra):
    return {"type": "live", "data": text, **extra}


def end(reply="Hello", usage=USAGE, **extra):
    return {"type": "end", "data": json.dumps({"success": True, "reply": reply, "images": None, "usage": usage, **extra})}


GOOD = sse(live("Hel"), live("lo"), end("Hello"))


@pytest.fixture
def mocked():
    with aioresponses() as m:
        yield m


@pytest.fixture(autouse=True)
def no_env_url(monkeypatch):
    monkeypatch.delenv("OPCHAT_URL", raising=False)
    Opchatgpts.sites.forget()  # no REST root or nonce learnt by an earlier test
    yield
    Opchatgpts.sites.forget()


def serve(m, body=GOOD, content_type=SSE, status=200, url=SUBMIT, **kw):
    m.post(url, body=body, content_type=content_type, status=status, **kw)


async def run(**kw):
    messages = kw.pop("messages", MSGS)
    kw.setdefault("url", BASE)
    stream = Opchatgpts.create_async_generator("", messages, **kw)
    chunks = [c async for c in stream]
    return chunks, stream.reply


def calls(m, url=SUBMIT, method="POST"):
    from yarl import URL

    return m.requests.get((method, URL(url)), [])


# --------------------------------------------------------------------------- the class


def test_public_face():
    assert Opchatgpts.url == "https://opchatgpts.net"
    assert Opchatgpts.working is False
    assert Opchatgpts.supports_message_history is True
    assert Opchatgpts.supports_gpt_35_turbo is True
    assert Opchatgpts.supports_stream is True
    assert Opchatgpts.default_model == "gpt-3.5-turbo"
    assert "offline" in Opchatgpts.__doc__


def test_random_chat_id():
    ids = {random_chat_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[a-z0-9]{10}", i) for i in ids)


# --------------------------------------------------------------------------- the request


async def test_request_method_url_headers_payload(mocked):
    serve(mocked)
    chunks, reply = await run(messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi?"}])
    assert chunks == ["Hel", "lo"]
    (call,) = calls(mocked)
    headers = call.kwargs["headers"]
    assert headers == {
        "User-Agent": http.BROWSER_USER_AGENT,
        "Accept": "*/*",
        "Origin": BASE,
        "Referer": BASE + "/chatgpt-free-use/",
        "Sec-Fetch-Dest": "empty",
        "Sec-Fetch-Mode": "cors",
        "Sec-Fetch-Site": "same-origin",
    }
    assert headers["User-Agent"].startswith("Mozilla/5.0")
    payload = call.kwargs["json"]
    assert list(payload) == ["botId", "chatId", "contextId", "customId", "messages", "newMessage", "newFileId",
                             "session", "stream"]
    assert re.fullmatch(r"[a-z0-9]{10}", payload.pop("chatId"))
    assert payload == {
        "botId": "default",
        "contextId": None,  # what the plugin's own chatbot sends outside a post
        "customId": None,
        "messages": [{"role": "system", "content": "Be brief"}],  # the history BEFORE the new message
        "newMessage": "Hi?",
        "newFileId": None,
        "session": "N/A",
        "stream": True,
    }


async def test_payload_keywords(mocked):
    serve(mocked)
    await run(bot_id="chatbot-7", context_id=123, custom_id="cust", chat_id="abcdefghij", headers={"Cookie": "a=b"})
    call = calls(mocked)[0]
    payload = call.kwargs["json"]
    assert (payload["botId"], payload["contextId"], payload["customId"], payload["chatId"]) == (
        "chatbot-7", 123, "cust", "abcdefghij")
    assert call.kwargs["headers"]["Cookie"] == "a=b"


async def test_new_chat_id_per_call(mocked):
    serve(mocked, repeat=True)
    await run()
    await run()
    ids = [c.kwargs["json"]["chatId"] for c in calls(mocked)]
    assert len(ids) == 2 and ids[0] != ids[1]


async def test_proxy_and_timeouts_passed_to_aiohttp(mocked):
    serve(mocked)
    await run(proxy="http://proxy.test:3128", connect_timeout=3, read_timeout=7.5)
    kwargs = calls(mocked)[0].kwargs
    assert kwargs["proxy"] == "http://proxy.test:3128"
    timeout = kwargs["timeout"]
    assert isinstance(timeout, aiohttp.ClientTimeout)
    assert (timeout.total, timeout.sock_connect, timeout.connect, timeout.sock_read) == (None, 3, 3, 7.5)
    assert kwargs["raise_for_status"] is False


async def test_default_timeouts(mocked):
    serve(mocked)
    await run()
    timeout = calls(mocked)[0].kwargs["timeout"]
    # AI Engine waits up to 300 s for its model, sending nothing: the default never gives up sooner.
    assert (timeout.sock_connect, timeout.sock_read) == (http.DEFAULT_CONNECT_TIMEOUT, 310.0)


async def test_timeouts_none_disable(mocked):
    serve(mocked)
    await run(connect_timeout=None, read_timeout=None)
    timeout = calls(mocked)[0].kwargs["timeout"]
    assert (timeout.total, timeout.sock_connect, timeout.sock_read) == (None, None, None)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), ("5", TypeError), (True, TypeError)])
def test_bad_timeouts_rejected_at_once(bad, exc):
    with pytest.raises(exc, match="read_timeout"):
        Opchatgpts.create_async_generator("", MSGS, url=BASE, read_timeout=bad)


async def test_unknown_kwargs_ignored(mocked):
    serve(mocked)
    chunks, _ = await run(temperature=0.2, api_key="not-for-this-provider")
    assert chunks == ["Hel", "lo"]


def _no_new_sessions(monkeypatch):
    """Make creating an aiohttp.ClientSession fail: the caller's session must be the one used."""
    def refuse(*args, **kwargs):
        raise AssertionError("the provider opened its own ClientSession instead of using session=")

    monkeypatch.setattr(aiohttp, "ClientSession", refuse)


async def test_session_reused_and_left_open(mocked, monkeypatch):
    serve(mocked, repeat=True)
    async with aiohttp.ClientSession() as session:
        _no_new_sessions(monkeypatch)
        assert (await run(session=session))[0] == ["Hel", "lo"]
        assert (await run(session=session))[0] == ["Hel", "lo"]
        assert not session.closed


# --------------------------------------------------------------------------- url resolution


async def test_url_kwarg_beats_env_and_class(mocked, monkeypatch):
    monkeypatch.setenv("OPCHAT_URL", "http://env.test")
    serve(mocked)
    await run(url=BASE)
    assert calls(mocked)[0].kwargs["headers"]["Origin"] == BASE
    assert not calls(mocked, "http://env.test" + SUBMIT_PATH)


async def test_env_beats_class(mocked, monkeypatch):
    monkeypatch.setenv("OPCHAT_URL", "http://env.test/")
    serve(mocked, url="http://env.test" + SUBMIT_PATH)
    stream = Opchatgpts.create_async_generator("", MSGS)
    assert [c async for c in stream] == ["Hel", "lo"]
    headers = calls(mocked, "http://env.test" + SUBMIT_PATH)[0].kwargs["headers"]
    assert headers["Origin"] == "http://env.test"


async def test_class_attribute_and_subclass(mocked, monkeypatch):
    serve(mocked, url="http://patched.test" + SUBMIT_PATH)
    monkeypatch.setattr(Opchatgpts, "url", "http://patched.test")
    assert [c async for c in Opchatgpts.create_async_generator("", MSGS)] == ["Hel", "lo"]

    class MySite(Opchatgpts):
        url = "http://sub.test"

    serve(mocked, url="http://sub.test" + SUBMIT_PATH)
    stream = MySite.create_async_generator("", MSGS)
    assert [c async for c in stream] == ["Hel", "lo"]
    assert stream.reply.provider == "MySite"


# --------------------------------------------------------------------------- nonce


REST_FORBIDDEN = {"code": "rest_forbidden", "message": "Sorry, you are not allowed to do that.", "data": {"status": 401}}
BAD_NONCE = {"code": "rest_cookie_invalid_nonce", "message": "Cookie check failed", "data": {"status": 403}}


def session_answer(m, nonce="n0nce12345", **kw):
    m.post(SESSION, payload={"success": True, "sessionId": "s1", "restNonce": nonce}, **kw)


async def test_no_nonce_until_the_site_asks(mocked):
    serve(mocked)
    await run()
    assert "X-WP-Nonce" not in calls(mocked)[0].kwargs["headers"]
    assert not calls(mocked, SESSION)


async def test_nonce_fetched_on_401_then_cached(mocked):
    serve(mocked, status=401, payload=REST_FORBIDDEN)
    session_answer(mocked)
    serve(mocked, repeat=True)
    chunks, reply = await run()
    assert chunks == ["Hel", "lo"] and reply.complete
    sent = [c.kwargs["headers"].get("X-WP-Nonce") for c in calls(mocked)]
    assert sent == [None, "n0nce12345"]
    assert calls(mocked, SESSION)[0].kwargs["headers"]["Origin"] == BASE
    await run()  # reused: no second start_session
    assert [c.kwargs["headers"].get("X-WP-Nonce") for c in calls(mocked)] == [None, "n0nce12345", "n0nce12345"]
    assert len(calls(mocked, SESSION)) == 1


async def test_stale_cached_nonce_refreshed_once(mocked):
    Opchatgpts.sites.set_nonce(Opchatgpts.endpoint(BASE), "stale12345")
    serve(mocked, status=403, payload=BAD_NONCE)
    session_answer(mocked, "fresh12345")
    serve(mocked)
    chunks, reply = await run()
    assert reply.complete
    assert [c.kwargs["headers"].get("X-WP-Nonce") for c in calls(mocked)] == ["stale12345", "fresh12345"]


async def test_fresh_nonce_refused_too(mocked):
    serve(mocked, status=403, payload=BAD_NONCE, repeat=True)
    session_answer(mocked, "fresh12345")
    Opchatgpts.sites.set_nonce(Opchatgpts.endpoint(BASE), "stale12345")
    with pytest.raises(HTTPStatusError, match="even a fresh nonce") as info:
        await run()
    assert info.value.status == 403 and len(calls(mocked)) == 2  # one retry, no more
    assert "fresh12345" not in str(info.value) and "stale12345" not in str(info.value)


async def test_new_token_replaces_the_cached_nonce(mocked):
    Opchatgpts.sites.set_nonce(Opchatgpts.endpoint(BASE), "old1234567")
    serve(mocked, body=sse(live("Hi"), end("Hi", new_token="new1234567")))
    serve(mocked)
    _, reply = await run()
    assert reply.final["new_token"] == "new1234567"
    await run()
    assert calls(mocked)[1].kwargs["headers"]["X-WP-Nonce"] == "new1234567"


async def test_nonce_string_sent_as_is(mocked):
    serve(mocked)
    await run(nonce="given-nonce")
    assert calls(mocked)[0].kwargs["headers"]["X-WP-Nonce"] == "given-nonce"
    assert not calls(mocked, SESSION)


@pytest.mark.parametrize("none", [False, ""])
async def test_no_nonce_mode(mocked, none):
    Opchatgpts.sites.set_nonce(Opchatgpts.endpoint(BASE), "cached1234")
    serve(mocked, status=401, payload=REST_FORBIDDEN)
    with pytest.raises(HTTPStatusError, match="leave nonce unset") as info:
        await run(nonce=none)
    assert "X-WP-Nonce" not in calls(mocked)[0].kwargs["headers"] and not calls(mocked, SESSION)
    assert info.value.status == 401


async def test_start_session_without_rest_nonce(mocked):
    serve(mocked, status=401, payload=REST_FORBIDDEN)
    mocked.post(SESSION, payload={"success": False, "message": "Sessions are disabled"})
    with pytest.raises(ServerError, match="restNonce.*Sessions are disabled"):
        await run()


async def test_start_session_missing(mocked):
    serve(mocked, status=401, payload=REST_FORBIDDEN)
    mocked.post(SESSION, status=404, payload={"code": "rest_no_route", "message": "No route was found"})
    with pytest.raises(HTTPStatusError) as info:
        await run()
    assert info.value.status == 404 and SESSION in str(info.value)


async def test_given_nonce_refused_hint(mocked):
    serve(mocked, status=403, payload=BAD_NONCE, headers={"Retry-After": "3"})
    with pytest.raises(HTTPStatusError, match="stale") as info:
        await run(nonce="old-nonce-value")
    assert info.value.status == 403 and "Cookie check failed" in str(info.value)
    assert info.value.retry_after == "3"  # the hinted error still carries it, for failover
    assert "old-nonce-value" not in str(info.value) + repr(info.value)
    assert not calls(mocked, SESSION)  # a given nonce is not replaced


# --------------------------------------------------------------------------- where the endpoint is

PLAIN_ROOT = BASE + "/index.php?rest_route=/"
PLAIN_SUBMIT = PLAIN_ROOT + "mwai-ui/v1/chats/submit"
HOME = "<!DOCTYPE html><html><head><title>My blog</title></head><body>home</body></html>"


def test_endpoint_forms():
    assert Opchatgpts.resolve_url() == "https://opchatgpts.net"
    for url, site, submit, guessed in [
        ("http://x.test/", "http://x.test", "http://x.test/wp-json/mwai-ui/v1/chats/submit", True),
        ("http://x.test/blog", "http://x.test/blog", "http://x.test/blog/wp-json/mwai-ui/v1/chats/submit", True),
        ("http://x.test/wp-json", "http://x.test", "http://x.test/wp-json/mwai-ui/v1/chats/submit", False),
        ("http://x.test/blog/wp-json/mwai-ui/v1/chats/submit", "http://x.test/blog",
         "http://x.test/blog/wp-json/mwai-ui/v1/chats/submit", False),
        ("http://x.test/?rest_route=/", "http://x.test", "http://x.test/?rest_route=/mwai-ui/v1/chats/submit", False),
        ("http://x.test/index.php?rest_route=/mwai-ui/v1/chats/submit", "http://x.test",
         "http://x.test/index.php?rest_route=/mwai-ui/v1/chats/submit", False),
        ("http://x.test/?lang=fr&rest_route=/", "http://x.test",
         "http://x.test/?lang=fr&rest_route=/mwai-ui/v1/chats/submit", False),
    ]:
        endpoint = Opchatgpts.endpoint(url)
        assert (endpoint.site, endpoint.submit_url, endpoint.guessed) == (site, submit, guessed), url
    with pytest.raises(ValueError, match="http"):
        Opchatgpts.resolve_url("ftp://x.test")


async def test_plain_permalink_site_found_from_the_link_header(mocked):
    serve(mocked, body=HOME, content_type="text/html",
          headers={"Link": f'<{PLAIN_ROOT}>; rel="https://api.w.org/"'})
    serve(mocked, url=PLAIN_SUBMIT, repeat=True)
    chunks, reply = await run()
    assert chunks == ["Hel", "lo"] and reply.complete
    assert len(calls(mocked)) == 1 and len(calls(mocked, PLAIN_SUBMIT)) == 1
    await run(url=BASE + "/")  # learnt for the site: straight there
    assert len(calls(mocked)) == 1 and len(calls(mocked, PLAIN_SUBMIT)) == 2


async def test_plain_permalink_fallback_without_a_link_header(mocked):
    serve(mocked, body=HOME, content_type="text/html")
    serve(mocked, url=BASE + "/?rest_route=/mwai-ui/v1/chats/submit")
    chunks, reply = await run()
    assert reply.complete


async def test_404_at_a_guessed_root_tries_rest_route(mocked):
    serve(mocked, status=404, body="Not Found", content_type="text/plain")
    serve(mocked, url=BASE + "/?rest_route=/mwai-ui/v1/chats/submit")
    chunks, reply = await run()
    assert reply.complete


async def test_link_to_another_origin_is_ignored(mocked):
    serve(mocked, body=HOME, content_type="text/html",
          headers={"Link": '<https://evil.test/wp-json/>; rel="https://api.w.org/"'})
    serve(mocked, url=BASE + "/?rest_route=/mwai-ui/v1/chats/submit")
    chunks, reply = await run(nonce="secret-nonce")
    assert reply.complete  # the nonce never went to evil.test


async def test_a_page_at_the_plain_root_too_is_not_an_endpoint(mocked):
    serve(mocked, body=HOME, content_type="text/html")
    serve(mocked, url=BASE + "/?rest_route=/mwai-ui/v1/chats/submit", body=HOME, content_type="text/html")
    with pytest.raises(NotAnEndpointError, match="rest_route"):
        await run()


# --------------------------------------------------------------------------- messages and input


async def test_empty_new_message_refused_before_sending(mocked):
    for text in ("", "  \n "):
        with pytest.raises(ValueError, match="empty"):
            Opchatgpts.create_async_generator("", [{"role": "user", "content": text}], url=BASE)
    assert not mocked.requests


async def test_too_long_message_gets_a_hint(mocked):
    serve(mocked, body=b'data: {"type":"error","data":"Sorry, your query has been rejected."}\n\n',
          content_type="application/json")
    with pytest.raises(ServerError, match="600 characters.*512"):
        await run(messages=[{"role": "user", "content": "z" * 600}])


# --------------------------------------------------------------------------- stream rules


async def test_live_and_end(mocked):
    serve(mocked)
    chunks, reply = await run()
    assert chunks == ["Hel", "lo"] and reply.text == "Hello"
    assert reply.complete
    assert reply.usage == Usage(5, 2, 7)
    assert reply.final == {"success": True, "reply": "Hello", "images": None, "usage": USAGE}
    assert reply.first_chunk_at is not None and reply.finished_at is not None


async def test_returns_reply_stream():
    stream = Opchatgpts.create_async_generator("", MSGS, url=BASE)
    assert isinstance(stream, ReplyStream)
    await stream.aclose()


async def test_subtypes(mocked):
    serve(mocked, body=sse(live("thinking...", subtype="thinking"), live("A", subtype="content"),
                           live("B", subtype=None), live("status", subtype="status"), live("C"), end("ABC")))
    chunks, reply = await run()
    assert chunks == ["A", "B", "C"]
    # thinking is reasoning: kept apart from the text, not ignored
    assert reply.text == "ABC" and reply.reasoning == "thinking..."
    assert reply.final["_ignored_events"] == {"live/status": 1}


async def test_thinking_is_yielded_as_reasoning_when_asked(mocked):
    from opchat_magic.providers.base import Reasoning

    serve(mocked, body=sse(live("hmm ", subtype="thinking"), live("ok", subtype="thinking"), live("A"), end("A")))
    stream = Opchatgpts.create_async_generator("", MSGS, url=BASE, reasoning=True)
    got = [chunk async for chunk in stream]
    assert got == ["hmm ", "ok", "A"] and [type(c) is Reasoning for c in got] == [True, True, False]
    assert stream.reply.text == "A" and stream.reply.reasoning == "hmm ok"


async def test_unknown_type_ignored_and_counted(mocked):
    serve(mocked, body=sse(live("A"), {"type": "mystery", "data": "?"}, {"type": "mystery"}, {"type": 7}, end("A")))
    chunks, reply = await run()
    assert chunks == ["A"] and reply.complete
    assert reply.final["_ignored_events"] == {"mystery": 2, "7": 1}


async def test_no_ignored_key_when_nothing_ignored(mocked):
    serve(mocked)
    _, reply = await run()
    assert "_ignored_events" not in reply.final


async def test_end_only_yields_reply_once(mocked):
    serve(mocked, body=sse(end("Whole reply")))
    chunks, reply = await run()
    assert chunks == ["Whole reply"] and reply.complete


async def test_end_data_as_object_accepted(mocked):
    serve(mocked, body=sse(live("x"), {"type": "end", "data": {"success": True, "reply": "x"}}))
    chunks, reply = await run()
    assert chunks == ["x"] and reply.complete and reply.usage is None


async def test_end_stops_reading(mocked):
    serve(mocked, body=sse(live("A"), end("A"), live("after"), "not json"))
    chunks, reply = await run()
    assert chunks == ["A"] and reply.complete


async def test_end_success_false(mocked):
    serve(mocked, body=sse(live("A"), {"type": "end", "data": json.dumps({"success": False, "message": "Quota exceeded"})}))
    with pytest.raises(ServerError, match="Quota exceeded"):
        await run()


async def test_error_event(mocked):
    serve(mocked, body=sse(live("A"), {"type": "error", "data": "The model is overloaded."}))
    with pytest.raises(ServerError, match="The model is overloaded."):
        await run()


async def test_broken_json_line(mocked):
    serve(mocked, body=sse(live("A"), '{"broken json', end("A")))
    with pytest.raises(StreamError, match=r'not JSON.*\{"broken json') as info:
        await run()
    assert info.value.line == '{"broken json'
    assert isinstance(info.value, RuntimeError)  # what the original raised


async def test_long_broken_line_truncated_in_message(mocked):
    line = "{" + "x" * 5000
    serve(mocked, body=sse(line, end()))
    with pytest.raises(StreamError) as info:
        await run()
    assert info.value.line == line
    assert len(str(info.value)) < 400 and "5001 chars" in str(info.value)


@pytest.mark.parametrize("line, what", [
    ('{"data":"no type"}', 'no "type"'),
    ('{"type":null,"data":"x"}', 'no "type"'),
    ('["live","x"]', "not an object"),
    ('"live"', "not an object"),
    ("42", "not an object"),
])
async def test_json_without_type(mocked, line, what):
    serve(mocked, body=sse(live("A"), line, end("A")))
    with pytest.raises(StreamError, match=re.escape(what)) as info:
        await run()
    assert info.value.line == line


@pytest.mark.parametrize("line", ['{"type":"live"}', '{"type":"live","data":123}', '{"type":"live","data":null}',
                                  '{"type":"live","data":["x"],"subtype":"content"}'])
async def test_live_without_string_data(mocked, line):
    serve(mocked, body=sse(line, end()))
    with pytest.raises(StreamError, match="live event without string data") as info:
        await run()
    assert info.value.line == line


@pytest.mark.parametrize("data", ['"this is not JSON"', '"[1, 2]"', "null", "5"])
async def test_bad_end(mocked, data):
    line = '{"type":"end","data":' + data + "}"
    serve(mocked, body=sse(live("A"), line))
    with pytest.raises(StreamError, match="end event") as info:
        await run()
    assert not isinstance(info.value, TruncatedStreamError)
    assert info.value.line == line


async def test_truncated_stream(mocked):
    serve(mocked, body=sse(live("Hel"), live("lo")))
    with pytest.raises(TruncatedStreamError, match="before its end event") as info:
        await run()
    assert info.value.partial == "Hello"


async def test_empty_event_stream(mocked):
    serve(mocked, body=b"")
    with pytest.raises(TruncatedStreamError) as info:
        await run()
    assert info.value.partial == ""


async def test_unterminated_last_event_is_truncation(mocked):
    serve(mocked, body=sse(live("A")) + b'data: {"type":"end","data":"{}"}\n')
    with pytest.raises(TruncatedStreamError):
        await run()


async def test_invalid_utf8(mocked):
    serve(mocked, body=sse(live("A")) + b'data: {"type":"live","data":"\xff"}\n\n' + sse(end("A")))
    with pytest.raises(SSEDecodeError, match=re.escape(SUBMIT)):
        await run()


@pytest.mark.parametrize("body", [
    b'data:{"type":"live","data":"A"}\r\n\r\ndata:{"type":"end","data":"{\\"reply\\":\\"A\\"}"}\r\n\r\n',
    b'data:  {"type":"live","data":"A"}  \n\n: keep-alive\n\nevent: message\ndata: {"type":"end","data":"{}"}\n\n',
    b'data: {"type":"live","data":"A"}\r\rdata: {"type":"end","data":"{}"}\r\r',
    b'\xef\xbb\xbfdata: {"type":"live","data":"A"}\n\nid: 1\nretry: 10\ndata: {"type":"end","data":"{}"}\n\n',
])
async def test_framing_variants(mocked, body):
    serve(mocked, body=body)
    chunks, reply = await run()
    assert chunks == ["A"] and reply.complete


async def test_multiline_data_joined(mocked):
    serve(mocked, body=b'data: {"type":"live",\ndata: "data":"A"}\n\n' + sse(end("A")))
    chunks, _ = await run()
    assert chunks == ["A"]


async def test_unicode_and_nul(mocked):
    serve(mocked, body=sse(live("h\u00e9llo \U0001f600"), live("nul\x00here"), end()))
    chunks, _ = await run()
    assert chunks == ["h\u00e9llo \U0001f600", "nul\x00here"]


# --------------------------------------------------------------------------- other bodies


async def test_json_answer_accepted(mocked):
    serve(mocked, body=json.dumps({"success": True, "reply": "Whole", "usage": USAGE}), content_type="application/json")
    chunks, reply = await run()
    assert chunks == ["Whole"]
    assert reply.complete and reply.usage == Usage(5, 2, 7) and reply.final["reply"] == "Whole"


async def test_json_answer_failure(mocked):
    serve(mocked, body=json.dumps({"success": False, "message": "Nope"}), content_type="application/json")
    with pytest.raises(ServerError, match="Nope"):
        await run()


async def test_json_without_reply(mocked):
    serve(mocked, body=json.dumps({"success": True}), content_type="application/json")
    with pytest.raises(StreamError, match="no reply"):
        await run()


async def test_html_page(mocked):
    serve(mocked, body="<html><head><title>Just a moment...</title></head><body>captcha</body></html>",
          content_type="text/html")
    with pytest.raises(NotAnEndpointError) as info:
        await run(url=BASE + "/wp-json/")  # a known REST root: no plain-permalink second try
    text = str(info.value)
    assert SUBMIT in text and "text/html" in text and "Just a moment..." in text
    assert "%config" in text  # the hint


async def test_plain_text_body(mocked):
    serve(mocked, body="hello world", content_type="text/plain")
    with pytest.raises(NotAnEndpointError, match="text/plain"):
        await run()


async def test_mislabelled_event_stream_accepted(mocked):
    serve(mocked, body=GOOD, content_type="text/html")
    chunks, reply = await run()
    assert chunks == ["Hel", "lo"] and reply.complete


async def test_empty_body_other_type(mocked):
    serve(mocked, body=b"", content_type="text/html")
    with pytest.raises(TruncatedStreamError, match="empty body"):
        await run()


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("status, body, content_type, message", [
    (403, {"success": False, "message": "Sorry, your query has been rejected."}, "application/json",
     "Sorry, your query has been rejected."),
    (500, {"success": False, "message": "Boom"}, "application/json", "Boom"),
    (502, {"error": {"message": "upstream down", "type": "server_error"}}, "application/json", "upstream down"),
    (500, "Internal Server Error", "text/plain", "Internal Server Error"),
    (502, "<html><title>502 Bad Gateway</title><body>nginx</body></html>", "text/html", "502 Bad Gateway"),
    (404, "", "text/plain", "(empty body)"),
])
async def test_http_status(mocked, status, body, content_type, message):
    body = json.dumps(body) if isinstance(body, dict) else body
    serve(mocked, status=status, body=body, content_type=content_type)
    with pytest.raises(HTTPStatusError) as info:
        await run(url=SUBMIT)  # the full URL: a 404 is not taken for a plain-permalink site
    exc = info.value
    assert exc.status == status and exc.message.startswith(message)
    assert str(exc) == f"HTTP {status} from {SUBMIT}: {exc.message}"
    assert isinstance(exc, aiohttp.ClientResponseError) and isinstance(exc, OpchatError)


async def test_http_429_retry_after(mocked):
    serve(mocked, status=429, payload={"message": "Slow down"}, content_type="application/json",
          headers={"Retry-After": "12"})
    with pytest.raises(HTTPStatusError, match=r"Slow down \(Retry-After: 12\)") as info:
        await run()
    assert info.value.retry_after == "12"


async def test_http_error_redacts_secrets(mocked):
    secret = "sk-very-secret-token"
    serve(mocked, status=401, payload={"message": f"bad key {secret}"}, content_type="application/json")
    with pytest.raises(HTTPStatusError) as info:
        await run(headers={"Authorization": f"Bearer {secret}"})
    exc = info.value
    for text in (str(exc), repr(exc), str(exc.request_info), str(exc.message)):
        assert secret not in text
    assert "***" in exc.message
    assert not exc.request_info.headers


async def test_long_text_error_body_snippet(mocked):
    serve(mocked, status=500, body="E" * 10_000, content_type="text/plain")
    with pytest.raises(HTTPStatusError) as info:
        await run()
    assert len(info.value.message) < 400


# --------------------------------------------------------------------------- connection errors


def _connector_error(os_error):
    key = Mock(host="ai.test", port=80, ssl=False)
    return aiohttp.ClientConnectorError(key, os_error)


async def test_connection_refused(mocked):
    serve(mocked, exception=_connector_error(ConnectionRefusedError(111, "Connection refused")))
    with pytest.raises(EndpointUnreachableError) as info:
        await run()
    text = str(info.value)
    assert SUBMIT in text and "connection refused" in text and "%config OpchatMagics.url" in text
    assert isinstance(info.value, ConnectionError) and info.value.url == SUBMIT


async def test_dns_failure(mocked):
    cls = getattr(aiohttp, "ClientConnectorDNSError", aiohttp.ClientConnectorError)
    serve(mocked, exception=cls(Mock(host="nowhere.invalid", port=80, ssl=False), OSError(-2, "Name or service not known")))
    with pytest.raises(EndpointUnreachableError, match="DNS"):
        await run()


async def test_server_disconnected_before_answer(mocked):
    serve(mocked, exception=aiohttp.ServerDisconnectedError())
    with pytest.raises(EndpointUnreachableError, match="closed the connection"):
        await run()


async def test_connect_timeout(mocked):
    serve(mocked, exception=aiohttp.ConnectionTimeoutError("Connection timeout to host"))
    with pytest.raises(StreamTimeoutError, match=r"connect.*connect_timeout=2 s") as info:
        await run(connect_timeout=2)
    assert isinstance(info.value, TimeoutError)


async def test_read_timeout_before_headers(mocked):
    serve(mocked, exception=aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
    with pytest.raises(StreamTimeoutError, match=r"no response.*read_timeout=4 s"):
        await run(read_timeout=4)


async def test_client_response_error_never_escapes(mocked):
    info = aiohttp.RequestInfo(url=SUBMIT, method="POST", headers={"Authorization": "Bearer sk-xyz12345"}, real_url=SUBMIT)
    serve(mocked, exception=aiohttp.ClientResponseError(info, (), status=407, message="Proxy Authentication Required"))
    with pytest.raises(HTTPStatusError) as exc_info:
        await run()
    assert exc_info.value.status == 407 and "sk-xyz12345" not in repr(exc_info.value) + str(exc_info.value.request_info)


async def test_payload_error_mid_stream(mocked, monkeypatch):
    serve(mocked, body=sse(live("A")))
    orig = aiohttp.StreamReader.readany
    reads = []

    async def readany(self):  # the first read works, the second finds the connection broken
        reads.append(1)
        if len(reads) > 1:
            raise aiohttp.ClientPayloadError("Response payload is not completed")
        return await orig(self)

    monkeypatch.setattr(aiohttp.StreamReader, "readany", readany)
    stream = Opchatgpts.create_async_generator("", MSGS, url=BASE)
    got = []
    with pytest.raises(TruncatedStreamError, match="broke mid-stream") as info:
        async for c in stream:
            got.append(c)
    assert got == ["A"] and info.value.partial == "A"


async def test_idle_timeout_mid_stream(mocked, monkeypatch):
    serve(mocked, body=sse(live("A")))
    orig = aiohttp.StreamReader.readany
    reads = []

    async def readany(self):
        reads.append(1)
        if len(reads) > 1:
            raise aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        return await orig(self)

    monkeypatch.setattr(aiohttp.StreamReader, "readany", readany)
    with pytest.raises(StreamTimeoutError, match=r"stalled: no bytes for read_timeout=3 s") as info:
        await run(read_timeout=3)
    assert info.value.partial == "A"


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize("messages, exc, match", [
    ("Hello", TypeError, "messages must be a list"),
    (None, TypeError, "messages must be a list"),
    ([], ValueError, "messages is empty"),
    (["Hello"], TypeError, r"messages\[0\] must be a dict"),
    ([{"role": "user"}], ValueError, r"messages\[0\] has no 'content'"),
    ([{"content": "x"}], ValueError, r"messages\[0\] has no 'role'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}], TypeError, r"messages\[1\]\['content'\] must be a str"),
    ([{"role": None, "content": "a"}], TypeError, r"messages\[0\]\['role'\] must be a str"),
])
def test_bad_messages_rejected_eagerly(messages, exc, match):
    with pytest.raises(exc, match=match):
        Opchatgpts.create_async_generator("", messages, url=BASE)


@pytest.mark.parametrize("kw, exc", [({"bot_id": 3}, TypeError), ({"chat_id": 5}, TypeError), ({"nonce": 1}, TypeError),
                                     ({"url": "nope"}, ValueError)])
def test_bad_keywords(kw, exc):
    with pytest.raises(exc):
        Opchatgpts.create_async_generator("", MSGS, **{"url": BASE, **kw})


def test_messages_tuple_accepted():
    stream = Opchatgpts.create_async_generator("", tuple(MSGS), url=BASE)
    assert isinstance(stream, ReplyStream)


# --------------------------------------------------------------------------- convenience entry points


async def test_create_async_joined_text(mocked):
    serve(mocked)
    assert await Opchatgpts.create_async("", MSGS, url=BASE) == "Hello"


def test_create_completion_without_running_loop(mocked):
    serve(mocked, repeat=True)
    assert list(Opchatgpts.create_completion("", MSGS, url=BASE)) == ["Hel", "lo"]
    assert list(Opchatgpts.create_completion("", MSGS, stream=False, url=BASE)) == ["Hello"]


async def test_create_completion_inside_running_loop(mocked):
    serve(mocked, repeat=True)
    asyncio.get_running_loop()  # we are inside a loop: no nest_asyncio, no deadlock
    assert list(Opchatgpts.create_completion("", MSGS, url=BASE)) == ["Hel", "lo"]
    assert list(Opchatgpts.create_completion("", MSGS, stream=False, url=BASE)) == ["Hello"]


def test_create_completion_raises_typed_errors(mocked):
    serve(mocked, body=sse(live("A")))
    with pytest.raises(TruncatedStreamError):
        list(Opchatgpts.create_completion("", MSGS, url=BASE))


# --------------------------------------------------------------------------- http.py helpers


@pytest.mark.parametrize("body, ctype, expected", [
    (b'{"message":"m1"}', "application/json", "m1"),
    (b'{"error":{"message":"m2","code":"c2"}}', "application/json", "m2 (c2)"),
    (b'{"error":"m3"}', "application/json", "m3"),
    (b'{"detail":"m4"}', "application/json", "m4"),
    (b'{"code":"rest_cookie_invalid_nonce","message":"Cookie check failed"}', "application/json",
     "Cookie check failed (rest_cookie_invalid_nonce)"),
    (b'{"code":"only_code"}', "application/json", "only_code"),
    (b"<html><title> Oops </title></html>", "text/html", "Oops"),
    (b"<html><body><script>x()</script><p>Hi   there</p></body></html>", "text/html", "Hi there"),
    (b"plain\ntext", "text/plain", "plain text"),
    (b"", "", "(empty body)"),
    (b"\xff\xfe", "", "\ufffd\ufffd"),
])
def test_error_message(body, ctype, expected):
    assert http.error_message(body, ctype) == expected


def test_error_message_redacts_and_truncates():
    assert http.error_message(b'{"message":"key sk-abcdef leaked"}', "application/json", ("sk-abcdef",)) == "key *** leaked"
    assert len(http.error_message(b"x" * 5000, "text/plain")) < 330


def test_collect_secrets():
    secrets = http.collect_secrets({"Authorization": "Bearer tok-12345", "X-WP-Nonce": "abcdef", "Accept": "*/*"},
                                   "http://user:pw-9999@proxy:1", extra=("extra-1", None))
    assert set(secrets) == {"Bearer tok-12345", "tok-12345", "abcdef", "pw-9999", "extra-1"}
    assert secrets[0] == "Bearer tok-12345"  # longest first


@pytest.mark.parametrize("first, kind", [
    (b"data: {}", "sse"), (b"\n: ping\n", "sse"), (b"event: x", "sse"), (b'{"a":1}', "json"), (b" [1]", "json"),
    (b"<!DOCTYPE html>", "html"), (b"", "empty"), (b"  \n", "empty"), (b"hello", "other"), (b"\xef\xbb\xbfdata: x", "sse"),
])
def test_sniff(first, kind):
    assert http.sniff(first) == kind


def test_timeouts_from_kwargs():
    kw = {"connect_timeout": 1, "read_timeout": None, "other": 1}
    t = http.Timeouts.from_kwargs(kw)
    assert (t.connect, t.read) == (1.0, None) and kw == {"other": 1}
    kw = {"read_timeout": 2}
    assert http.Timeouts.from_kwargs(kw, pop=False).read == 2.0 and kw == {"read_timeout": 2}
    assert http.Timeouts() == http.Timeouts(http.DEFAULT_CONNECT_TIMEOUT, http.DEFAULT_READ_TIMEOUT)
    with pytest.raises(ValueError):
        http.Timeouts(float("nan"), 1)


async def test_session_scope_owns_or_borrows():
    async with http.session_scope() as own:
        assert own.trust_env
    assert own.closed
    async with aiohttp.ClientSession() as mine:
        async with http.session_scope(mine) as borrowed:
            assert borrowed is mine
        assert not mine.closed


async def test_post_json_non_json(mocked):
    mocked.post(SESSION, body="<html>nope</html>", content_type="text/html")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NotAnEndpointError, match="JSON"):
            await http.post_json(session, SESSION, json={})


async def test_read_body_and_read_first(mocked):
    mocked.post(SESSION, body=b'  {"a": 1}', content_type="application/json", repeat=True)
    async with aiohttp.ClientSession() as session:
        async with http.open_post(session, SESSION, json={}) as response:
            first = await http.read_first(response, SESSION)
            assert first == b'  {"a": 1}' and http.sniff(first) == "json"
            assert await http.read_body(response, 100, first, url=SESSION) == first
        async with http.open_post(session, SESSION, json={}) as response:
            with pytest.raises(ValueError, match="larger than 5 bytes"):
                await http.read_body(response, 5)


async def test_json_answer_broken_off(mocked, monkeypatch):
    serve(mocked, body=b'{"success": true, "reply": "Who', content_type="application/json")
    orig = aiohttp.StreamReader.readany
    reads = []

    async def readany(self):
        reads.append(1)
        if len(reads) > 1:
            raise aiohttp.ClientPayloadError("Response payload is not completed")
        return await orig(self)

    monkeypatch.setattr(aiohttp.StreamReader, "readany", readany)
    with pytest.raises(TruncatedStreamError, match="broke mid-stream"):
        await run()


@pytest.mark.parametrize("body", [sse(end("")), b'{"success": true, "reply": "", "images": null}'])
async def test_success_with_an_empty_reply_is_an_error(mocked, body):
    from opchat_magic.errors import EmptyReplyError

    serve(mocked, body=body, content_type=SSE if body.startswith(b"data") else "application/json")
    stream = Opchatgpts.create_async_generator("", MSGS, url=BASE)
    with pytest.raises(EmptyReplyError, match="empty reply") as info:
        [c async for c in stream]
    assert not stream.reply.complete and info.value.messages == 1


async def test_an_empty_end_after_text_is_fine(mocked):
    serve(mocked, body=sse(live("Hi"), end("")))
    chunks, reply = await run()
    assert chunks == ["Hi"] and reply.complete


async def test_reply_names_no_model_and_the_endpoint(mocked):
    serve(mocked)
    stream = Opchatgpts.create_async_generator("gpt-4o", MSGS, url=BASE)
    [c async for c in stream]
    # The plugin neither receives the model argument nor reports one: the chatbot decides.
    assert (stream.reply.model, stream.reply.requested_model) == ("", "gpt-4o")
    assert stream.reply.endpoint == SUBMIT


def test_settings_leave_the_300_s_wait_to_the_provider_and_pass_the_site_options():
    from opchat_magic.settings import OpchatSettings, turn_options

    settings = OpchatSettings()
    options = turn_options(settings)
    assert options.provider is Opchatgpts
    kwargs = options.provider_kwargs
    assert "read_timeout" not in kwargs  # the provider's own default applies
    assert (kwargs["bot_id"], kwargs["context_id"]) == ("default", None)
    req = Opchatgpts._prepare(MSGS, None, {**kwargs, "url": BASE})
    assert req.timeouts.read == 310.0  # the plugin's 300 s model wait, never abandoned
    settings.bot_id, settings.context_id, settings.read_timeout = "mybot", 28, 30.0
    kwargs = turn_options(settings).provider_kwargs
    assert (kwargs["bot_id"], kwargs["context_id"], kwargs["read_timeout"]) == ("mybot", 28, 30.0)
    # Other providers do not get AI Engine's options.
    assert "bot_id" not in turn_options(settings, provider="openai").provider_kwargs
