"""Opt-in: the provider and the magic against a real OpenAI-compatible server.

Nothing here runs unless ``OPCHAT_REAL_OPENAI_URL`` names a server's base URL
(the part before ``/chat/completions``), e.g.::

    OPCHAT_REAL_OPENAI_URL=http://127.0.0.1:11434/v1 python -m pytest tests/integration/test_real_openai.py   # Ollama
    OPCHAT_REAL_OPENAI_URL=http://127.0.0.1:8080/v1  python -m pytest tests/integration/test_real_openai.py   # llama.cpp

``OPCHAT_REAL_OPENAI_MODEL`` picks the model (default: the first one the
server lists); ``OPCHAT_REAL_OPENAI_KEY`` is sent as the Bearer key if set.
It checks what only a real server can tell: streamed text equals the
non-streamed answer at temperature 0, usage, history, that an interrupt closes
the connection, and what a prompt beyond the context does. Pointed at our own
server (``opchat-magic serve``) it runs too, which keeps the module honest.

The tests talk to whatever the variable names; the module binds only
127.0.0.1 itself (a relay that watches the connection).

Measured here: all 8 pass against llama-cpp-python 0.3.36 serving Gemma 3 270M
(``--chat_format chatml --n_ctx 1024``); against a LiteLLM proxy with a
``mock_response`` model 7 pass and the overflow test skips (a mock answers anything).
"""
from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import pytest

from opchat_magic.errors import EmptyReplyError, HTTPStatusError, OpchatError, ServerError
from opchat_magic.providers.openai_compat import OpenAICompatible

URL = os.environ.get("OPCHAT_REAL_OPENAI_URL", "").strip().rstrip("/")
MODEL_ENV = os.environ.get("OPCHAT_REAL_OPENAI_MODEL", "").strip()
KEY = os.environ.get("OPCHAT_REAL_OPENAI_KEY", "").strip() or None

pytestmark = [
    pytest.mark.skipif(not URL, reason="opt-in: set OPCHAT_REAL_OPENAI_URL to a server's base URL "
                                       "(e.g. http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8080/v1 for llama.cpp)"),
    pytest.mark.timeout(600),
]

# Short, deterministic-ish prompts; small max_tokens keep a CPU model fast.
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow, comma separated."}]
MAX_TOKENS = 24
# A reply that runs for seconds on any model: chat models continue it, base models echo it.
LONG = [{"role": "user", "content": "Continue: " + ", ".join(str(i) for i in range(1, 100))}]


def kwargs(**extra):
    return {"base_url": URL, "api_key": KEY, "read_timeout": 300, **extra}


@pytest.fixture(scope="module")
def model():
    if MODEL_ENV:
        return MODEL_ENV
    models = asyncio.run(OpenAICompatible.list_models(**kwargs()))
    assert models, f"{URL}/models lists no model; set OPCHAT_REAL_OPENAI_MODEL"
    return models[0]


async def streamed(model, messages, **extra):
    stream = OpenAICompatible.create_async_generator(model, messages, **kwargs(**extra))
    async with stream:
        text = "".join([t async for t in stream])
    return text, stream.reply


async def non_streamed(model, messages, **extra):
    """The same request with ``stream: false``, through plain aiohttp (not our stream reader)."""
    headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
    body = {"model": model, "messages": messages, "stream": False, **extra}
    async with aiohttp.ClientSession() as http:
        async with http.post(URL + "/chat/completions", json=body, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=300)) as response:
            assert response.status == 200, await response.text()
            answer = await response.json(content_type=None)
    return answer["choices"][0]["message"]["content"] or "", answer


async def test_lists_models_and_the_configured_one_is_there(model):
    models = await OpenAICompatible.list_models(**kwargs())
    assert models and all(isinstance(m, str) for m in models)
    if not MODEL_ENV:
        assert model == models[0]


