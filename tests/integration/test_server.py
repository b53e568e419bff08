"""The local server, spoken to over 127.0.0.1 with plain aiohttp client code.

Expected bytes are built here independently of the server's own encoders
(``live``/``end`` below), so a change of wire format shows up as a failure.
Every network wait is bounded by a client timeout or ``asyncio.wait_for``.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from opchat_magic.testing import free_port
from opchat_magic.server import (
    FAULTS,
    GOOD,
    HOSTILE_REPLY,
    LocalServer,
    is_loopback,
    long_text,
    parse_directives,
    reply_text,
    split_chunks,
    text_of_length,
)
from opchat_magic.server.faults import BROKEN_LINE, HTML_PAGE, HTTP_MESSAGES, OVERLOADED

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
SUBMIT = "/wp-json/mwai-ui/v1/chats/submit"
START_SESSION = "/wp-json/mwai/v1/start_session"
REJECTED = {"success": False, "message": "Sorry, your query has been rejected."}
NONCE_INVALID = {"code": "rest_cookie_invalid_nonce", "message": "Cookie check failed", "data": {"status": 403}}
NONCE_MISSING = {"code": "rest_forbidden", "message": "Sorry, you are not allowed to do that.", "data": {"status": 401}}
BAD_KEY = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}
REQUIRED_FAULTS = {
    "broken_json", "missing_type", "unknown_type", "live_without_data", "non_string_data", "bad_end",
    "error_event", "disconnect", "reset", "no_end", "empty_body", "html", "json_200", "http_401",
    "http_403", "http_429", "http_500", "http_502", "http_500_text", "slow_first_byte", "no_headers",
    "stall", "trickle", "huge_line", "invalid_utf8", "nul_bytes", "nul_raw", "cr_only",
    "keepalive_only", "many_events",
}  # fmt: skip


# -- helpers: the wire, written out independently ---------------------------------------


def _j(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def live(chunk: str) -> bytes:
    return b"data: " + _j({"type": "live", "data": chunk}).encode() + b"\n\n"


def tokens(text: str) -> int:
    return (len(text) + 3) // 4


def usage_for(messages, reply):
    prompt = sum(tokens(m["content"]) for m in messages)
    return {"prompt_tokens": prompt, "completion_tokens": tokens(reply), "total_tokens": prompt + tokens(reply)}


def final(reply: str, usage: dict) -> dict:
    """The plugin's final answer (end payload, or the non-streamed body)."""
    return {"success": True, "reply": reply, "images": None, "actions": [], "shortcuts": [], "blocks": [],
            "usage": {**usage, "price": None, "queries": 1, "accuracy": "estimated"}}


def end(reply: str, usage: dict) -> bytes:
    payload = _j(final(reply, usage))
    return b"data: " + _j({"type": "end", "data": payload}).encode() + b"\n\n"


def aie(text: str, history=(), *, stream: bool = True, **override) -> dict:
    """A submit body as the plugin's chatbot sends it: ``messages`` is the history before ``text``."""
    body = {
        "botId": "default",
        "chatId": "k3j9x0q2ab",
        "contextId": None,
        "customId": None,
        "messages": list(history),
        "newMessage": text,
        "session": "N/A",
        "stream": stream,
    }
    body.update(override)
    return body


def thread_of(body: dict) -> list:
    """What the model sees for an AI Engine body: the history, then newMessage (the server appends it)."""
    return [*body["messages"], {"role": "user", "content": body["newMessage"].strip()}]


def expected_stream(body: dict, chunk_size: int = 5) -> bytes:
    thread = thread_of(body)
    reply = reply_text(thread, body["newMessage"], chunk_size=chunk_size)
    chunks = split_chunks(reply, chunk_size)
    return b"".join(live(c) for c in chunks) + end(reply, usage_for(thread, reply))


def data_lines(raw: bytes) -> list:
    """Payloads of the ``data:`` lines of a well-formed (\\n-framed) stream."""
    return [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def events(raw: bytes) -> list:
    return [json.loads(d) for d in data_lines(raw)]


def oai(text: str, *, stream: bool = True, include_usage: bool = False, model: str = "opchat-local", history=()):
    body = {"model": model, "messages": [*history, {"role": "user", "content": text}], "stream": stream}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def post(session, url, body=None, *, data=None, headers=None, timeout=10.0):
    """(status, headers, body bytes) of a request that completes normally."""
    async with session.post(url, json=body if data is None else None, data=data, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        return resp.status, resp.headers, await resp.read()


async def read_until_error(resp, timeout: float = 10.0):
    """Everything the body delivers, and the exception that ended it (or None)."""
    got = bytearray()

    async def pump():
        async for piece in resp.content.iter_any():
            got.extend(piece)

    try:
        await asyncio.wait_for(pump(), timeout)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionResetError) as exc:
        return bytes(got), exc
    return bytes(got), None


async def read_lines_timed(resp, timeout: float = 5.0):
    """The whole body read line by line, and the monotonic arrival time of each ``data:`` line."""
    got, arrivals = bytearray(), []
    while True:
        line = await asyncio.wait_for(resp.content.readline(), timeout)
        if not line:
            return bytes(got), arrivals
        if line.startswith(b"data: "):
            arrivals.append(time.monotonic())
        got += line


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def server():
    srv = LocalServer(delay=0, fault_delay=0.3, max_hang=1.0, trickle_interval=0.002,
                      keepalive_interval=0.05, huge_size=4096).start()  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        yield s


# -- replies (no network) -------------------------------------------------------------------


def test_reply_text_format_and_history_count():
    one = [{"role": "user", "content": "Hello"}]
    assert reply_text(one) == "Echo: Hello\n\nThis conversation has 1 message."
    three = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "  Second [[delay:0]] question  "},
    ]
    assert reply_text(three) == "Echo: Second  question\n\nThis conversation has 3 messages."
    # new_message (AI Engine newMessage) is what gets echoed when given
    assert reply_text(three, "other") == "Echo: other\n\nThis conversation has 3 messages."
    # OpenAI content parts
    parts = [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]
    assert reply_text(parts) == "Echo: x\ny\n\nThis conversation has 1 message."


