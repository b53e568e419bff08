"""OpenAICompatible against the real LocalServer on 127.0.0.1: text, usage, keys, faults."""
from __future__ import annotations

import asyncio
import logging
import time
import traceback

import aiohttp
import pytest

from opchat_magic.errors import (
    EmptyReplyError,
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
from opchat_magic.providers.base import Usage
from opchat_magic.providers.openai_compat import LlamaCpp, OpenAICompatible, VLLM
from opchat_magic.server import GOOD, LocalServer, reply_text
from opchat_magic.server.faults import HTTP_MESSAGES, OVERLOADED
from opchat_magic.server.replies import count_tokens, prompt_tokens

ENV = ("OPCHAT_BASE_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY", "OPCHAT_MODEL",
       "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
       "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def server():
    async with LocalServer(delay=0, chunk_size=5, fault_delay=1.0, max_hang=2.0) as srv:
        yield srv


def msgs(text="Hello there, server"):
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


async def run(stream):
    got = []
    async for text in stream:
        got.append(text)
    return got


async def test_stream_equals_reply_text_with_usage(server):
    messages = msgs()
    stream = OpenAICompatible.create_async_generator("gpt-test", messages, base_url=server.openai_base_url)
    got = await run(stream)
    expected = reply_text(messages)
    assert "".join(got) == expected
    assert got == [expected[i:i + 5] for i in range(0, len(expected), 5)]  # one yield per server chunk
    reply = stream.reply
    assert reply.complete and reply.final["done"] and reply.final["finish_reason"] == "stop"
    assert reply.final["model"] == "gpt-test"
    assert reply.usage == Usage(prompt_tokens(messages), count_tokens(expected),
                                prompt_tokens(messages) + count_tokens(expected))
    body = server.stats.last_body
    assert body["model"] == "gpt-test" and body["messages"] == messages
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "Authorization" not in server.stats.last_headers


async def test_long_reply_many_chunks(server):
    messages = msgs("[[words:2000]] go")
    stream = OpenAICompatible.create_async_generator("m", messages, base_url=server.openai_base_url)
    assert "".join(await run(stream)) == reply_text(messages)
    assert stream.reply.complete


def test_sync_create_completion_and_create_async():
    # Synchronous use (the server on its own thread, the stream on the private loop).
    messages = msgs("sync please")
    with LocalServer(delay=0) as srv:
        chunks = list(OpenAICompatible.create_completion("m", messages, base_url=srv.openai_base_url))
        assert "".join(chunks) == reply_text(messages) and len(chunks) > 1
        whole = list(OpenAICompatible.create_completion("m", messages, stream=False, base_url=srv.openai_base_url))
        assert whole == [reply_text(messages)]
        text = asyncio.run(OpenAICompatible.create_async("m", messages, base_url=srv.openai_base_url))
        assert text == reply_text(messages)


async def test_model_discovery_against_server(server):
    VLLM._discovered.pop(server.openai_base_url, None)
    stream = VLLM.create_async_generator("", msgs(), base_url=server.openai_base_url)
    await run(stream)
    assert stream.reply.model == "opchat-local" and server.stats.last_body["model"] == "opchat-local"
    assert server.stats.requests.get("models") == 1
    VLLM._discovered.pop(server.openai_base_url, None)


async def test_shared_session_is_not_closed(server, monkeypatch):
    async with aiohttp.ClientSession() as session:
        # Any new ClientSession would fail: the caller's is the one used.
        monkeypatch.setattr(aiohttp, "ClientSession", None)
        for _ in range(2):
            stream = OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url,
                                                             session=session)
            assert "".join(await run(stream)) == reply_text(msgs())
        assert not session.closed


async def test_closing_early_disconnects(server):
    server.config.delay = 0.05
    stream = OpenAICompatible.create_async_generator("m", msgs("[[chunks:200]]"), base_url=server.openai_base_url)
    async for _ in stream:
        break
    await stream.aclose()
    stats = await server.await_for(lambda s: s.disconnects >= 1, timeout=5)
    assert stats.completed == 0


# ---------------------------------------------------------------- api key mode


async def test_right_key_works_wrong_key_is_401_without_the_key(caplog):
    key = "sk-right-key-0123456789"
    wrong = "sk-wrong-key-9876543210"
    async with LocalServer(delay=0, api_key=key) as srv:
        stream = OpenAICompatible.create_async_generator("m", msgs(), base_url=srv.openai_base_url, api_key=key)
        assert "".join(await run(stream)) == reply_text(msgs())
        assert srv.stats.last_headers["Authorization"] == f"Bearer {key}"

        with caplog.at_level(logging.DEBUG):
            stream = OpenAICompatible.create_async_generator("m", msgs(), base_url=srv.openai_base_url, api_key=wrong)
            with pytest.raises(HTTPStatusError) as err:
                await run(stream)
        exc = err.value
        assert exc.status == 401 and isinstance(exc, aiohttp.ClientResponseError)
        text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc)) + repr(stream.reply) + caplog.text
        assert "Incorrect API key provided" in text and "OPCHAT_API_KEY" in text
        assert wrong not in text and key not in text
        assert "Authorization" not in repr(exc.request_info.headers)

        # no key at all against a keyed server: 401 as well
        with pytest.raises(HTTPStatusError) as err:
            await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=srv.openai_base_url))
        assert err.value.status == 401