async def test_streamed_text_equals_the_non_streamed_answer_at_temperature_0(model):
    options = {"temperature": 0, "max_tokens": MAX_TOKENS, "seed": 7}
    text, reply = await streamed(model, PROMPT, extra_body={"seed": 7}, temperature=0, max_tokens=MAX_TOKENS)
    assert reply.complete and text.strip()
    whole, _ = await non_streamed(model, PROMPT, **options)
    if whole != text:
        # llama-cpp-python's output depends on its prompt cache: compare a warm pair once more
        text, reply = await streamed(model, PROMPT, extra_body={"seed": 7}, temperature=0, max_tokens=MAX_TOKENS)
        whole, _ = await non_streamed(model, PROMPT, **options)
    assert text == whole


async def test_usage_is_reported_or_said_not_to_be(model):
    text, reply = await streamed(model, PROMPT, temperature=0, max_tokens=MAX_TOKENS)
    assert reply.complete and reply.endpoint == URL + "/chat/completions"
    assert reply.model  # what the server says it used
    if reply.usage_reported:
        assert reply.usage.prompt_tokens > 0
        assert reply.usage.completion_tokens >= 1
        if reply.usage.completion_tokens > MAX_TOKENS + 2:  # some servers count the stop token
            # only a server that ignores max_tokens (a mock, e.g. LiteLLM's mock_response) gets here
            assert reply.finish_reason == "stop", reply.final
            print(f"\nthe server ignored max_tokens={MAX_TOKENS}: {reply.usage.completion_tokens} tokens")
    else:  # llama-cpp-python ignores stream_options: the footer then says "usage not reported"
        from opchat_magic.render.footer import USAGE_NOT_REPORTED, footer_text

        assert USAGE_NOT_REPORTED in footer_text(reply)
    if reply.finish_reason == "length":
        assert reply.usage is None or reply.usage.completion_tokens >= MAX_TOKENS - 1


async def test_history_reaches_the_model(model):
    history = [
        {"role": "system", "content": "Answer in one short sentence."},
        {"role": "user", "content": "My cat is called Zorblax."},
        {"role": "assistant", "content": "Zorblax is a fine name for a cat."},
        {"role": "user", "content": "What is my cat called?"},
    ]
    text, reply = await streamed(model, history, temperature=0, max_tokens=MAX_TOKENS)
    assert reply.complete
    _, alone = await streamed(model, history[-1:], temperature=0, max_tokens=MAX_TOKENS)
    if reply.usage_reported and alone.usage_reported:
        assert reply.usage.prompt_tokens > alone.usage.prompt_tokens + 10  # the history was sent
    if os.environ.get("OPCHAT_REAL_OPENAI_SMART"):  # a model able to recall (not a 270M base model)
        assert "zorblax" in text.lower()


