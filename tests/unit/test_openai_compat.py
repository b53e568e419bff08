"""OpenAICompatible against mocked HTTP (aioresponses): request shape, parsing, errors, config."""
from __future__ import annotations

import json
import logging
import traceback

import pytest
from aioresponses import aioresponses
from yarl import URL

from opchat_magic.errors import (
    EndpointUnreachableError,
    HTTPStatusError,
    NotAnEndpointError,
    OpchatError,
    ServerError,
    StreamError,
    TruncatedStreamError,
)
from opchat_magic.providers.base import Usage
from opchat_magic.providers.openai_compat import (
    LlamaCpp,
    LMStudio,
    Ollama,
    OpenAICompatible,
    VLLM,
)

BASE = "http://127.0.0.1:9911/v1"
URL_ = BASE + "/chat/completions"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
ENV = ("OPCHAT_BASE_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY", "OPCHAT_MODEL",
       "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy",
       "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def chunk(content=None, *, role=None, finish=None, usage=None, choices=True) -> bytes:
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m-served"}
    obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
GOOD_STREAM = (
    chunk("", role="assistant")       # role-only / empty content: skipped
    + chunk("Hel")
    + chunk("lo")
    + chunk(None)                     # delta without content: skipped
    + chunk(", world")
    + chunk(finish="stop")
    + chunk(choices=False, usage=USAGE)
    + DONE
)


def sse(m, body: bytes, *, status=200, content_type="text/event-stream", url=URL_, **kw):
    m.post(url, status=status, body=body, content_type=content_type, **kw)


async def collect(stream):
    return [t async for t in stream]


def sent(m, url=URL_):
    calls = m.requests[("POST", URL(url))]
    assert len(calls) == 1
    return calls[0].kwargs


# ---------------------------------------------------------------- request shape


async def test_request_shape_without_key_has_no_authorization():
    with aioresponses() as m:
        sse(m, GOOD_STREAM)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["Hel", "lo", ", world"]
        kw = sent(m)
    assert kw["json"] == {
        "model": "m1",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert "Authorization" not in kw["headers"]
    assert {k.lower() for k in kw["headers"]} >= {"accept", "content-type"}
    assert kw["proxy"] is None


async def test_request_with_key_and_options():
    with aioresponses() as m:
        sse(m, GOOD_STREAM)
        stream = OpenAICompatible.create_async_generator(
            "m1", MESSAGES, base_url=BASE + "/", api_key="sk-test-123456",
            temperature=0.2, max_tokens=50, top_p=None, bot_id="ignored-by-this-provider",
            extra_body={"seed": 7}, headers={"X-Trace": "t1"},
        )
        await collect(stream)
        kw = sent(m)
    assert kw["headers"]["Authorization"] == "Bearer sk-test-123456"
    assert kw["headers"]["X-Trace"] == "t1"
    body = kw["json"]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50 and body["seed"] == 7
    assert "top_p" not in body  # None means "not given"
    assert "bot_id" not in body


async def test_include_usage_false_drops_stream_options():
    with aioresponses() as m:
        sse(m, GOOD_STREAM)
        await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE, include_usage=False))
        assert "stream_options" not in sent(m)["json"]


# ---------------------------------------------------------------- parsing


async def test_parsing_usage_done_and_final():
    with aioresponses() as m:
        sse(m, GOOD_STREAM)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["Hel", "lo", ", world"]
    reply = stream.reply
    assert reply.text == "Hello, world" and reply.complete
    assert reply.usage == Usage(7, 3, 10)
    assert reply.final["finish_reason"] == "stop" and reply.final["done"] is True
    assert reply.final["id"] == "chatcmpl-1" and reply.final["model"] == "m-served"
    # reply.model is what the server says it used; the request's model is kept apart
    assert reply.provider == "OpenAICompatible" and reply.model == "m-served" and reply.requested_model == "m1"
    assert reply.endpoint == BASE + "/chat/completions" and reply.usage_reported
    assert reply.first_chunk_at is not None and reply.finished_at is not None


async def test_events_after_done_are_ignored():
    with aioresponses() as m:
        sse(m, chunk("a") + chunk(finish="stop") + DONE + chunk("never"))
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["a"]
        assert stream.reply.complete


