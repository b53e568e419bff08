"""Fault injection: each way a real server or network misbehaves, by name.

Every fault is one small async function registered in :data:`FAULTS`. A server
attribute (``LocalServer(fault=...)`` / ``set_fault``), the admin endpoint
(``POST /_opchat/fault``) and the ``[[fault:NAME]]`` directive all pick from
this one registry. A fault receives the decided :class:`Turn` and an
:class:`EventStream`, and writes whatever wrong thing it stands for.

Shared shape, so tests can predict the bytes: stream faults first send
:data:`GOOD` correct live chunks (fewer if the reply is shorter), then
misbehave. Where the stream goes on afterwards, the final ``end`` / ``[DONE]``
describes only the valid live text (``turn.reply``).

``Fault.dialects`` says which endpoints a fault makes sense for; a server-wide
fault that does not apply to a request (an AI Engine-only one on
``/v1/chat/completions``, a stream-only one on a ``stream: false`` request) is
neither used nor counted down. A ``[[fault:NAME]]`` directive is explicit and
always applies (an SSE fault then answers a ``stream: false`` request with SSE). Knobs (``fault_delay``, ``huge_size``,
``trickle_interval``, ``keepalive_interval``, ``max_hang``) come from the
server config; ``[[huge:N]]`` and ``[[chunks:N]]`` / ``[[delay:S]]`` override
some per request.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from aiohttp import web

from .replies import split_chunks, text_of_length
from .streaming import EventStream, Turn, answer
from .wire import dumps

__all__ = ["Fault", "FAULTS", "GOOD", "fault_names", "check_fault_name", "applies", "OVERLOADED", "HTML_PAGE",
           "BROKEN_LINE", "HTTP_MESSAGES", "UPSTREAM_DROPPED", "reasoning_text"]

GOOD = 3  # correct chunks before a mid-stream fault
OVERLOADED = "The model is overloaded."
HTML_PAGE = "<html><body>Just a moment...</body></html>"
BROKEN_LINE = b'data: {"broken json\n\n'
MANY_EVENTS = 100_000

AIENGINE = frozenset({"aiengine"})
OPENAI = frozenset({"openai"})
BOTH = frozenset({"aiengine", "openai"})

HTTP_MESSAGES = {
    401: "Sorry, you are not allowed to do that.",
    403: "Sorry, your query has been rejected.",
    429: "You have reached the limit of requests. Please try again later.",
    500: "The server failed to answer (injected fault).",
    502: "Bad gateway: the model server did not answer (injected fault).",
}

FaultFn = Callable[[web.Request, Turn, EventStream], Awaitable[Optional[web.StreamResponse]]]


@dataclass(frozen=True)
class Fault:
    name: str
    run: FaultFn
    doc: str
    dialects: frozenset = BOTH
    stream_only: bool = True


FAULTS: "dict[str, Fault]" = {}


def fault(name: str, *, dialects: frozenset = BOTH, stream_only: bool = True):
    def register(fn: FaultFn) -> FaultFn:
        FAULTS[name] = Fault(name, fn, (fn.__doc__ or "").strip(), dialects, stream_only)
        return fn

    return register


def fault_names() -> "list[str]":
    return sorted(FAULTS)


def check_fault_name(name: Optional[str]) -> None:
    """ValueError unless ``name`` is None or a registered fault."""
    if name is not None and name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(fault_names())}")


def applies(name: str, dialect: str, stream: bool) -> bool:
    f = FAULTS.get(name)
    return f is not None and dialect in f.dialects and (stream or not f.stream_only)


# -- helpers ------------------------------------------------------------------


async def _good_then(s: EventStream, turn: Turn, bad: bytes, *, then_rest: bool = True) -> None:
    """GOOD chunks, the bad bytes, then (optionally) the rest and the end."""
    await s.open()
    await s.send_live(turn.chunks[:GOOD])
    await s.write(bad)
    if then_rest:
        await s.send_live(turn.chunks[GOOD:])
        await s.finish()
    else:
        await s.end_early()


def _with_extra_chunk(turn: Turn, extra: str) -> None:
    """Insert one more live chunk after the GOOD ones (the end's reply includes it)."""
    turn.chunks = turn.chunks[:GOOD] + [extra] + turn.chunks[GOOD:]


def _spliced(turn: Turn, raw: bytes) -> bytes:
    """A live event whose data holds ``raw`` bytes verbatim (not JSON-escaped)."""
    return turn.wire.live("<@@>").replace(b"<@@>", raw)


async def _hold(request: web.Request, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early when the client closes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


# -- broken events ------------------------------------------------------------


def _bad_line_fault(name: str, line: bytes, dialects: frozenset = AIENGINE, note: str = "") -> None:
    """Register fault ``name``: GOOD chunks, the fixed bytes ``line``, then the rest and the end."""

    async def run(request, turn, s):
        await _good_then(s, turn, line)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"``{line.decode().strip()}`` after GOOD chunks, then the rest and the end{note}."
    fault(name, dialects=dialects)(run)


_bad_line_fault("broken_json", BROKEN_LINE, BOTH, note=" (BROKEN_LINE: a data line that is not JSON)")
_bad_line_fault("missing_type", b'data: {"data":"no type"}\n\n')
_bad_line_fault("unknown_type", b'data: {"type":"mystery","data":"?"}\n\n', note=" (a valid stream)")
_bad_line_fault("live_without_data", b'data: {"type":"live"}\n\n')
_bad_line_fault("non_string_data", b'data: {"type":"live","data":123}\n\n')


@fault("bad_end", dialects=AIENGINE)
async def bad_end(request, turn, s):
    """Every chunk, then ``data: {"type":"end","data":"this is not JSON"}`` and a clean close."""
    await s.open()
    await s.send_live(turn.chunks)
    await s.write(b'data: {"type":"end","data":"this is not JSON"}\n\n')
    await s.end_early()


@fault("error_event")
async def error_event(request, turn, s):
    """GOOD chunks, then an error event (AI Engine ``{"type":"error","data":OVERLOADED}``,
    OpenAI ``{"error":{"message":OVERLOADED,...}}``), status 200, clean close."""
    await _good_then(s, turn, turn.wire.error_event(OVERLOADED), then_rest=False)


# What AI Engine sends when its model server drops the stream (cURL, prefixed by the environment's name).
UPSTREAM_DROPPED = "opchat local: cURL error 18: transfer closed with outstanding read data remaining"


@fault("upstream_drop", dialects=AIENGINE)
async def upstream_drop(request, turn, s):
    """GOOD chunks, then the error event the real plugin sends when its model server drops the
    stream (``{"type":"error","data":"<env>: cURL error 18: ..."}``), status 200, clean close."""
    await _good_then(s, turn, turn.wire.error_event(UPSTREAM_DROPPED), then_rest=False)


@fault("invalid_utf8")
async def invalid_utf8(request, turn, s):
    """GOOD chunks, a live event whose data holds the raw bytes ``\\xff\\xfe``, then the rest and the end."""
    await _good_then(s, turn, _spliced(turn, b"bad \xff\xfe bytes"))


@fault("nul_raw")
async def nul_raw(request, turn, s):
    """GOOD chunks, a live event with a raw NUL byte inside its JSON string (invalid JSON), the rest, the end."""
    await _good_then(s, turn, _spliced(turn, b"nul \x00 raw"))


@fault("nul_bytes")
async def nul_bytes(request, turn, s):
    """A valid stream with one extra chunk ``"nul\\u0000here"`` (JSON-escaped NUL) after GOOD chunks;
    the end's reply includes it."""
    _with_extra_chunk(turn, "nul\x00here")
    return await answer(request, turn, s)


@fault("huge_line")
async def huge_line(request, turn, s):
    """A valid stream with one extra live chunk of ``huge_size`` 'x' characters (default 1 MiB,
    ``[[huge:N]]`` per request) after GOOD chunks; the end's reply includes it."""
    _with_extra_chunk(turn, "x" * (turn.directives.huge or turn.config.huge_size))
    return await answer(request, turn, s)


@fault("cr_only")
async def cr_only(request, turn, s):
    """The correct stream with every ``\\n`` sent as ``\\r`` (JSON escapes keep data free of raw newlines)."""
    s.transform = lambda data: data.replace(b"\n", b"\r")
    return await answer(request, turn, s)


@fault("many_events")
async def many_events(request, turn, s):
    """100,000 (or ``[[chunks:N]]``) one-character live events, no delay unless ``[[delay:S]]``, then the end."""
    n = turn.directives.chunks if turn.directives.chunks is not None else MANY_EVENTS
    turn.chunks = split_chunks(text_of_length(n), 1)
    if turn.directives.delay is None:
        turn.delay = 0.0
    return await answer(request, turn, s)


# -- cut-off streams ----------------------------------------------------------


@fault("disconnect")
async def disconnect(request, turn, s):
    """GOOD chunks, then the server closes the connection (no end, no chunked terminator)."""
    await s.open()
    await s.send_live(turn.chunks[:GOOD])
    s.drop()


@fault("reset")
async def reset(request, turn, s):
    """GOOD chunks, half of the next event's line, then a TCP reset (transport.abort, linger 0)."""
    await s.open()
    await s.send_live(turn.chunks[:GOOD])
    line = turn.wire.live(turn.chunks[GOOD] if len(turn.chunks) > GOOD else "rest")
    await s.write(line[: len(line) // 2])
    await s.reset()


@fault("no_end")
async def no_end(request, turn, s):
    """Every live chunk, then a clean close without the end event (OpenAI: no finish chunk, no [DONE])."""
    await s.open()
    await s.send_live(turn.chunks)
    await s.end_early()


@fault("empty_body")
async def empty_body(request, turn, s):
    """HTTP 200, text/event-stream, and no body bytes at all."""
    await s.open()
    await s.end_early()


@fault("bare_done", dialects=OPENAI)
async def bare_done(request, turn, s):
    """Every live chunk, then a bare ``data: [DONE]`` with no finish chunk (llama-cpp-python
    cutting a running stream when a second request arrives)."""
    await s.open()
    await s.send_live(turn.chunks)
    await s.write(b"data: [DONE]\n\n")
    await s.end_early()


@fault("no_usage", dialects=OPENAI)
async def no_usage(request, turn, s):
    """The correct stream without the usage chunk, whatever ``stream_options`` asked
    (llama-cpp-python ignores ``include_usage``)."""
    turn.wire.include_usage = False
    return await answer(request, turn, s)


# -- reasoning ----------------------------------------------------------------


def reasoning_text(reply: str) -> str:
    """The reasoning the ``reasoning*`` faults stream before the reply (tests predict it).

    It quotes the reply's first line, so a hostile message makes hostile reasoning too."""
    first = reply.split("\n", 1)[0]
    return f"The user wants an echo. {first} - the reply has {len(reply)} characters; I will send it as is."


async def _reasoning_then_answer(turn, s, key: str) -> None:
    thought = reasoning_text(turn.reply)
    thoughts = split_chunks(thought, max(1, len(thought) // 4))
    usage = turn.usage
    extra = (len(thought) + 3) // 4
    usage = {**usage, "completion_tokens": usage["completion_tokens"] + extra,
             "total_tokens": usage["total_tokens"] + extra,
             "completion_tokens_details": {"reasoning_tokens": extra}}
    await s.open()
    for piece in thoughts:
        await s.write(turn.wire.reasoning(piece, key))
        if turn.delay > 0:
            await asyncio.sleep(turn.delay)
    await s.send_live(turn.chunks)
    await s.write(turn.wire.finish(turn.reply, usage))
    await s.complete()


@fault("reasoning")
async def reasoning(request, turn, s):
    """:func:`reasoning_text` first, as reasoning (OpenAI: ``delta.reasoning_content``; AI Engine:
    ``live`` events with subtype ``thinking``), then the correct stream; usage counts
    ``completion_tokens_details.reasoning_tokens``."""
    await _reasoning_then_answer(turn, s, "reasoning_content")


@fault("reasoning_field", dialects=OPENAI)
async def reasoning_field(request, turn, s):
    """As ``reasoning``, spelled ``delta.reasoning`` (Ollama, gpt-oss on vLLM)."""
    await _reasoning_then_answer(turn, s, "reasoning")


# -- timing -------------------------------------------------------------------


@fault("stall")
async def stall(request, turn, s):
    """GOOD chunks, silence for ``fault_delay`` seconds, then the rest and the end."""
    await s.open()
    await s.send_live(turn.chunks[:GOOD])
    await _hold(request, turn.config.fault_delay)
    await s.send_live(turn.chunks[GOOD:])
    await s.finish()


@fault("trickle")
async def trickle(request, turn, s):
    """The correct stream, one byte every ``trickle_interval`` (0.1 s) seconds."""
    body = b"".join(turn.wire.live(c) for c in turn.chunks) + turn.wire.finish(turn.reply, turn.usage)
    await s.open()
    for i in range(len(body)):
        if i:
            await asyncio.sleep(turn.config.trickle_interval)
        await s.write(body[i : i + 1])
    s.chunks_sent = len(turn.chunks)
    await s.complete()


@fault("keepalive_only")
async def keepalive_only(request, turn, s):
    """``: ping`` comments every ``keepalive_interval`` (0.5 s), never an event; closes cleanly after ``max_hang`` (60 s)."""
    await s.open()
    deadline = time.monotonic() + turn.config.max_hang
    while time.monotonic() < deadline:
        await s.write(b": ping\n\n")
        await asyncio.sleep(min(turn.config.keepalive_interval, max(0.0, deadline - time.monotonic())))
    await s.end_early()


@fault("slow_first_byte", stream_only=False)
async def slow_first_byte(request, turn, s):
    """Wait ``fault_delay`` seconds before the status line and headers, then answer correctly."""
    await _hold(request, turn.config.fault_delay)
    return await answer(request, turn, s)


@fault("no_headers", stream_only=False)
async def no_headers(request, turn, s):
    """Accept the request and never answer; after ``max_hang`` (60 s) close the connection unanswered."""
    await _hold(request, turn.config.max_hang)
    s.drop()


# -- wrong answers ------------------------------------------------------------


@fault("html", stream_only=False)
async def html(request, turn, s):
    """HTTP 200 ``text/html`` page HTML_PAGE (a captcha/proxy page, not an endpoint)."""
    s.done = True
    return web.Response(text=HTML_PAGE, content_type="text/html")


@fault("json_200", stream_only=False)
async def json_200(request, turn, s):
    """A non-streamed JSON answer although a stream was asked for (a valid answer)."""
    s.done = True
    return web.json_response(turn.wire.answer(turn.reply, turn.usage), dumps=dumps)


@fault("http_500_text", stream_only=False)
async def http_500_text(request, turn, s):
    """HTTP 500 with a non-JSON ``text/plain`` body ``Internal Server Error``."""
    s.done = True
    return web.Response(status=500, text="Internal Server Error", content_type="text/plain")


# What AI Engine's error body is for each status (see AIEngineWire.error_body).
_AIENGINE_BODY = {401: "the rest_cookie_invalid_nonce body", 403: "the rejection body"}


def _http(status: int) -> FaultFn:
    headers = {"Retry-After": "1"} if status == 429 else None

    async def run(request, turn, s):
        s.done = True
        return web.json_response(turn.wire.error_body(status, HTTP_MESSAGES[status]), status=status, headers=headers, dumps=dumps)

    run.__doc__ = (
        f"HTTP {status} with the endpoint's JSON error body (AI Engine: "
        f"{_AIENGINE_BODY.get(status, '{success:false, message}')}; OpenAI: {{error:{{message,type,code}}}})."
        + (" Retry-After: 1." if headers else "")
    )
    return run


for _status in (401, 403, 429, 500, 502):
    fault(f"http_{_status}", stream_only=False)(_http(_status))


# -- what the security tests need: a server's own text, idle streams, one bad read -----


@fault("say_http_500", stream_only=False)
async def say_http_500(request, turn, s):
    """HTTP 500 whose JSON error body's message is the reply text (``[[say:...]]``: any text, escapes too)."""
    s.done = True
    return web.json_response(turn.wire.error_body(500, turn.reply), status=500, dumps=dumps)


@fault("say_error_event")
async def say_error_event(request, turn, s):
    """An error event, first thing, whose message is the reply text (``[[say:...]]``), then a clean close."""
    await s.open()
    await s.write(turn.wire.error_event(turn.reply))
    await s.end_early()


@fault("keepalive_after_good")
async def keepalive_after_good(request, turn, s):
    """GOOD chunks, then only ``: ping`` comments every ``keepalive_interval``, never another
    event; closes cleanly after ``max_hang``."""
    await s.open()
    await s.send_live(turn.chunks[:GOOD])
    deadline = time.monotonic() + turn.config.max_hang
    while time.monotonic() < deadline:
        await s.write(b": ping\n\n")
        await asyncio.sleep(min(turn.config.keepalive_interval, max(0.0, deadline - time.monotonic())))
    await s.end_early()


@fault("invalid_utf8_one_read")
async def invalid_utf8_one_read(request, turn, s):
    """GOOD live events and then one whose data holds raw ``\\xff\\xfe``, all in ONE write (one
    network read for the client), then the rest and the end."""
    await s.open()
    good = b"".join(turn.wire.live(c) for c in turn.chunks[:GOOD])
    await s.write(good + _spliced(turn, b"bad \xff\xfe bytes"))
    s.chunks_sent += len(turn.chunks[:GOOD])
    await s.send_live(turn.chunks[GOOD:])
    await s.finish()