def test_parse_directives_valid_invalid_and_bounds():
    text, d = parse_directives("go [[words:12]][[chunk:3]] [[delay:0.5]] [[fault:stall]] [[huge:10]] [[html]]")
    assert text == "go"
    assert (d.words, d.chunk, d.delay, d.fault, d.huge, d.html) == (12, 3, 0.5, "stall", 10, True)
    text, d = parse_directives("[[words:lots]] [[chunk:0]] [[delay:-1]] [[bogus]] [[html:1]] [[chunks:2]]")
    assert text == "[[words:lots]] [[chunk:0]] [[delay:-1]] [[bogus]] [[html:1]]"
    assert d.words is None and d.chunk is None and d.delay is None and not d.html and d.chunks == 2


@pytest.mark.parametrize("n", [0, 1, 3, 4, 17, 60, 61, 137, 500, 3000])
def test_long_text_has_exactly_n_words(n):
    assert len(long_text(n).split()) == n
    assert long_text(n) == long_text(n)


def test_long_text_is_shaped_like_model_output():
    text = long_text(400)
    blocks = text.split("\n\n")
    assert blocks[0].startswith("# ")
    assert any(b.startswith("- ") and b.count("\n- ") == 4 for b in blocks)
    assert "```python\n" in text and text.count("```") % 2 == 0
    paragraphs = [b for b in blocks if b[0].isupper()]
    assert paragraphs and max(len(p.split()) for p in paragraphs) == 60
    assert "\n## " in "\n" + text  # sections repeat under ## headings


def test_text_of_length_and_split_chunks():
    for n in (0, 1, 5, 999, 20_000):
        assert len(text_of_length(n)) == n
    assert split_chunks("abcdefg", 3) == ["abc", "def", "g"]
    assert split_chunks("", 3) == []


def test_fault_registry_has_every_required_fault():
    assert REQUIRED_FAULTS <= set(FAULTS)
    for f in FAULTS.values():
        assert f.doc, f.name  # each documents itself (shown by --list-faults)
    aiengine_only = {n for n, f in FAULTS.items() if "openai" not in f.dialects}
    assert aiengine_only == {"missing_type", "unknown_type", "live_without_data", "non_string_data", "bad_end",
                             "upstream_drop"}


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.com")


# -- AI Engine endpoint ---------------------------------------------------------------------


async def test_aiengine_stream_exact_bytes(server, session):
    body = aie("Hello there")
    status, headers, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert raw == expected_stream(body)
    evs = events(raw)
    assert [e["type"] for e in evs] == ["live"] * (len(evs) - 1) + ["end"]
    final = json.loads(evs[-1]["data"])
    assert final["reply"] == "Echo: Hello there\n\nThis conversation has 1 message."
    assert final["images"] is None
    u = final["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0


async def test_aiengine_history_is_counted(server, session):
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "Echo: one"}]
    body = aie("two", history)
    _, _, raw = await post(session, server.url + SUBMIT, body)
    final = json.loads(events(raw)[-1]["data"])
    assert final["reply"] == "Echo: two\n\nThis conversation has 3 messages."
    assert final["reply"] == reply_text(thread_of(body))


async def test_aiengine_non_stream_json(server, session):
    body = aie("plain", stream=False)
    status, headers, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    reply = "Echo: plain\n\nThis conversation has 1 message."
    assert json.loads(raw) == final(reply, usage_for(thread_of(body), reply))


@pytest.mark.parametrize(
    "override",
    [
        {"newMessage": ""},
        {"newMessage": "   "},
        {"newMessage": None},
        {"botId": None, "customId": None},
        {"botId": "", "customId": ""},
    ],
    ids=["empty", "blank", "null", "no-bot", "empty-bot"],
)
async def test_aiengine_rejections(server, session, override):
    # As the plugin's basics_security_check(): 403 before any chatbot is looked up.
    status, _, raw = await post(session, server.url + SUBMIT, aie("hi", **override))
    assert status == 403
    assert json.loads(raw) == REJECTED
    assert server.stats.completed == 0


REJECTED_EVENT = b'data: {"type":"error","data":"Sorry, your query has been rejected."}\n\n'


async def test_aiengine_too_long_is_an_error_event_in_a_json_labelled_200(server, session):
    # The chatbot's textInputMaxLength (512): chat_submit() throws before the
    # stream headers, so the error event goes out under the REST server's JSON label.
    status, headers, raw = await post(session, server.url + SUBMIT, aie("x" * 513))
    assert (status, raw) == (200, REJECTED_EVENT)
    assert headers["Content-Type"].startswith("application/json")
    status, _, raw = await post(session, server.url + SUBMIT, aie("x" * 513, stream=False))
    assert (status, json.loads(raw)) == (500, REJECTED)
    assert (await post(session, server.url + SUBMIT, aie("x" * 512)))[0] == 200
    assert server.stats.completed == 1


@pytest.mark.parametrize("override", [{"botId": "nope"}, {"customId": "nope"}], ids=["bot", "custom-id"])
async def test_aiengine_unknown_bot_answered_by_default(server, session, override):
    body = aie("hi", **override)
    status, _, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200 and raw == expected_stream(body)


async def test_aiengine_limits_and_configured_bots(session):
    with LocalServer(delay=0, bot_ids=("a", "b"), input_limit=0) as srv:
        assert (await post(session, srv.url + SUBMIT, aie("x" * 65_536, botId="a")))[0] == 200  # no limit
        assert (await post(session, srv.url + SUBMIT, aie("hi", botId="b")))[0] == 200
        # No "default" chatbot to fall back on: rejected inside the stream, as the plugin does.
        status, headers, raw = await post(session, srv.url + SUBMIT, aie("hi", botId="default"))
        assert (status, raw) == (200, REJECTED_EVENT)


async def test_aiengine_appends_new_message_once(server, session):
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "Echo: one"}]
    body = aie("  two  ", history)
    _, _, raw = await post(session, server.url + SUBMIT, body)
    final_ = json.loads(events(raw)[-1]["data"])
    assert final_["reply"] == "Echo: two\n\nThis conversation has 3 messages."  # history + newMessage


