"""OpenAI-compatible chat completions: OpenAI, Ollama, vLLM, llama.cpp, LM Studio.

``POST {base_url}/chat/completions`` with ``"stream": true`` and
``"stream_options": {"include_usage": true}``; the answer is server-sent events
whose data is a JSON chunk, ending with ``data: [DONE]``::

    data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}
    data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}
    data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}
    data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}
    data: [DONE]

How the stream is read:

* ``choices[0].delta.content`` is yielded when it is a non-empty string; role-only
  and empty deltas are skipped.
* ``usage`` (on any chunk; the last one wins) becomes ``reply.usage``.
* ``finish_reason`` is kept in ``reply.final["finish_reason"]``.
* ``delta.reasoning_content`` (DeepSeek, vLLM), ``delta.reasoning`` (Ollama,
  gpt-oss, newer vLLM) and ``delta.thinking`` become :class:`Reasoning` chunks:
  on ``reply.reasoning``, handed on only to a stream opened with
  ``reasoning=True``. Such keys on outgoing messages are dropped: reasoning is
  never sent back.
* The chunks' ``model`` becomes ``reply.model`` (what the server says it used);
  ``reply.endpoint`` is the URL without credentials.
* A reply is complete only with a ``finish_reason``. ``[DONE]`` or the end of
  the body after one completes it (older llama.cpp omits ``[DONE]``). A stream
  that ends without any ``finish_reason`` (llama-cpp-python cuts a running
  stream with a bare ``data: [DONE]`` when a second request arrives) raises
  :class:`TruncatedStreamError` saying the server cut the reply off, with the
  partial text (possibly none: it cuts before the first token too); a body
  without a single event (llama-cpp-python answers a prompt beyond the context
  with HTTP 200 and an empty body) raises :class:`EmptyReplyError`, which names
  the request's size and how to trim it.
* ``usage.completion_tokens_details.reasoning_tokens`` becomes
  ``reply.usage.reasoning_tokens``; ``reply.usage_reported`` says whether the
  server reported usage at all.
* ``{"error": {...}}`` as an event raises :class:`ServerError`; as a body with an
  HTTP status, :class:`HTTPStatusError` with the server's message. A 401 says
  which variables hold the key, never the key.
* A non-streamed JSON answer (``choices[0].message.content``) is accepted.

Configuration, first match wins:

* base URL: ``base_url=`` > ``OPCHAT_BASE_URL`` > ``OPENAI_BASE_URL`` > the class's
  ``url`` (the aliases' local defaults) > ``https://api.openai.com/v1``
* API key: ``api_key=`` > ``OPCHAT_API_KEY`` > ``OPENAI_API_KEY`` > none (no
  ``Authorization`` header at all: Ollama and llama.cpp need none)
* model: the ``model`` argument > ``OPCHAT_MODEL`` > the class fallback
  (``gpt-4o-mini`` for :class:`OpenAICompatible`; the aliases ask the server's
  ``GET /models`` once per base URL and use the first model it lists)

Other keywords: ``temperature``, ``max_tokens``, ``top_p`` (sent only when
given), ``extra_body`` (a dict merged into the request), ``headers`` (extra
request headers), ``include_usage`` (False drops ``stream_options`` for servers
that reject it), ``session`` (an ``aiohttp.ClientSession`` to reuse),
``connect_timeout`` / ``read_timeout`` (seconds, see ``providers/http.py``).
Unknown keywords are ignored, as in gpt4free, so one kwargs dict can serve
several providers (failover).

Proxies: ``proxy=`` goes to aiohttp; without it ``HTTP_PROXY`` / ``HTTPS_PROXY``
/ ``NO_PROXY`` apply (``trust_env=True``). A custom CA bundle in
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` is used even when set after aiohttp was
imported (aiohttp builds its default SSL context once, at import time).

The API key never appears in a repr, an error message, a log line or the
:class:`Reply`: server messages are passed through ``errors.redact`` and no
error carries the request headers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, AsyncIterator, Optional

import aiohttp

from ..errors import (
    EmptyReplyError,
    HTTPStatusError,
    NotAnEndpointError,
    ServerError,
    StreamError,
    TruncatedStreamError,
    redact,
)
from ..sse import DEFAULT_MAX_LINE_BYTES, EventDecoder, LineDecoder
from .base import AsyncGeneratorProvider, Reasoning, Usage
from .http import (
    MAX_JSON_BODY,
    Timeouts,
    collect_secrets,
    get_json,
    is_event_stream,
    iter_body,
    not_an_endpoint,
    open_post,
    public_url,
    read_body,
    read_first,
    restate,
    session_scope,
    sniff,
    snippet,
)

__all__ = [
    "OpenAICompatible",
    "Ollama",
    "LlamaCpp",
    "LMStudio",
    "VLLM",
    "OPENAI_DEFAULT_BASE_URL",
]

log = logging.getLogger(__name__)

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_ENV = ("OPCHAT_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("OPCHAT_API_KEY", "OPENAI_API_KEY")
MODEL_ENV = "OPCHAT_MODEL"

# Sampling options sent only when the caller gives them.
PASSTHROUGH = ("temperature", "max_tokens", "top_p")

_KEY_HINT = (
    "Check the API key in OPCHAT_API_KEY or OPENAI_API_KEY (or the api_key= argument); "
    "local servers such as Ollama and llama.cpp need none."
)


def _env(names) -> Optional[str]:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class _ModelDefault:
    """``cls.default_model``, read when asked: ``OPCHAT_MODEL`` if set, else the class fallback."""

    def __get__(self, obj, owner) -> str:
        return os.environ.get(MODEL_ENV, "").strip() or (owner.fallback_model or "")


# Delta keys that carry reasoning, by server: DeepSeek/vLLM, Ollama/gpt-oss/vLLM, others.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def _reasoning_of(part: Any) -> Optional[str]:
    """The reasoning text a delta or message carries (the first of REASONING_KEYS set), else None."""
    if isinstance(part, dict):
        for key in REASONING_KEYS:
            value = part.get(key)
            if value and isinstance(value, str):
                return value
    return None


def _outgoing(message: Any) -> Any:
    """``message`` as sent: without reasoning a server or an earlier reply attached to it."""
    if isinstance(message, dict) and any(key in message for key in REASONING_KEYS):
        return {k: v for k, v in message.items() if k not in REASONING_KEYS}
    return message


def _message_chars(message: Any) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def empty_reply_error(url: str, messages: list, what: str) -> EmptyReplyError:
    """The error for an HTTP 200 answer without any text or finish: most likely the context is full."""
    count = len(messages) if isinstance(messages, list) else 0
    chars = sum(_message_chars(m) for m in messages) if count else 0
    tokens = (chars + 3) // 4
    noun = "message" if count == 1 else "messages"
    return EmptyReplyError(
        f"{url} answered HTTP 200 with {what}: no text and no finish_reason. The prompt probably exceeds "
        f"the model's context window (llama.cpp servers answer an over-long prompt like this): the request "
        f"had {count} {noun}, {chars:,} characters, about {tokens:,} tokens. Send less history: "
        f"`%config OpchatMagics.max_history = 6` sends only the last 6 messages (max_history_chars caps "
        f"characters), `%opchat_reset` clears the thread; or load the model with a larger context.",
        messages=count, chars=chars, tokens=tokens,
    )


# ---------------------------------------------------------------- the provider


class OpenAICompatible(AsyncGeneratorProvider):
    """Any server that speaks OpenAI's ``/v1/chat/completions`` with streaming."""

    url: Optional[str] = None  # None: resolve from the environment, then OpenAI's URL
    url_kwarg = "base_url"  # the keyword that sets the endpoint (the magics' OpchatMagics.url)
    working = True
    supports_stream = True
    supports_message_history = True
    supports_gpt_35_turbo = True
    supports_images = True  # user messages may carry image_url content parts (vision models)
    fallback_model: Optional[str] = "gpt-4o-mini"
    default_model = _ModelDefault()
    # Ask GET {base_url}/models for a model when none is given or configured.
    discover_model = False
    _discovered: dict = {}

    # -- configuration --------------------------------------------------------

    @classmethod
    def resolve_base_url(cls, base_url: Optional[str] = None) -> str:
        """``base_url`` > OPCHAT_BASE_URL > OPENAI_BASE_URL > ``cls.url`` > OpenAI; no trailing slash."""
        url = (base_url or "").strip() or _env(BASE_URL_ENV) or cls.url or OPENAI_DEFAULT_BASE_URL
        return url.rstrip("/")

    @classmethod
    def resolve_api_key(cls, api_key: Optional[str] = None) -> Optional[str]:
        """``api_key`` > OPCHAT_API_KEY > OPENAI_API_KEY > None."""
        if api_key is not None and str(api_key).strip():
            return str(api_key).strip()
        return _env(API_KEY_ENV)

    @classmethod
    def build_request(
        cls, model: str, messages: list, *, api_key: Optional[str] = None,
        include_usage: bool = True, extra_body: Optional[dict] = None,
        headers: Optional[dict] = None, **options: Any,
    ) -> "tuple[dict, dict]":
        """The (headers, JSON body) of a streaming request."""
        body: dict = {"model": model, "messages": [_outgoing(m) for m in messages], "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        for name in PASSTHROUGH:
            value = options.get(name)
            if value is not None:
                body[name] = value
        if extra_body:
            body.update(extra_body)
        request_headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if headers:
            request_headers.update(headers)
        if api_key:
            request_headers["Authorization"] = f"Bearer {api_key}"
        return request_headers, body

    # -- streaming ------------------------------------------------------------

    @classmethod
    async def _stream(cls, model, messages, proxy, reply, **kwargs) -> AsyncIterator[str]:
        timeouts = Timeouts.from_kwargs(kwargs, first_event=cls.first_event_timeout)
        session = kwargs.pop("session", None)
        base_url = cls.resolve_base_url(kwargs.pop("base_url", None))
        api_key = cls.resolve_api_key(kwargs.pop("api_key", None))
        include_usage = kwargs.pop("include_usage", True)
        extra_body = kwargs.pop("extra_body", None)
        extra_headers = kwargs.pop("headers", None)
        max_line_bytes = kwargs.pop("max_line_bytes", DEFAULT_MAX_LINE_BYTES)
        options = {name: kwargs.pop(name) for name in PASSTHROUGH if name in kwargs}
        if kwargs:
            log.debug("%s ignores keyword arguments %s", cls.__name__, sorted(kwargs))
        url = base_url + "/chat/completions"
        reply.endpoint = public_url(url)

        async with session_scope(session) as http:
            if not model:
                model = cls.default_model or ""
                if not model and cls.discover_model:
                    model = await cls._discover(http, base_url, api_key, proxy, timeouts)
                model = model or "default"
                reply.model = reply.requested_model = model
            headers, body = cls.build_request(
                model, messages, api_key=api_key, include_usage=include_usage,
                extra_body=extra_body, headers=extra_headers, **options,
            )
            secrets = collect_secrets(headers, proxy, extra=(api_key,))
            try:
                async with open_post(http, url, json=body, headers=headers, proxy=proxy,
                                     timeouts=timeouts, secrets=secrets) as response:
                    if is_event_stream(response):
                        chunks = iter_body(response, url, timeouts)
                    else:
                        first = await read_first(response, url, timeouts)
                        kind = sniff(first)
                        if kind == "json":
                            async for text in _json_answer(response, url, first, timeouts, reply, secrets):
                                yield text
                            return
                        if kind == "empty":
                            raise empty_reply_error(url, messages, "an empty body")
                        if kind != "sse":
                            raise not_an_endpoint(url, response, first, secrets)
                        chunks = iter_body(response, url, timeouts, first=first)
                    try:
                        async for text in _read_events(chunks, url, reply, secrets, max_line_bytes, messages):
                            yield text
                    except TruncatedStreamError as exc:
                        if exc.partial or not reply.chunks:
                            raise
                        # iter_body does not know the text: give the caller what was streamed so far.
                        raise TruncatedStreamError(str(exc), partial=reply.text) from None
                    finally:
                        await chunks.aclose()
            except HTTPStatusError as exc:
                raise _explain_status(exc, base_url, secrets) from None

    @classmethod
    async def list_models(cls, proxy: Optional[str] = None, **kwargs: Any) -> "list[str]":
        """The model ids ``GET {base_url}/models`` lists, in the server's order.

        Same configuration keywords as a chat request (``base_url``, ``api_key``,
        ``headers``, ``session``, timeouts). Errors are the typed ones of a chat
        request: unreachable, HTTP status (401: which variables hold the key),
        and :class:`NotAnEndpointError` for an answer that is not a model list.
        """
        timeouts = Timeouts.from_kwargs(kwargs)
        base_url = cls.resolve_base_url(kwargs.pop("base_url", None))
        api_key = cls.resolve_api_key(kwargs.pop("api_key", None))
        headers = {"Accept": "application/json", **(kwargs.pop("headers", None) or {})}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        url = base_url + "/models"
        secrets = collect_secrets(headers, proxy, extra=(api_key,))
        async with session_scope(kwargs.pop("session", None)) as http:
            try:
                data = await get_json(http, url, headers=headers, proxy=proxy, timeouts=timeouts, secrets=secrets)
            except HTTPStatusError as exc:
                raise _explain_status(exc, base_url, secrets) from None
        models = data.get("data") if isinstance(data, dict) else None
        if isinstance(data, dict) and models is None and isinstance(data.get("models"), list):
            models = data["models"]  # Ollama's native /api/tags shape, served by some proxies
        if not isinstance(models, list):
            raise NotAnEndpointError(
                f"{url} answered JSON that is not a model list ({{\"data\": [{{\"id\": ...}}]}}): "
                f"{redact(snippet(json.dumps(data), 200), secrets)!r}"
            )
        ids = []
        for item in models:
            ident = item.get("id") or item.get("name") if isinstance(item, dict) else item
            if isinstance(ident, str) and ident:
                ids.append(ident)
        return ids

    @classmethod
    async def _discover(cls, http, base_url, api_key, proxy, timeouts) -> str:
        """The first model of ``GET {base_url}/models`` (cached per URL); "" when that fails."""
        cached = cls._discovered.get(base_url)
        if cached:
            return cached
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            async with http.get(base_url + "/models", headers=headers, proxy=proxy,
                                timeout=timeouts.client_timeout()) as response:
                if response.status != 200:
                    return ""
                data = json.loads(await read_body(response, 1 << 20))
            models = data.get("data") if isinstance(data, dict) else None
            first = models[0].get("id") if isinstance(models, list) and models and isinstance(models[0], dict) else None
        except (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError):
            return ""  # the chat request that follows reports the real problem
        if isinstance(first, str) and first:
            cls._discovered[base_url] = first
            return first
        return ""


def _explain_status(exc: HTTPStatusError, base_url: str, secrets) -> HTTPStatusError:
    """Add what to check to the server's message (401: the key variables; 404: the /v1 suffix)."""
    message = redact(str(exc.message), secrets)
    if exc.status == 401:
        message = f"{message}. {_KEY_HINT}"
    elif exc.status == 404 and not base_url.endswith("/v1"):
        message = (f"{message}. Is the base URL complete? OpenAI-compatible servers usually "
                   f"serve under /v1 (e.g. {base_url}/v1).")
    return restate(exc, message)


def _error_text(error: Any, secrets) -> str:
    if isinstance(error, dict):
        message = error.get("message") or error.get("type") or json.dumps(error)[:300]
        code = error.get("code")
        if isinstance(code, str) and code and code not in str(message):
            message = f"{message} ({code})"
    else:
        message = error
    return redact(snippet(str(message), 500), secrets)


def _final(obj: dict, final: Optional[dict]) -> dict:
    if final is None:
        final = {"id": None, "model": None, "finish_reason": None, "usage": None, "done": False}
    for key in ("id", "model", "system_fingerprint"):
        value = obj.get(key)
        if value is not None:
            final[key] = value
    return final


def _choice_texts(choice: Any) -> "tuple[Optional[str], Optional[str], Optional[str]]":
    """(content, reasoning, finish_reason) of one streamed choice; None where absent."""
    if not isinstance(choice, dict):
        return None, None, None
    delta = choice.get("delta")
    content = reasoning = None
    if isinstance(delta, dict):
        content = delta.get("content")
        if not (content and isinstance(content, str)):
            content = None
        reasoning = _reasoning_of(delta)
    reason = choice.get("finish_reason")
    return content, reasoning, reason if reason and isinstance(reason, str) else None


def _cut_off(url: str, reply, how: str) -> TruncatedStreamError:
    text = reply.text
    when = f"after {len(text):,} characters" if text else "before any text"
    return TruncatedStreamError(
        f"the server at {url} cut the reply off: the stream ended {how} without a finish_reason, {when}; "
        f"the reply is incomplete (llama.cpp servers end a running stream like this when another request "
        f"arrives). Retry it.",
        partial=text,
    )


async def _read_events(chunks, url: str, reply, secrets, max_line_bytes: int, messages=()) -> AsyncIterator[str]:
    """Decode the event stream and yield content (and Reasoning); sets reply.complete / usage / final."""
    lines = LineDecoder(max_line_bytes)
    events = EventDecoder()
    decode_lines = lines.decode
    decode_event = events.decode
    check = lines.raise_pending
    loads = json.loads
    final: Optional[dict] = None
    finish_reason = None

    def parse(event) -> dict:
        data = event.data
        try:
            obj = loads(data)
        except ValueError:
            what = "whose data is not JSON"
        else:
            if isinstance(obj, dict):
                return obj
            what = "that is not a JSON object"
        raise StreamError(f"{url} sent an event {what}: {redact(snippet(data, 200), secrets)!r}",
                          line=redact(data, secrets))

    def finished(done: bool):
        nonlocal final
        final = _final({}, final)
        final["finish_reason"] = finish_reason
        final["done"] = done
        reply.final = final
        reply.finish_reason = finish_reason
        reply.complete = True

    def nothing_came() -> bool:
        return not reply.chunks and not reply.reasoning_chunks

    async for chunk in chunks:
        for line in decode_lines(chunk):
            event = decode_event(line)
            if event is None:
                continue
            data = event.data
            if data == "[DONE]":
                if finish_reason:
                    finished(True)
                    return
                # Measured on llama-cpp-python: a second request cuts a running stream like this,
                # even before its first token; an over-long prompt gets an empty body instead.
                raise _cut_off(url, reply, "with a bare data: [DONE]")
            obj = parse(event)
            error = obj.get("error")
            if error is not None or event.event == "error":
                raise ServerError(f"{url} reported an error mid-stream: {_error_text(error or obj, secrets)}")
            if final is None:
                final = _final(obj, None)
                model = obj.get("model")
                if model and isinstance(model, str):
                    reply.model = model
            choices = obj.get("choices")
            if choices:
                choice = choices[0]
                if isinstance(choice, dict):
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        content = delta.get("content")
                        if content and isinstance(content, str):
                            yield content
                        else:  # off the hot path: reasoning deltas carry no content
                            thought = _reasoning_of(delta)
                            if thought:
                                yield Reasoning(thought)
                    reason = choice.get("finish_reason")
                    if reason:
                        finish_reason = reason
            usage = obj.get("usage")
            if usage:
                reply.usage = Usage.from_dict(usage)
                final["usage"] = usage
        check()  # invalid UTF-8 in this chunk: raised now, after the text before it (as aiter_events)

    # The body ended without [DONE]. The SSE spec drops an event whose blank line
    # never came; a server that closes right after "data: [DONE]\n" still meant it.
    for line in lines.flush():
        decode_event(line)
    event = decode_event("")
    bare_done = event is not None and event.data == "[DONE]"
    if event is not None and not bare_done:
        try:
            obj = json.loads(event.data)
        except ValueError:
            obj = None  # a line cut by the close: truncation, reported below
        if isinstance(obj, dict) and obj.get("error") is None:
            for choice in (obj.get("choices") or [])[:1]:
                content, thought, reason = _choice_texts(choice)
                if thought:
                    yield Reasoning(thought)
                if content:
                    yield content
                finish_reason = reason or finish_reason
            if obj.get("usage"):
                reply.usage = Usage.from_dict(obj["usage"])
    if finish_reason:
        finished(bare_done)
        return
    if final is None and not bare_done and nothing_came():  # not a single event: the empty 200
        raise empty_reply_error(url, messages, "an empty body")
    raise _cut_off(url, reply, "with a bare data: [DONE]" if bare_done else "without [DONE]")


async def _json_answer(response, url, first, timeouts, reply, secrets) -> AsyncIterator[str]:
    """A whole ``chat.completion`` JSON object instead of a stream."""
    try:  # network failures typed by iter_body: StreamTimeoutError, TruncatedStreamError
        body = await read_body(response, MAX_JSON_BODY, first, url=url, timeouts=timeouts)
    except ValueError:
        raise NotAnEndpointError(f"{url} answered with more than {MAX_JSON_BODY} bytes of JSON") from None
    try:
        obj = json.loads(body)
    except ValueError:
        raise TruncatedStreamError(
            f"the JSON answer from {url} is incomplete or invalid: {redact(snippet(body.decode('utf-8', 'replace'), 200), secrets)!r}",
            partial="",
        ) from None
    if not isinstance(obj, dict):
        raise not_an_endpoint(url, response, body, secrets, expected="a chat.completion JSON or a")
    if obj.get("error") is not None:
        raise ServerError(f"{url} answered with an error: {_error_text(obj['error'], secrets)}")
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    message = choice.get("message") if choice else None
    content = message.get("content") if isinstance(message, dict) else None
    if choice is None or not (content is None or isinstance(content, str)):
        raise not_an_endpoint(url, response, body, secrets, expected="a chat.completion JSON or a")
    thought = _reasoning_of(message)
    if thought:
        yield Reasoning(thought)
    if content:
        yield content
    final = _final(obj, None)
    final["finish_reason"] = choice.get("finish_reason")
    final["usage"] = obj.get("usage")
    final["streamed"] = False
    if isinstance(obj.get("model"), str) and obj["model"]:
        reply.model = obj["model"]
    reply.finish_reason = final["finish_reason"]
    reply.usage = Usage.from_dict(obj.get("usage"))
    reply.final = final
    reply.complete = True


# ---------------------------------------------------------------- local servers


class _LocalServer(OpenAICompatible):
    """A local server: no fallback model name; the model comes from ``GET /models``."""

    fallback_model = None
    discover_model = True


class Ollama(_LocalServer):
    """Ollama's OpenAI-compatible endpoint (``ollama serve``)."""

    url = "http://127.0.0.1:11434/v1"


class LlamaCpp(_LocalServer):
    """llama.cpp's ``llama-server`` (any model name is accepted; it serves the one it loaded)."""

    url = "http://127.0.0.1:8080/v1"


class LMStudio(_LocalServer):
    """LM Studio's local server."""

    url = "http://127.0.0.1:1234/v1"


class VLLM(_LocalServer):
    """vLLM's OpenAI-compatible server (``vllm serve MODEL``)."""

    url = "http://127.0.0.1:8000/v1"
