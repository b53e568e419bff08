"""Issue 12, findings 5-9 through the magic in a real kernel (jupyter_client), against our local server.

5. ``user:password@`` in the URL: not in any output, error, history row, export,
   or ``%opchat config`` (a proxy password in provider_options neither).
6. A server's error text with terminal escapes: shown as visible escapes.
7. Keep-alives only: the cell ends with StreamTimeoutError naming the wait.
8. Invalid UTF-8 after good events: the good text is shown and kept in the failed turn.
9. The history file deleted while the kernel runs: warned once, re-created, no turn lost.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from opchat_magic.server import GOOD, LocalServer, reply_text, split_chunks
from opchat_magic.server.replies import say_encode
from opchat_magic.testing import free_port
from opchat_magic.testing.kernel import Kernel

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]
PASSWORD = "PW-userinfo-7c1e"
PROXY_PASSWORD = "PW-proxy-93ad"


def everything(ex) -> str:
    return json.dumps([m.get("content") for m in ex.messages]) + json.dumps((ex.reply or {}).get("content"))


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0, keepalive_interval=0.2, max_hang=30) as srv:
        yield srv


@pytest.fixture()
def kernel(tmp_path):
    db = tmp_path / "history.sqlite3"
    with Kernel(env={"OPCHAT_HISTORY_DB": str(db)}, cwd=str(tmp_path)) as k:
        k.db = db
        yield k


def test_userinfo_never_shows(kernel, server, tmp_path):
    dead = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {dead!r}\n"
               f"%config OpchatMagics.provider_options = {{'proxy': 'http://me:{PROXY_PASSWORD}@127.0.0.1:9'}}")
    seen = []
    ex = kernel.run("%%opchat\nhello", check=False, timeout=60)
    assert ex.error and ex.error["ename"] == "EndpointUnreachableError", ex.error
    seen.append(everything(ex))
    seen.append(everything(kernel.run("%opchat config")))
    seen.append(everything(kernel.run("%opchat_history")))
    export = tmp_path / "export.json"
    kernel.run(f"%opchat_history --export {export}")
    kernel.run("get_ipython().magics_manager.registry['OpchatMagics'].session.conversation.flush(10)")
    text = "\n".join(seen)
    assert "127.0.0.1:9" in text and "proxy" in text  # the config shows the proxy URL, its password masked
    for blob in (text, export.read_text(), kernel.db.read_bytes().decode("latin-1")):
        assert PASSWORD not in blob and PROXY_PASSWORD not in blob


def test_server_text_escapes_and_keepalives_and_bad_bytes(kernel, server):
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}")
    hostile = "boom \x1b]52;c;cHduZWQ=\x07 \x1b[2J"
    ex = kernel.run(f"%%opchat\nhi [[say:{say_encode(hostile)}]] [[fault:say_error_event]]", check=False)
    assert ex.error and ex.error["ename"] == "ServerError"
    shown = everything(ex)
    assert "\\\\x1b]52;c;cHduZWQ=\\\\x07" in shown and "\\u001b" not in shown  # visible, never raw ESC

    kernel.run("%config OpchatMagics.read_timeout = 1.0")
    start = time.monotonic()
    ex = kernel.run("%%opchat\nhi [[fault:keepalive_only]]", check=False, timeout=60)
    assert ex.error and ex.error["ename"] == "StreamTimeoutError", ex.error
    assert "first_event_timeout=1 s" in everything(ex) and time.monotonic() - start < 15

    text = "good text before the bad bytes [[fault:invalid_utf8_one_read]]"
    good = "".join(split_chunks(reply_text([{"role": "user", "content": text}]), 5)[:GOOD])
    ex = kernel.run(f"%%opchat -t utf8\n{text}", check=False, timeout=60)
    assert ex.error and ex.error["ename"] == "SSEDecodeError" and "byte offset" in everything(ex)
    assert ex.shows(good)  # the good events are on screen...
    kept = kernel.value("get_ipython().magics_manager.registry['OpchatMagics'].session.conversation"
                        ".thread('utf8').last_failed.reply")
    assert kept == good  # ...and kept in the failed turn


def test_history_file_deleted_while_the_kernel_runs(kernel, server):
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}")
    kernel.run("%%opchat\nfirst turn")
    flush = "get_ipython().magics_manager.registry['OpchatMagics'].session.conversation.flush(10)"
    kernel.run(flush)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(kernel.db) + suffix):
            os.remove(str(kernel.db) + suffix)
    outs = [kernel.run("%%opchat\nsecond turn"), kernel.run(flush), kernel.run("%%opchat\nthird turn"),
            kernel.run(flush)]
    warned = [o for o in outs if "was deleted while the kernel ran" in everything(o)]
    assert len(warned) == 1, [o.stderr for o in outs]
    assert kernel.db.exists()
    rows = sqlite3.connect(kernel.db).execute("SELECT content FROM messages WHERE role='user' ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["first turn", "second turn", "third turn"]


def test_remote_images_setting(kernel, server):
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}")
    reply = "![a](https://img.example/a.png) ![b](https://attacker.example/b.png)"
    ex = kernel.run(f"%%opchat\n[[say:{say_encode(reply)}]]")
    assert "&#33;[a](https://img.example/a.png)" in ex.markdown()  # default: no image loads
    kernel.run("%config OpchatMagics.remote_images = ['img.example']")
    ex = kernel.run(f"%%opchat\n[[say:{say_encode(reply)}]]")
    md = ex.markdown()
    assert "![a](https://img.example/a.png)" in md and "&#33;[b](https://attacker.example/b.png)" in md