async def test_no_done_but_finish_reason_is_complete():
    # older llama.cpp: finish chunk, then the connection closes without [DONE]
    with aioresponses() as m:
        sse(m, chunk("a") + chunk("b") + chunk(finish="length"))
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["a", "b"]
    assert stream.reply.complete and stream.reply.final["finish_reason"] == "length"
    assert stream.reply.final["done"] is False


async def test_finish_chunk_without_final_blank_line_still_counts():
    body = chunk("a") + chunk(finish="stop")[:-1]  # the last event's blank line never came
    with aioresponses() as m:
        sse(m, body)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["a"]
    assert stream.reply.complete and stream.reply.final["finish_reason"] == "stop"


async def test_done_without_final_blank_line_completes():
    with aioresponses() as m:
        sse(m, chunk("a") + chunk(finish="stop") + b"data: [DONE]\n")
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["a"]
    assert stream.reply.complete


async def test_neither_done_nor_finish_reason_is_truncated_with_partial():
    with aioresponses() as m:
        sse(m, chunk("par") + chunk("tial") + b'data: {"choices":[{"delta":{"content":"cu')
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        got = []
        with pytest.raises(TruncatedStreamError) as err:
            async for text in stream:
                got.append(text)
    assert got == ["par", "tial"]
    assert err.value.partial == "partial"
    assert not stream.reply.complete and stream.reply.text == "partial"
    assert URL_ in str(err.value)


async def test_empty_event_stream_is_truncated():
    with aioresponses() as m:
        sse(m, b"")
        with pytest.raises(TruncatedStreamError) as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))
    assert err.value.partial == ""


async def test_error_event_mid_stream_is_server_error():
    error = b'data: {"error": {"message": "The model is overloaded.", "type": "server_error"}}\n\n'
    with aioresponses() as m:
        sse(m, chunk("a") + chunk("b") + error + chunk("c") + DONE)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        got = []
        with pytest.raises(ServerError) as err:
            async for text in stream:
                got.append(text)
    assert got == ["a", "b"] and stream.reply.text == "ab"
    assert "The model is overloaded." in str(err.value)
    assert not stream.reply.complete


async def test_event_error_field_is_server_error():
    with aioresponses() as m:
        sse(m, b'event: error\ndata: {"message": "quota exhausted"}\n\n')
        with pytest.raises(ServerError, match="quota exhausted"):
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))


async def test_broken_json_is_stream_error_with_line():
    with aioresponses() as m:
        sse(m, chunk("a") + b'data: {"broken json\n\n' + DONE)
        with pytest.raises(StreamError) as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))
    assert err.value.line == '{"broken json'
    assert not isinstance(err.value, TruncatedStreamError)


async def test_crlf_comments_and_multiline_data():
    body = (
        b": keep-alive\r\n\r\n"
        b'data: {"choices":[{"index":0,\r\ndata: "delta":{"content":"x"},"finish_reason":"stop"}]}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
    )
    with aioresponses() as m:
        sse(m, body)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["x"]
        assert stream.reply.complete


async def test_event_stream_labelled_text_html_is_still_read():
    with aioresponses() as m:
        sse(m, GOOD_STREAM, content_type="text/html")
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert "".join(await collect(stream)) == "Hello, world"


async def test_non_stream_json_answer_is_accepted():
    answer = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "model": "m-served",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole reply"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    with aioresponses() as m:
        m.post(URL_, payload=answer)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["whole reply"]
    assert stream.reply.complete and stream.reply.usage == Usage(7, 3, 10)
    assert stream.reply.final["finish_reason"] == "stop" and stream.reply.final["streamed"] is False


async def test_json_error_body_with_200_is_server_error():
    with aioresponses() as m:
        m.post(URL_, payload={"error": {"message": "model not loaded"}})
        with pytest.raises(ServerError, match="model not loaded"):
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))


async def test_html_page_is_not_an_endpoint():
    with aioresponses() as m:
        sse(m, b"<html><head><title>Just a moment...</title></head></html>", content_type="text/html")
        with pytest.raises(NotAnEndpointError) as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))
    assert URL_ in str(err.value) and "Just a moment" in str(err.value)


