"""Try several providers in order, with bounded retries, never mixing two replies.

The rule that makes failover safe for a streaming chat: a provider may be
retried, or the next one tried, **only while nothing has been yielded yet**.
Once the first chunk of text is out, that provider owns the reply and any later
error propagates as is (the partial text stays on ``stream.reply.chunks``).

Per provider, errors that usually pass (connection refused or reset, HTTP 429,
502, 503, 504) are retried with exponential backoff and jitter; every other
error before the first chunk (401, 500, an HTML page, a timeout...) moves on to
the next provider at once. Retries are bounded in count (``retries``) and the
whole run in time (``max_total``); a ``Retry-After`` on a 429/503 is honoured
up to ``max_retry_after`` seconds.

Usage::

    stream = stream_with_failover(
        [(OpenAICompatible, {"base_url": "http://127.0.0.1:11434/v1"}), "openai"],
        model, messages,
    )
    async for text in stream: ...
    stream.reply.provider   # who answered
    stream.reply.attempts   # [Attempt(provider, error), ...] that failed before it
"""
from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Type, Union

import aiohttp

from ..errors import EndpointUnreachableError, OpchatError, StoppedError, clean_message
from .base import AsyncGeneratorProvider, Messages, Reply, ReplyStream

__all__ = [
    "Attempt",
    "FailoverReply",
    "Failover",
    "failover_provider",
    "stream_with_failover",
    "RETRY_STATUSES",
    "is_retryable",
    "retry_after_seconds",
]

RETRY_STATUSES = frozenset({429, 502, 503, 504})

ProviderSpec = Union[str, Type[AsyncGeneratorProvider], Tuple[Any, dict]]


@dataclass(frozen=True)
class Attempt:
    """One try that failed before its first chunk."""

    provider: str
    error: str  # "ErrorType: first line of the message" (no secrets: typed errors carry none)
    status: Optional[int] = None
    delay: float = 0.0  # seconds slept after it before the next try


@dataclass
class FailoverReply(Reply):
    """A :class:`Reply` that also says which tries failed before the one that answered."""

    attempts: List[Attempt] = field(default_factory=list)


def _summary(exc: BaseException, limit: int = 300) -> str:
    text = clean_message(str(exc)).strip().splitlines()  # (other providers' errors too: no URL credentials)
    line = text[0] if text else ""
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _status(exc: BaseException) -> Optional[int]:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException, statuses: Iterable[int] = RETRY_STATUSES) -> bool:
    """Connection failures and the given HTTP statuses are worth retrying on the same provider."""
    if isinstance(exc, (EndpointUnreachableError, aiohttp.ClientConnectionError, ConnectionError)):
        return True
    # HTTPStatusError is an aiohttp.ClientResponseError; so are other providers' status errors.
    return isinstance(exc, aiohttp.ClientResponseError) and _status(exc) in set(statuses)


def retry_after_seconds(exc: BaseException, now: Optional[float] = None) -> Optional[float]:
    """The server's ``Retry-After`` for this error, in seconds (None when absent or unreadable).

    Looks for ``exc.retry_after`` (the header as sent, set on :class:`HTTPStatusError`
    by ``providers/http.py``; or seconds) and then a ``Retry-After`` header in
    ``exc.headers``; both delta-seconds and HTTP-date forms are read.
    """
    value = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(exc, "headers", None)
        if headers:
            try:
                value = headers.get("Retry-After")
            except Exception:
                value = None
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(0.0, float(value))
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _resolve(spec: ProviderSpec) -> Tuple[Type[AsyncGeneratorProvider], dict, str]:
    kwargs: dict = {}
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], dict):
            raise TypeError(f"a provider entry must be a class, a name, or (class_or_name, kwargs); got {spec!r}")
        spec, kwargs = spec
    if isinstance(spec, str):
        from .registry import get_provider

        name = spec
        cls = get_provider(spec)
    elif isinstance(spec, type) and issubclass(spec, AsyncGeneratorProvider):
        cls = spec
        name = spec.__name__
    else:
        raise TypeError(f"not a provider: {spec!r}")
    label = kwargs.get("name") or name
    kwargs = {k: v for k, v in kwargs.items() if k != "name"}
    return cls, kwargs, str(label)