async def test_aiengine_plain_permalink_routes_and_link_header(server, session):
    for prefix in ("/?rest_route=", "/index.php?rest_route="):
        status, headers, raw = await post(session, server.url + prefix + "/mwai/v1/start_session", {})
        assert status == 200 and json.loads(raw)["restNonce"]
        body = aie("plain")
        status, headers, raw = await post(session, server.url + prefix + "/mwai-ui/v1/chats/submit", body)
        assert status == 200 and raw == expected_stream(body)
        assert headers["Link"] == f'<{server.url}/wp-json/>; rel="https://api.w.org/"'
    async with session.get(server.url + "/wp-json/") as resp:
        assert resp.status == 200 and "mwai-ui/v1" in (await resp.json())["namespaces"]
        assert resp.headers["Link"] == f'<{server.url}/wp-json/>; rel="https://api.w.org/"'
    async with session.get(server.url + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert resp.headers["Link"] == f'<{server.url}/wp-json/>; rel="https://api.w.org/"'
    status, _, raw = await post(session, server.url + "/?rest_route=/nope/v1/x", {})
    assert status == 404 and json.loads(raw)["code"] == "rest_no_route"


async def test_aiengine_plain_permalink_site(session):
    with LocalServer(delay=0, plain_permalinks=True) as plain:
        link = f'<{plain.url}/index.php?rest_route=/>; rel="https://api.w.org/"'
        for path in (SUBMIT, START_SESSION):
            status, headers, raw = await post(session, plain.url + path, aie("hi"))
            assert status == 200 and headers["Content-Type"].startswith("text/html") and raw.startswith(b"<!DOCTYPE")
            assert headers["Link"] == link
        body = aie("plain")
        status, headers, raw = await post(session, plain.url + "/index.php?rest_route=/mwai-ui/v1/chats/submit", body)
        assert status == 200 and raw == expected_stream(body) and headers["Link"] == link


async def test_fault_upstream_drop_is_the_plugins_error_event(server, session):
    body, _, chunks, _ = _parts("hi [[fault:upstream_drop]]")
    status, _, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200
    assert raw == b"".join(live(c) for c in chunks[:GOOD]) + (
        b'data: {"type":"error","data":"opchat local: cURL error 18: transfer closed with outstanding read data '
        b'remaining"}\n\n')


async def test_aiengine_invalid_json_body(server, session):
    status, _, raw = await post(session, server.url + SUBMIT, data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(raw)["code"] == "rest_invalid_json"


async def test_nonce_mode(session):
    with LocalServer(delay=0, require_nonce=True) as srv:
        status, _, raw = await post(session, srv.url + SUBMIT, aie("hi"))
        assert (status, json.loads(raw)) == (401, NONCE_MISSING)
        status, _, raw = await post(session, srv.url + SUBMIT, aie("hi"), headers={"X-WP-Nonce": "forged1234"})
        assert (status, json.loads(raw)) == (403, NONCE_INVALID)

        status, _, raw = await post(session, srv.url + START_SESSION, {})
        session_info = json.loads(raw)
        assert status == 200 and session_info["success"] is True
        assert session_info["sessionId"] and session_info["restNonce"]
        nonce = session_info["restNonce"]
        body = aie("hi")
        status, _, raw = await post(session, srv.url + SUBMIT, body, headers={"X-WP-Nonce": nonce})
        assert status == 200 and raw == expected_stream(body)
        # nonce checked before the body: an empty message with no nonce is a nonce error
        status, _, raw = await post(session, srv.url + SUBMIT, aie(""))
        assert json.loads(raw) == NONCE_MISSING

        # An old nonce (WordPress: 12-24 h) still works, and the end payload carries a fresh one.
        srv.age_nonces()
        status, _, raw = await post(session, srv.url + SUBMIT, body, headers={"X-WP-Nonce": nonce})
        new_token = json.loads(events(raw)[-1]["data"])["new_token"]
        assert status == 200 and new_token != nonce
        status, _, raw = await post(session, srv.url + SUBMIT, body, headers={"X-WP-Nonce": new_token})
        assert status == 200 and raw == expected_stream(body)  # the fresh one: no new_token

        srv.expire_nonces()  # a stale nonce, as after a WordPress nonce tick
        status, _, raw = await post(session, srv.url + SUBMIT, body, headers={"X-WP-Nonce": nonce})
        assert (status, json.loads(raw)) == (403, NONCE_INVALID)
        assert srv.stats.last_headers["X-WP-Nonce"] == nonce  # in-process: verbatim


async def test_start_session_exists_without_nonce_mode(server, session):
    status, _, raw = await post(session, server.url + START_SESSION, None)
    assert status == 200 and json.loads(raw)["restNonce"]
    # a nonce (any nonce) is simply ignored when not required
    status, _, _ = await post(session, server.url + SUBMIT, aie("hi"), headers={"X-WP-Nonce": "whatever"})
    assert status == 200


# -- OpenAI-compatible endpoint --------------------------------------------------------------


async def test_openai_stream_chunks_usage_and_done(server, session):
    body = oai("Hi", include_usage=True, model="any-model")
    status, headers, raw = await post(session, server.openai_base_url + "/chat/completions", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = [json.loads(d) for d in data_lines(raw) if d != b"[DONE]"]
    reply = reply_text(body["messages"])
    texts = split_chunks(reply, 5)
    assert len(chunks) == len(texts) + 2  # content chunks, the stop chunk, the usage chunk
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == "any-model"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": texts[0]}
    for c, t in zip(chunks[1 : len(texts)], texts[1:]):
        assert c["choices"] == [{"index": 0, "delta": {"content": t}, "finish_reason": None}]
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage_for(body["messages"], reply)


async def test_openai_stream_without_usage(server, session):
    body = oai("Hi")
    _, _, raw = await post(session, server.openai_base_url + "/chat/completions", body)
    chunks = [json.loads(d) for d in data_lines(raw) if d != b"[DONE]"]
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == reply_text(body["messages"])
    assert data_lines(raw)[-1] == b"[DONE]"


async def test_openai_stream_is_compact_json_byte_for_byte(server, session):
    # Every chunk is exactly what a compact, UTF-8 (not \\u-escaped) JSON encoder
    # writes, whatever the content and the echoed model name hold.
    body = oai('Grüße "quoted" back\\slash \u2028 [[chunk:3]]', model='odd "model" }{', include_usage=True)
    _, _, raw = await post(session, server.openai_base_url + "/chat/completions", body)
    lines = data_lines(raw)
    assert lines[-1] == b"[DONE]" and raw == b"".join(b"data: " + d + b"\n\n" for d in lines)
    chunks = [json.loads(d) for d in lines[:-1]]
    assert [_j(c).encode() for c in chunks] == lines[:-1]
    reply = reply_text(body["messages"])
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-2]] == split_chunks(reply, 3)
    assert {c["model"] for c in chunks} == {'odd "model" }{'}


async def test_openai_non_stream_and_models(server, session):
    body = oai("Hi", stream=False, history=[{"role": "system", "content": "be brief"}])
    status, _, raw = await post(session, server.openai_base_url + "/chat/completions", body)
    answer = json.loads(raw)
    assert status == 200 and answer["object"] == "chat.completion"
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Echo: Hi\n\nThis conversation has 2 messages."},
         "finish_reason": "stop"}
    ]  # fmt: skip
    assert answer["usage"] == usage_for(body["messages"], answer["choices"][0]["message"]["content"])
    async with session.get(server.openai_base_url + "/models") as resp:
        listing = await resp.json()
    assert resp.status == 200 and [m["id"] for m in listing["data"]] == ["opchat-local"]


