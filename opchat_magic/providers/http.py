"""HTTP helpers shared by the streaming providers (AI Engine, OpenAI-compatible).

Everything a provider needs between "I have a URL and a JSON payload" and "I
have the body's bytes", with every failure mapped to a typed error of
:mod:`opchat_magic.errors`:

===============================================  ==============================================
what happens                                     what the caller gets
===============================================  ==============================================
connection refused, DNS failure, TLS failure,    :class:`EndpointUnreachableError` (URL, reason,
server closed the socket before answering        and the "how to point at an endpoint" hint)
no connection within ``connect_timeout``         :class:`StreamTimeoutError` ("connect ... N s")
no response headers / no body bytes for          :class:`StreamTimeoutError` ("no bytes ... N s")
``read_timeout`` seconds (an *idle* timeout,
not a total one: a long reply never times out
while bytes keep coming)
HTTP status >= 400                               :class:`HTTPStatusError` whose message is the
                                                 server's JSON ``message`` / ``error.message``,
                                                 or a short snippet of a text body
the connection broke mid-body                    :class:`TruncatedStreamError`
an invalid URL                                   ``ValueError``
===============================================  ==============================================

aiohttp's own ``ClientResponseError`` is never let out: its ``request_info``
carries the request headers, i.e. API keys, into every repr and traceback.
Text built from server responses goes through :func:`opchat_magic.errors.redact`
with the request's secrets (Authorization, API-key and nonce headers, and the
proxy password are collected automatically).

Typical use (see ``opchatgpts.py``)::

    timeouts = Timeouts.from_kwargs(kwargs)          # pops connect_timeout= / read_timeout=
    async with session_scope(session) as s:          # the caller's session, or a new one
        async with open_post(s, url, json=payload, headers=headers,
                             proxy=proxy, timeouts=timeouts) as response:
            if not is_event_stream(response): ...
            async for chunk in iter_body(response, url, timeouts):
                ...

Timeouts are aiohttp's ``sock_connect``/``connect`` and ``sock_read``
(``ClientTimeout(total=None, ...)``), set per request so they apply to a shared
session too. ``sock_read`` is re-armed by aiohttp in ``data_received`` (once per
network read, not per event) and dropped while reading is paused for
back-pressure, so a slow consumer never trips it. It measured faster than
wrapping every read in ``asyncio.wait_for`` (which creates a task per read).
"""
from __future__ import annotations

import asyncio
import errno
import os
import ssl
import threading
import json as _json
import re
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Mapping, Optional

import aiohttp