# Errors that mean "this try failed, another might not"; anything else (a bug,
# StoppedError, cancellation) propagates at once.
_FAILOVER_ERRORS = (OpchatError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


def stream_with_failover(
    providers: Sequence[ProviderSpec],
    model: Optional[str],
    messages: Messages,
    *,
    proxy: Optional[str] = None,
    retries: int = 2,
    backoff: float = 0.5,
    max_backoff: float = 4.0,
    max_total: float = 60.0,
    max_retry_after: float = 30.0,
    retry_on: Iterable[int] = RETRY_STATUSES,
    jitter: Callable[[float], float] = None,
    sleep: Callable[[float], Any] = None,
    **kwargs: Any,
) -> ReplyStream:
    """Stream one reply from the first provider that starts answering.

    ``providers``: classes, registry names, or ``(class_or_name, kwargs)``
    pairs (a ``"name"`` key in kwargs labels the attempt, e.g. two OpenAI
    endpoints). ``model`` may be None/"" to use each provider's default;
    ``kwargs`` go to every provider (per-provider kwargs win).

    ``retries``: extra tries per provider for retryable errors. The delay before
    retry n (0-based) is ``min(max_backoff, backoff * 2**n)`` with "equal
    jitter" (between half and all of it), or the server's Retry-After when it
    is larger, capped at ``max_retry_after``. Nothing sleeps past ``max_total``
    seconds from the start: when the next delay would, that provider is given up.

    The returned stream's ``reply`` is a :class:`FailoverReply`; ``provider``
    names the provider that answered and ``attempts`` the failed tries before it.
    When every provider fails, the last error is raised (with a note listing
    every attempt on Python 3.11+) and ``reply.attempts`` lists them all.
    """
    if not providers:
        raise ValueError("stream_with_failover needs at least one provider")
    if retries < 0 or backoff < 0 or max_backoff < 0 or max_total <= 0 or max_retry_after < 0:
        raise ValueError("retries, backoff, max_backoff and max_retry_after must be >= 0, max_total > 0")
    resolved = [_resolve(spec) for spec in providers]  # fail fast on an unknown name
    statuses = frozenset(retry_on)
    jitter = jitter or (lambda d: d / 2 + random.uniform(0, d / 2))
    sleep = sleep or asyncio.sleep
    reply = FailoverReply(provider="", model=model or "")
    # Inner streams hand reasoning on; the outer stream filters it as the caller asked.
    wants_reasoning = kwargs.pop("reasoning", False)
    kwargs["reasoning"] = True

    async def run():
        deadline = time.monotonic() + max_total
        last_exc: Optional[BaseException] = None
        for cls, own_kwargs, label in resolved:
            call_kwargs = {**kwargs, **own_kwargs}
            for n in range(retries + 1):
                inner = cls.create_async_generator(model, messages, proxy=proxy, **call_kwargs)
                try:
                    try:
                        first = await inner.__anext__()
                    except StopAsyncIteration:
                        first = None  # an empty but complete reply is an answer too
                    except StoppedError:
                        raise
                    except _FAILOVER_ERRORS as exc:
                        last_exc = exc
                        status = _status(exc)
                        delay = None
                        if n < retries and is_retryable(exc, statuses):
                            delay = min(max_backoff, backoff * (2 ** n))
                            delay = max(0.0, jitter(delay))
                            hinted = retry_after_seconds(exc)
                            if hinted is not None:
                                delay = max(delay, min(hinted, max_retry_after))
                            if time.monotonic() + delay > deadline:
                                delay = None  # would overrun the budget: give this provider up
                        reply.attempts.append(Attempt(label, _summary(exc), status, delay or 0.0))
                        if delay is None:
                            break  # next provider
                        if delay > 0:
                            await sleep(delay)
                        continue
                    # This provider answers: from here on, its errors are the caller's.
                    reply.provider = label
                    reply.model = inner.reply.model or reply.model
                    reply.endpoint = inner.reply.endpoint
                    if first is not None:
                        yield first
                        async for text in inner:
                            yield text
                    _copy_end(inner.reply, reply)
                    return
                finally:
                    await inner.aclose()
            if time.monotonic() >= deadline:
                break
        assert last_exc is not None
        if hasattr(last_exc, "add_note") and len(reply.attempts) > 1:
            last_exc.add_note(
                "Failover tried, in order:\n" + "\n".join(f"  - {a.provider}: {a.error}" for a in reply.attempts)
            )
        raise last_exc

    return ReplyStream(run(), reply, reasoning=wants_reasoning)


def _copy_end(src: Reply, dst: Reply) -> None:
    dst.complete = src.complete
    dst.usage = src.usage
    dst.final = src.final
    dst.model = src.model or dst.model
    dst.endpoint = src.endpoint
    dst.finish_reason = src.finish_reason


class Failover(AsyncGeneratorProvider):
    """:func:`stream_with_failover` behind the provider interface.

    ``Failover.create_async_generator(model, messages, providers=[...], retries=...)``;
    every keyword of :func:`stream_with_failover` is accepted.
    """

    working = True
    supports_stream = True
    supports_message_history = True
    supports_gpt_35_turbo = True

    @classmethod
    def create_async_generator(cls, model, messages, proxy=None, **kwargs) -> ReplyStream:
        providers = kwargs.pop("providers", None)
        if not providers:
            raise ValueError("Failover needs providers=[...]")
        return stream_with_failover(providers, model, messages, proxy=proxy, **kwargs)


def failover_provider(providers: Sequence[ProviderSpec], **options: Any) -> Type[AsyncGeneratorProvider]:
    """A provider class that streams with failover over ``providers`` (used by the magics).

    ``options`` are :func:`stream_with_failover` keywords (``retries``, ``backoff``...)
    or provider kwargs common to all; kwargs given at call time win over them.
    The class's ``url_kwarg`` is ``"primary_url"``: a ``primary_url=`` keyword
    sets the endpoint of the *first* provider only (under that provider's own
    ``url_kwarg``), since pointing every fallback at the primary's URL would
    defeat the failover. Capability flags are those all providers share.
    """
    resolved = [_resolve(spec) for spec in providers]
    if not resolved:
        raise ValueError("failover_provider needs at least one provider")
    labels = [label for _, _, label in resolved]
    specs = [(cls, {**kw, "name": label}) for cls, kw, label in resolved]
    classes = [cls for cls, _, _ in resolved]

    class BoundFailover(Failover):
        url_kwarg = "primary_url"
        url = getattr(classes[0], "url", "") or ""
        working = all(getattr(c, "working", False) for c in classes)
        supports_stream = all(getattr(c, "supports_stream", False) for c in classes)
        supports_message_history = all(getattr(c, "supports_message_history", False) for c in classes)
        supports_gpt_35_turbo = all(getattr(c, "supports_gpt_35_turbo", False) for c in classes)
        supports_images = all(getattr(c, "supports_images", False) for c in classes)
        default_model = ""  # each provider's own default
        provider_names = tuple(labels)

        @classmethod
        def create_async_generator(cls, model, messages, proxy=None, **kwargs) -> ReplyStream:
            primary_url = kwargs.pop("primary_url", None)
            bound = list(specs)
            if primary_url:
                first_cls, first_kwargs = bound[0]
                key = getattr(first_cls, "url_kwarg", "url")
                bound[0] = (first_cls, {**first_kwargs, key: primary_url})
            kwargs.pop("providers", None)
            return stream_with_failover(bound, model, messages, proxy=proxy, **{**options, **kwargs})

    BoundFailover.__name__ = BoundFailover.__qualname__ = f"Failover[{', '.join(labels)}]"
    return BoundFailover