async def test_openai_rejects_empty_messages(server, session):
    status, _, raw = await post(session, server.openai_base_url + "/chat/completions", {"model": "m", "messages": []})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


async def test_api_key_mode_never_echoes_the_key(session):
    key = "sk-local-test-key-1234"
    with LocalServer(delay=0, api_key=key) as srv:
        url = srv.openai_base_url + "/chat/completions"
        for headers in (None, {"Authorization": "Bearer sk-wrong-key-98765"}, {"Authorization": key}):
            status, _, raw = await post(session, url, oai("hi"), headers=headers)
            assert (status, json.loads(raw)) == (401, BAD_KEY)
            assert b"sk-" not in raw
        async with session.get(srv.openai_base_url + "/models") as resp:
            assert resp.status == 401 and await resp.json() == BAD_KEY
        status, _, raw = await post(session, url, oai("hi"), headers={"Authorization": f"Bearer {key}"})
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
        # in-process stats keep the header (tests check its shape); HTTP stats mask it
        assert srv.stats.last_headers["Authorization"] == f"Bearer {key}"
        async with session.get(srv.url + "/_opchat/stats") as resp:
            text = await resp.text()
        assert key not in text and "sk-wrong-key-98765" not in text and '"Bearer ***"' in text
        assert key not in repr(srv) and key not in repr(srv.config)


async def test_body_size_limit_413(session):
    with LocalServer(delay=0, max_body=4096) as srv:
        big = "y" * 5000
        status, _, raw = await post(session, srv.url + SUBMIT, aie(big))
        assert status == 413 and json.loads(raw)["success"] is False
        status, _, raw = await post(session, srv.openai_base_url + "/chat/completions", oai(big))
        assert status == 413 and "error" in json.loads(raw)
        status, _, _ = await post(session, srv.url + SUBMIT, aie("y" * 1500))  # twice in the body
        assert status == 200
        assert srv.stats.statuses[413] == 2


async def test_default_body_limit_is_one_mib(server, session):
    status, _, _ = await post(session, server.url + SUBMIT, data=io.BytesIO(b"{" + b" " * (1 << 20) + b"}"),
                              headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 413


# -- chunking, delay, directives ---------------------------------------------------------------


async def test_chunk_size_and_delay():
    async with aiohttp.ClientSession() as session:
        with LocalServer(delay=0.05, chunk_size=7) as srv:
            body = aie("timing")
            reply = reply_text(thread_of(body))
            t0 = time.monotonic()
            async with session.post(srv.url + SUBMIT, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                buf, arrivals = await read_lines_timed(resp)
            evs = events(buf)
            assert [e["data"] for e in evs[:-1]] == split_chunks(reply, 7)
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:-1])]
            assert len(gaps) == len(split_chunks(reply, 7)) - 1
            assert sorted(gaps)[len(gaps) // 2] >= 0.035  # median ~delay (a busy client may read two at once)
            assert arrivals[-1] - t0 >= 0.05 * (len(gaps)) * 0.8
            # [[delay:0]] and [[chunk:K]] per request
            t0 = time.monotonic()
            status, _, raw = await post(session, srv.url + SUBMIT, aie("fast [[delay:0]] [[chunk:2]]"))
            assert time.monotonic() - t0 < 0.9  # with the 0.05 s delay it would take > 1 s
            reply2 = reply_text(thread_of(aie("fast [[delay:0]] [[chunk:2]]")))
            assert reply2 == "Echo: fast\n\nThis conversation has 1 message."
            assert [e["data"] for e in events(raw)[:-1]] == split_chunks(reply2, 2)


async def test_words_chunks_and_html_directives(server, session):
    _, _, raw = await post(session, server.url + SUBMIT, aie("[[words:150]]"))
    final = json.loads(events(raw)[-1]["data"])
    assert final["reply"] == long_text(150) and len(final["reply"].split()) == 150

    _, _, raw = await post(session, server.url + SUBMIT, aie("[[chunks:37]]"))
    lives = [e for e in events(raw) if e["type"] == "live"]
    assert len(lives) == 37 and all(len(e["data"]) == 5 for e in lives)
    assert "".join(e["data"] for e in lives) == text_of_length(185)

    _, _, raw = await post(session, server.url + SUBMIT, aie("[[chunks:10]][[chunk:3]]"))
    assert [len(e["data"]) for e in events(raw)[:-1]] == [3] * 10

    _, _, raw = await post(session, server.url + SUBMIT, aie("[[html]]"))
    final = json.loads(events(raw)[-1]["data"])["reply"]
    assert final == HOSTILE_REPLY
    for needle in ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=2">',
                   "[click](javascript:window.__pwned=3)", "**Markdown**"):  # fmt: skip
        assert needle in final


async def test_20000_events_with_no_delay_are_fast(server, session):
    t0 = time.monotonic()
    _, _, raw = await post(session, server.url + SUBMIT, aie("[[chunks:20000]]"))
    assert time.monotonic() - t0 < 5
    assert raw.count(b'{"type":"live"') == 20_000 and raw.count(b'{"type":"end"') == 1


# -- faults on the AI Engine endpoint: exact bytes ------------------------------------------------


def _parts(text="hi"):
    body = aie(text)
    reply = reply_text(thread_of(body))
    chunks = split_chunks(reply, 5)
    return body, reply, chunks, usage_for(thread_of(body), reply)


MID_STREAM_LINES = {
    "broken_json": BROKEN_LINE,
    "missing_type": b'data: {"data":"no type"}\n\n',
    "unknown_type": b'data: {"type":"mystery","data":"?"}\n\n',
    "live_without_data": b'data: {"type":"live"}\n\n',
    "non_string_data": b'data: {"type":"live","data":123}\n\n',
    "invalid_utf8": b'data: {"type":"live","data":"bad \xff\xfe bytes"}\n\n',
    "nul_raw": b'data: {"type":"live","data":"nul \x00 raw"}\n\n',
}


