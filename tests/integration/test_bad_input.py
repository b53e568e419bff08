"""Bad input, from the server and from the user, through the real paths.

Part 1, the stream matrix: each row is one way a server can answer wrongly.
The turn runs the way the magic and the panel run it: a ``ChatTurn``
(chat.py) on the private loop, for a ``Thread`` (conversation.py), with the
``Opchatgpts`` provider, against a real ``LocalServer`` on 127.0.0.1. This is
the one place that asserts, per row, BOTH the exact error type AND what the
thread keeps:

* on failure: ``thread.messages`` unchanged, the turn is ``thread.last_failed``
  with the partial text the front door saw, and ``retry`` (a ChatTurn with no
  text) succeeds once the fault is gone, sending the history without the
  failed turn's partial reply;
* on success: exactly one user/assistant pair more, and no failed turn.

Expected outcomes follow the provider's documented stream rules
(``providers/opchatgpts.py`` docstring): an unknown event type is ignored,
a JSON-escaped NUL is text while a raw NUL inside a JSON string is a broken
line, keep-alive comments count as bytes for ``read_timeout``.

Part 2: bad USER input through a real kernel (``%load_ext opchat_magic``):
each is a ``UsageError`` with a clear message and nothing reaches the server.
``tests/kernel/test_magics_kernel.py`` already covers the empty cell, ``--bogus``,
an unknown ``{var}``, ``-p nosuchprovider`` and ``%opchat_reset nosuchthread``;
the cases here are the ones it does not.
"""
from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
from aiohttp import web

from opchat_magic.turn import TurnOptions, ChatTurn
from opchat_magic.history import Message, Thread
from opchat_magic.errors import (
    HTTPStatusError,
    NotAnEndpointError,
    ServerError,
    SSEDecodeError,
    StoppedError,
    StreamError,
    StreamTimeoutError,
    TruncatedStreamError,
)
from opchat_magic.loop import get_loop
from opchat_magic.providers.opchatgpts import Opchatgpts
from opchat_magic.server import GOOD, LocalServer, reply_text, split_chunks, text_of_length
from opchat_magic.server.faults import FAULTS, HTTP_MESSAGES, OVERLOADED, Fault

CHUNK = 5
READ_TIMEOUT = 0.5  # seconds of silence before StreamTimeoutError, in the timing rows
RELAXED_TIMEOUT = 5.0  # the other rows: a loaded CI machine must not turn them into timeouts
FAULT_DELAY = 2.0  # stall / slow_first_byte: well past READ_TIMEOUT
MAX_HANG = 1.5  # keepalive_only / no_headers close after this
HUGE = 4 << 20  # the 4 MiB line
TURN_LIMIT = 30.0  # no turn may take longer than this, whatever the server does


# --------------------------------------------------------------------------- the server


def _text_status(status: int, body: str, content_type: str) -> Fault:
    """A fault answering ``status`` with a non-JSON body (the LocalServer has only http_500_text)."""

    async def run(request, turn, s):
        s.done = True
        return web.Response(status=status, text=body, content_type=content_type)

    return Fault(f"http_{status}_text", run, f"HTTP {status} with a {content_type} body", stream_only=False)