class Relay:
    """A TCP relay on 127.0.0.1 in front of the server: it sees when the client closes."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.opened = 0
        self.client_closed_at: list = []
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        self.opened += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pipe(src, dst, client_side):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                if client_side:
                    self.client_closed_at.append(time.monotonic())
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def test_interrupt_closes_the_connection(model):
    from yarl import URL as YURL

    parsed = YURL(URL)
    relay = Relay(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    if parsed.scheme != "http":
        pytest.skip("the relay speaks plain HTTP only")
    port = await relay.start()
    base = str(parsed.with_port(port).with_host("127.0.0.1"))
    try:
        stream = OpenAICompatible.create_async_generator(model, LONG, base_url=base, api_key=KEY,
                                                         max_tokens=400, temperature=0)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            pytest.skip("the model answered nothing, so there was nothing to interrupt")
        assert first
        closed = time.monotonic()
        await stream.aclose()  # what Stop and a kernel interrupt do
        for _ in range(100):
            if relay.client_closed_at:
                break
            await asyncio.sleep(0.02)
        assert relay.client_closed_at, "the client kept the connection open after aclose()"
        assert relay.client_closed_at[0] - closed < 1.0
        assert not stream.reply.complete
        # the server is free again: a short request completes
        text, reply = await streamed(model, PROMPT, temperature=0, max_tokens=8)
        assert reply.complete
    finally:
        await relay.stop()


async def test_a_second_request_never_passes_off_a_cut_reply_as_complete(model):
    """llama-cpp-python cuts a running stream with a bare [DONE] when another request arrives.

    Whatever the server does (queue, batch, cut), each reply is either complete
    with a finish_reason or a TruncatedStreamError that keeps its partial text.
    """
    from opchat_magic.errors import TruncatedStreamError

    async def one(delay):
        await asyncio.sleep(delay)
        stream = OpenAICompatible.create_async_generator(model, LONG, **kwargs(temperature=0, max_tokens=300))
        got = []
        try:
            async with stream:
                async for text in stream:
                    got.append(text)
        except TruncatedStreamError as exc:
            return "cut", exc, "".join(got), stream.reply
        return "complete", None, "".join(got), stream.reply

    first, second = await asyncio.gather(one(0), one(0.5))
    for outcome, exc, text, reply in (first, second):
        if outcome == "complete":
            assert reply.complete and reply.finish_reason in ("stop", "length"), reply.final
        else:
            assert "cut the reply off" in str(exc) or "broke" in str(exc), str(exc)
            assert "context window" not in str(exc)  # a cut, not a full context
            assert exc.partial == text and not reply.complete
    print(f"\nconcurrent requests: first {first[0]} ({len(first[2])} chars), second {second[0]} ({len(second[2])} chars)")


async def test_context_overflow_is_explained(model):
    """A prompt far beyond any small model's context: a typed error that says why, never a silent cut."""
    huge = [{"role": "user", "content": ("lorem ipsum dolor sit amet " * 40_000) + "\nSummarise."}]
    try:
        text, reply = await streamed(model, huge, max_tokens=8)
    except EmptyReplyError as exc:  # llama-cpp-python: 200 and an empty body
        assert "context window" in str(exc) and exc.messages == 1 and exc.chars > 1_000_000
        print(f"\ncontext overflow: EmptyReplyError ({exc.chars:,} characters, about {exc.tokens:,} tokens)")
    except HTTPStatusError as exc:  # OpenAI, vLLM, llama.cpp's server, our own server (413)
        assert 400 <= exc.status < 500 and str(exc)
        print(f"\ncontext overflow: HTTP {exc.status}")
    except ServerError as exc:  # an error event in a 200 stream
        assert str(exc)
    except OpchatError as exc:  # anything else must still be typed and say something
        assert str(exc)
    else:
        pytest.skip(f"the server answered a {sum(len(m['content']) for m in huge):,}-character prompt "
                    f"({len(text)} chars): Ollama truncates prompts silently, mock servers ignore them")


def test_the_magic_in_a_real_kernel(model, tmp_path):
    """%%opchat with the openai provider pointed at the server: a reply, then a second turn with history."""
    from opchat_magic.testing.kernel import Kernel

    env = {"JPY_SESSION_NAME": str(tmp_path / "real.ipynb")}
    if KEY:
        env["OPCHAT_API_KEY"] = KEY
    with Kernel(env=env) as kernel:
        kernel.run(
            "%load_ext opchat_magic\n"
            "%config OpchatMagics.provider = 'openai'\n"
            f"%config OpchatMagics.url = {URL!r}\n"
            f"%config OpchatMagics.model = {model!r}\n"
            "%config OpchatMagics.provider_options = {'temperature': 0, 'max_tokens': 24}\n"
            "%config OpchatMagics.persist = False\n"
        )
        first = kernel.run("%%opchat\nName one fruit.\n\n", timeout=300)
        assert first.error is None, first.error
        assert first.markdown().strip()
        second = kernel.run("%%opchat\nAnd one vegetable.", timeout=300)
        assert second.error is None, second.error
        roles = kernel.value(
            "[m.role for m in get_ipython().find_magic('opchat', 'cell').__self__.conversation.thread().messages]")
        assert roles[:4] == ["user", "assistant", "user", "assistant"]
