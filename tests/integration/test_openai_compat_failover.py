"""Failover and retries between providers, against real LocalServers on 127.0.0.1."""
from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from opchat_magic.errors import (
    EndpointUnreachableError,
    HTTPStatusError,
    StoppedError,
    StreamTimeoutError,
    TruncatedStreamError,
)
from opchat_magic.providers.base import AsyncGeneratorProvider
from opchat_magic.providers.failover import (
    Attempt,
    Failover,
    FailoverReply,
    is_retryable,
    retry_after_seconds,
    stream_with_failover,
)
from opchat_magic.providers.openai_compat import OpenAICompatible
from opchat_magic.server import GOOD, LocalServer, reply_text

pytestmark = pytest.mark.timeout(60)

ENV = ("OPCHAT_BASE_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY", "OPCHAT_MODEL",
       "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def servers():
    async with LocalServer(delay=0) as a, LocalServer(delay=0) as b:
        yield a, b


@pytest.fixture
async def closed_url():
    async with LocalServer(delay=0) as srv:
        url = srv.openai_base_url
    return url  # nothing listens there any more


MESSAGES = [{"role": "user", "content": "failover please"}]


def chat_requests(server) -> int:
    return server.stats.requests.get("chat_completions", 0)


class SleepRecorder:
    """A ``sleep=`` hook: records the delays, sleeps for real only a token amount."""

    def __init__(self):
        self.delays = []

    async def __call__(self, delay):
        self.delays.append(delay)
        await asyncio.sleep(0)


async def run(stream):
    return [t async for t in stream]


# ---------------------------------------------------------------- failover order


async def test_closed_port_fails_over_to_second(servers, closed_url):
    _, b = servers
    sleep = SleepRecorder()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": closed_url, "name": "dead"}),
         (OpenAICompatible, {"base_url": b.openai_base_url, "name": "alive"})],
        "m", MESSAGES, retries=1, backoff=0.01, sleep=sleep,
    )
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    reply = stream.reply
    assert isinstance(reply, FailoverReply)
    assert reply.provider == "alive" and reply.complete and reply.usage is not None
    assert [a.provider for a in reply.attempts] == ["dead", "dead"]  # retried once: connection errors are retryable
    assert all(a.error.startswith("EndpointUnreachableError") for a in reply.attempts)
    assert len(sleep.delays) == 1 and 0.005 <= sleep.delays[0] <= 0.01
    assert chat_requests(b) == 1


async def test_http_502_everywhere_fails_over_after_retries(servers):
    a, b = servers
    a.set_fault("http_502", count=None)
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url}), (OpenAICompatible, {"base_url": b.openai_base_url})],
        "m", MESSAGES, retries=2, backoff=0.01, max_backoff=0.02,
    )
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    assert chat_requests(a) == 3 and chat_requests(b) == 1
    assert [a_.status for a_ in stream.reply.attempts] == [502, 502, 502]
    assert stream.reply.provider == "OpenAICompatible"


async def test_non_retryable_error_moves_on_at_once(servers):
    a, b = servers
    a.set_fault("http_401", count=None)
    sleep = SleepRecorder()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url, "name": "a"}),
         (OpenAICompatible, {"base_url": b.openai_base_url, "name": "b"})],
        "m", MESSAGES, retries=3, sleep=sleep,
    )
    await run(stream)
    assert chat_requests(a) == 1 and chat_requests(b) == 1
    assert sleep.delays == []
    assert stream.reply.attempts == [Attempt("a", stream.reply.attempts[0].error, 401, 0.0)]
    assert "OPCHAT_API_KEY" in stream.reply.attempts[0].error
    assert stream.reply.provider == "b"


async def test_failure_after_first_chunk_is_not_failed_over(servers):
    a, b = servers
    a.set_fault("disconnect")
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url, "name": "a"}),
         (OpenAICompatible, {"base_url": b.openai_base_url, "name": "b"})],
        "m", MESSAGES, retries=2, backoff=0.01,
    )
    got = []
    with pytest.raises(TruncatedStreamError) as err:
        async for text in stream:
            got.append(text)
    expected_partial = reply_text(MESSAGES)[: 5 * GOOD]
    assert "".join(got) == expected_partial == stream.reply.text
    assert err.value.partial == expected_partial
    assert stream.reply.provider == "a" and not stream.reply.complete and stream.reply.attempts == []
    assert chat_requests(a) == 1 and chat_requests(b) == 0  # never mixed with b's text