# Non-JSON error bodies as proxies, CDNs and PHP hosts send them.
TEXT_STATUSES = {
    401: ("Unauthorized", "text/plain"),
    403: ("<html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1></body></html>", "text/html"),
    429: ("Too Many Requests", "text/plain"),
    502: ("<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "text/html"),
}


@pytest.fixture(scope="module")
def server():
    srv = LocalServer(delay=0, chunk_size=CHUNK, fault_delay=FAULT_DELAY, max_hang=MAX_HANG,
                      trickle_interval=0.002, keepalive_interval=0.1)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def clean(server, monkeypatch):
    monkeypatch.delenv("OPCHAT_URL", raising=False)
    # Faults the LocalServer lacks, registered for this test only (monkeypatch restores the registry).
    for status, (body, ctype) in TEXT_STATUSES.items():
        monkeypatch.setitem(FAULTS, f"http_{status}_text", _text_status(status, body, ctype))
    server.clear_fault()
    server.reset_stats()
    yield
    server.clear_fault()


# --------------------------------------------------------------------------- running a turn


def options(server, **kw) -> TurnOptions:
    kwargs = {"url": server.url, "read_timeout": RELAXED_TIMEOUT, "connect_timeout": 2.0}
    kwargs.update(kw)
    return TurnOptions(provider=Opchatgpts, provider_kwargs=kwargs)


def finish(chat: ChatTurn, limit: float = TURN_LIMIT) -> Optional[BaseException]:
    """Wait for the turn's end on the private loop; its exception, or None on success.

    Waits with ``concurrent.futures.wait``, not ``loop.block``: see the report
    (``block`` spins on a future that failed with a TimeoutError subclass).
    """
    done, _ = concurrent.futures.wait([chat.future], timeout=limit)
    assert done, f"the turn did not end within {limit} s"
    assert chat.wait_closed(2.0), "the stream's task did not unwind"
    return chat.future.exception()


def run_turn(thread: Thread, text: Optional[str], opts: TurnOptions):
    chat = ChatTurn(thread, text, opts).start(get_loop())
    return chat, finish(chat)


# --------------------------------------------------------------------------- the matrix


def _chunks(messages) -> list:
    return split_chunks(reply_text(messages), CHUNK)


def good_part(messages) -> str:
    """The text of the GOOD correct chunks a mid-stream fault sends before misbehaving."""
    return "".join(_chunks(messages)[:GOOD])


def whole(messages) -> str:
    return reply_text(messages)


def nothing(messages) -> str:
    return ""


def with_extra(extra: str) -> Callable:
    """The reply with one extra chunk after GOOD chunks (huge_line, nul_bytes)."""

    def reply(messages) -> str:
        chunks = _chunks(messages)
        return "".join(chunks[:GOOD] + [extra] + chunks[GOOD:])

    return reply


@dataclass(frozen=True)
class Row:
    fault: str
    error: Optional[type]  # None: the turn succeeds
    text: Callable  # failure: the partial text kept; success: the whole reply
    match: str = ""  # a piece of str(error)
    exact_partial: bool = True  # False: any prefix of `text` (see invalid_utf8)
    tune: Optional[dict] = None  # LocalServer.set_fault options
    check: Optional[Callable] = None  # extra check(error_or_reply, messages_sent)
    read_timeout: float = RELAXED_TIMEOUT

    def __str__(self) -> str:
        return self.fault


ROWS = [
    # -- broken events
    Row("broken_json", StreamError, good_part, "not JSON", check=lambda e, m: e.line == '{"broken json'),
    Row("missing_type", StreamError, good_part, 'no "type"', check=lambda e, m: e.line == '{"data":"no type"}'),
    # documented: unknown types are ignored (forward compatibility) and counted
    Row("unknown_type", None, whole, check=lambda r, m: r.final["_ignored_events"] == {"mystery": 1}),
    Row("live_without_data", StreamError, good_part, "without string data"),
    Row("non_string_data", StreamError, good_part, "without string data",
        check=lambda e, m: e.line == '{"type":"live","data":123}'),
    Row("bad_end", StreamError, whole, "end event",
        check=lambda e, m: not isinstance(e, (TruncatedStreamError, SSEDecodeError))),
    Row("error_event", ServerError, good_part, OVERLOADED),
    # -- cut off
    Row("no_end", TruncatedStreamError, whole, "before its end event"),
    Row("empty_body", TruncatedStreamError, nothing),
    Row("disconnect", TruncatedStreamError, good_part, "broke mid-stream"),
    Row("reset", TruncatedStreamError, good_part, "broke mid-stream"),
    # -- not a stream at all
    Row("html", NotAnEndpointError, nothing, "Just a moment"),
    Row("json_200", None, whole, check=lambda r, m: r.usage is not None and r.usage.total_tokens > 0),
    # -- HTTP errors, with the endpoint's JSON body ...
    # 401 rest_forbidden means "no nonce": the provider fetches one from start_session and
    # retries once, before any text; the fault (count 1) is gone by then.
    Row("http_401", None, whole),
    Row("http_403", HTTPStatusError, nothing, HTTP_MESSAGES[403], check=lambda e, m: e.status == 403),
    Row("http_429", HTTPStatusError, nothing, "Retry-After: 1", check=lambda e, m: e.status == 429),
    Row("http_500", HTTPStatusError, nothing, HTTP_MESSAGES[500], check=lambda e, m: e.status == 500),
    Row("http_502", HTTPStatusError, nothing, HTTP_MESSAGES[502], check=lambda e, m: e.status == 502),
    # ... and without
    Row("http_401_text", HTTPStatusError, nothing, "Unauthorized", check=lambda e, m: e.status == 401),
    Row("http_403_text", HTTPStatusError, nothing, "403 Forbidden",
        check=lambda e, m: e.status == 403 and "<html" not in str(e)),
    Row("http_429_text", HTTPStatusError, nothing, "Too Many Requests", check=lambda e, m: e.status == 429),
    Row("http_500_text", HTTPStatusError, nothing, "Internal Server Error", check=lambda e, m: e.status == 500),
    Row("http_502_text", HTTPStatusError, nothing, "502 Bad Gateway",
        check=lambda e, m: e.status == 502 and "<html" not in str(e)),
    # -- bytes
    # The good events and the bad bytes may arrive in one network read, and the
    # decoder rejects that whole read: the kept partial is a prefix of the good part.
    Row("invalid_utf8", SSEDecodeError, good_part, "invalid UTF-8", exact_partial=False),
    Row("nul_bytes", None, with_extra("nul\x00here"), check=lambda r, m: "nul\x00here" in r.text),
    # documented: a raw control character inside a JSON string is not JSON -> a broken line
    Row("nul_raw", StreamError, good_part, "not JSON", check=lambda e, m: "\x00" in e.line),
    Row("huge_line", None, with_extra("x" * HUGE), tune={"huge_size": HUGE},
        check=lambda r, m: len(r.text) == HUGE + len(reply_text(m))),
    Row("many_events", None, lambda m: text_of_length(100_000),
        check=lambda r, m: len(r.chunks) == 100_000 and r.complete),
    Row("cr_only", None, whole),
    # -- timing
    # documented: keep-alives are bytes, so read_timeout never fires; the
    # server closing after max_hang without an end event is a truncation
    # keep-alives are no events: the watchdog ends the wait before the server's hang does
    Row("keepalive_only", StreamTimeoutError, nothing, "no event within first_event_timeout=0.5 s",
        read_timeout=READ_TIMEOUT),
    Row("no_headers", StreamTimeoutError, nothing, "sent no response for read_timeout=0.5 s", read_timeout=READ_TIMEOUT),
    Row("slow_first_byte", StreamTimeoutError, nothing, "sent no response for read_timeout=0.5 s",
        read_timeout=READ_TIMEOUT),
    Row("stall", StreamTimeoutError, good_part, "for read_timeout=0.5 s", read_timeout=READ_TIMEOUT),
    # one byte every 2 ms: the turn outlasts read_timeout, no gap does
    Row("trickle", None, whole, read_timeout=READ_TIMEOUT,
        check=lambda r, m: r.total_time > READ_TIMEOUT),
]


def test_matrix_has_the_required_rows():
    assert len(ROWS) >= 20
    assert len({r.fault for r in ROWS}) == len(ROWS)
    for row in ROWS:
        assert row.fault in FAULTS or row.fault in {f"http_{s}_text" for s in TEXT_STATUSES}, row


@pytest.mark.timeout(90)
@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_stream(server, row: Row):
    thread = Thread("matrix")
    opts = options(server)

    # A turn that works, so "unchanged" means something.
    chat, error = run_turn(thread, "first", opts)
    assert error is None, error
    history = thread.messages
    assert history == [Message("user", "first"), Message("assistant", reply_text([{"role": "user", "content": "first"}]))]

    text = f"second, meeting {row.fault}"
    sent = [m.to_dict() for m in history] + [{"role": "user", "content": text}]
    server.set_fault(row.fault, count=1, **(row.tune or {}))
    started = time.monotonic()
    chat, error = run_turn(thread, text, options(server, read_timeout=row.read_timeout))
    elapsed = time.monotonic() - started
    assert server.stats.faults.get(row.fault) == 1, "the fault was not injected"
    # AI Engine: the history goes in messages, the new message in newMessage (the server appends it).
    assert server.stats.last_body["messages"] == sent[:-1] and server.stats.last_body["newMessage"] == text

    if row.error is None:  # ------------------------------------------ accepted
        assert error is None, f"{row.fault}: {type(error).__name__}: {error}"
        expected = row.text(sent)
        reply = chat.future.result()
        assert reply.complete
        assert reply.text == expected
        assert thread.messages == history + [Message("user", text), Message("assistant", expected)]
        assert thread.last_failed is None
        if row.check:
            assert row.check(reply, sent), row.fault
        return

    # ------------------------------------------------------------------ refused
    assert type(error) is row.error, f"{row.fault}: expected {row.error.__name__}, got {type(error).__name__}: {error}"
    assert row.match in str(error), (row.fault, str(error))
    assert server.url in str(error)  # every error names where it came from
    if row.check:
        assert row.check(error, sent), (row.fault, error)
    # History untouched; the turn is kept, out of history, with what arrived.
    assert thread.messages == history
    failed = thread.last_failed
    assert failed is not None and failed.status == "failed" and failed.user == text
    assert failed.reply == chat.text
    partial = row.text(sent)
    if row.exact_partial:
        assert failed.reply == partial, (row.fault, failed.reply, partial)
    else:
        assert partial.startswith(failed.reply), (row.fault, failed.reply)
    assert row.match in failed.error  # what the user is shown, kept with the turn
    assert thread.pending is None
    # Every failure is bounded: by the timeouts, or by the server giving up.
    assert elapsed < (MAX_HANG if row.fault == "keepalive_only" else 0) + 10, (row.fault, elapsed)

    # The fault is gone: retry sends the same text once more, over the unchanged history.
    assert server.fault == (None, None)
    retry, error = run_turn(thread, None, opts)
    assert error is None, f"retry after {row.fault}: {type(error).__name__}: {error}"
    assert server.stats.last_body["messages"] == sent[:-1]  # the partial reply is not sent back
    assert server.stats.last_body["newMessage"] == text
    assert retry.turn.retry_of == failed.id
    assert thread.messages == history + [Message("user", text), Message("assistant", reply_text(sent))]
    assert thread.last_failed is None


def test_stopped_turn_keeps_partial_and_retries(server):
    """Not a server fault but the same contract: a stop mid-stream (the Stop button,
    a kernel interrupt) keeps the partial reply out of history, retryable."""
    thread = Thread("stop")
    opts = options(server)
    run_turn(thread, "first", opts)
    history = thread.messages
    chat = ChatTurn(thread, "long [[chunks:200]] [[delay:0.02]]", opts).start(get_loop())
    deadline = time.monotonic() + 5
    while not chat.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chat.text, "no chunk arrived"
    chat.cancel()
    assert chat.wait_closed(2.0)
    assert isinstance(chat.error, StoppedError)
    assert thread.messages == history
    failed = thread.last_failed
    assert failed.status == "stopped" and failed.reply and failed.reply == chat.text
    server.wait_for(lambda s: s.disconnects >= 1, timeout=3)
    _, error = run_turn(thread, None, options(server))
    assert error is None
    assert len(thread.messages) == len(history) + 2 and thread.last_failed is None


def test_request_over_the_size_limit_is_refused_and_kept(server):
    """A message too big for the server (413) fails like any HTTP error: kept, not sent twice."""
    with LocalServer(delay=0, max_body=8192) as small:
        thread = Thread("big")
        opts = options(small)
        _, error = run_turn(thread, "x" * 10_000, opts)
        assert type(error) is HTTPStatusError and error.status == 413
        assert "larger than 8192 bytes" in str(error)
        assert thread.messages == [] and thread.last_failed.user == "x" * 10_000
        assert small.stats.statuses == {413: 1}


# --------------------------------------------------------------------------- bad user input, real kernel


@pytest.fixture(scope="module")
def kernel(server, tmp_path_factory):
    from opchat_magic.testing.kernel import Kernel

    notebook = tmp_path_factory.mktemp("nb") / "bad_input.ipynb"
    k = Kernel(env={"JPY_SESSION_NAME": str(notebook)})
    try:
        k.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}", timeout=60)
        yield k
    finally:
        k.shutdown()


