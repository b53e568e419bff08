"""Nothing a server sends can hurt the user, and the user's key goes nowhere but the server.

* The API key (``OPCHAT_API_KEY``) never appears in an output, an exception's
  str/repr/traceback, a log line, the history database, an exported history,
  the saved ``.ipynb``, the kernel's own stderr (``--debug`` logs every
  message), or any iopub message: checked in-process, through a notebook run
  by nbclient and saved, and through a kernel whose every message is kept.
  Each run meets a server with a different key (401) and one with the right key.
* The history database is created private (0600).
* The local server listens on 127.0.0.1 unless told otherwise (the class and
  the CLI) and refuses request bodies over its limit (413).
* Hostile replies (``[[html]]``, hostile echoes, hostile error messages, a
  hostile non-streamed answer, a hostile partial reply) rendered by the magic
  in a real kernel leave no raw ``<script``/``<img``/... tag, no event handler
  attribute and no ``javascript:`` link in any Markdown or HTML output,
  whichever renderer. The real-browser check is tests/browser/'s.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
import traceback
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web

from opchat_magic.testing import free_port
from opchat_magic.turn import TurnOptions, ChatTurn
from opchat_magic.history import Conversation
from opchat_magic.errors import HTTPStatusError
from opchat_magic.loop import get_loop
from opchat_magic.providers.openai_compat import OpenAICompatible
from opchat_magic.server import HOSTILE_REPLY, LocalServer
from opchat_magic.server.faults import FAULTS, Fault
from opchat_magic.history.store import Store

pytestmark = pytest.mark.timeout(240)

TAIL = secrets.token_hex(12)
SECRET = f"sk-test-SECRET-{TAIL}"  # unique per run: a match cannot come from anywhere else
OTHER_KEY = f"sk-other-key-{secrets.token_hex(8)}"


def assert_clean(blob, where: str) -> None:
    """Neither the key nor its random tail (a key shown half-masked) is in ``blob``."""
    if isinstance(blob, bytes):
        found = SECRET.encode() in blob or TAIL.encode() in blob
    else:
        found = SECRET in blob or TAIL in blob
    assert not found, f"the API key leaked into {where}"


def exception_views(exc: BaseException) -> str:
    """Everything a user or a tool may print of an exception."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(vars(exc))]
    info = getattr(exc, "request_info", None)
    if info is not None:
        parts += [repr(info), repr(dict(info.headers))]
    for chained in (exc.__cause__, exc.__context__):
        if chained is not None:
            parts += [str(chained), repr(chained)]
    return "\n".join(parts)