async def test_key_from_env_is_sent(server, monkeypatch):
    monkeypatch.setenv("OPCHAT_API_KEY", "sk-env-opchat-1234")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-openai-1234")
    await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url))
    assert server.stats.last_headers["Authorization"] == "Bearer sk-env-opchat-1234"


# ---------------------------------------------------------------- faults -> typed errors


def _expected_prefix(messages):
    text = reply_text(messages)
    return "".join(text[i:i + 5] for i in range(0, 5 * GOOD, 5))


@pytest.mark.parametrize(
    "fault, error, fragment",
    [
        ("broken_json", StreamError, "not JSON"),
        ("nul_raw", StreamError, "not JSON"),
        ("error_event", ServerError, OVERLOADED),
        ("invalid_utf8", SSEDecodeError, ""),
        ("disconnect", TruncatedStreamError, ""),
        ("reset", TruncatedStreamError, ""),
        ("no_end", TruncatedStreamError, "cut the reply off"),
        ("empty_body", EmptyReplyError, "exceeds the model's context window"),
    ],
)
async def test_stream_faults_raise_typed_errors_keeping_partial(server, fault, error, fragment):
    messages = msgs(f"fault test [[fault:{fault}]]")
    stream = OpenAICompatible.create_async_generator("m", messages, base_url=server.openai_base_url)
    got = []
    with pytest.raises(error) as err:
        async for text in stream:
            got.append(text)
    assert fragment in str(err.value)
    assert not stream.reply.complete
    assert stream.reply.text == "".join(got)
    if fault == "empty_body":
        assert got == []
    elif fault == "no_end":
        assert "".join(got) == reply_text(messages)
        assert err.value.partial == reply_text(messages)
    elif fault == "invalid_utf8":
        # LineDecoder.decode() raises for the whole network read, so good events that
        # arrived in the same read as the bad bytes are not yielded: a prefix, maybe empty.
        assert _expected_prefix(messages).startswith("".join(got))
    else:
        assert "".join(got) == _expected_prefix(messages)
    if isinstance(err.value, TruncatedStreamError):
        assert err.value.partial == "".join(got)


@pytest.mark.parametrize("status", [401, 403, 429, 500, 502])
async def test_http_faults_raise_http_status_error(server, status):
    server.set_fault(f"http_{status}")
    with pytest.raises(HTTPStatusError) as err:
        await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url))
    assert err.value.status == status
    expected = "Incorrect API key provided" if status == 401 else HTTP_MESSAGES[status]
    assert expected in str(err.value)
    if status == 429:
        assert "Retry-After: 1" in str(err.value)
        assert err.value.retry_after == "1"  # kept through the provider's hint, for failover


