"""The Opchatgpts provider against the real AI Engine 3.6.2 plugin (WordPress, MariaDB, php -S).

The chatbot's model is our LocalServer (OpenAI side): what the plugin sent
upstream is in ``upstream.stats``, and upstream faults are injected there.
"""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import aiohttp
import pytest

from opchat_magic.errors import HTTPStatusError, ServerError
from opchat_magic.providers.opchatgpts import Opchatgpts
from opchat_magic.server import reply_text
from opchat_magic.testing.aiengine import BOTS

pytestmark = [pytest.mark.aiengine, pytest.mark.timeout(120)]

GREETING = "Hi! How can I help you?"  # the default chatbot's startSentence


class Recorder:
    """An aiohttp session that records every request it makes: (method, url, status, X-WP-Nonce)."""

    def __init__(self):
        self.calls = []
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._end)
        self.trace = trace

    async def _end(self, session, ctx, params):
        self.calls.append((params.method, str(params.url), params.response.status,
                           params.headers.get("X-WP-Nonce")))

    def session(self):
        return aiohttp.ClientSession(trace_configs=[self.trace])

    def routes(self):
        return [(url.split("rest_route=")[-1] if "rest_route=" in url else url.split("/wp-json")[-1], status)
                for _, url, status, _ in self.calls]


async def ask(site_url, messages, recorder=None, **kw):
    if recorder is not None:
        async with recorder.session() as session:
            return await ask(site_url, messages, session=session, **kw)
    stream = Opchatgpts.create_async_generator("", messages, url=site_url, **kw)
    chunks = [c async for c in stream]
    return chunks, stream.reply


def upstream_messages(upstream):
    bodies = [r["body"] for r in upstream.stats.recent if r["endpoint"] == "chat_completions"]
    return [b["messages"] for b in bodies]


