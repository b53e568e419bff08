"""What one AI Engine answer says: its event lines, its ``end`` payload, its errors.

The hot loop of :class:`~opchat_magic.providers.opchatgpts.Opchatgpts` handles
ordinary ``live`` events itself; everything unusual (a line the fast JSON scan
did not take, a broken ``end``, an ``error`` event, a refused nonce, a body that
is not an event stream) is decided here, so the provider class holds the
request and the stream and this module the protocol's slow paths.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from ..errors import NotAnEndpointError, ServerError, StreamError, TruncatedStreamError, redact
from .base import Reply, Usage

if TYPE_CHECKING:
    from ..errors import HTTPStatusError

# ``req`` below is the provider's per-turn request (``opchatgpts._Request``): its
# ``payload``, ``nonce`` and ``timeouts`` are read, nothing else.

# Nonce modes besides a given nonce string.
AUTO = "auto"  # the site's cached nonce, fetched from start_session when the site asks for one
NO_NONCE = ""  # never send X-WP-Nonce (nonce=False or nonce="")

# AI Engine gives the upstream model MWAI_TIMEOUT = 300 s (the whole request, no
# keep-alives); a silence longer than that cannot end in a reply, a shorter one can.
AIENGINE_MODEL_TIMEOUT = 300.0
DEFAULT_READ_TIMEOUT = AIENGINE_MODEL_TIMEOUT + 10.0

# What the plugin answers when the REST nonce is missing (401) or stale/wrong (403).
_NONCE_CODES = ("rest_forbidden", "rest_cookie_invalid_nonce")
REJECTED_TEXT = "Sorry, your query has been rejected."
INPUT_LIMIT = 512  # the chatbot's default textInputMaxLength

# The longest piece of an offending line quoted in an error message (``.line`` keeps all of it).
LINE_SNIPPET = 200


def _snippet(line: str) -> str:
    from .http import snippet

    return repr(snippet(line, LINE_SNIPPET))


def refuse_empty(final: dict, reply: Reply, url: str, req: Any) -> None:
    """A successful end with no text at all is not a reply.

    AI Engine reports ``success: true`` with an empty reply when its model
    server answered 200 with nothing usable (an empty body, a web page, a
    stream that never said anything): the site hides the failure, so it is
    named here rather than stored as an empty answer.
    """
    if reply.chunks or final.get("reply") or final.get("images"):
        return
    from ..errors import EmptyReplyError

    reply.complete = False
    reply.final = final
    new = req.payload.get("newMessage") or ""
    history = req.payload.get("messages") or []
    chars = len(new) + sum(len(m.get("content") or "") for m in history if isinstance(m.get("content"), str))
    raise EmptyReplyError(
        f"{url} reported success with an empty reply: the site's model server answered without any "
        f"text (AI Engine hides such upstream failures: an empty or non-chat answer, or a prompt over "
        f"the model's context; the request had {len(history) + 1} messages, {chars:,} characters). "
        f"Check the chatbot's model settings on the site, or send less history.",
        messages=len(history) + 1, chars=chars, tokens=(chars + 3) // 4,
    )

def is_nonce_refusal(exc) -> bool:
    return exc.status in (401, 403) and any(code in str(exc.message) for code in _NONCE_CODES)


def decode_slow(data: str, url: str, secrets: tuple) -> "tuple[dict, Any]":
    """(object, type) of a data line the fast path did not take; else raises the StreamError."""
    try:
        obj = json.loads(data)
    except ValueError:
        what = "is not JSON"
    else:
        if isinstance(obj, dict) and obj.get("type") is not None:
            return obj, obj["type"]
        what = "has no \"type\"" if isinstance(obj, dict) else f"is JSON {type(obj).__name__}, not an object"
    line = redact(data, secrets)
    raise StreamError(f"broken stream from {url}: a data line {what}: {_snippet(line)}", line=line)

def count_ignored(ignored: Optional[dict], key: str) -> dict:
    ignored = ignored if ignored is not None else {}
    ignored[key] = ignored.get(key, 0) + 1
    return ignored

def bad_live(data: str, url: str, secrets: tuple) -> StreamError:
    line = redact(data, secrets)
    return StreamError(
        f"broken stream from {url}: a live event without string data: {_snippet(line)}", line=line
    )

def parse_end(obj: dict, line: str, url: str, secrets: tuple) -> dict:
    raw = obj.get("data")
    final = raw
    if isinstance(raw, str):
        try:
            final = json.loads(raw)
        except ValueError:
            final = None
    if not isinstance(final, dict):
        red = redact(line, secrets)
        raise StreamError(
            f"broken stream from {url}: the end event's data is not a JSON object: {_snippet(red)}", line=red
        )
    if final.get("success") is False:
        message = final.get("message") or final.get("reply") or "the end event reports success: false"
        raise ServerError(f"{url} reported a failure: {redact(str(message), secrets)}")
    return final

def error_text(data: Any, url: str, secrets: tuple, req: Optional[Any] = None) -> str:
    if isinstance(data, dict):
        data = data.get("message") or data.get("error") or json.dumps(data)
    message = data if isinstance(data, str) and data else "an error event without a message"
    text = f"{url} sent an error: {redact(message, secrets)}"
    new = req.payload.get("newMessage") if req is not None else None
    if message == REJECTED_TEXT and isinstance(new, str) and len(new) > INPUT_LIMIT:
        text += (f" - the message is {len(new)} characters; AI Engine rejects messages longer than the "
                 f"chatbot's input limit (textInputMaxLength, {INPUT_LIMIT} by default)")
    return text

def status_hint(exc: "HTTPStatusError", req: Any, refreshed: bool = False) -> "HTTPStatusError":
    from .http import restate

    if exc.status in (401, 403) and (is_nonce_refusal(exc) or "nonce" in str(exc.message).lower()):
        if req.nonce == NO_NONCE:
            hint = " - this site wants a REST nonce: leave nonce unset (fetched from start_session when needed)"
        elif req.nonce != AUTO:
            hint = " - the nonce given was refused (stale?): leave nonce unset for a fresh one from start_session"
        else:
            hint = " - even a fresh nonce from start_session was refused" if refreshed else ""
        return restate(exc, str(exc.message) + hint) if hint else exc
    if exc.status == 403 and REJECTED_TEXT in str(exc.message):
        return restate(exc, str(exc.message) + " - AI Engine refuses an empty message, or a request naming "
                       "neither botId nor customId")
    return exc

async def sniff_body(response, url: str, req: Any, secrets: tuple, reply: Reply,
                      first: bytes) -> Optional[bytes]:
    """A body not labelled ``text/event-stream``: its ``first`` bytes decide.

    Returns the bytes read (to be fed to the SSE decoder first) when it is an
    event stream after all; ``None`` after accepting a non-streamed JSON
    answer (``reply`` filled in); raises for anything else.
    """
    from .http import MAX_JSON_BODY, not_an_endpoint, read_body, sniff

    kind = sniff(first)
    if kind == "sse":
        return first
    if kind == "empty":
        raise TruncatedStreamError(f"{url} answered HTTP {response.status} with an empty body", partial="")
    if kind != "json":
        raise not_an_endpoint(url, response, first, secrets)
    try:
        raw = await read_body(response, MAX_JSON_BODY, first, url=url, timeouts=req.timeouts)
    except ValueError:
        raise NotAnEndpointError(f"{url} answered with a JSON body over {MAX_JSON_BODY} bytes") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise not_an_endpoint(url, response, raw[:2048], secrets, expected="a JSON answer or a")
    if answer.get("success") is False:
        message = answer.get("message") or "success: false"
        raise ServerError(f"{url} reported a failure: {redact(str(message), secrets)}")
    if not isinstance(answer.get("reply"), str):
        raise StreamError(
            f"{url} answered with JSON that holds no reply: {_snippet(redact(raw[:2048].decode('utf-8', 'replace'), secrets))}"
        )
    reply.final = answer
    reply.usage = Usage.from_dict(answer.get("usage"))
    reply.complete = True
    return None
