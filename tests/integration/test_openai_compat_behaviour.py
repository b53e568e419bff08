"""OpenAICompatible against the local server's real-server behaviours (issue 11).

Each case is one thing a real OpenAI-compatible server does (measured in
/work/shared/TESTING.md), played by the server's fault injection over real HTTP
on 127.0.0.1: a bare ``[DONE]`` cutting a stream, an empty 200, reasoning
deltas, a stream without usage, ``max_tokens``, the model list.
"""
from __future__ import annotations

import pytest

from opchat_magic.errors import EmptyReplyError, HTTPStatusError, ModelListingUnsupportedError, TruncatedStreamError
from opchat_magic.providers.base import Reasoning
from opchat_magic.providers.opchatgpts import Opchatgpts
from opchat_magic.providers.openai_compat import OpenAICompatible
from opchat_magic.server import LocalServer, reply_text
from opchat_magic.server.faults import reasoning_text
from opchat_magic.server.replies import count_tokens

pytestmark = pytest.mark.timeout(60)

ENV = ("OPCHAT_BASE_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY", "OPCHAT_MODEL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def server():
    async with LocalServer(delay=0, chunk_size=5, extra_models=("opchat-reasoner",)) as srv:
        yield srv


def stream_of(server, messages, **kwargs):
    return OpenAICompatible.create_async_generator("opchat-local", messages, base_url=server.openai_base_url, **kwargs)


async def collect(stream):
    return [text async for text in stream]


async def test_bare_done_is_a_cut_off_reply_with_its_partial_text(server):
    messages = [{"role": "user", "content": "Tell me more [[fault:bare_done]]"}]
    stream = stream_of(server, messages)
    got = []
    with pytest.raises(TruncatedStreamError) as err:
        async for text in stream:
            got.append(text)
    assert not isinstance(err.value, EmptyReplyError)
    assert "cut the reply off" in str(err.value) and "bare data: [DONE]" in str(err.value)
    assert err.value.partial == "".join(got) == reply_text(messages)
    assert not stream.reply.complete and stream.reply.finish_reason is None


async def test_empty_200_says_the_context_is_probably_full_and_how_big_the_request_was(server):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 1000} for i in range(9)]
    messages = history + [{"role": "user", "content": "and now? [[fault:empty_body]]"}]
    stream = stream_of(server, messages)
    with pytest.raises(EmptyReplyError) as err:
        await collect(stream)
    message = str(err.value)
    chars = 9000 + len("and now? [[fault:empty_body]]")
    assert err.value.messages == 10 and err.value.chars == chars and err.value.tokens == (chars + 3) // 4
    assert "exceeds the model's context window" in message
    assert "10 messages" in message and f"{chars:,} characters" in message and f"about {(chars + 3) // 4:,} tokens" in message
    assert "max_history" in message and "%opchat_reset" in message
    assert isinstance(err.value, TruncatedStreamError) and err.value.partial == ""


async def test_bare_done_before_any_text_is_a_cut_not_a_full_context(server):
    # Measured on llama-cpp-python 0.3.36: a second request arriving during the first's prompt
    # processing ends the first with a bare [DONE] and no text; the context is not the cause.
    messages = [{"role": "user", "content": "[[chunks:0]] [[fault:bare_done]]"}]
    with pytest.raises(TruncatedStreamError, match="cut the reply off.*before any text") as err:
        await collect(stream_of(server, messages))
    assert not isinstance(err.value, EmptyReplyError) and err.value.partial == ""


@pytest.mark.parametrize("fault", ["reasoning", "reasoning_field"])
async def test_reasoning_chunks_come_apart_and_first_when_asked(server, fault):
    messages = [{"role": "user", "content": f"Think first [[fault:{fault}]]"}]
    stream = stream_of(server, messages, reasoning=True)
    got = await collect(stream)
    thought = reasoning_text(reply_text(messages))
    kinds = [type(t) is Reasoning for t in got]
    assert kinds == sorted(kinds, reverse=True) and any(kinds) and not all(kinds)  # all reasoning, then all answer
    assert "".join(t for t in got if type(t) is Reasoning) == thought
    assert "".join(t for t in got if type(t) is not Reasoning) == reply_text(messages)
    reply = stream.reply
    assert reply.text == reply_text(messages) and reply.reasoning == thought and reply.complete
    assert reply.usage.reasoning_tokens == count_tokens(thought)


async def test_reasoning_is_not_yielded_by_default_but_kept_on_the_reply(server):
    messages = [{"role": "user", "content": "Think [[fault:reasoning]]"}]
    stream = stream_of(server, messages)
    got = await collect(stream)
    assert "".join(got) == reply_text(messages) and not any(type(t) is Reasoning for t in got)
    assert stream.reply.reasoning == reasoning_text(reply_text(messages))


async def test_reasoning_is_never_sent_back(server):
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer", "reasoning_content": "secret thoughts", "reasoning": "more"},
        {"role": "user", "content": "second"},
    ]
    await collect(stream_of(server, messages))
    sent = server.stats.last_body["messages"]
    assert sent[1] == {"role": "assistant", "content": "answer"}
    assert "secret thoughts" not in repr(server.stats.last_body)


async def test_usage_less_stream_is_complete_and_says_usage_was_not_reported(server):
    messages = [{"role": "user", "content": "hi [[fault:no_usage]]"}]
    stream = stream_of(server, messages)
    assert "".join(await collect(stream)) == reply_text(messages)
    assert stream.reply.complete and stream.reply.usage is None and not stream.reply.usage_reported
    # the same request without the fault reports it
    stream = stream_of(server, [{"role": "user", "content": "hi"}])
    await collect(stream)
    assert stream.reply.usage_reported


async def test_max_tokens_completes_with_finish_reason_length(server):
    messages = [{"role": "user", "content": "a long one [[words:200]]"}]
    stream = stream_of(server, messages, max_tokens=5)
    text = "".join(await collect(stream))
    assert text == reply_text(messages)[:20]
    assert stream.reply.complete and stream.reply.finish_reason == "length"
    assert stream.reply.usage.completion_tokens == 5


async def test_reply_metadata_model_and_redacted_endpoint(server):
    base = server.openai_base_url.replace("http://", "http://user:pw-secret@")
    stream = OpenAICompatible.create_async_generator("opchat-reasoner", [{"role": "user", "content": "hi"}], base_url=base)
    await collect(stream)
    reply = stream.reply
    assert reply.model == "opchat-reasoner" and reply.requested_model == "opchat-reasoner"
    assert reply.endpoint == server.openai_base_url + "/chat/completions"
    assert "pw-secret" not in reply.endpoint


async def test_list_models_against_the_server(server):
    assert await OpenAICompatible.list_models(base_url=server.openai_base_url) == ["opchat-local", "opchat-reasoner"]


async def test_list_models_typed_errors():
    async with LocalServer(delay=0, api_key="sk-right-key-123") as keyed:
        with pytest.raises(HTTPStatusError) as err:
            await OpenAICompatible.list_models(base_url=keyed.openai_base_url, api_key="sk-wrong-key-456")
        assert err.value.status == 401 and "OPCHAT_API_KEY" in str(err.value) and "sk-wrong" not in str(err.value)
        assert await OpenAICompatible.list_models(base_url=keyed.openai_base_url, api_key="sk-right-key-123") == ["opchat-local"]


async def test_opchatgpts_says_its_protocol_has_no_listing():
    with pytest.raises(ModelListingUnsupportedError, match="no model listing"):
        await Opchatgpts.list_models()