# ---------------------------------------------------------------- error bodies


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
async def test_error_body_becomes_http_status_error_with_message(status):
    body = {"error": {"message": f"nope {status}", "type": "invalid_request_error", "code": None}}
    with aioresponses() as m:
        m.post(URL_, status=status, payload=body)
        with pytest.raises(HTTPStatusError) as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))
    assert err.value.status == status
    assert f"nope {status}" in str(err.value) and URL_ in str(err.value)
    assert isinstance(err.value, OpchatError)


async def test_404_without_v1_suggests_it():
    with aioresponses() as m:
        m.post("http://127.0.0.1:9911/chat/completions", status=404, body="404 page not found",
               content_type="text/plain")
        with pytest.raises(HTTPStatusError) as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url="http://127.0.0.1:9911"))
    assert "http://127.0.0.1:9911/v1" in str(err.value)


async def test_401_names_the_variables_not_the_key():
    key = "sk-secret-abcdef123456"
    body = {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}}
    with aioresponses() as m:
        m.post(URL_, status=401, payload=body)
        with pytest.raises(HTTPStatusError) as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE, api_key=key))
    text = str(err.value) + repr(err.value)
    assert err.value.status == 401
    assert "OPCHAT_API_KEY" in text and "OPENAI_API_KEY" in text
    assert "Incorrect API key provided" in text
    assert key not in text and key not in err.value.message


async def test_connection_refused_is_endpoint_unreachable():
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointUnreachableError) as err:
        await collect(OpenAICompatible.create_async_generator(
            "m1", MESSAGES, base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=5))
    assert f"127.0.0.1:{port}" in str(err.value)


# ---------------------------------------------------------------- secrets never leak


async def test_api_key_never_appears_in_any_artefact(caplog, capsys):
    key = "sk-leakcheck-0123456789abcdef"
    leaky = json.dumps({"error": {"message": f"bad key {key} (Bearer {key})"}}).encode()
    captured = []
    with caplog.at_level(logging.DEBUG):
        with aioresponses() as m:
            # 1. an HTTP error whose body echoes the key
            m.post(URL_, status=401, body=leaky, content_type="application/json")
            # 2. a mid-stream error event echoing it
            sse(m, chunk("ok") + b"data: " + leaky + b"\n\n")
            # 3. a broken event echoing it
            sse(m, chunk("ok") + b"data: {not json " + key.encode() + b"\n\n")
            # 4. a JSON error answer
            m.post(URL_, payload={"error": {"message": key}})
            # 5. a clean stream (the Reply of a success)
            sse(m, GOOD_STREAM)
            for expected in (HTTPStatusError, ServerError, StreamError, ServerError, None):
                stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE, api_key=key)
                try:
                    await collect(stream)
                except OpchatError as exc:
                    assert expected is not None and isinstance(exc, expected), exc
                    captured.append(exc)
                    print(exc)
                    traceback.print_exception(exc)
                else:
                    assert expected is None
                print(stream.reply)
                captured.append(stream.reply)
    assert len(captured) == 9
    out = capsys.readouterr()
    artefacts = [out.out, out.err, caplog.text]
    for obj in captured:
        artefacts += [str(obj), repr(obj)]
        if isinstance(obj, BaseException):
            artefacts += ["".join(traceback.format_exception(obj)), repr(obj.args), repr(vars(obj))]
            cause = obj.__cause__ or obj.__context__
            while cause is not None:
                artefacts += [str(cause), repr(cause)]
                cause = cause.__cause__ or cause.__context__
    assert "bad key ***" in out.out  # the message survives, redacted
    for text in artefacts:
        assert key not in text
        assert key[4:] not in text


# ---------------------------------------------------------------- configuration


def test_base_url_resolution_order(monkeypatch):
    assert OpenAICompatible.resolve_base_url() == "https://api.openai.com/v1"
    monkeypatch.setattr(OpenAICompatible, "url", "http://class-attr/v1")
    assert OpenAICompatible.resolve_base_url() == "http://class-attr/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-env/v1/")
    assert OpenAICompatible.resolve_base_url() == "http://openai-env/v1"
    monkeypatch.setenv("OPCHAT_BASE_URL", "http://opchat-env/v1")
    assert OpenAICompatible.resolve_base_url() == "http://opchat-env/v1"
    assert OpenAICompatible.resolve_base_url("http://kwarg/v1") == "http://kwarg/v1"
    monkeypatch.setenv("OPCHAT_BASE_URL", "   ")  # blank counts as unset
    assert OpenAICompatible.resolve_base_url() == "http://openai-env/v1"