async def test_http_500_text_body(server):
    server.set_fault("http_500_text")
    with pytest.raises(HTTPStatusError) as err:
        await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url))
    assert err.value.status == 500 and "Internal Server Error" in str(err.value)


async def test_html_page_is_not_an_endpoint(server):
    server.set_fault("html")
    with pytest.raises(NotAnEndpointError) as err:
        await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url))
    assert "Just a moment" in str(err.value)


@pytest.mark.parametrize("fault", ["cr_only", "json_200", "nul_bytes", "huge_line", "trickle"])
async def test_faults_that_are_still_valid_answers(server, fault):
    messages = msgs("ok [[huge:200000]]" if fault == "huge_line" else "tiny")
    server.set_fault(fault, trickle_interval=0.001)
    stream = OpenAICompatible.create_async_generator("m", messages, base_url=server.openai_base_url)
    text = "".join(await run(stream))
    expected = reply_text(messages)
    if fault == "nul_bytes":
        expected = _expected_prefix(messages) + "nul\x00here" + expected[5 * GOOD:]
    elif fault == "huge_line":
        expected = _expected_prefix(messages) + "x" * 200000 + expected[5 * GOOD:]
    assert text == expected
    assert stream.reply.complete
    assert stream.reply.usage is not None
    assert server.stats.faults == {fault: 1}


async def test_many_events(server):
    messages = msgs("[[fault:many_events]] [[chunks:5000]]")
    stream = OpenAICompatible.create_async_generator("m", messages, base_url=server.openai_base_url)
    got = await run(stream)
    assert len(got) == 5000 and all(len(t) == 1 for t in got)
    assert stream.reply.complete


async def test_stall_beyond_read_timeout_is_stream_timeout(server):
    server.set_fault("stall", fault_delay=3.0)
    stream = OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url, read_timeout=0.5)
    got = []
    start = time.monotonic()
    with pytest.raises(StreamTimeoutError) as err:
        async for text in stream:
            got.append(text)
    assert time.monotonic() - start < 2.5
    assert "".join(got) == _expected_prefix(msgs())
    assert "read_timeout" in str(err.value)


async def test_stall_within_read_timeout_is_fine(server):
    server.set_fault("stall", fault_delay=0.3)
    stream = OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url, read_timeout=2)
    assert "".join(await run(stream)) == reply_text(msgs())
    assert stream.reply.complete and server.stats.faults == {"stall": 1}  # the stall did happen


async def test_slow_first_byte_and_no_headers_time_out(server):
    for fault in ("slow_first_byte", "no_headers"):
        server.set_fault(fault, fault_delay=3.0, max_hang=3.0)
        start = time.monotonic()
        with pytest.raises(StreamTimeoutError):
            await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url,
                                                              read_timeout=0.4))
        assert time.monotonic() - start < 2.5


async def test_keepalive_only_ends_truncated(server):
    server.set_fault("keepalive_only", keepalive_interval=0.1, max_hang=0.6)
    with pytest.raises(TruncatedStreamError) as err:  # the server closes before the 2 s watchdog
        await run(OpenAICompatible.create_async_generator("m", msgs(), base_url=server.openai_base_url,
                                                          read_timeout=2))
    assert err.value.partial == ""


async def test_closed_port_is_endpoint_unreachable():
    async with LocalServer(delay=0) as srv:
        base = srv.openai_base_url
    with pytest.raises(EndpointUnreachableError) as err:
        await run(LlamaCpp.create_async_generator("m", msgs(), base_url=base))
    assert isinstance(err.value, ConnectionError) and isinstance(err.value, OpchatError)
    assert "connection refused" in str(err.value)


async def test_cancelling_the_consumer_closes_the_connection(server):
    server.config.delay = 0.05
    stream = OpenAICompatible.create_async_generator("m", msgs("[[chunks:400]]"), base_url=server.openai_base_url)

    async def consume():
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    await server.await_for(lambda s: s.streams_started >= 1, timeout=5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await server.await_for(lambda s: s.disconnects >= 1 and s.active == 0, timeout=5)
    assert stats.completed == 0 and stats.disconnects == 1