from ..errors import (
    CredentialsConflictError,
    EndpointUnreachableError,
    HTTPStatusError,
    NotAnEndpointError,
    StreamTimeoutError,
    TruncatedStreamError,
    ENDPOINT_HINT,
    redact,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "BROWSER_USER_AGENT",
    "Timeouts",
    "session_scope",
    "open_post",
    "post_json",
    "get_json",
    "open_request",
    "iter_body",
    "read_body",
    "read_first",
    "MAX_JSON_BODY",
    "MAX_ERROR_BODY",
    "is_event_stream",
    "media_type",
    "sniff",
    "collect_secrets",
    "error_message",
    "snippet",
    "public_url",
    "not_an_endpoint",
    "restate",
    "ssl_context_from_env",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to establish the connection (TCP, proxy CONNECT and TLS)."""

DEFAULT_READ_TIMEOUT = 60.0
"""Seconds without a single byte (response headers or body) before giving up.

Generous because a model may think for a while before its first token; it is an
idle timeout, so long replies are fine as long as bytes keep coming."""

BROWSER_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/116.0.0.0 Safari/537.36"
)

# Error bodies and non-streamed JSON answers are read up to these sizes.
MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 32 * 1024 * 1024

# getaddrinfo failures (name unknown, temporary failure, no address) as aiohttp's os_error.errno.
_EAI_CODES = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_AGAIN", "EAI_NODATA", "EAI_FAIL") if hasattr(socket, name)
)

_SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-wp-nonce", "cookie", "x-goog-api-key"}
)


# ---------------------------------------------------------------- timeouts

_SAME = type("_Same", (), {"__repr__": lambda self: "<as read>"})()


def _check_timeout(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{name} must be > 0 seconds (or None for no limit), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Timeouts:
    """Connect, idle and first-event timeouts in seconds; ``None`` means no limit.

    ``read``: the longest wait between two events of a stream (between any two
    bytes of another body); keep-alive comments do not count, so a server that
    only sends ``: ping`` is abandoned. ``first_event``: the longest wait for
    the first event (a model may think before it says anything); by default
    the same as ``read``. Both are measured only while waiting on the network
    (see :func:`iter_body`): a slow consumer never trips them.
    """

    connect: Optional[float] = DEFAULT_CONNECT_TIMEOUT
    read: Optional[float] = DEFAULT_READ_TIMEOUT
    first_event: Any = _SAME  # _SAME: as read

    def __post_init__(self):
        object.__setattr__(self, "connect", _check_timeout("connect_timeout", self.connect))
        object.__setattr__(self, "read", _check_timeout("read_timeout", self.read))
        first = self.read if self.first_event is _SAME else self.first_event
        object.__setattr__(self, "first_event", _check_timeout("first_event_timeout", first))

    @classmethod
    def from_kwargs(cls, kwargs: dict, *, pop: bool = True, first_event: Optional[float] = None) -> "Timeouts":
        """Build from ``connect_timeout=`` / ``read_timeout=`` / ``first_event_timeout=`` in
        ``kwargs`` (popped by default).

        Absent keys keep the defaults (``first_event``: ``read`` when ``read_timeout``
        is given, else the provider's class-level ``first_event_timeout`` passed
        here, else ``read``); an explicit ``None`` in ``kwargs`` disables that timeout.
        """
        get = kwargs.pop if pop else kwargs.get
        connect = get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        given_read = "read_timeout" in kwargs  # an explicit read_timeout bounds the first wait too
        read = get("read_timeout", DEFAULT_READ_TIMEOUT)
        first = get("first_event_timeout", _SAME if first_event is None or given_read else first_event)
        return cls(connect, read, first)

    def client_timeout(self) -> aiohttp.ClientTimeout:
        """aiohttp timeouts: no total limit (streams are long), connect, and a socket idle
        bound that is the longer of the two event waits (the event watchdog is the exact one)."""
        sock_read = None if self.read is None or self.first_event is None else max(self.read, self.first_event)
        return aiohttp.ClientTimeout(
            total=None, connect=self.connect, sock_connect=self.connect, sock_read=sock_read
        )


# ---------------------------------------------------------------- secrets and messages


def collect_secrets(headers: Optional[Mapping[str, str]] = None, proxy: Any = None,
                    extra: Iterable[Optional[str]] = ()) -> tuple:
    """The strings that must never appear in an error: sensitive header values, proxy password."""
    secrets = [s for s in extra if s]
    for name, value in (headers or {}).items():
        if isinstance(value, str) and name.lower() in _SENSITIVE_HEADERS:
            secrets.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                secrets.append(token.strip())
    if proxy is not None:
        try:
            from yarl import URL

            password = URL(str(proxy)).password
        except Exception:
            password = None
        if password:
            secrets.append(password)
    # Longest first, so a token inside a longer header value is not half-replaced.
    return tuple(sorted(set(secrets), key=len, reverse=True))


def snippet(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis and the full length if cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"


def public_url(url: str) -> str:
    """``url`` safe to show (a footer, a reply's metadata): no user:password, no query string.

    Query strings can carry keys (``?api-key=...``); a user:password in the URL
    is a credential too.
    """
    try:
        from yarl import URL

        parsed = URL(str(url))
        if parsed.user is not None or parsed.password is not None:
            parsed = parsed.with_user(None)
        shown = str(parsed.with_query(None).with_fragment(None))
        return shown + ("?..." if parsed.query_string else "")
    except (ValueError, TypeError):
        return re.sub(r"//[^/@]*@", "//", str(url)).split("?", 1)[0]


def url_credentials(url: str, headers: Optional[Mapping[str, str]] = None) -> "tuple[str, Optional[Mapping[str, str]], Optional[str]]":
    """(URL without ``user:password@``, headers, the password): the URL's credentials as
    an explicit ``Authorization: Basic`` header, so they never travel in a URL or a message.

    aiohttp refuses a URL with credentials next to an ``Authorization`` header
    ("Cannot combine AUTHORIZATION header with AUTH argument or credentials
    encoded in URL"); both at once is ambiguous (an API key *and* a password),
    so that raises :class:`CredentialsConflictError` saying which to drop.
    """
    if "@" not in url:
        return url, headers, None
    from yarl import URL

    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return url, headers, None
    if parsed.user is None and parsed.password is None:
        return url, headers, None
    bare = str(parsed.with_user(None))
    if any(k.lower() == "authorization" for k in (headers or {})):
        raise CredentialsConflictError(
            f"{public_url(url)} is given with a user:password (***@) in the URL and an API key "
            f"(an Authorization header) as well: drop one. Remove the user:password from the URL, "
            f"or unset the key (OPCHAT_API_KEY / OPENAI_API_KEY, api_key=) if the server takes the password."
        )
    encode = getattr(aiohttp, "encode_basic_auth", None)  # aiohttp >= 3.13; BasicAuth is deprecated there
    value = encode(parsed.user or "", parsed.password or "") if encode is not None \
        else aiohttp.BasicAuth(parsed.user or "", parsed.password or "").encode()
    return bare, {**(headers or {}), "Authorization": value}, parsed.password


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.S | re.I)
_SPACE = re.compile(r"\s+")


def _html_text(text: str) -> str:
    title = _TITLE.search(text)
    if title and title.group(1).strip():
        return _SPACE.sub(" ", title.group(1)).strip()
    return _SPACE.sub(" ", _TAG.sub(" ", text)).strip()


def error_message(body: bytes, content_type: str = "", secrets: Iterable[str] = (), limit: int = 300) -> str:
    """The human part of an error body: JSON ``message``, ``error.message`` / ``error``,
    ``detail``; else the page title or a snippet of the text. Redacted, never empty."""
    text = body.decode("utf-8", "replace").strip()
    message = None
    try:
        obj = _json.loads(text) if text[:1] in ("{", "[") else None
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        candidates = (
            obj.get("message"),
            error.get("message") if isinstance(error, dict) else error,
            obj.get("detail"),
            obj.get("msg"),
        )
        message = next((c for c in candidates if isinstance(c, str) and c.strip()), None)
        code = obj.get("code")
        if code is None and isinstance(error, dict):
            code = error.get("code") or error.get("type")
        if message and isinstance(code, str) and code and code not in message:
            message = f"{message} ({code})"
        elif not message and isinstance(code, str) and code:
            message = code
    if message is None:
        if "html" in content_type or text[:1] == "<":
            text = _html_text(text)
        message = text
    message = snippet(_SPACE.sub(" ", message).strip(), limit)
    return redact(message, secrets) or "(empty body)"


def media_type(response: aiohttp.ClientResponse) -> str:
    """The response's media type, lower case, without parameters ("" if absent)."""
    raw = response.headers.get("Content-Type", "")
    return raw.split(";", 1)[0].strip().lower()


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return media_type(response) == "text/event-stream"


def sniff(first: bytes) -> str:
    """Guess what a body is from its first bytes: ``"sse"``, ``"json"``, ``"html"``, ``"empty"`` or ``"other"``.

    Some PHP hosts label an event stream ``text/html``; the bytes tell the truth.
    """
    head = first.lstrip(b"\xef\xbb\xbf").lstrip()
    if not head:
        return "empty"
    if head[:1] in (b"{", b"["):
        return "json"
    if head[:1] == b"<":
        return "html"
    if head.startswith((b"data:", b":", b"event:", b"id:", b"retry:")):
        return "sse"
    return "other"


def not_an_endpoint(url: str, response: aiohttp.ClientResponse, body: bytes = b"",
                    secrets: Iterable[str] = (), expected: str = "a text/event-stream") -> NotAnEndpointError:
    """A :class:`NotAnEndpointError` naming the URL, the content type, and what the page says."""
    ctype = response.headers.get("Content-Type") or "no Content-Type"
    what = error_message(body, ctype.lower(), secrets, limit=120) if body.strip() else "an empty body"
    redirected = ""
    if response.history and str(response.url) != url:
        redirected = f" (redirected to {response.url})"
    return NotAnEndpointError(
        f"{url}{redirected} answered HTTP {response.status} with {ctype}, not {expected} chat stream: "
        f"{what!r}. Is this the chat endpoint? A wrong URL, a login/captcha page or a proxy's page "
        f"answers like this.\n{ENDPOINT_HINT}"
    )


# ---------------------------------------------------------------- TLS


_ssl_lock = threading.Lock()
_ssl_cache: dict = {}


def ssl_context_from_env() -> Optional[ssl.SSLContext]:
    """A verifying SSL context trusting ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, or None if neither is set.

    aiohttp's default context is built when aiohttp is imported, so a CA bundle
    set later (in a notebook cell, say) would be ignored without this. Contexts
    are cached per (file, dir, file mtime). A file that cannot be read raises
    ``ssl.SSLError`` / ``OSError`` naming it.
    """
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if not cafile and not capath:
        return None
    try:
        mtime = os.stat(cafile).st_mtime_ns if cafile else None
    except OSError as exc:
        raise OSError(f"SSL_CERT_FILE={cafile!r} cannot be read: {exc.strerror or exc}") from None
    key = (cafile, capath, mtime)
    with _ssl_lock:
        ctx = _ssl_cache.get(key)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=cafile, capath=capath)
            _ssl_cache.clear()
            _ssl_cache[key] = ctx
        return ctx


# ---------------------------------------------------------------- sessions and requests


@asynccontextmanager
async def session_scope(session: Optional[aiohttp.ClientSession] = None) -> AsyncIterator[aiohttp.ClientSession]:
    """Yield ``session`` as is, or a new ``ClientSession(trust_env=True)`` closed afterwards.

    ``trust_env=True`` makes HTTP(S)_PROXY / NO_PROXY and ~/.netrc apply, as in a browser.
    """
    if session is not None:
        yield session
        return
    ctx = ssl_context_from_env()
    own = aiohttp.ClientSession(trust_env=True, connector=aiohttp.TCPConnector(ssl=ctx) if ctx else None)
    try:
        yield own
    finally:
        await own.close()


def _unreachable_reason(exc: BaseException) -> str:
    if isinstance(exc, getattr(aiohttp, "ClientConnectorDNSError", ())):
        host = getattr(exc, "host", "")
        return f"DNS lookup failed for {host!r}" if host else "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to the proxy: {exc.strerror or exc}"
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return f"TLS error: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, ConnectionRefusedError) or getattr(os_error, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(os_error, socket.gaierror) or getattr(os_error, "errno", None) in _EAI_CODES:
            return f"DNS lookup failed for {getattr(exc, 'host', '')!r}"
        return exc.strerror or str(os_error or exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    return str(exc) or type(exc).__name__


def _map_open_error(exc: BaseException, url: str, timeouts: Timeouts, secrets) -> BaseException:
    """The typed error for a failure before the response headers arrived."""
    if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())) or (  # aiohttp >= 3.10
        isinstance(exc, aiohttp.ServerTimeoutError) and "connect" in str(exc).lower()
    ):
        return StreamTimeoutError(
            f"could not connect to {url} within connect_timeout={timeouts.connect:g} s"
            if timeouts.connect else f"could not connect to {url} (timed out)"
        )
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return StreamTimeoutError(
            f"{url} accepted the connection but sent no response for read_timeout={timeouts.read:g} s"
            if timeouts.read else f"{url} sent no response (timed out)"
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return ValueError(f"invalid URL {redact(str(url), secrets)!r}: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):  # a session with raise_for_status, or a proxy error
        return HTTPStatusError(url, exc.status, redact(str(exc.message), secrets))
    if isinstance(exc, (aiohttp.ClientConnectionError, OSError)):
        return EndpointUnreachableError(url, redact(_unreachable_reason(exc), secrets))
    return exc


async def read_body(response: aiohttp.ClientResponse, limit: int, first: bytes = b"", *,
                    url: Optional[str] = None, timeouts: Optional[Timeouts] = None) -> bytes:
    """Read the whole body, after ``first``; over ``limit`` bytes raises ``ValueError``.

    With ``url`` given, errors are typed as in :func:`iter_body` (pass ``timeouts``
    too, for messages that name the read timeout); without it aiohttp's own
    exceptions pass through, as before.
    """
    parts = [first] if first else []
    size = len(first)
    if url is None:
        body = response.content.iter_any()
    else:
        body = iter_body(response, url, timeouts or Timeouts(None, None))
    try:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                raise ValueError(f"body larger than {limit} bytes")
            parts.append(chunk)
    finally:
        if url is not None:
            await body.aclose()
    return b"".join(parts)


async def read_first(response: aiohttp.ClientResponse, url: str, timeouts: Timeouts = Timeouts(),
                     limit: int = 4096) -> bytes:
    """The body's first bytes, read until some are not whitespace (or ``limit``, or the end).

    For :func:`sniff`-ing a body before deciding how to read it; b"" means an
    empty (or all-whitespace) body. Errors are typed as in :func:`iter_body`.
    Pass the result as ``iter_body(..., first=...)`` / ``read_body(..., first=...)``.
    """
    first = b""
    body = iter_body(response, url, timeouts)
    try:
        async for chunk in body:
            first += chunk
            if first.strip() or len(first) > limit:
                break
    finally:
        await body.aclose()
    return first


async def _status_error(response: aiohttp.ClientResponse, url: str, secrets, method: str = "POST") -> HTTPStatusError:
    try:
        body = await asyncio.wait_for(_read_some(response, MAX_ERROR_BODY), 10)
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
        body = b""
    message = error_message(body, media_type(response), secrets)
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        message += f" (Retry-After: {snippet(retry_after, 40)})"
    if response.history and str(response.url) != url:
        message += f" (after a redirect to {response.url})"
    error = HTTPStatusError(url, response.status, message, method)
    error.retry_after = retry_after  # read by failover's backoff; the header text as sent
    return error


def restate(error: HTTPStatusError, message: str) -> HTTPStatusError:
    """``error`` with ``message`` instead of its own (a provider's hint added), ``retry_after`` kept."""
    restated = HTTPStatusError(error.url, error.status, message)
    restated.retry_after = getattr(error, "retry_after", None)
    return restated


async def _read_some(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in response.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def open_post(session: aiohttp.ClientSession, url: str, **options: Any):
    """:func:`open_request` with ``POST`` (same keywords)."""
    return open_request(session, "POST", url, **options)


@asynccontextmanager
async def open_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: Optional[Mapping[str, str]] = None,
    proxy: Optional[str] = None,
    timeouts: Timeouts = Timeouts(),
    secrets: Iterable[str] = (),
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send ``method`` (``json`` as the body) to ``url`` and yield the response once its headers are in.

    A status >= 400 raises :class:`HTTPStatusError` (after reading up to 64 KiB of
    the body for its message). Connection failures and timeouts raise the typed
    errors in the module docstring. On leaving the block the response is
    released if it was read to the end, else closed (so an abandoned or
    cancelled stream really closes its connection at once).
    """
    url, headers, password = url_credentials(url, headers)
    secrets = collect_secrets(headers, proxy, extra=tuple(secrets) + (password,))
    ctx = ssl_context_from_env()  # per request too, so a shared session honours SSL_CERT_FILE
    try:
        response = await session.request(
            method, url, json=json, headers=headers, proxy=proxy,
            timeout=timeouts.client_timeout(), raise_for_status=False, ssl=ctx if ctx else True,
        )
    except asyncio.CancelledError:
        raise
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise _map_open_error(exc, url, timeouts, secrets) from None
    try:
        if response.status >= 400:
            raise await _status_error(response, url, secrets, method)
        yield response
    finally:
        if response.content.at_eof():
            response.release()
        else:
            response.close()


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    json: Any = None,
    headers: Optional[Mapping[str, str]] = None,
    proxy: Optional[str] = None,
    timeouts: Timeouts = Timeouts(),
    secrets: Iterable[str] = (),
    limit: int = 1 << 20,
) -> Any:
    """POST and return the parsed JSON answer (small requests: sessions, nonces).

    A non-JSON answer raises :class:`NotAnEndpointError` naming URL and content type.
    """
    return await _request_json(session, "POST", url, json=json, headers=headers, proxy=proxy,
                               timeouts=timeouts, secrets=secrets, limit=limit)


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Optional[Mapping[str, str]] = None,
    proxy: Optional[str] = None,
    timeouts: Timeouts = Timeouts(),
    secrets: Iterable[str] = (),
    limit: int = 4 << 20,
) -> Any:
    """GET and return the parsed JSON answer (``/models``); errors as :func:`post_json`."""
    return await _request_json(session, "GET", url, headers=headers, proxy=proxy,
                               timeouts=timeouts, secrets=secrets, limit=limit)


async def _request_json(session, method, url, *, json=None, headers=None, proxy=None,
                        timeouts=Timeouts(), secrets=(), limit=1 << 20) -> Any:
    secrets = collect_secrets(headers, proxy, extra=secrets)
    async with open_request(session, method, url, json=json, headers=headers, proxy=proxy,
                            timeouts=timeouts, secrets=secrets) as response:
        try:
            body = await read_body(response, limit, url=url, timeouts=timeouts)
        except ValueError:
            raise NotAnEndpointError(f"{url} answered with more than {limit} bytes, not a small JSON object") from None
        try:
            return _json.loads(body)
        except ValueError:
            raise not_an_endpoint(url, response, body, secrets, expected="a JSON") from None


# ---------------------------------------------------------------- the body


def _expire(task: "asyncio.Task", fired: list) -> None:
    fired.append(True)
    task.cancel()


def _idle_error(url: str, timeouts: Timeouts, seen: bool) -> StreamTimeoutError:
    if seen:
        return StreamTimeoutError(
            f"the stream from {url} stalled: no event for read_timeout={timeouts.read:g} s "
            f"(keep-alive comments do not count)")
    return StreamTimeoutError(
        f"{url} sent no event within first_event_timeout={timeouts.first_event:g} s "
        f"(keep-alive comments do not count)")


_ACTIVE_LINE = re.compile(rb"\n[^:\n]")


class _Activity:
    """Tells whether body bytes carried more than SSE comments and blank lines.

    Line state is kept across chunks (a line may be cut anywhere); ``\r`` ends
    lines as ``\n`` does. Any non-comment, non-blank line counts as an event:
    a field line is what a server sends only when it has something to say.
    """

    __slots__ = ("at_start", "comment")

    def __init__(self) -> None:
        self.at_start = True  # the next byte starts a line
        self.comment = False  # the line being read (cut by the chunk end) is a comment

    def feed(self, chunk: bytes) -> bool:
        if not chunk:
            return False
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r", b"\n")
        first_nl = chunk.find(b"\n")
        if self.at_start:
            active = chunk[:1] not in (b":", b"\n")
        else:  # the first piece continues the previous chunk's line
            active = not self.comment and first_nl != 0
        if not active and first_nl != -1:
            active = _ACTIVE_LINE.search(chunk, first_nl) is not None
        last_nl = chunk.rfind(b"\n")
        if last_nl == -1:
            if self.at_start:
                self.comment = chunk[:1] == b":"
            self.at_start = False
        else:
            tail = chunk[last_nl + 1 :]
            self.at_start = not tail
            self.comment = tail[:1] == b":"
        return active


def _payload_reason(exc: BaseException) -> str:
    """A short, header-free reason for a body that broke off."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    text = f"{exc!s} {exc.__cause__!r} {exc.__context__!r}"
    if isinstance(exc, ConnectionResetError) or "ConnectionResetError" in text or "reset by peer" in text:
        return "connection reset by the server"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the server closed the connection before the body was complete"
    return str(exc) or type(exc).__name__


async def iter_body(
    response: aiohttp.ClientResponse,
    url: str,
    timeouts: Timeouts = Timeouts(),
    *,
    first: bytes = b"",
) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive (``first``, if given, comes first).

    An event-level idle watchdog: :class:`StreamTimeoutError` when nothing but
    keep-alive comments (``: ping``) came for ``timeouts.read`` seconds after an
    event, or for ``timeouts.first_event`` seconds before the first one. Only
    time spent waiting on the network counts: while the consumer holds a chunk
    the clock is stopped, so a slow consumer never trips it. (aiohttp's
    ``sock_read``, set by :func:`open_post`, still ends a socket silent for the
    longer of the two.) Raises :class:`TruncatedStreamError` (``partial=""``:
    the caller knows the text so far) when the connection broke. A clean end of
    the body just ends the iteration.
    """
    activity = _Activity()
    seen = False  # an event (a non-comment line) arrived
    idle = 0.0  # seconds waited on the network since the last event
    if first:
        seen = activity.feed(first)
        yield first
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    chunks = response.content.iter_any().__aiter__()
    try:
        while True:
            limit = timeouts.read if seen else timeouts.first_event
            started = loop.time()
            if limit is None or task is None:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
            else:
                fired = []
                timer = loop.call_at(started + max(0.0, limit - idle), _expire, task, fired)
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except (asyncio.CancelledError, asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                    # (aiohttp may turn the cancel into its own timeout error)
                    if not fired:
                        raise
                    uncancel = getattr(task, "uncancel", None)
                    if uncancel is not None:
                        uncancel()
                    raise _idle_error(url, timeouts, seen) from None
                finally:
                    timer.cancel()
            if activity.feed(chunk):
                seen, idle = True, 0.0
            else:
                idle += loop.time() - started
            yield chunk
    except StreamTimeoutError:  # the watchdog's own (a TimeoutError too): as it is
        raise
    except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
        # (3.11+: asyncio.TimeoutError is TimeoutError.)
        raise StreamTimeoutError(
            f"the stream from {url} stalled: no bytes for read_timeout={timeouts.read:g} s"
            if timeouts.read else f"the stream from {url} stalled (timed out)"
        ) from None
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
        raise TruncatedStreamError(f"the connection to {url} broke mid-stream: {_payload_reason(exc)}") from None
