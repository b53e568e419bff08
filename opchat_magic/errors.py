"""Typed errors, apart from the code that raises them.

Every error a user can meet derives from ``OpchatError``, which is a
``RuntimeError`` because the original gpt4free provider raised RuntimeError for
broken streams: code written against it keeps working. Messages name what was
wrong (the offending line, the URL that did not answer) and never carry secrets.
"""
from __future__ import annotations

import threading

from .scrub import redact_userinfo, show_controls

__all__ = [
    "OpchatError",
    "StreamError",
    "SSEDecodeError",
    "TruncatedStreamError",
    "EmptyReplyError",
    "ModelListingUnsupportedError",
    "ServerError",
    "NotAnEndpointError",
    "EndpointUnreachableError",
    "StreamTimeoutError",
    "CredentialsConflictError",
    "HTTPStatusError",
    "StoppedError",
    "ThreadBusyError",
    "ImagesNotSupportedError",
    "redact",
]

# How a user points the magic at a working endpoint; appended to connection errors.
ENDPOINT_HINT = (
    "Point opchat-magic at an endpoint that answers:\n"
    "  - the local server:  `opchat-magic serve` (or `from opchat_magic.server import LocalServer`),"
    " then `%config OpchatMagics.url = 'http://127.0.0.1:8765'`\n"
    "  - an AI Engine site: `%config OpchatMagics.url = 'https://your-wordpress-site'` (or OPCHAT_URL)\n"
    "  - an OpenAI-compatible server (Ollama, vLLM, llama.cpp, LM Studio, OpenAI):"
    " `%config OpchatMagics.provider = 'openai'` and OPENAI_BASE_URL / OPCHAT_API_KEY"
)


def redact(text: str, secrets) -> str:
    """Replace every secret in ``text`` with ``***`` (secrets shorter than 4 chars are
    ignored), and the ``user:password`` of every URL in it too."""
    for secret in secrets or ():
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return redact_userinfo(text)


def clean_message(text: str) -> str:
    """An error message as it may be shown anywhere: no URL credentials, no control sequences."""
    return show_controls(redact_userinfo(text))


class OpchatError(RuntimeError):
    """Base of every opchat-magic error.

    Its message is cleaned when the error is made (:func:`clean_message`): a
    URL's ``user:password`` shows as ``***`` and control characters from a
    server's text as visible escapes, wherever the error is printed, logged,
    stored or exported.
    """

    def __init__(self, *args):
        super().__init__(*(clean_message(a) if isinstance(a, str) else a for a in args))


class StreamError(OpchatError):
    """The server's stream broke the protocol. ``line`` holds the offending line, if any."""

    def __init__(self, message: str, line: str | None = None):
        super().__init__(message)
        self.line = line


class SSEDecodeError(StreamError):
    """Bytes that are not valid server-sent events (invalid UTF-8, a line too long)."""


class TruncatedStreamError(StreamError):
    """The stream closed before its ``end`` event: the reply is incomplete."""

    def __init__(self, message: str, partial: str = ""):
        super().__init__(message)
        self.partial = partial


class EmptyReplyError(TruncatedStreamError):
    """The server accepted the request (HTTP 200) and answered nothing: no text, no finish.

    llama-cpp-python does this with a prompt longer than the model's context.
    The message says so and how big the request was; ``messages``, ``chars`` and
    ``tokens`` (a rough estimate, characters / 4) hold the figures.
    """

    def __init__(self, message: str, messages: int = 0, chars: int = 0, tokens: int = 0):
        super().__init__(message, partial="")
        self.messages = messages
        self.chars = chars
        self.tokens = tokens


class ModelListingUnsupportedError(OpchatError):
    """The provider's protocol has no way to list the models a server offers."""


class ServerError(OpchatError):
    """The server sent an ``error`` event (or an error body) with this message."""


class NotAnEndpointError(OpchatError):
    """The URL answered, but not as a chat endpoint (an HTML page, a non-SSE body)."""


class EndpointUnreachableError(OpchatError, ConnectionError):
    """Nothing answered at the URL (connection refused, DNS failure)."""

    def __init__(self, url: str, reason: str = ""):
        self.url = url = redact_userinfo(url)
        self.reason = reason  # "connection refused", "DNS lookup failed for 'host'", ...
        msg = f"No chat endpoint answered at {url}" + (f" ({reason})" if reason else "") + ".\n" + ENDPOINT_HINT
        super().__init__(msg)


class StreamTimeoutError(OpchatError, TimeoutError):
    """Connecting took too long, or the stream sent no bytes for too long."""


class StoppedError(OpchatError):
    """The user stopped the reply (Stop button or kernel interrupt)."""

    def __init__(self, message: str = "stopped by the user", partial: str = ""):
        super().__init__(message)
        self.partial = partial


class ThreadBusyError(OpchatError):
    """A turn is already streaming on this thread; one at a time keeps history in order."""


class CredentialsConflictError(OpchatError, ValueError):
    """Two credentials for one request (a ``user:password@`` URL and an API key): the message says which to drop."""


class ImagesNotSupportedError(OpchatError):
    """The message carries images and the provider's endpoint takes text only; nothing was sent."""


# HTTPStatusError subclasses aiohttp's ClientResponseError, and importing aiohttp
# costs ~0.1 s: too much for `%load_ext`, which only needs the other errors. The
# class is made on first use (PEP 562), once, under a lock, so every importer
# gets the same class and isinstance checks hold.
_http_status_error = None
_http_status_error_lock = threading.Lock()


def _make_http_status_error():
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    class HTTPStatusError(aiohttp.ClientResponseError, OpchatError):
        """An HTTP error status, with the server's message in the text.

        It is an ``aiohttp.ClientResponseError`` (status, message, request_info) as the
        issue asks, but its ``request_info`` carries no headers: aiohttp's own
        ClientResponseError keeps the request headers, and so an API key, in its repr.
        """

        def __init__(self, url: str, status: int, message: str, method: str = "POST"):
            url = redact_userinfo(url)
            message = clean_message(message)
            info = aiohttp.RequestInfo(URL(url), method, CIMultiDictProxy(CIMultiDict()), URL(url))
            super().__init__(info, (), status=status, message=message)
            self.url = url

        def __str__(self) -> str:
            return f"HTTP {self.status} from {self.url}: {self.message}"

        def __repr__(self) -> str:
            return f"HTTPStatusError(status={self.status}, url={self.url!r}, message={self.message!r})"

    # Named as if defined at module level, so pickle finds it through __getattr__.
    HTTPStatusError.__qualname__ = "HTTPStatusError"
    HTTPStatusError.__module__ = __name__
    return HTTPStatusError


def __getattr__(name: str):
    global _http_status_error
    if name == "HTTPStatusError":
        with _http_status_error_lock:
            if _http_status_error is None:
                _http_status_error = _make_http_status_error()
        return _http_status_error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