@pytest.mark.parametrize("name", sorted(MID_STREAM_LINES))
async def test_fault_bad_line_mid_stream(server, session, name):
    body, reply, chunks, use = _parts(f"hi [[fault:{name}]]")
    status, headers, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    good = b"".join(live(c) for c in chunks[:GOOD])
    rest = b"".join(live(c) for c in chunks[GOOD:])
    assert raw == good + MID_STREAM_LINES[name] + rest + end(reply, use)


def test_fault_bad_line_contents():
    with pytest.raises(ValueError):
        json.loads(MID_STREAM_LINES["broken_json"][6:])
    with pytest.raises(UnicodeDecodeError):
        MID_STREAM_LINES["invalid_utf8"].decode("utf-8")
    with pytest.raises(ValueError):  # a raw control character inside a JSON string
        json.loads(MID_STREAM_LINES["nul_raw"][6:].decode())


async def test_fault_bad_end(server, session):
    body, reply, chunks, _ = _parts("hi [[fault:bad_end]]")
    _, _, raw = await post(session, server.url + SUBMIT, body)
    assert raw == b"".join(live(c) for c in chunks) + b'data: {"type":"end","data":"this is not JSON"}\n\n'


async def test_fault_error_event(server, session):
    body, _, chunks, _ = _parts("hi [[fault:error_event]]")
    status, _, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200
    assert raw == b"".join(live(c) for c in chunks[:GOOD]) + b'data: {"type":"error","data":"' + OVERLOADED.encode() + b'"}\n\n'


async def test_fault_no_end_closes_cleanly(server, session):
    body, _, chunks, _ = _parts("hi [[fault:no_end]]")
    status, _, raw = await post(session, server.url + SUBMIT, body)  # read() raises on an unclean close
    assert status == 200 and raw == b"".join(live(c) for c in chunks)


async def test_fault_disconnect_cuts_the_body(server, session):
    body, _, chunks, _ = _parts("hi [[fault:disconnect]]")
    async with session.post(server.url + SUBMIT, json=body) as resp:
        assert resp.status == 200
        got, exc = await read_until_error(resp)
    assert isinstance(exc, aiohttp.ClientPayloadError)
    assert got == b"".join(live(c) for c in chunks[:GOOD])
    assert server.stats.disconnects == 0  # the server closed it; not a client disconnect