def test_alias_urls_lose_to_env(monkeypatch):
    assert Ollama.resolve_base_url() == "http://127.0.0.1:11434/v1"
    assert LlamaCpp.resolve_base_url() == "http://127.0.0.1:8080/v1"
    assert LMStudio.resolve_base_url() == "http://127.0.0.1:1234/v1"
    assert VLLM.resolve_base_url() == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("OPCHAT_BASE_URL", "http://elsewhere/v1")
    assert Ollama.resolve_base_url() == "http://elsewhere/v1"


def test_api_key_resolution_order(monkeypatch):
    assert OpenAICompatible.resolve_api_key() is None
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai-env")
    assert OpenAICompatible.resolve_api_key() == "from-openai-env"
    monkeypatch.setenv("OPCHAT_API_KEY", "from-opchat-env")
    assert OpenAICompatible.resolve_api_key() == "from-opchat-env"
    assert OpenAICompatible.resolve_api_key("from-kwarg") == "from-kwarg"


def test_default_model_resolution(monkeypatch):
    assert OpenAICompatible.default_model == "gpt-4o-mini"
    assert Ollama.default_model == ""  # asks the server's /models
    monkeypatch.setenv("OPCHAT_MODEL", "llama3.2")
    assert OpenAICompatible.default_model == "llama3.2"
    assert Ollama.default_model == "llama3.2"


async def test_env_config_reaches_the_request(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")  # loses to OPCHAT_BASE_URL
    monkeypatch.setenv("OPCHAT_BASE_URL", BASE)
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-openai")
    monkeypatch.setenv("OPCHAT_MODEL", "env-model")
    with aioresponses() as m:
        sse(m, GOOD_STREAM)
        stream = OpenAICompatible.create_async_generator("", MESSAGES)
        await collect(stream)
        kw = sent(m)
    assert kw["headers"]["Authorization"] == "Bearer env-key-openai"
    assert kw["json"]["model"] == "env-model" and stream.reply.requested_model == "env-model"


async def test_alias_discovers_model_from_models_endpoint():
    VLLM._discovered.pop(BASE, None)
    with aioresponses() as m:
        m.get(BASE + "/models", payload={"object": "list", "data": [{"id": "served-a"}, {"id": "served-b"}]})
        sse(m, GOOD_STREAM, repeat=True)
        stream = VLLM.create_async_generator("", MESSAGES, base_url=BASE)
        await collect(stream)
        assert stream.reply.requested_model == "served-a"
        stream = VLLM.create_async_generator(None, MESSAGES, base_url=BASE)
        await collect(stream)  # cached: /models asked once
        assert len(m.requests[("GET", URL(BASE + "/models"))]) == 1
        bodies = [c.kwargs["json"]["model"] for c in m.requests[("POST", URL(URL_))]]
    assert bodies == ["served-a", "served-a"]
    VLLM._discovered.pop(BASE, None)


async def test_json_answer_after_leading_whitespace():
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    with aioresponses() as m:
        m.post(URL_, body=b"\n\n  " + json.dumps(answer).encode(), content_type="application/json")
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["ok"]
    assert stream.reply.complete and stream.reply.usage is None


# ---------------------------------------------------------------- reasoning, finish, usage details


def delta_event(delta: dict, finish=None, **top) -> bytes:
    obj = {"id": "c", "model": "m-served", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **top}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def test_reasoning_spellings_and_reasoning_tokens():
    from opchat_magic.providers.base import Reasoning

    body = (
        delta_event({"role": "assistant", "content": None, "reasoning_content": "a "})
        + delta_event({"reasoning": "b "})
        + delta_event({"thinking": "c"})
        + delta_event({"content": "X", "reasoning_content": None})
        + chunk(finish="stop")
        + chunk(choices=False, usage={"prompt_tokens": 3, "completion_tokens": 9,
                                      "completion_tokens_details": {"reasoning_tokens": 5}})
        + DONE
    )
    with aioresponses() as m:
        sse(m, body)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE, reasoning=True)
        got = await collect(stream)
    assert got == ["a ", "b ", "c", "X"] and [type(g) is Reasoning for g in got] == [True, True, True, False]
    assert stream.reply.text == "X" and stream.reply.reasoning == "a b c"
    assert stream.reply.usage.reasoning_tokens == 5 and stream.reply.usage.total_tokens == 12


