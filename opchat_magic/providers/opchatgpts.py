"""``Opchatgpts``: the AI Engine (WordPress "mwai-ui") chat endpoint, as in gpt4free.

The public face is the gpt4free provider's (same class attributes, same
``create_async_generator(model, messages, proxy=None, **kwargs)``, same request);
the stream handling is stricter: every way a stream can be wrong is a typed
error from :mod:`opchat_magic.errors`, never a silent partial success. The wire
protocol is described in ``PROTOCOL.md``.

Stream rules (one ``data:`` line of JSON per event):

======================================  =========================================================
event                                   what happens
======================================  =========================================================
``live``, no ``subtype`` or ``content``  its ``data`` string is yielded
``live`` with subtype ``thinking``       a :class:`Reasoning` chunk (see ``providers/base.py``)
``live`` with another subtype           ignored (``status``, ``debug``...), counted
``end``                                 its ``data`` (a JSON string, or an object) becomes
                                        ``reply.final``; ``reply.usage`` and ``reply.complete``
                                        are set and reading stops. If no text was streamed,
                                        ``final["reply"]`` is yielded once. ``success: false``
                                        raises :class:`ServerError`.
``error``                               :class:`ServerError` with the server's message
an unknown ``type``                     ignored, for forward compatibility, and counted
not JSON / no ``type`` / not an object  :class:`StreamError` naming the line (``.line``)
``live`` without string ``data``        :class:`StreamError` naming the line
the body ends before ``end``            :class:`TruncatedStreamError` (``.partial`` = text so far)
======================================  =========================================================

Ignored events are counted in ``reply.final["_ignored_events"]`` (``{"mystery": 1,
"live/thinking": 12}``), a key present only when something was ignored; the
rest of ``reply.final`` is the server's payload as sent.

Bodies that are not event streams are recognised by their first bytes (some
PHP hosts label a stream ``text/html``): a JSON object (the non-streamed answer
``{success, reply, usage}``) is accepted and yielded once; an HTML page or
anything else raises :class:`NotAnEndpointError`; an empty body raises
:class:`TruncatedStreamError`. Connection failures, timeouts and HTTP errors are
mapped by :mod:`opchat_magic.providers.http`. A :class:`StreamTimeoutError`
raised mid-stream also carries ``.partial``.

Keep-alive comments (``: ping``) do not count as events: a stream that only
sends keep-alives for ``read_timeout`` seconds after an event (or
``first_event_timeout`` before the first) ends with :class:`StreamTimeoutError`
naming the wait. Both default to 310 s: the plugin gives its model 300 s and sends nothing while it waits.

Before any text, a turn may take up to two more requests, each at most once:
a site given by its bare URL that turns out to have plain permalinks (its
``/wp-json/`` is a web page) is asked again at the REST root that page's
``Link`` header names (or ``?rest_route=/``); a site that refuses the nonce
(401 ``rest_forbidden``: none; 403 ``rest_cookie_invalid_nonce``: stale) gets
a fresh one from ``start_session`` and the turn is sent again. Both are
remembered per site (:mod:`.wordpress`), so later turns take one request.
"""
from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Optional

# Only the errors that need no aiohttp: importing this module stays cheap (the
# registry lists providers without a request); HTTPStatusError and .http are
# imported where a request is made.
from ..errors import ServerError, SSEDecodeError, StreamTimeoutError, TruncatedStreamError
from .base import AsyncGeneratorProvider, Messages, Reasoning, Reply, ReplyStream, Usage
from .aiengine_answer import (
    AUTO, DEFAULT_READ_TIMEOUT, INPUT_LIMIT, NO_NONCE,
    bad_live, count_ignored, decode_slow, error_text, parse_end, refuse_empty,
    sniff_body,
)
from .aiengine_site import open_submit
from .wordpress import Endpoint, SiteCache

__all__ = ["Opchatgpts", "SUBMIT_PATH", "SESSION_PATH", "random_chat_id", "validate_messages"]

SUBMIT_PATH = "/wp-json/mwai-ui/v1/chats/submit"  # on a pretty-permalink site; see wordpress.py
SESSION_PATH = "/wp-json/mwai/v1/start_session"
REFERER_PATH = "/chatgpt-free-use/"

_CHAT_ID_CHARS = string.ascii_lowercase + string.digits

# The C scanner under json.loads (strict: raw control characters are errors, as in loads).
_scan_once = json.JSONDecoder().scan_once


def random_chat_id(length: int = 10) -> str:
    """A new conversation id: ``length`` characters of ``[a-z0-9]`` (gpt4free's get_random_string)."""
    return "".join(random.choices(_CHAT_ID_CHARS, k=length))