def files_under(folder: Path):
    return [p for p in folder.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def wrong_server():
    with LocalServer(delay=0, api_key=OTHER_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def right_server():
    with LocalServer(delay=0, api_key=SECRET) as srv:
        yield srv


# --------------------------------------------------------------------------- the local server


def _listening(port: int) -> list:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, state = fields[1], fields[3]
            host, hexport = address.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                if v6:
                    found.append("::1" if host == "0" * 31 + "1" else ("::" if set(host) == {"0"} else host))
                else:
                    found.append(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return found



@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp")
def test_local_server_listens_on_loopback_only_by_default():
    from opchat_magic.cli import build_parser

    assert LocalServer().host == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    with LocalServer(delay=0) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        assert _listening(srv.port) == ["127.0.0.1"]
    # The command line, as a user starts it.
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opchat_magic.server", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not _listening(port) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _listening(port) == ["127.0.0.1"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert "WARNING" not in err  # the loud warning is only for other hosts


def test_oversized_request_body_is_refused_without_echoing_the_key(monkeypatch):
    monkeypatch.setenv("OPCHAT_API_KEY", SECRET)
    with LocalServer(delay=0, api_key=SECRET, max_body=64 * 1024) as srv:
        from opchat_magic.history import Thread

        thread = Thread("big")
        chat = ChatTurn(thread, "z" * 100_000, TurnOptions(
            provider=OpenAICompatible, provider_kwargs={"base_url": srv.openai_base_url, "read_timeout": 10},
            secrets=(SECRET,))).start(get_loop())
        assert chat.wait_closed(15)
        error = chat.error
        assert isinstance(error, HTTPStatusError) and error.status == 413
        assert srv.stats.statuses.get(413) == 1 and srv.stats.completed == 0
        assert_clean(exception_views(error), "a 413 error")
        assert thread.messages == [] and thread.last_failed is not None


# --------------------------------------------------------------------------- in-process


def test_key_stays_out_of_errors_logs_and_the_store(monkeypatch, caplog, tmp_path, wrong_server, right_server):
    monkeypatch.setenv("OPCHAT_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's and ours
    db = tmp_path / "private" / "history.sqlite3"
    store = Store(db)
    conversation = Conversation("notebook.ipynb", store=store)
    thread = conversation.thread()

    def turn(server, text):
        options = TurnOptions(provider=OpenAICompatible,
                              provider_kwargs={"base_url": server.openai_base_url, "read_timeout": 10},
                              secrets=(SECRET,))
        chat = ChatTurn(thread, text, options).start(get_loop())
        assert chat.wait_closed(15)
        return chat

    failed = turn(wrong_server, "hello, wrong key")
    error = failed.error
    assert isinstance(error, HTTPStatusError) and error.status == 401
    # The server got the key (so the test means something) and said no.
    assert wrong_server.stats.last_headers["Authorization"] == f"Bearer {SECRET}"
    assert "OPCHAT_API_KEY" in str(error)  # says where to look, not what it is
    assert_clean(exception_views(error), "the 401 exception")
    assert_clean(failed.describe(error), "the described error")
    assert_clean(repr(thread.last_failed), "the failed turn")

    retry = turn(right_server, None)  # no text: the failed turn, sent again
    assert retry.error is None
    ok = turn(right_server, "hello, right key")
    assert ok.error is None
    reply = ok.future.result()
    assert_clean(repr(reply) + repr(reply.final), "the Reply")
    assert len(thread.messages) == 4
    assert_clean(json.dumps(thread.to_json()) + thread.to_markdown(), "the exported thread")
    assert_clean("\n".join(r.getMessage() + repr(r.args) for r in caplog.records) + caplog.text, "the logs")

    conversation.close()  # the queued writes reach the file first, then the store closes
    with Store(db) as check:  # the file holds the turns being checked (else the greps below prove nothing)
        assert len(check.load_turns("notebook.ipynb").get(thread.name, [])) == 2
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for path in files_under(db.parent):  # the database and its -wal / -shm
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        assert_clean(path.read_bytes(), path.name)


# --------------------------------------------------------------------------- through a kernel


def setup_cells(wrong_url: str) -> list:
    return [
        "import logging\nlogging.basicConfig(level=logging.DEBUG, force=True)\n"
        "%load_ext opchat_magic\n"
        "%config OpchatMagics.provider = 'openai'\n"
        f"%config OpchatMagics.url = {wrong_url!r}",
    ]


INSPECT_ERROR = (
    "import sys, traceback\n"
    "e = getattr(sys, 'last_value', None)\n"
    "print('inspecting', type(e).__name__)\n"
    "print(str(e)); print(repr(e)); print(repr(getattr(e, 'request_info', None)))\n"
    "print(repr(vars(e)) if e is not None else '')\n"
    "print(''.join(traceback.format_exception(e)) if e is not None else '')"
)


def chat_cells(right_url: str, folder: Path) -> list:
    return [
        "%%opchat\nhello with the wrong key",  # 401
        INSPECT_ERROR,
        f"%config OpchatMagics.url = {right_url!r}",
        "%opchat_retry",
        "%%opchat -o answer\nhello with the right key",
        "%opchat_history",
        "%opchat_threads",
        "%opchat config",
        f"%opchat_history --export {folder / 'export.json'}",  # (unquoted: quotes would stay in the name)
        f"%opchat_history --export {folder / 'export.md'}",
        "m = get_ipython().magics_manager.registry['OpchatMagics']\n"
        "print(repr(m.last_reply)); print(repr(m.last_reply.final)); print(repr(m.conversation))\n"
        "print(m.conversation.thread().to_json())",
    ]


@pytest.mark.kernel
def test_key_stays_out_of_a_saved_notebook(tmp_path, wrong_server, right_server):
    import nbformat
    from nbclient import NotebookClient

    folder = tmp_path / "work"
    folder.mkdir()
    db = tmp_path / "data" / "history.sqlite3"  # does not exist yet: the kernel creates it
    log = tmp_path / "kernel.log"
    notebook = folder / "secrets.ipynb"
    env = {**os.environ, "OPCHAT_API_KEY": SECRET, "OPCHAT_HISTORY_DB": str(db),
           "JPY_SESSION_NAME": str(notebook), "IPYTHONDIR": str(tmp_path / "ipython")}
    env.pop("OPENAI_API_KEY", None)

    cells = setup_cells(wrong_server.openai_base_url) + chat_cells(right_server.openai_base_url, folder)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True, store_widget_state=True,
                            extra_arguments=["--debug"], resources={"metadata": {"path": str(folder)}})
    with open(log, "wb") as out:
        client.execute(env=env, stdout=out, stderr=out)
    nbformat.write(nb, notebook)

    # It really ran: a 401, the inspected error, then replies with the right key.
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = json.dumps(outputs)
    assert "HTTPStatusError" in text and "401" in text
    assert "inspecting HTTPStatusError" in text
    assert "Echo: hello with the right key" in text
    assert wrong_server.stats.last_headers["Authorization"] == f"Bearer {SECRET}"
    assert right_server.stats.statuses.get(200, 0) >= 2

    assert_clean(notebook.read_bytes(), "the saved .ipynb")
    assert log.stat().st_size > 10_000, "the kernel's --debug log is missing"
    assert_clean(log.read_bytes(), "the kernel's stderr/--debug log")
    for path in files_under(folder) + files_under(db.parent):
        assert_clean(path.read_bytes(), str(path))
    assert (folder / "export.json").exists() and (folder / "export.md").exists()
    assert db.exists() and stat.S_IMODE(db.stat().st_mode) == 0o600
    for path in files_under(db.parent):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def walk_strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from walk_strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from walk_strings(v)
    elif isinstance(obj, (str, int, float)):
        yield str(obj)


@pytest.mark.kernel
def test_key_stays_out_of_every_iopub_message(tmp_path, capfd, wrong_server, right_server):
    from opchat_magic.testing.kernel import Kernel

    folder = tmp_path / "work"
    folder.mkdir()
    db = tmp_path / "data" / "history.sqlite3"
    env = {"OPCHAT_API_KEY": SECRET, "OPCHAT_HISTORY_DB": str(db), "JPY_SESSION_NAME": str(folder / "x.ipynb")}
    messages = []
    errors = []
    with Kernel(env=env, cwd=str(folder)) as kernel:
        for code in setup_cells(wrong_server.openai_base_url) + chat_cells(right_server.openai_base_url, folder):
            ex = kernel.run(code, check=False, timeout=60)
            messages += ex.messages
            if ex.reply:
                messages.append(ex.reply)
            if ex.error:
                errors.append(ex.error["ename"])
    assert errors == ["HTTPStatusError"], errors
    assert wrong_server.stats.last_headers["Authorization"] == f"Bearer {SECRET}"  # the key was in use
    # Every message, every field (headers, metadata, content, transient ids).
    for msg in messages:
        assert_clean("\n".join(walk_strings({k: v for k, v in msg.items() if k != "received"})),
                     f"an iopub/shell message ({msg.get('msg_type')})")
    assert_clean(capfd.readouterr().err, "the kernel process's stderr")
    for path in files_under(folder) + files_under(db.parent):
        assert_clean(path.read_bytes(), str(path))


# --------------------------------------------------------------------------- hostile replies


HOSTILE_ECHO = (
    '<img src=x onerror="window.__pwned=4"> <script>window.__pwned=5</script> '
    '<svg onload="window.__pwned=6"></svg> <iframe src="javascript:window.__pwned=7"></iframe> '
    '[a](javascript:window.__pwned=8) [b](JaVaScRiPt&#58;window.__pwned=9) '
    '<a href="javascript:window.__pwned=10">c</a> [d]( \tjavascript:window.__pwned=11) '
    '![e](javascript:window.__pwned=12) <javascript:window.__pwned=13> [f][ref]\n\n'
    '[ref]: javascript:window.__pwned=14'
)
HOSTILE_MESSAGE = '<img src=x onerror="window.__pwned=20"> [x](javascript:window.__pwned=21)'
RAW_TAG = re.compile(r"<\s*/?\s*(script|img|svg|iframe|object|embed|a|style|link|meta|form|input|video|audio|"
                     r"body|math|details|base)\b", re.I)
DANGEROUS_SCHEME = re.compile(r"^(javascript|vbscript|data(?!:image/(png|gif|jpeg|webp)[;,])):", re.I)


def _destinations(md: str):
    """Link and image destinations after ``](`` and ``]:``, resolved as a browser would read them."""
    for match in re.finditer(r"\]\(|\]:", md):
        rest = md[match.end():]
        rest = html.unescape(rest).replace("\\", "")
        rest = re.sub(r"^[\x00-\x20<]+", "", rest)
        yield re.split(r"[\s)>]", rest, maxsplit=1)[0]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bad = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "iframe", "object", "embed"):
            self.bad.append(tag)
        for name, value in attrs:
            if name.lower().startswith("on"):
                self.bad.append(f"{tag} {name}=")
            if name.lower() in ("href", "src", "action", "formaction") and value:
                if DANGEROUS_SCHEME.match(re.sub(r"[\x00-\x20]", "", html.unescape(value))):
                    self.bad.append(f"{tag} {name}={value}")


def hostile_problems(md: str) -> list:
    """What in this Markdown could run in a browser that renders it as trusted HTML."""
    import mistune

    problems = [f"raw tag {m.group(0)!r}" for m in RAW_TAG.finditer(md)]
    problems += [f"link to {d!r}" for d in _destinations(md) if DANGEROUS_SCHEME.match(d)]
    parser = _Tags()
    parser.feed(mistune.create_markdown(escape=False)(md))  # raw HTML passes through, as in JupyterLab
    problems += parser.bad
    return problems


def rendered_markup(messages) -> list:
    """Every text/markdown and text/html value anywhere in these messages (display data,
    display updates, widget Output states in comm messages)."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("text/markdown", "text/html") and isinstance(v, str):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for msg in messages:
        walk(msg.get("content", {}))
    return found


def test_hostile_checker_catches_what_it_should():
    """The checker itself: unsanitised hostile text fails it, plain Markdown passes."""
    assert hostile_problems(HOSTILE_REPLY)
    assert hostile_problems(HOSTILE_ECHO)
    assert hostile_problems("[x](java&#115;cript:alert(1))")
    assert not hostile_problems("# Title\n\n- a *list*\n\n[ok](https://example.org) `<b>` ![i](data:image/png;base64,AA)")
    assert not hostile_problems("&lt;img src=x onerror=1&gt; [x](#blocked-javascript:alert(1))")


def _hostile_faults():
    async def http_500(request, turn, s):
        s.done = True
        return web.json_response({"success": False, "message": HOSTILE_MESSAGE}, status=500)

    async def error_event(request, turn, s):
        await s.open()
        await s.send_live(turn.chunks[:3])
        await s.write(turn.wire.error_event(HOSTILE_MESSAGE))
        await s.end_early()

    async def html_page(request, turn, s):
        s.done = True
        return web.Response(text=f"<html><head><title>{HOSTILE_MESSAGE}</title></head><body>x</body></html>",
                            content_type="text/html")

    return {
        "hostile_500": Fault("hostile_500", http_500, "HTTP 500 with a hostile message", stream_only=False),
        "hostile_error_event": Fault("hostile_error_event", error_event, "an error event with a hostile message"),
        "hostile_html": Fault("hostile_html", html_page, "an HTML page with a hostile title", stream_only=False),
    }


HOSTILE_CELLS = [
    ("%%opchat\nshow me [[html]]", "ok"),
    ("%%opchat -f code\nshow me [[html]]", "ok"),
    (f"%%opchat\n{HOSTILE_ECHO}", "ok"),
    ("%%opchat\n[[html]] [[fault:json_200]]", "ok"),  # a hostile non-streamed answer
    ("%%opchat\n[[html]] [[chunk:400]] [[fault:no_end]]", "TruncatedStreamError"),  # hostile partial reply
    ("%%opchat\nhi [[fault:hostile_500]]", "HTTPStatusError"),
    ("%%opchat\nhi [[fault:hostile_error_event]]", "ServerError"),
    ("%%opchat\nhi [[fault:hostile_html]]", "NotAnEndpointError"),
    ("%opchat_history", "ok"),
    ("%opchat_threads", "ok"),
]


@pytest.mark.kernel
@pytest.mark.parametrize("renderer", ["display", "widget"])
def test_hostile_replies_render_inert(monkeypatch, renderer):
    from opchat_magic.testing.kernel import Kernel

    for name, fault in _hostile_faults().items():
        monkeypatch.setitem(FAULTS, name, fault)
    with LocalServer(delay=0.002) as srv, Kernel() as kernel:
        kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {srv.url!r}\n"
                   f"%config OpchatMagics.renderer = {renderer!r}")
        seen_hostile_input = False
        for code, outcome in HOSTILE_CELLS:
            ex = kernel.run(code, check=False, timeout=60)
            got = "ok" if ex.status == "ok" else (ex.error or ex.reply["content"]).get("ename")
            assert got == outcome, (code, got, ex.error)
            markup = rendered_markup(ex.messages)
            assert markup or code.startswith("%opchat_threads"), f"{code!r} rendered nothing"
            for md in markup:
                problems = hostile_problems(md)
                assert not problems, (renderer, code, problems, md[:500])
            joined = "\n".join(markup)
            if "[[html]]" in code and outcome == "ok":
                # the harmless Markdown around the attack still renders
                assert "Normal **Markdown** still renders" in joined
            if "window.__pwned" in joined:
                seen_hostile_input = True  # the attack reached the output, inert
        assert seen_hostile_input
        assert srv.stats.faults.get("hostile_500") == 1