async def test_stall_after_first_chunk_is_not_failed_over(servers):
    a, b = servers
    a.set_fault("stall", fault_delay=3.0)
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url, "read_timeout": 0.3}),
         (OpenAICompatible, {"base_url": b.openai_base_url})],
        "m", MESSAGES,
    )
    with pytest.raises(StreamTimeoutError):
        await run(stream)
    assert stream.reply.text == reply_text(MESSAGES)[: 5 * GOOD]
    assert chat_requests(b) == 0


async def test_timeout_before_first_chunk_is_failed_over(servers):
    a, b = servers
    a.set_fault("slow_first_byte", fault_delay=3.0)
    start = time.monotonic()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url, "read_timeout": 0.3}),
         (OpenAICompatible, {"base_url": b.openai_base_url})],
        "m", MESSAGES,
    )
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    assert time.monotonic() - start < 2.5
    assert [x.error.split(":")[0] for x in stream.reply.attempts] == ["StreamTimeoutError"]


async def test_all_fail_raises_last_error_with_attempts(servers, closed_url):
    a, _ = servers
    a.set_fault("http_500", count=None)
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": closed_url, "name": "dead"}),
         (OpenAICompatible, {"base_url": a.openai_base_url, "name": "broken"})],
        "m", MESSAGES, retries=0,
    )
    with pytest.raises(HTTPStatusError) as err:
        await run(stream)
    assert err.value.status == 500
    assert [x.provider for x in stream.reply.attempts] == ["dead", "broken"]
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "dead: EndpointUnreachableError" in notes and "broken: HTTPStatusError" in notes
    assert stream.reply.provider == "" and stream.reply.text == ""


# ---------------------------------------------------------------- retries


async def test_retry_same_provider_then_success_exactly_three_requests(servers):
    a, b = servers
    a.set_fault("http_502", count=2)
    sleep = SleepRecorder()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url}), (OpenAICompatible, {"base_url": b.openai_base_url})],
        "m", MESSAGES, retries=2, backoff=0.5, max_backoff=0.8, sleep=sleep,
    )
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    assert chat_requests(a) == 3 and chat_requests(b) == 0
    assert a.stats.statuses == {502: 2, 200: 1}
    # exponential with equal jitter: retry n waits between half and all of min(max_backoff, backoff * 2**n)
    assert len(sleep.delays) == 2
    assert 0.25 <= sleep.delays[0] <= 0.5
    assert 0.4 <= sleep.delays[1] <= 0.8
    assert [x.delay for x in stream.reply.attempts] == sleep.delays


async def test_429_retry_after_is_honoured_and_bounded(servers):
    a, _ = servers
    # The server says Retry-After: 1; capped here at 0.3 s.
    a.set_fault("http_429", count=2)
    start = time.monotonic()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url})],
        "m", MESSAGES, retries=2, backoff=0.01, max_retry_after=0.3,
    )
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    elapsed = time.monotonic() - start
    assert chat_requests(a) == 3
    assert [x.delay for x in stream.reply.attempts] == [0.3, 0.3]
    assert 0.6 <= elapsed < 5.0  # two 0.3 s waits, not the 0.01 s backoff; loose upper bound for busy CI


async def test_429_retry_after_full_value_when_allowed(servers):
    a, _ = servers
    a.set_fault("http_429", count=1)
    sleep = SleepRecorder()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": a.openai_base_url})], "m", MESSAGES, backoff=0.01, sleep=sleep,
    )
    await run(stream)
    assert sleep.delays == [1.0]  # the server's Retry-After: 1 wins over the 0.01 s backoff


async def test_total_time_is_bounded(closed_url):
    start = time.monotonic()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": closed_url})], "m", MESSAGES,
        retries=50, backoff=0.1, max_backoff=0.2, max_total=0.6,
    )
    with pytest.raises(EndpointUnreachableError):
        await run(stream)
    elapsed = time.monotonic() - start
    assert elapsed < 4.0  # max_total=0.6 s; unbounded, 50 retries would take ~10 s
    assert 2 <= len(stream.reply.attempts) < 10  # stopped by the time budget, not by the 50 retries
    assert stream.reply.attempts[-1].delay == 0.0  # the last one did not sleep past the budget


async def test_backoff_is_capped_by_max_backoff(closed_url):
    sleep = SleepRecorder()
    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": closed_url})], "m", MESSAGES,
        retries=6, backoff=0.5, max_backoff=2.0, sleep=sleep, jitter=lambda d: d,
    )
    with pytest.raises(EndpointUnreachableError):
        await run(stream)
    assert sleep.delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


# ---------------------------------------------------------------- plumbing


def _raising(name, make_error):
    """A provider class whose stream raises ``make_error()`` before its first chunk."""

    async def _stream(cls, model, messages, proxy, reply, **kwargs):
        raise make_error()
        yield  # pragma: no cover

    return type(name, (AsyncGeneratorProvider,), {"_stream": classmethod(_stream)})


