"""Our local server as an OpenAI peer, with the official ``openai`` SDK as the client.

What a client of the real API can tell apart: JSON errors in OpenAI's shape
(unknown routes, unknown models, bad parameters), ``GET /v1/models/{id}``,
``max_tokens`` cutting the reply with ``finish_reason: "length"``, ``n > 1``
refused, ``x-request-id`` on every answer. Streaming and not.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")

from opchat_magic.server import LocalServer, reply_text  # noqa: E402
from opchat_magic.server.faults import reasoning_text  # noqa: E402
from opchat_magic.server.replies import count_tokens, prompt_tokens  # noqa: E402

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Name one fruit."}]


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0, chunk_size=5, extra_models=("opchat-reasoner",)) as srv:
        yield srv


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0, timeout=20) as c:
        yield c


def test_non_streamed_answer_usage_and_request_id(client):
    raw = client.chat.completions.with_raw_response.create(model="opchat-local", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_")
    done = raw.parse()
    assert done.choices[0].message.content == reply_text(MESSAGES)
    assert done.choices[0].finish_reason == "stop"
    assert done.model == "opchat-local" and len(done.choices) == 1
    assert done.usage.prompt_tokens == prompt_tokens(MESSAGES)
    assert done.usage.completion_tokens == count_tokens(reply_text(MESSAGES))


def test_streamed_answer_with_usage(client):
    stream = client.chat.completions.create(
        model="opchat-local", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    texts, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                texts.append(choice.delta.content)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(texts) == reply_text(MESSAGES)
    assert finishes == ["stop"]
    assert usage.total_tokens == prompt_tokens(MESSAGES) + count_tokens(reply_text(MESSAGES))


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_cuts_with_finish_reason_length(client, stream):
    full = reply_text(MESSAGES)
    if not stream:
        done = client.chat.completions.create(model="opchat-local", messages=MESSAGES, max_tokens=3)
        text, finish = done.choices[0].message.content, done.choices[0].finish_reason
        assert done.usage.completion_tokens == 3
    else:
        parts, finish = [], None
        for chunk in client.chat.completions.create(model="opchat-local", messages=MESSAGES, max_tokens=3, stream=True):
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        text = "".join(parts)
    assert finish == "length"
    assert text == full[:12] and len(full) > 12


def test_max_completion_tokens_too(client):
    done = client.chat.completions.create(model="opchat-local", messages=MESSAGES, max_completion_tokens=2)
    assert done.choices[0].finish_reason == "length" and done.choices[0].message.content == reply_text(MESSAGES)[:8]


@pytest.mark.parametrize("stream", [False, True])
def test_n_above_one_is_refused_in_openai_shape(client, stream):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="opchat-local", messages=MESSAGES, n=2, stream=stream)
    assert err.value.status_code == 400
    assert err.value.param == "n" and "'n' must be 1" in err.value.message
    assert err.value.body["type"] == "invalid_request_error"
    assert err.value.response.headers["x-request-id"].startswith("req_")


def test_bad_max_tokens_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="opchat-local", messages=MESSAGES, max_tokens=0)
    assert err.value.param == "max_tokens"


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list()] == ["opchat-local", "opchat-reasoner"]
    model = client.models.retrieve("opchat-reasoner")
    assert model.id == "opchat-reasoner" and model.object == "model"


def test_unknown_model_is_openais_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-nonexistent")
    assert err.value.code == "model_not_found"
    assert "`gpt-nonexistent` does not exist" in err.value.message


def test_strict_server_refuses_unlisted_chat_model():
    with LocalServer(delay=0, strict_models=True) as strict:
        with openai.OpenAI(base_url=strict.openai_base_url, api_key="x", max_retries=0) as c:
            with pytest.raises(openai.NotFoundError) as err:
                c.chat.completions.create(model="gpt-nonexistent", messages=MESSAGES)
            assert err.value.code == "model_not_found"
            ok = c.chat.completions.create(model="opchat-local", messages=MESSAGES)
            assert ok.choices[0].message.content == reply_text(MESSAGES)


def test_unknown_route_is_json_in_openai_shape(server, client):
    with pytest.raises(openai.NotFoundError) as err:
        client.post("/embeddingz", body={"input": "x"}, cast_to=object)
    assert err.value.body["message"] == "Invalid URL (POST /v1/embeddingz)"
    # a wrong method on a real route too; the body is JSON, not aiohttp's text/plain page
    req = urllib.request.Request(server.openai_base_url + "/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=10)
    assert http.value.code == 404
    assert http.value.headers["Content-Type"].startswith("application/json")
    assert json.loads(http.value.read())["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"


def test_bad_key_is_authentication_error():
    with LocalServer(delay=0, api_key="sk-right-key") as keyed:
        with openai.OpenAI(base_url=keyed.openai_base_url, api_key="sk-wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as err:
                c.models.list()
            assert err.value.code == "invalid_api_key"


@pytest.mark.parametrize("fault, key", [("reasoning", "reasoning_content"), ("reasoning_field", "reasoning")])
def test_reasoning_faults_as_the_sdk_sees_them(client, fault, key):
    messages = [{"role": "user", "content": f"think [[fault:{fault}]]"}]
    thoughts, texts = [], []
    usage = None
    for chunk in client.chat.completions.create(model="opchat-local", messages=messages, stream=True,
                                                stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get(key):
                thoughts.append(extra[key])
            if choice.delta.content:
                texts.append(choice.delta.content)
    assert "".join(texts) == reply_text(messages)
    assert "".join(thoughts) == reasoning_text(reply_text(messages))
    assert usage.completion_tokens_details.reasoning_tokens == count_tokens(reasoning_text(reply_text(messages)))


def test_the_sdk_itself_does_not_notice_a_bare_done(client):
    """Why the provider must: the SDK ends a bare-[DONE] stream quietly, no finish_reason seen."""
    messages = [{"role": "user", "content": "cut [[fault:bare_done]]"}]
    finishes, texts = [], []
    for chunk in client.chat.completions.create(model="opchat-local", messages=messages, stream=True):
        for choice in chunk.choices:
            texts.append(choice.delta.content or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(texts) == reply_text(messages) and finishes == []


def test_usage_less_stream_ignores_stream_options(client):
    messages = [{"role": "user", "content": "[[fault:no_usage]]"}]
    chunks = list(client.chat.completions.create(model="opchat-local", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


async def test_async_client_streams_too(server):
    async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(model="opchat-local", messages=MESSAGES, stream=True)
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts) == reply_text(MESSAGES)
