"""Issue 12, finding 6: nothing a server or a model sends can drive the user's terminal.

Terminal IPython runs in a real pty (pexpect) against our local server. The
reply, an HTTP error body and an SSE ``error`` event each carry OSC 52 (a
clipboard write), OSC 8 (a disguised link), a screen clear, a terminal reset
and a C1 CSI; none of those sequences may reach the terminal, and each must
show as visible escapes instead (``\\x1b]52;...``).
"""
from __future__ import annotations

import os
import sys

import pytest

from opchat_magic.server import LocalServer
from opchat_magic.server.replies import say_encode

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.timeout(120)

HOSTILE = ("before \x1b]52;c;cHduZWQ=\x07 clip "
           "\x1b]8;;http://evil.example/\x1b\\click me\x1b]8;;\x1b\\ "
           "\x1b[2J\x1b[H cleared \x1bc reset \x9b31m csi \u202eevil\u202c after")
RAW = [b"\x1b]52;", b"\x1b]8;;", b"\x1b[2J", b"\x1b[H", b"\x1bc", "\x9b".encode(), "\u202e".encode()]
VISIBLE = ["\\x1b]52;c;cHduZWQ=\\x07", "\\x1b]8;;http://evil.example/\\x1b\\click me", "\\x1b[2J", "\\x9b31m",
           "\\u202eevil"]


def run_terminal(tmp_path, server, cells, timeout=60) -> bytes:
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipy"), OPCHAT_HISTORY_DB=str(tmp_path / "h.sqlite3"),
               TERM="xterm-256color", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    child = pexpect.spawn(sys.executable, ["-m", "IPython", "--simple-prompt", "--colors=NoColor", "--no-banner"],
                          env=env, timeout=timeout, dimensions=(50, 200))
    out = b""
    try:
        prompt = r"In \[\d+\]: "
        child.expect(prompt)
        for line in [f"%load_ext opchat_magic", f"%config OpchatMagics.url = {server.url!r}"] + cells:
            child.sendline(line)
            child.expect(prompt)
            out += child.before + child.after
        child.sendline("exit")
        child.expect(pexpect.EOF)
        out += child.before
    finally:
        child.close(force=True)
    return out


def cell(text: str) -> str:
    return f"get_ipython().run_cell({'%%opchat' + chr(10) + text!r})"


def test_no_control_sequence_reaches_the_terminal(tmp_path):
    say = f"[[say:{say_encode(HOSTILE)}]]"
    with LocalServer(delay=0.001) as server:
        out = run_terminal(tmp_path, server, [
            cell(f"the reply {say}"),
            cell(f"an HTTP error body {say} [[fault:say_http_500]]"),
            cell(f"an SSE error event {say} [[fault:say_error_event]]"),
        ])
        assert server.stats.faults.get("say_http_500") == 1 and server.stats.faults.get("say_error_event") == 1
    text = out.decode("utf-8", "replace")
    for raw in RAW:
        assert raw not in out, (raw, text[-3000:])
    # each of the three paths showed the text, with visible escapes
    assert "HTTPStatusError" in text and "ServerError" in text, text[-3000:]
    for visible in VISIBLE:
        assert text.count(visible) >= 3, (visible, text[-3000:])