def validate_messages(messages: Any) -> None:
    """Raise ``TypeError``/``ValueError`` naming what is wrong with ``messages``."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(
            f"messages must be a list of {{'role': str, 'content': str}} dicts, not {type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages is empty: at least one message is needed (the last one is sent as newMessage)")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', not {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"messages[{i}] has no {key!r} key")
            if not isinstance(message[key], str):
                raise TypeError(f"messages[{i}][{key!r}] must be a str, not {type(message[key]).__name__}")


def _refuse_images(messages: Any) -> None:
    """AI Engine's chat endpoint takes text only: say so before anything is sent."""
    from ..images import count_images, not_supported

    count = count_images(messages) if isinstance(messages, (list, tuple)) else 0
    if count:
        raise not_supported(Opchatgpts.images_refusal, count)


@dataclass
class _Request:
    """Everything one turn sends, resolved and validated before the first await."""

    endpoint: Endpoint  # where (the site, its REST root; a guessed root may move once)
    headers: dict  # without X-WP-Nonce: the nonce is added per attempt
    payload: dict
    nonce: Any  # AUTO, NO_NONCE, or the nonce string the caller gave
    session: Any
    timeouts: Any
    secrets: tuple = ()

    @property
    def url(self) -> str:
        return self.endpoint.submit_url