_Fails = _raising("_Fails", lambda: ConnectionResetError("reset before anything"))
_Stops = _raising("_Stops", StoppedError)
_Bug = _raising("_Bug", lambda: TypeError("a bug, not a network problem"))


class _Answers(AsyncGeneratorProvider):
    seen = []

    @classmethod
    async def _stream(cls, model, messages, proxy, reply, **kwargs):
        cls.seen.append((model, proxy, kwargs))
        yield "fine"
        reply.complete = True


async def test_bugs_and_stops_are_not_failed_over():
    for first, error in ((_Stops, StoppedError), (_Bug, TypeError)):
        stream = stream_with_failover([first, _Answers], "m", MESSAGES, retries=0)
        with pytest.raises(error):
            await run(stream)


async def test_failover_provider_class_and_kwargs_merge():
    _Answers.seen.clear()
    stream = Failover.create_async_generator(
        "m", MESSAGES, proxy="http://127.0.0.1:1", providers=[_Fails, (_Answers, {"temperature": 0.5})],
        retries=0, temperature=0.1, top_p=0.9,
    )
    assert await run(stream) == ["fine"]
    assert _Answers.seen == [("m", "http://127.0.0.1:1", {"temperature": 0.5, "top_p": 0.9})]
    assert stream.reply.provider == "_Answers" and stream.reply.complete
    assert stream.reply.attempts[0].error == "ConnectionResetError: reset before anything"


async def test_registry_names_are_accepted(servers, monkeypatch):
    _, b = servers
    monkeypatch.setenv("OPCHAT_BASE_URL", b.openai_base_url)
    stream = stream_with_failover(["openai"], "m", MESSAGES)
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    assert stream.reply.provider == "openai"


def test_argument_checks():
    with pytest.raises(ValueError):
        stream_with_failover([], "m", MESSAGES)
    with pytest.raises(ValueError):
        stream_with_failover([_Answers], "m", MESSAGES, retries=-1)
    with pytest.raises(TypeError):
        stream_with_failover([object], "m", MESSAGES)
    from opchat_magic.providers.registry import UnknownProviderError

    with pytest.raises(UnknownProviderError):
        stream_with_failover(["no-such-provider"], "m", MESSAGES)


def _status_error(status, retry_after=None):
    """An HTTPStatusError as providers/http.py makes it: the Retry-After header text on ``.retry_after``."""
    err = HTTPStatusError("http://x", status, "slow down")
    err.retry_after = retry_after
    return err


def test_retry_after_parsing():
    err = _status_error(429, "7")
    assert retry_after_seconds(err) == 7.0
    assert retry_after_seconds(_status_error(429)) is None
    assert retry_after_seconds(HTTPStatusError("http://x", 429, "slow down")) is None  # no attribute at all
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= retry_after_seconds(_status_error(503, date), now=now) <= 31
    assert retry_after_seconds(_status_error(503, "soon")) is None  # unreadable
    err.retry_after = 2
    assert retry_after_seconds(err) == 2.0
    assert is_retryable(HTTPStatusError("http://x", 503, "")) and is_retryable(HTTPStatusError("http://x", 504, ""))
    assert not is_retryable(HTTPStatusError("http://x", 500, ""))
    assert is_retryable(EndpointUnreachableError("http://x", "connection refused"))
    assert not is_retryable(StreamTimeoutError("slow"))


async def test_failover_provider_class_routes_primary_url_to_the_first_only(servers, closed_url, monkeypatch):
    from opchat_magic.providers.failover import failover_provider
    from opchat_magic.providers.openai_compat import LlamaCpp

    a, b = servers
    monkeypatch.setattr(LlamaCpp, "url", b.openai_base_url)  # the fallback's own default URL
    cls = failover_provider([OpenAICompatible, LlamaCpp], retries=0)
    assert cls.__name__ == "Failover[OpenAICompatible, LlamaCpp]"
    assert issubclass(cls, AsyncGeneratorProvider) and cls.url_kwarg == "primary_url"
    assert cls.working and cls.supports_message_history

    # primary_url reaches the first provider only: the fallback keeps its own URL
    stream = cls.create_async_generator("m", MESSAGES, primary_url=closed_url, read_timeout=5)
    assert "".join(await run(stream)) == reply_text(MESSAGES)
    assert stream.reply.provider == "LlamaCpp" and [x.provider for x in stream.reply.attempts] == ["OpenAICompatible"]
    assert chat_requests(b) == 1

    stream = cls.create_async_generator("m", MESSAGES, primary_url=a.openai_base_url)
    await run(stream)
    assert stream.reply.provider == "OpenAICompatible" and chat_requests(a) == 1 and chat_requests(b) == 1