def post_raw(url, body, nonce=None):
    headers = {"Content-Type": "application/json", **({"X-WP-Nonce": nonce} if nonce else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        response = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        response = exc
    with response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def session_nonce(site):
    status, _, body = post_raw(site.url + "/wp-json/mwai/v1/start_session", {})
    assert status == 200
    return json.loads(body)["restNonce"]


# --------------------------------------------------------------------------- streaming and the end payload


async def test_streams_and_end_payload_reaches_caller(site, upstream):
    messages = [{"role": "user", "content": "Hello there [[chunks:12]]"}]
    chunks, reply = await ask(site.url, messages, bot_id="bare")
    expected = reply_text(messages, chunk_size=5)
    assert "".join(chunks) == expected and len(chunks) >= 10  # streamed, chunk by chunk
    assert reply.complete
    final = reply.final
    # Everything the plugin put in the end payload reaches the caller.
    assert final["success"] is True and final["reply"] == expected
    for key in ("images", "actions", "shortcuts", "blocks", "responseId"):
        assert key in final, key
    assert final["responseId"].startswith("chatcmpl-")
    assert {"price", "queries", "accuracy"} <= set(final["usage"])
    assert reply.usage.prompt_tokens == final["usage"]["prompt_tokens"]


# --------------------------------------------------------------------------- the exact thread


@pytest.mark.parametrize("bot", ["default", "bare"])
async def test_model_receives_exactly_the_thread_over_three_turns(site, upstream, bot):
    instructions = BOTS[bot]["instructions"]
    thread = [{"role": "system", "content": "Answer in French."}]
    chat_id = f"thr{bot}"[:10].ljust(10, "0")
    for turn in ("First question", "Second question", "Third question"):
        thread.append({"role": "user", "content": turn})
        chunks, reply = await ask(site.url, thread, bot_id=bot, chat_id=chat_id)
        seen = upstream_messages(upstream)[-1]
        expected = ([{"role": "system", "content": instructions}] if instructions else []) + thread
        assert seen == expected  # the new message once, last; earlier turns once each, in order
        thread.append({"role": "assistant", "content": reply.text})
    assert len(upstream_messages(upstream)) == 3


async def test_the_plugin_keeps_the_first_and_the_last_15_history_messages(site, upstream):
    # The chatbot's maxMessages (15): a long thread loses its middle on the site, not here.
    thread = []
    for i in range(12):
        thread += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    thread.append({"role": "user", "content": "last"})
    await ask(site.url, thread, bot_id="bare")
    seen = upstream_messages(upstream)[-1]
    assert seen == thread[:1] + thread[-16:-1] + thread[-1:]  # first, last 15, then the new message


async def test_unknown_bot_id_answers_with_the_default_bot(site, upstream):
    chunks, reply = await ask(site.url, [{"role": "user", "content": "hi"}], bot_id="no-such-bot")
    assert reply.complete
    assert upstream_messages(upstream)[-1][0] == {"role": "system", "content": BOTS["default"]["instructions"]}


# --------------------------------------------------------------------------- nonces


async def test_default_nonce_fetched_once_then_reused(site, upstream):
    rec = Recorder()
    await ask(site.url, [{"role": "user", "content": "one"}], rec)
    # No nonce known: the plugin says 401, start_session gives one, the turn is retried.
    assert rec.routes() == [("/mwai-ui/v1/chats/submit", 401), ("/mwai/v1/start_session", 200),
                            ("/mwai-ui/v1/chats/submit", 200)]
    nonce = rec.calls[-1][3]
    assert nonce and rec.calls[0][3] is None
    rec.calls.clear()
    await ask(site.url, [{"role": "user", "content": "two"}], rec)
    assert rec.routes() == [("/mwai-ui/v1/chats/submit", 200)]  # reused: one request per turn
    assert rec.calls[0][3] == nonce


async def test_stale_nonce_refreshed_once_before_any_text(site, upstream):
    Opchatgpts.sites.set_nonce(Opchatgpts.endpoint(site.url), "0123456789")  # a wrong/stale nonce
    rec = Recorder()
    chunks, reply = await ask(site.url, [{"role": "user", "content": "hello"}], rec)
    assert reply.complete and "".join(chunks) == reply.final["reply"]
    assert rec.routes() == [("/mwai-ui/v1/chats/submit", 403), ("/mwai/v1/start_session", 200),
                            ("/mwai-ui/v1/chats/submit", 200)]
    assert len(upstream_messages(upstream)) == 1  # the refused attempt never reached the model


async def test_explicit_nonce_wins_and_is_not_replaced(site, upstream):
    good = session_nonce(site)
    rec = Recorder()
    await ask(site.url, [{"role": "user", "content": "hi"}], rec, nonce=good)
    assert rec.routes() == [("/mwai-ui/v1/chats/submit", 200)] and rec.calls[0][3] == good
    with pytest.raises(HTTPStatusError) as info:
        await ask(site.url, [{"role": "user", "content": "hi"}], nonce="0123456789")
    assert info.value.status == 403 and "rest_cookie_invalid_nonce" in str(info.value)
    assert "0123456789" not in str(info.value) and "leave nonce unset" in str(info.value)


async def test_no_nonce_mode_gets_the_plugins_401_with_a_hint(site, upstream):
    rec = Recorder()
    with pytest.raises(HTTPStatusError) as info:
        await ask(site.url, [{"role": "user", "content": "hi"}], rec, nonce=False)
    assert info.value.status == 401 and "rest_forbidden" in str(info.value)
    assert "leave nonce unset" in str(info.value)
    assert rec.routes() == [("/mwai-ui/v1/chats/submit", 401)]


async def test_new_token_replaces_the_cached_nonce(site, upstream):
    # A nonce from the previous tick is still valid (12-24 h old); the plugin then
    # sends the current one as new_token in the end payload.
    old = site.previous_tick_nonce()
    endpoint = Opchatgpts.endpoint(site.url)
    Opchatgpts.sites.set_nonce(endpoint, old)
    chunks, reply = await ask(site.url, [{"role": "user", "content": "hi"}])
    current = session_nonce(site)
    assert reply.final.get("new_token") == current != old
    assert Opchatgpts.sites.nonce(Opchatgpts.endpoint(site.url)) == current


# --------------------------------------------------------------------------- bad input


async def test_empty_message_refused_before_sending_as_the_plugin_would(site, upstream):
    nonce = session_nonce(site)
    # What the plugin does with it: 403 "rejected" ...
    status, _, body = post_raw(site.submit_url, {"botId": "default", "chatId": "abcdefghij", "messages": [],
                                                 "newMessage": "   ", "stream": True}, nonce)
    assert (status, json.loads(body)) == (403, {"success": False, "message": "Sorry, your query has been rejected."})
    # ... so the provider says so before sending anything.
    rec = Recorder()
    with pytest.raises(ValueError, match="empty"):
        await ask(site.url, [{"role": "user", "content": " \n "}], rec)
    assert rec.calls == [] and upstream_messages(upstream) == []


async def test_too_long_message(site, upstream):
    nonce = session_nonce(site)
    body = {"botId": "default", "chatId": "abcdefghij", "messages": [], "newMessage": "x" * 513, "stream": True}
    status, ctype, text = post_raw(site.submit_url, body, nonce)
    # 200, labelled application/json, holding one SSE error event.
    assert status == 200 and ctype.startswith("application/json")
    assert text.strip() == 'data: {"type":"error","data":"Sorry, your query has been rejected."}'
    with pytest.raises(ServerError, match="rejected.*513 characters.*512"):
        await ask(site.url, [{"role": "user", "content": "x" * 513}])
    chunks, reply = await ask(site.url, [{"role": "user", "content": "y" * 512}])  # at the limit: fine
    assert reply.complete
    assert len(upstream_messages(upstream)) == 1


# --------------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize("fault, says", [("http_500", "overloaded|server|error"), ("http_401", "API key|key")])
async def test_upstream_errors_arrive_as_error_events(site, upstream, fault, says):
    upstream.set_fault(fault)
    with pytest.raises(ServerError) as info:
        await ask(site.url, [{"role": "user", "content": "hello"}])
    assert site.url in str(info.value)
    import re

    assert re.search(says, str(info.value), re.I), str(info.value)


async def test_upstream_error_event_mid_stream_ends_as_a_success(site, upstream):
    # A plugin fact PROTOCOL.md did not have: an OpenAI-style {"error": ...} event
    # after some chunks is swallowed; the plugin ends the reply with success and
    # the text so far. The client cannot tell; it gets what the plugin says.
    upstream.set_fault("error_event")
    chunks, reply = await ask(site.url, [{"role": "user", "content": "hello [[chunks:10]]"}])
    assert reply.complete and reply.final["success"] is True
    assert len(chunks) == 3 and reply.final["reply"] == "".join(chunks).strip()


@pytest.mark.parametrize("fault", ["empty_body", "html"])
async def test_upstream_answering_nothing_is_an_empty_reply_error(site, upstream, fault):
    # The plugin reports success with reply "" when its model server answers 200 with
    # no chat stream (an empty body, a web page): the provider names it instead.
    from opchat_magic.errors import EmptyReplyError

    upstream.set_fault(fault)
    stream = Opchatgpts.create_async_generator("", [{"role": "user", "content": "hello"}], url=site.url)
    with pytest.raises(EmptyReplyError, match="empty reply"):
        [c async for c in stream]
    assert stream.reply.final["success"] is True and stream.reply.final["reply"] == ""


async def test_upstream_stream_without_finish_ends_as_a_success(site, upstream):
    # Another plugin fact: an upstream stream that stops without finish_reason/[DONE]
    # is reported as a complete reply (the text so far); the client cannot tell.
    upstream.set_fault("no_end")
    chunks, reply = await ask(site.url, [{"role": "user", "content": "noend [[chunks:4]]"}])
    assert reply.complete and len(chunks) == 4


async def test_upstream_line_that_is_not_json_is_skipped(site, upstream):
    upstream.set_fault("broken_json")
    chunks, reply = await ask(site.url, [{"role": "user", "content": "broken [[chunks:6]]"}])
    assert reply.complete and len(chunks) == 6 and reply.final["reply"] == "".join(chunks).strip()


async def test_event_logs_status_events_are_not_reply_text(site, upstream):
    site.set_option("event_logs", True)
    try:
        chunks, reply = await ask(site.url, [{"role": "user", "content": "hello with events"}], bot_id="bare")
    finally:
        site.set_option("event_logs", False)
    assert "".join(chunks) == reply_text([{"role": "user", "content": "hello with events"}])
    assert reply.final["_ignored_events"] == {"live/status": 1}


async def test_upstream_drop_mid_stream(site, upstream):
    upstream.set_fault("disconnect")
    stream = Opchatgpts.create_async_generator("", [{"role": "user", "content": "Tell me [[chunks:20]]"}],
                                               url=site.url)
    chunks = []
    with pytest.raises(ServerError) as info:
        async for chunk in stream:
            chunks.append(chunk)
    assert chunks, "the live chunks before the drop reach the caller"
    assert not stream.reply.complete
    # The upstream's cURL error, prefixed with the site's name for the model environment.
    assert "opchat local: cURL error 18: transfer closed" in str(info.value), str(info.value)


# --------------------------------------------------------------------------- where the endpoint is


async def test_plain_permalink_site_from_its_bare_url(site, upstream):
    rec = Recorder()
    await ask(site.plain_url, [{"role": "user", "content": "hi"}], rec)
    # /wp-json/ is a web page there: its Link header names the REST root (one extra request).
    urls = [url for _, url, _, _ in rec.calls]
    assert urls[0] == site.plain_url + "/wp-json/mwai-ui/v1/chats/submit" and rec.calls[0][2] == 200
    assert all("rest_route=/mwai" in url for url in urls[1:])
    rec.calls.clear()
    chunks, reply = await ask(site.plain_url + "/", [{"role": "user", "content": "again"}], rec)
    assert reply.complete and len(rec.calls) == 1 and "rest_route=/mwai-ui/v1/chats/submit" in rec.calls[0][1]


@pytest.mark.parametrize("form", ["{plain}/?rest_route=/", "{plain}/?rest_route=/mwai-ui/v1/chats/submit",
                                  "{pretty}/wp-json/", "{pretty}/wp-json/mwai-ui/v1/chats/submit"])
async def test_rest_root_or_full_url_needs_no_discovery(site, upstream, form):
    url = form.format(plain=site.plain_url, pretty=site.url)
    Opchatgpts.sites.set_nonce(Opchatgpts.endpoint(url), session_nonce(site))
    rec = Recorder()
    chunks, reply = await ask(url, [{"role": "user", "content": "hi"}], rec)
    assert reply.complete and len(rec.calls) == 1


# --------------------------------------------------------------------------- chatId: one discussion per conversation


async def test_one_discussion_per_chat_id(site, upstream):
    before = len(site.discussions())
    for chat_id in ("convaaaaaa", "convbbbbbb"):
        thread = []
        for turn in ("hello", "and again"):
            thread.append({"role": "user", "content": turn})
            chunks, reply = await ask(site.url, thread, chat_id=chat_id)
            thread.append({"role": "assistant", "content": reply.text})
    stored = site.discussions()[before:]
    assert [d["chatId"] for d in stored] == ["convaaaaaa", "convbbbbbb"]
    for discussion in stored:
        # The plugin stores the bot's greeting (startSentence) first, though the client never sent it.
        assert discussion["messages"][0] == {"role": "assistant", "content": GREETING} or \
            discussion["messages"][0]["content"] == GREETING
        assert [m["role"] for m in discussion["messages"]] == ["assistant", "user", "assistant", "user", "assistant"]
        assert [m["content"] for m in discussion["messages"] if m["role"] == "user"] == ["hello", "and again"]
    # Without a chat_id every call is a new conversation: one discussion per turn.
    for turn in ("x", "y"):
        await ask(site.url, [{"role": "user", "content": turn}])
    assert len(site.discussions()) == before + 4