async def test_fault_reset_aborts_mid_line(server, session):
    body, _, chunks, _ = _parts("hi [[fault:reset]]")
    async with session.post(server.url + SUBMIT, json=body) as resp:
        assert resp.status == 200
        got, exc = await read_until_error(resp)
    assert exc is not None
    next_line = live(chunks[GOOD])
    sent = b"".join(live(c) for c in chunks[:GOOD]) + next_line[: len(next_line) // 2]
    # An RST may discard bytes not yet read; what did arrive is a prefix of what was sent.
    assert sent.startswith(got)
    assert b'"type":"end"' not in got
    stats = server.stats
    assert stats.faults == {"reset": 1} and stats.completed == 0
    assert stats.disconnects == 0  # the server aborted it on purpose; not a client disconnect


async def test_fault_empty_body(server, session):
    status, headers, raw = await post(session, server.url + SUBMIT, aie("hi [[fault:empty_body]]"))
    assert (status, headers["Content-Type"], raw) == (200, "text/event-stream", b"")


async def test_fault_html_page(server, session):
    status, headers, raw = await post(session, server.url + SUBMIT, aie("hi [[fault:html]]"))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert raw.decode() == HTML_PAGE == "<html><body>Just a moment...</body></html>"


async def test_fault_json_200(server, session):
    body, reply, _, use = _parts("hi [[fault:json_200]]")
    status, headers, raw = await post(session, server.url + SUBMIT, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == final(reply, use)


@pytest.mark.parametrize(
    "status,expected",
    [
        (401, NONCE_MISSING),
        (403, REJECTED),
        (429, {"success": False, "message": "You have reached the limit of requests. Please try again later."}),
        (500, {"success": False, "message": "The server failed to answer (injected fault)."}),
        (502, {"success": False, "message": "Bad gateway: the model server did not answer (injected fault)."}),
    ],
)
async def test_fault_http_status(server, session, status, expected):
    got_status, headers, raw = await post(session, server.url + SUBMIT, aie(f"hi [[fault:http_{status}]]"))
    assert got_status == status and json.loads(raw) == expected
    assert headers["Content-Type"].startswith("application/json")
    if status == 429:
        assert headers["Retry-After"] == "1"


async def test_fault_http_500_text(server, session):
    status, headers, raw = await post(session, server.url + SUBMIT, aie("hi [[fault:http_500_text]]"))
    assert (status, raw) == (500, b"Internal Server Error")
    assert headers["Content-Type"].startswith("text/plain")


async def test_fault_slow_first_byte(server, session):
    body = aie("hi [[fault:slow_first_byte]]")
    t0 = time.monotonic()
    async with session.post(server.url + SUBMIT, json=body) as resp:
        headers_at = time.monotonic() - t0
        raw = await resp.read()
    assert 0.25 <= headers_at < 3
    assert raw == expected_stream(body)


async def test_fault_no_headers_until_client_gives_up(server, session):
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await post(session, server.url + SUBMIT, aie("hi [[fault:no_headers]]"), timeout=0.3)
    assert time.monotonic() - t0 < 1
    stats = await server.await_for(lambda s: s.disconnects == 1, timeout=3)
    assert stats.disconnect_events[0]["chunks_sent"] == 0


async def test_fault_no_headers_is_bounded_by_max_hang(server, session):
    t0 = time.monotonic()  # the fixture's max_hang is 1 s
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, server.url + SUBMIT, aie("hi [[fault:no_headers]]"), timeout=10)
    assert 0.9 <= time.monotonic() - t0 < 5


async def test_fault_stall(server, session):
    body = aie("hi [[fault:stall]]")
    async with session.post(server.url + SUBMIT, json=body) as resp:
        buf, arrivals = await read_lines_timed(resp)
    assert buf == expected_stream(body)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert gaps[GOOD - 1] >= 0.25  # fault_delay 0.3 after GOOD chunks
    assert max(gaps) == gaps[GOOD - 1]  # the one long silence is right after the good chunks


async def test_fault_trickle_sends_byte_by_byte(session):
    with LocalServer(delay=0, trickle_interval=0.05) as srv:
        async with session.post(srv.url + SUBMIT, json=aie("hi [[fault:trickle]]")) as resp:
            t0 = time.monotonic()
            pieces = []
            while sum(map(len, pieces)) < 8:
                pieces.append(await asyncio.wait_for(resp.content.readany(), 2))
            elapsed = time.monotonic() - t0
        assert b"".join(pieces)[:8] == b"data: {\""[:8]
        assert len(pieces) >= 4  # bytes dribble in (a busy client may read a few at once)
        assert elapsed >= 0.25
        stats = await srv.await_for(lambda s: s.disconnects == 1, timeout=3)
        assert stats.completed == 0


async def test_fault_trickle_whole_body(server, session):
    body = aie("hi [[fault:trickle]]")
    t0 = time.monotonic()
    _, _, raw = await post(session, server.url + SUBMIT, body)
    assert raw == expected_stream(body)
    assert time.monotonic() - t0 >= len(raw) * 0.002 * 0.9


@pytest.mark.parametrize("size,text", [(4096, "hi [[fault:huge_line]]"), (300_000, "hi [[fault:huge_line]] [[huge:300000]]")])
async def test_fault_huge_line(server, session, size, text):
    body, reply, chunks, _ = _parts(text)
    _, _, raw = await post(session, server.url + SUBMIT, body)
    evs = events(raw)
    assert evs[GOOD] == {"type": "live", "data": "x" * size}
    assert live("x" * size) in raw  # one line of its own (the end event repeats it inside its JSON string)
    full = "".join(chunks[:GOOD]) + "x" * size + "".join(chunks[GOOD:])
    assert json.loads(evs[-1]["data"])["reply"] == full


async def test_fault_huge_line_default_is_one_mib(session):
    with LocalServer(delay=0, fault="huge_line") as srv:
        _, _, raw = await post(session, srv.url + SUBMIT, aie("hi"))
    assert events(raw)[GOOD]["data"] == "x" * (1 << 20)


async def test_fault_nul_bytes_escaped(server, session):
    body, reply, chunks, _ = _parts("hi [[fault:nul_bytes]]")
    _, _, raw = await post(session, server.url + SUBMIT, body)
    assert b'data: {"type":"live","data":"nul\\u0000here"}\n\n' in raw and b"\x00" not in raw
    evs = events(raw)
    assert evs[GOOD]["data"] == "nul\x00here"
    assert json.loads(evs[-1]["data"])["reply"] == "".join(chunks[:GOOD]) + "nul\x00here" + "".join(chunks[GOOD:])


async def test_fault_cr_only(server, session):
    body = aie("hi [[fault:cr_only]]")
    _, _, raw = await post(session, server.url + SUBMIT, body)
    assert b"\n" not in raw and raw.count(b"\r\r") == raw.count(b"data: ")
    assert raw.replace(b"\r", b"\n") == expected_stream(body)


async def test_fault_keepalive_only(server, session):
    # fixture: keepalive every 0.05 s, bounded by max_hang = 1 s, then a clean close
    t0 = time.monotonic()
    status, _, raw = await post(session, server.url + SUBMIT, aie("hi [[fault:keepalive_only]]"))
    elapsed = time.monotonic() - t0
    assert status == 200 and 0.9 <= elapsed < 5
    assert raw and raw == b": ping\n\n" * (len(raw) // 8)
    assert 5 <= raw.count(b": ping") <= 25


async def test_fault_many_events(server, session):
    body = aie("hi [[fault:many_events]]")
    _, _, raw = await asyncio.wait_for(post(session, server.url + SUBMIT, body, timeout=30), 30)
    evs = events(raw)
    assert len(evs) == 100_001 and evs[-1]["type"] == "end"
    assert all(len(e["data"]) == 1 for e in evs[:-1])
    assert json.loads(evs[-1]["data"])["reply"] == text_of_length(100_000)


async def test_unknown_fault_directive_is_a_400(server, session):
    status, _, raw = await post(session, server.url + SUBMIT, aie("hi [[fault:nope]]"))
    assert status == 400 and "nope" in json.loads(raw)["message"]


# -- faults on the OpenAI endpoint ------------------------------------------------------------


@pytest.mark.parametrize("status,code", [(401, "invalid_api_key"), (429, "rate_limit_exceeded"), (500, None), (502, None)])
async def test_openai_fault_http(server, session, status, code):
    got, _, raw = await post(session, server.openai_base_url + "/chat/completions", oai(f"hi [[fault:http_{status}]]"))
    error = json.loads(raw)["error"]
    message = BAD_KEY["error"]["message"] if status == 401 else HTTP_MESSAGES[status]
    assert got == status and error["message"] == message and error["code"] == code


async def test_openai_fault_error_event_and_no_done(server, session):
    url = server.openai_base_url + "/chat/completions"
    _, _, raw = await post(session, url, oai("hi [[fault:error_event]]"))
    lines = data_lines(raw)
    assert len(lines) == GOOD + 1
    assert json.loads(lines[-1])["error"]["message"] == OVERLOADED
    _, _, raw = await post(session, url, oai("hi [[fault:no_end]]"))
    chunks = [json.loads(d) for d in data_lines(raw)]
    assert b"[DONE]" not in raw and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == reply_text(oai("hi [[fault:no_end]]")["messages"])


async def test_openai_fault_broken_json_disconnect_html_json200(server, session):
    url = server.openai_base_url + "/chat/completions"
    _, _, raw = await post(session, url, oai("hi [[fault:broken_json]]"))
    assert data_lines(raw)[GOOD] == BROKEN_LINE[6:-2] and raw.endswith(b"data: [DONE]\n\n")
    async with session.post(url, json=oai("hi [[fault:disconnect]]")) as resp:
        got, exc = await read_until_error(resp)
    assert isinstance(exc, aiohttp.ClientPayloadError) and len(data_lines(got)) == GOOD
    status, headers, raw = await post(session, url, oai("hi [[fault:html]]"))
    assert status == 200 and raw == HTML_PAGE.encode() and headers["Content-Type"].startswith("text/html")
    body = oai("hi [[fault:json_200]]")
    _, _, raw = await post(session, url, body)
    assert json.loads(raw)["choices"][0]["message"]["content"] == reply_text(body["messages"])


async def test_openai_fault_stall(server, session):
    t0 = time.monotonic()
    _, _, raw = await post(session, server.openai_base_url + "/chat/completions", oai("hi [[fault:stall]]"))
    assert time.monotonic() - t0 >= 0.25 and raw.endswith(b"data: [DONE]\n\n")


# -- choosing faults: attribute, admin endpoint, directive ----------------------------------------


async def test_set_fault_counts_down_and_clears(server, session):
    url = server.url + SUBMIT
    server.set_fault("http_500", count=2)
    assert server.fault == ("http_500", 2)
    assert [(await post(session, url, aie("hi")))[0] for _ in range(3)] == [500, 500, 200]
    assert server.fault == (None, None)
    server.set_fault("http_429", count=None)
    assert [(await post(session, url, aie("hi")))[0] for _ in range(3)] == [429] * 3
    server.clear_fault()
    assert (await post(session, url, aie("hi")))[0] == 200
    assert server.stats.faults == {"http_500": 2, "http_429": 3}
    with pytest.raises(ValueError):
        server.set_fault("no_such_fault")


async def test_fault_constructor_attribute(session):
    with LocalServer(delay=0, fault="http_502") as srv:
        for _ in range(2):
            assert (await post(session, srv.url + SUBMIT, aie("hi")))[0] == 502
    with pytest.raises(ValueError):
        LocalServer(fault="nope")


async def test_admin_fault_endpoint(server, session):
    admin = server.url + "/_opchat/fault"
    status, _, raw = await post(session, admin, {"fault": "http_403"})
    assert status == 200 and json.loads(raw) == {"fault": "http_403", "count": 1}
    assert (await post(session, server.url + SUBMIT, aie("hi")))[0] == 403
    assert (await post(session, server.url + SUBMIT, aie("hi")))[0] == 200
    await post(session, admin, {"fault": "stall", "count": None, "fault_delay": 0.1})
    assert server.fault == ("stall", None) and server.config.fault_delay == 0.1
    status, _, raw = await post(session, admin, {"fault": None})
    assert json.loads(raw) == {"fault": None, "count": None} and server.fault == (None, None)
    status, _, raw = await post(session, admin, {"fault": "bogus"})
    assert status == 400 and "bogus" in json.loads(raw)["error"]
    assert (await post(session, admin, {"fault": "stall", "count": "x"}))[0] == 400


async def test_directive_fault_leaves_server_fault_untouched(server, session):
    server.set_fault("http_500", count=1)
    assert (await post(session, server.url + SUBMIT, aie("hi [[fault:http_403]]")))[0] == 403
    assert server.fault == ("http_500", 1)
    assert (await post(session, server.url + SUBMIT, aie("hi")))[0] == 500


async def test_inapplicable_server_fault_is_not_used_up(server, session):
    server.set_fault("missing_type", count=1)  # AI Engine only
    status, _, raw = await post(session, server.openai_base_url + "/chat/completions", oai("hi"))
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert server.fault == ("missing_type", 1) and server.stats.faults == {}
    server.set_fault("stall", count=1)  # a stream fault, and this request is not streamed
    status, _, _ = await post(session, server.url + SUBMIT, aie("hi", stream=False))
    assert status == 200 and server.fault == ("stall", 1)
    server.set_fault("missing_type", count=1)
    _, _, raw = await post(session, server.url + SUBMIT, aie("hi"))
    assert b'{"data":"no type"}' in raw and server.fault == (None, None)


# -- stats -----------------------------------------------------------------------------------


async def test_stats_requests_bodies_headers_completed(server, session):
    await post(session, server.url + SUBMIT, aie("one"), headers={"X-WP-Nonce": "abc123def4"})
    await post(session, server.url + SUBMIT, aie("", stream=True))
    await post(session, server.openai_base_url + "/chat/completions", oai("two"), headers={"Authorization": "Bearer sk-abcdef"})
    await post(session, server.url + START_SESSION, {})
    async with session.get(server.openai_base_url + "/models"):
        pass
    stats = server.stats
    assert stats.requests == {"submit": 2, "chat_completions": 1, "start_session": 1, "models": 1}
    assert stats.statuses == {200: 4, 403: 1}
    assert stats["completed"] == stats.completed == 2 and stats.streams_started == 2 and stats.disconnects == 0 and stats.active == 0
    assert stats.bodies[0]["newMessage"] == "one" and stats.bodies[2]["messages"][0]["content"] == "two"
    assert stats.headers[0]["X-WP-Nonce"] == "abc123def4"
    assert stats.headers[2]["Authorization"] == "Bearer sk-abcdef"
    assert [r["endpoint"] for r in stats.recent] == ["submit", "submit", "chat_completions", "start_session", "models"]

    async with session.get(server.url + "/_opchat/stats") as resp:
        remote = await resp.json()
    assert remote["requests"] == stats.requests and remote["completed"] == 2
    assert remote["recent"][0]["headers"]["X-WP-Nonce"] == "***"
    assert remote["recent"][2]["headers"]["Authorization"] == "Bearer ***"
    assert remote["recent"][0]["body"]["newMessage"] == "one"
    assert remote["fault"] is None

    server.reset_stats()
    assert server.stats.requests == {} and server.stats.recent == []
    await post(session, server.url + SUBMIT, aie("again"))
    assert server.stats.completed == 1
    await post(session, server.url + "/_opchat/reset", {})  # the admin twin
    assert server.stats.completed == 0 and server.stats.requests == {} and server.stats.recent == []


async def test_stats_history_is_bounded(session):
    with LocalServer(delay=0, history=5) as srv:
        for i in range(8):
            await post(session, srv.url + SUBMIT, aie(f"m{i}"))
        assert [b["newMessage"] for b in srv.stats.bodies] == [f"m{i}" for i in range(3, 8)]


async def test_client_disconnect_is_counted_with_timing(session):
    with LocalServer(delay=0.05) as srv:
        resp = await session.post(srv.url + SUBMIT, json=aie("[[chunks:100]]"))
        for _ in range(3):
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert srv.stats.active == 1
        closed_at = time.monotonic()
        resp.close()
        stats = await srv.await_for(lambda s: s.disconnects == 1 and s.active == 0, timeout=3)
        event = stats.disconnect_events[0]
        assert event["endpoint"] == "submit" and event["how"] in ("cancelled", "write")
        assert 3 <= event["chunks_sent"] <= 6
        assert 0 <= event["at"] - closed_at < 0.5 and stats.last_disconnect_at == event["at"]
        assert stats.completed == 0
        # the OpenAI endpoint too
        resp = await session.post(srv.openai_base_url + "/chat/completions", json=oai("[[chunks:100]]"))
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        resp.close()
        stats = await srv.await_for(lambda s: s.disconnects == 2, timeout=3)
        assert stats.disconnect_events[1]["endpoint"] == "chat_completions"


# -- lifecycle -----------------------------------------------------------------------------


def test_threaded_start_stop_and_context_manager():
    srv = LocalServer(delay=0)
    assert not srv.running
    with pytest.raises(RuntimeError):
        srv.url
    assert srv.start() is srv and srv.running
    url = srv.url
    assert url.startswith("http://127.0.0.1:") and srv.openai_base_url == url + "/v1"
    with urllib.request.urlopen(url + "/v1/models", timeout=5) as resp:
        assert json.load(resp)["data"][0]["id"] == "opchat-local"
    with pytest.raises(RuntimeError):
        srv.start()
    srv.stop()
    srv.stop()  # idempotent
    assert not srv.running
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/v1/models", timeout=2)
    with LocalServer(delay=0) as a, LocalServer(delay=0) as b:
        assert a.port != b.port
    srv.start()  # restartable
    try:
        with urllib.request.urlopen(srv.url + "/_opchat/stats", timeout=5) as resp:
            assert json.load(resp)["requests"] == {"models": 1}  # stats survive a restart
    finally:
        srv.stop()


def test_start_on_a_taken_port_raises():
    with LocalServer(delay=0) as first:
        with pytest.raises(OSError):
            LocalServer(port=first.port).start()


def test_stop_is_quick_with_open_streams():
    async def hang(url):
        async with aiohttp.ClientSession() as s:
            try:
                async with s.post(url, json=aie("[[fault:keepalive_only]]"), timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass

    import threading

    srv = LocalServer(delay=0, max_hang=60).start()
    t = threading.Thread(target=asyncio.run, args=(hang(srv.url + SUBMIT),), daemon=True)
    t.start()
    srv.wait_for(lambda s: s.active == 1, timeout=5)
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 3
    t.join(10)
    assert not t.is_alive()


async def test_async_start_stop_in_the_current_loop():
    async with LocalServer(delay=0) as srv:
        async with aiohttp.ClientSession() as session:
            body = aie("async")
            status, _, raw = await post(session, srv.url + SUBMIT, body)
            assert status == 200 and raw == expected_stream(body)
        with pytest.raises(RuntimeError):
            srv.wait_for(lambda s: True)  # would block this very loop
        with pytest.raises(RuntimeError):
            srv.stop()
        assert (await srv.await_for(lambda s: s.completed == 1)).completed == 1
    assert not srv.running
    srv2 = LocalServer(delay=0)
    await srv2.astart()
    port = srv2.port
    await srv2.astop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- the command line, as a real process -------------------------------------------------------


def _spawn(args, env=None):
    return subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _wait_for_banner(proc, timeout=20.0) -> list:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Press Ctrl+C"):
            return lines
    proc.kill()
    raise AssertionError(f"no banner: {lines!r} {proc.stderr.read()!r}")


def _stop(proc, sig=signal.SIGINT) -> tuple:
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


async def test_cli_serve_subprocess(session):
    port = free_port()
    proc = _spawn([sys.executable, "-m", "opchat_magic.cli", "serve", "--port", str(port), "--delay", "0",
                   "--chunk-size", "4", "--api-key-env", "OPCHAT_TEST_KEY"], env={"OPCHAT_TEST_KEY": "sk-cli-key-42"})  # fmt: skip
    try:
        banner = "".join(_wait_for_banner(proc))
        url = f"http://127.0.0.1:{port}"
        assert f"listening on {url}" in banner
        assert f"%config OpchatMagics.url = '{url}'" in banner
        assert "sk-cli-key-42" not in banner
        body = aie("from a process")
        status, _, raw = await post(session, url + SUBMIT, body)
        assert status == 200 and raw == expected_stream(body, chunk_size=4)
        status, _, _ = await post(session, url + "/v1/chat/completions", oai("x"))
        assert status == 401
        status, _, _ = await post(session, url + "/v1/chat/completions", oai("x"), headers={"Authorization": "Bearer sk-cli-key-42"})
        assert status == 200
        await post(session, url + "/_opchat/fault", {"fault": "http_429"})
        assert (await post(session, url + SUBMIT, body))[0] == 429
    finally:
        code, out, err = _stop(proc)
    assert code == 0, err
    assert "stopped" in out and "Traceback" not in err


async def test_python_m_server_with_fault_and_sigterm(session):
    port = free_port()
    proc = _spawn([sys.executable, "-m", "opchat_magic.server", "--port", str(port), "--fault", "html", "--require-nonce"])
    try:
        banner = "".join(_wait_for_banner(proc))
        assert "html" in banner and "X-WP-Nonce" in banner
        url = f"http://127.0.0.1:{port}"
        _, _, raw = await post(session, url + START_SESSION, {})
        nonce = json.loads(raw)["restNonce"]
        status, _, raw = await post(session, url + SUBMIT, aie("hi"), headers={"X-WP-Nonce": nonce})
        assert status == 200 and raw == HTML_PAGE.encode()
    finally:
        code, out, err = _stop(proc, signal.SIGTERM)
    assert code == 0 and "Traceback" not in err


def test_cli_console_script_and_errors():
    script = shutil.which("opchat-magic")
    if script is None:
        pytest.skip("console script not installed")
    done = subprocess.run([script, "serve", "--list-faults"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert {line.split()[0] for line in done.stdout.splitlines()} == set(FAULTS)
    done = subprocess.run([sys.executable, "-m", "opchat_magic.cli", "serve", "--fault", "nope"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2 and "unknown fault" in done.stderr
    done = subprocess.run([sys.executable, "-m", "opchat_magic.cli", "serve", "--api-key-env", "OPCHAT_UNSET_VAR_X"],
                          capture_output=True, text=True, timeout=30, env={k: v for k, v in os.environ.items() if k != "OPCHAT_UNSET_VAR_X"})  # fmt: skip
    assert done.returncode == 2 and "OPCHAT_UNSET_VAR_X" in done.stderr
    with LocalServer(delay=0) as srv:  # the port is taken
        done = subprocess.run([sys.executable, "-m", "opchat_magic.cli", "serve", "--port", str(srv.port)],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert done.returncode == 1 and "cannot listen" in done.stderr


def test_cli_warns_about_a_non_loopback_host(monkeypatch, capsys):
    # In-process, with binding stubbed out: the test never listens beyond 127.0.0.1.
    from opchat_magic import cli

    async def refuse(self):
        raise OSError("binding disabled in this test")

    monkeypatch.setattr(LocalServer, "astart", refuse)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "WARNING: binding 0.0.0.0" in err and "cannot listen" in err
    assert cli.main(["serve", "--host", "127.0.0.1", "--port", "0"]) == 1
    assert "WARNING" not in capsys.readouterr().err