async def test_reasoning_in_the_unterminated_last_event_and_in_a_json_answer():
    body = delta_event({"content": "A"}) + delta_event({"reasoning_content": "late"}, finish="stop")[:-1]
    with aioresponses() as m:
        sse(m, body)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["A"]
    assert stream.reply.reasoning == "late" and stream.reply.complete
    answer = {"id": "x", "model": "m-json", "choices": [{"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "B", "reasoning_content": "why"}}]}
    with aioresponses() as m:
        m.post(BASE + "/chat/completions", payload=answer)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        assert await collect(stream) == ["B"]
    assert stream.reply.reasoning == "why" and stream.reply.model == "m-json" and stream.reply.finish_reason == "stop"


async def test_stream_without_any_finish_is_cut_off_not_complete():
    with aioresponses() as m:
        sse(m, chunk("par") + chunk("tial") + DONE)
        stream = OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE)
        got = []
        with pytest.raises(TruncatedStreamError, match="cut the reply off") as err:
            async for text in stream:
                got.append(text)
    assert got == ["par", "tial"] and err.value.partial == "partial" and not stream.reply.complete


async def test_role_only_stream_ending_in_done_is_cut_off_and_only_an_empty_body_is_an_empty_reply():
    from opchat_magic.errors import EmptyReplyError

    with aioresponses() as m:
        sse(m, chunk("", role="assistant") + DONE)
        with pytest.raises(TruncatedStreamError, match="before any text") as err:
            await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))
        assert not isinstance(err.value, EmptyReplyError)
    for body in (b"", b"\n\n"):
        with aioresponses() as m:
            sse(m, body)
            with pytest.raises(EmptyReplyError, match="2 messages"):
                await collect(OpenAICompatible.create_async_generator("m1", MESSAGES, base_url=BASE))


async def test_failover_passes_reasoning_through():
    from opchat_magic.providers.base import Reasoning
    from opchat_magic.providers.failover import stream_with_failover

    body = delta_event({"reasoning_content": "r"}) + delta_event({"content": "t"}, finish="stop") + DONE
    for wanted, expected in ((True, ["r", "t"]), (False, ["t"])):
        with aioresponses() as m:
            sse(m, body)
            stream = stream_with_failover([(OpenAICompatible, {"base_url": BASE})], "m1", MESSAGES, reasoning=wanted)
            got = await collect(stream)
        assert got == expected and (type(got[0]) is Reasoning) == wanted
        assert stream.reply.reasoning == "r" and stream.reply.text == "t"
        assert stream.reply.endpoint == BASE + "/chat/completions" and stream.reply.model == "m-served"


def test_public_url_drops_credentials_and_queries():
    from opchat_magic.providers.http import public_url

    assert public_url("http://127.0.0.1:8080/v1/chat/completions") == "http://127.0.0.1:8080/v1/chat/completions"
    assert public_url("https://user:secret@host.example/v1/x") == "https://host.example/v1/x"
    assert public_url("https://host.example/openai/deployments/d/chat?api-version=1&api-key=k") == \
        "https://host.example/openai/deployments/d/chat?..."


async def test_invalid_utf8_raises_at_once_after_the_text_before_it():
    """Bad bytes end the stream when they arrive, not when (if ever) the next chunk does."""
    import asyncio

    from opchat_magic.errors import SSEDecodeError
    from opchat_magic.providers.base import Reply
    from opchat_magic.providers.openai_compat import _read_events

    async def chunks():
        yield chunk("Hel") + b"data: \xff\n\n"
        await asyncio.Event().wait()  # the server stalls after the bad bytes

    got = []

    async def read():
        async for text in _read_events(chunks(), URL_, Reply(), (), 1 << 20):
            got.append(text)

    with pytest.raises(SSEDecodeError, match="invalid UTF-8"):
        await asyncio.wait_for(read(), 5)  # without the check: a TimeoutError here
    assert got == ["Hel"]