USAGE_ERRORS = {
    # cell magic flags
    "%%opchat -o 1bad\nhi": "1bad",
    "%%opchat -o two words\nhi": "unrecognized",
    "%%opchat -f bogus\nhi": "bogus",
    "%%opchat -t\nhi": "expected one argument",
    "%%opchat -m\nhi": "expected one argument",
    "%%opchat -p\nhi": "expected one argument",
    # a {var} that does not exist, next to one that does: nothing half-filled is sent
    "%%opchat\n{topic} and {missing_var}": "missing_var",
    # line magics
    "%opchat_history nosuchthread": "nosuchthread",
    "%opchat_history --export history.txt": ".md or .json",
    "%opchat_retry -t nosuchthread": "nosuchthread",
    "%opchat_retry": "no failed turn",
    "%opchat_reset --bogus": "unrecognized",
    # (`%opchat bogusword` is no longer misuse: any `%opchat <text>` is a one-line chat; its flag
    # errors are tests/unit/test_oneline.py's.)
}


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_bad_user_input_is_a_usage_error_and_sends_nothing(kernel, server):
    kernel.run("%opchat_reset --all\ntopic = 'bread'")
    kernel.run("%%opchat\nthe one good turn")
    before = server.stats.requests.get("submit", 0)
    for code, word in USAGE_ERRORS.items():
        ex = kernel.run(code, check=False, timeout=30)
        # IPython shows a UsageError as one stderr line, with no `error` iopub
        # message: the shell reply carries its name and text.
        reply = ex.reply["content"]
        assert ex.status == "error", code
        assert reply["ename"] == "UsageError", (code, reply)
        assert ex.error is None or ex.error["ename"] == "UsageError", (code, ex.error)
        shown = ex.stderr + "\n".join(reply.get("traceback") or [])
        assert f"UsageError: {reply['evalue']}" in shown, (code, shown)
        assert word.lower() in reply["evalue"].lower(), (code, reply["evalue"])
        assert "Traceback" not in shown and "File \"" not in shown, (code, shown)
    assert server.stats.requests.get("submit", 0) == before, "a bad cell reached the server"
    # Nothing changed in the conversation either.
    assert kernel.value("[len(get_ipython().magics_manager.registry['OpchatMagics']"
                        ".conversation.thread(n).messages) for n in "
                        "get_ipython().magics_manager.registry['OpchatMagics'].conversation.threads()]") == [2]


# --------------------------------------------------------------------------- the synchronous path


@pytest.mark.timeout(30)
def test_sync_path_reports_a_stream_timeout(server):
    """The gpt4free-style synchronous API must give StreamTimeoutError, not hang."""
    messages = [{"role": "user", "content": "stall [[fault:stall]]"}]

    async def one_turn():
        stream = Opchatgpts.create_async_generator("", messages, url=server.url, read_timeout=READ_TIMEOUT)
        async for _ in stream:
            pass

    started = time.monotonic()
    got = None
    try:
        # create_completion() is this with no deadline at all; 1.5 s keeps the test bounded.
        get_loop().run(one_turn(), timeout=1.5)
    except StreamTimeoutError:
        got = "StreamTimeoutError"
    except TimeoutError as exc:
        got = repr(exc)  # keep no reference: its context holds the giant traceback
    elapsed = time.monotonic() - started
    assert got == "StreamTimeoutError", f"got {got} after {elapsed:.1f} s"