class Opchatgpts(AsyncGeneratorProvider):
    """The opchatgpts.net chatbot (WordPress + AI Engine), or any AI Engine site.

    ``working = False``: opchatgpts.net itself is offline (it no longer answers
    the endpoint), as gpt4free marks it. Point the provider at a live AI Engine
    site or at the local server with ``url=`` / ``OPCHAT_URL`` /
    ``Opchatgpts.url = ...``.

    Keywords of :meth:`create_async_generator` (unknown ones are ignored, as in
    gpt4free, so one kwargs dict can serve several providers):

    url              the site URL, its REST root (``.../wp-json/``, ``.../?rest_route=/``) or the
                     full submit URL; default: env ``OPCHAT_URL``, else the class's ``url``.
                     From a bare site URL the REST root is found out once per site (plain-permalink
                     sites answer ``/wp-json/`` with a web page whose ``Link`` header names it)
    bot_id           ``botId`` (default ``"default"``; the plugin answers an unknown id with ``default``)
    context_id       ``contextId``, the WordPress post whose text a content-aware bot reads; default
                     None, as the plugin's own chatbot sends outside a post (opchatgpts.net's page was 28)
    custom_id        ``customId`` (default None)
    chat_id          ``chatId``: the discussion this turn belongs to (one per conversation, so the
                     site's Discussions keep one discussion per thread); default a new random id
    nonce            unset / None / ``"auto"``: the site's REST nonce, fetched from ``start_session``
                     the first time the site asks for one (401), cached per site, replaced by an
                     ``end`` event's ``new_token``, refreshed once on a 401/403 nonce refusal;
                     a string: that nonce; ``False`` or ``""``: no ``X-WP-Nonce`` at all
    headers          extra request headers (merged over the browser-like defaults)
    session          an ``aiohttp.ClientSession`` to reuse (else one per call, closed after)
    connect_timeout  seconds to connect (default 10; None: no limit)
    read_timeout     seconds without any byte before giving up (default 310: the plugin waits up
                     to 300 s for its model and sends nothing meanwhile; None: no limit)

    Messages: the last one is the new message (``newMessage``); the ones before it
    are the history (``messages``). The plugin appends ``newMessage`` itself, so
    the model sees the thread once, in order.
    """

    url = "https://opchatgpts.net"
    working = False
    images_refusal = "AI Engine's chat endpoint (provider opchatgpts)"  # it takes text only
    input_limit = INPUT_LIMIT  # longest message a default chatbot takes (explain requests fit it)
    supports_message_history = True
    supports_gpt_35_turbo = True
    supports_stream = True
    default_model = "gpt-3.5-turbo"
    # The plugin gives its model 300 s and sends nothing meanwhile: never abandon that wait.
    first_event_timeout = DEFAULT_READ_TIMEOUT

    # What this process learnt about sites (REST roots, nonces); shared by every call.
    sites = SiteCache()
    # Keywords the settings fill in (OpchatSettings.bot_id / .context_id).
    site_options = ("bot_id", "context_id")

    # ---------------------------------------------------------------- request

    @classmethod
    def resolve_url(cls, url: Optional[str] = None) -> str:
        """The site base URL: ``url`` > env ``OPCHAT_URL`` > ``cls.url``; no trailing slash.

        A REST root or a full submit URL is accepted too (it names its site).
        """
        return cls.endpoint(url).site

    @classmethod
    def endpoint(cls, url: Optional[str] = None) -> Endpoint:
        """Where ``url`` (> env ``OPCHAT_URL`` > ``cls.url``) sends turns, as far as known now."""
        base = url or os.environ.get("OPCHAT_URL") or cls.url
        if not isinstance(base, str) or not base.strip():
            raise ValueError("no URL: pass url=..., set OPCHAT_URL, or set Opchatgpts.url")
        return cls.sites.endpoint(base)

    @classmethod
    def build_headers(cls, base_url: str) -> dict:
        """The original provider's browser-like headers (PROTOCOL.md)."""
        from .http import BROWSER_USER_AGENT

        return {
            "User-Agent": BROWSER_USER_AGENT,
            "Accept": "*/*",
            "Origin": base_url,
            "Referer": base_url + REFERER_PATH,
            "Sec-Fetch-Dest": "empty",
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Site": "same-origin",
        }

    @classmethod
    def build_payload(cls, messages: Messages, *, bot_id: str = "default", context_id: Any = None,
                      custom_id: Any = None, chat_id: Optional[str] = None) -> dict:
        """The submit body, field for field as the plugin's own chatbot sends it.

        ``messages`` is the history *before* the new message, ``newMessage`` the
        new one (the last of ``messages``): the plugin appends it itself.
        """
        return {
            "botId": bot_id,
            "chatId": chat_id if chat_id is not None else random_chat_id(),
            "contextId": context_id,
            "customId": custom_id,
            "messages": [dict(m) for m in messages[:-1]],
            "newMessage": messages[-1]["content"],
            "newFileId": None,
            "session": "N/A",
            "stream": True,
        }

    @classmethod
    def _prepare(cls, messages: Messages, proxy: Optional[str], kwargs: dict) -> _Request:
        from .http import DEFAULT_CONNECT_TIMEOUT, Timeouts, collect_secrets

        _refuse_images(messages)
        validate_messages(messages)
        if not messages[-1]["content"].strip():
            raise ValueError(
                "the new message (the last of messages) is empty: AI Engine rejects an empty or "
                "whitespace-only message (403 \"Sorry, your query has been rejected.\")"
            )
        endpoint = cls.endpoint(kwargs.get("url"))
        bot_id = kwargs.get("bot_id", "default")
        if not isinstance(bot_id, str):
            raise TypeError(f"bot_id must be a str, not {type(bot_id).__name__}")
        chat_id = kwargs.get("chat_id")
        if chat_id is not None and not isinstance(chat_id, str):
            raise TypeError(f"chat_id must be a str or None, not {type(chat_id).__name__}")
        nonce = kwargs.get("nonce")
        if nonce is None or nonce == AUTO:
            nonce = AUTO
        elif nonce is False or nonce == "":
            nonce = NO_NONCE
        elif not isinstance(nonce, str):
            raise TypeError(
                f"nonce must be None/'auto' (fetched when needed), False (none) or the nonce string, "
                f"not {type(nonce).__name__}"
            )
        headers = cls.build_headers(endpoint.origin)
        extra = kwargs.get("headers")
        if extra:
            headers.update(extra)
        payload = cls.build_payload(
            messages,
            bot_id=bot_id,
            context_id=kwargs.get("context_id"),
            custom_id=kwargs.get("custom_id"),
            chat_id=chat_id,
        )
        timeouts = Timeouts(kwargs.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
                            kwargs.get("read_timeout", DEFAULT_READ_TIMEOUT),
                            # (an explicit read_timeout bounds the first wait too, unless first_event_timeout is given)
                            kwargs.get("first_event_timeout", kwargs["read_timeout"] if "read_timeout" in kwargs
                                       else cls.first_event_timeout))
        given = (nonce,) if nonce not in (AUTO, NO_NONCE) else ()
        return _Request(
            endpoint=endpoint,
            headers=headers,
            payload=payload,
            nonce=nonce,
            session=kwargs.get("session"),
            timeouts=timeouts,
            secrets=collect_secrets(headers, proxy, extra=given),
        )

    @classmethod
    def create_async_generator(
        cls, model: str, messages: Messages, proxy: Optional[str] = None, **kwargs: Any
    ) -> ReplyStream:
        """A :class:`ReplyStream` of the reply's text chunks (``stream.reply`` holds the rest).

        Arguments are checked here, before anything is sent: bad ``messages``
        raise ``TypeError``/``ValueError`` at once, not on the first chunk.
        """
        kwargs["_request"] = cls._prepare(messages, proxy, kwargs)
        return super().create_async_generator(model, messages, proxy, **kwargs)

    @classmethod
    async def list_models(cls, proxy: Optional[str] = None, **kwargs: Any) -> "list[str]":
        """AI Engine has no model listing: the site's chatbot (``bot_id``) decides the model."""
        from ..errors import ModelListingUnsupportedError

        raise ModelListingUnsupportedError(
            "AI Engine's chat endpoint has no model listing: the WordPress site's chatbot settings "
            "(bot_id) choose the model, and the request's model argument is not sent."
        )

    # ---------------------------------------------------------------- stream

    @classmethod
    async def _stream(cls, model, messages, proxy, reply: Reply, **kwargs) -> AsyncIterator[str]:
        from contextlib import AsyncExitStack

        from ..sse import aiter_events
        from .http import iter_body, public_url, session_scope

        req: _Request = kwargs.get("_request") or cls._prepare(messages, proxy, kwargs)
        url = req.url
        try:
            async with session_scope(req.session) as session, AsyncExitStack() as stack:
                response, first, secrets = await open_submit(cls.sites, session, req, proxy, stack)
                url = req.url
                # AI Engine never sends the model argument, nor says which model answered: the
                # site's chatbot chooses. No model is shown rather than one that was not used.
                reply.model = ""
                # Safe to show; a plain-permalink site's route is in its query string, and is kept.
                reply.endpoint = public_url(url) + ("?rest_route=" + url.split("rest_route=", 1)[1]
                                                    if "rest_route=" in url else "")
                if first is not None:  # not labelled an event stream: its first bytes decide
                    first = await sniff_body(response, url, req, secrets, reply, first)
                    if first is None:  # a complete non-streamed answer, now in reply.final
                        refuse_empty(reply.final, reply, url, req)
                        cls._keep_new_token(req, reply.final)
                        text = reply.final.get("reply")
                        if text:
                            yield text
                        return
                body = iter_body(response, url, req.timeouts, first=first or b"")
                events = aiter_events(body)
                # The hot loop. Per event: one JSON parse, a "type" check, a yield;
                # everything unusual leaves the fast path. What was yielded is on
                # reply.chunks (ReplyStream appends each chunk before asking for the next).
                scan = _scan_once
                ignored = None
                try:
                    async for event in events:
                        data = event.data
                        # json.loads minus its wrappers: the C scanner parses one
                        # value at index 0; anything unusual (whitespace around
                        # it, trailing data, broken JSON, no "type") takes the
                        # slow path, which decides with json.loads itself.
                        try:
                            obj, end = scan(data, 0)
                            kind = obj["type"] if end == len(data) else None
                        except Exception:
                            kind = None
                        if kind is None:
                            obj, kind = decode_slow(data, url, secrets)
                        if kind == "live":
                            text = obj.get("data")
                            if text.__class__ is str and "subtype" not in obj:
                                yield text
                                continue
                            if not isinstance(text, str):
                                raise bad_live(data, url, secrets)
                            subtype = obj.get("subtype")
                            if subtype is None or subtype == "content":
                                yield text
                                continue
                            if subtype == "thinking":
                                yield Reasoning(text)
                                continue
                            ignored = count_ignored(ignored, f"live/{subtype}")
                        elif kind == "end":
                            final = parse_end(obj, data, url, secrets)
                            if ignored:
                                final["_ignored_events"] = ignored
                            refuse_empty(final, reply, url, req)
                            reply.final = final
                            reply.usage = Usage.from_dict(final.get("usage"))
                            reply.complete = True
                            cls._keep_new_token(req, final)
                            text = final.get("reply")
                            if not reply.chunks and isinstance(text, str) and text:
                                yield text
                            return
                        elif kind == "error":
                            raise ServerError(error_text(obj.get("data"), url, secrets, req))
                        else:  # unknown: ignored for forward compatibility, counted
                            ignored = count_ignored(ignored, kind if isinstance(kind, str) else repr(kind))
                finally:
                    await events.aclose()
                    await body.aclose()
                raise TruncatedStreamError(
                    f"the stream from {url} ended before its end event: the server cut the reply off"
                    + (f" ({len(reply.chunks)} chunks received)" if reply.chunks else " (no text received)"),
                    partial=reply.text,
                )
        except SSEDecodeError as exc:  # name the URL: the decoder does not know it
            raise SSEDecodeError(f"broken stream from {url}: {exc}", line=exc.line) from None
        except (TruncatedStreamError, StreamTimeoutError) as exc:
            if not getattr(exc, "partial", ""):
                exc.partial = reply.text
            raise

    @classmethod
    def _keep_new_token(cls, req: _Request, final: Optional[dict]) -> None:
        """An ``end`` payload's ``new_token`` replaces the site's cached nonce."""
        token = final.get("new_token") if isinstance(final, dict) else None
        if isinstance(token, str) and token and req.nonce != NO_NONCE:
            cls.sites.set_nonce(req.endpoint, token)

