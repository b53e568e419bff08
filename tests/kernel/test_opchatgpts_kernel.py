"""The AI Engine provider from the magic, in a real kernel, against the local server:
one chatId per thread (across a kernel restart; a reset starts a new one), the
site settings, and the "waiting for the first chunk" line."""
from __future__ import annotations

import re

import pytest

from opchat_magic.server import LocalServer, echo_history as user, reply_text

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def server():
    # As AI Engine 3.x: a nonce is required (the provider fetches it on its own).
    with LocalServer(delay=0, require_nonce=True, fault_delay=3.5) as srv:
        yield srv


@pytest.fixture(scope="module")
def kernel(server, kernel_on):
    return kernel_on(server, "chat_ids.ipynb")


def chat_ids(server):
    return [r["body"]["chatId"] for r in server.stats.recent if r["endpoint"] == "submit" and r["body"]]


def test_one_chat_id_per_thread_across_a_restart_and_a_new_one_after_reset(kernel, server):
    server.reset_stats()
    kernel.run("%%opchat\nfirst")
    kernel.run("%%opchat\nsecond")
    kernel.run("%%opchat -t other\nelsewhere")
    ids = chat_ids(server)
    main = ids[-1 - 1]
    assert re.fullmatch(r"[a-z0-9]{10}", main)
    assert ids[-3] == ids[-2] == main and ids[-1] != main  # per thread, not per turn
    kernel.restart()
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}")
    ex = kernel.run("%%opchat\nthird, after a restart")
    assert ex.shows(reply_text(user("first", "second", "third, after a restart")))
    assert chat_ids(server)[-1] == main  # the thread's conversation goes on
    kernel.run("%opchat_reset")
    kernel.run("%%opchat\nafter the reset")
    assert chat_ids(server)[-1] not in (main, ids[-1])


def test_site_settings_reach_the_request(kernel, server):
    kernel.run("%config OpchatMagics.bot_id = 'helper'\n%config OpchatMagics.context_id = 42")
    try:
        kernel.run("%%opchat -t settings\nhello")
        body = server.stats.last_body
        assert (body["botId"], body["contextId"]) == ("helper", 42)
    finally:
        kernel.run("%config OpchatMagics.bot_id = 'default'\n%config OpchatMagics.context_id = None")
    kernel.run("%%opchat -t settings\nagain")
    body = server.stats.last_body
    assert (body["botId"], body["contextId"]) == ("default", None)  # the plugin's own chatbot outside a post
    # The history sent is the thread before the new message; the server appends newMessage.
    assert body["messages"][-1]["role"] == "assistant" and body["newMessage"].strip() == "again"


def test_cell_shows_how_long_it_has_waited_for_the_first_chunk(kernel, server):
    ex = kernel.run("%%opchat -t slow\nslow one [[fault:slow_first_byte]]", timeout=60)
    waiting = [m["content"]["data"].get("text/markdown", "") for m in ex.of_type("display_data", "update_display_data")
               if "waiting for the first chunk" in m["content"]["data"].get("text/markdown", "")]
    assert any("1 s" in md for md in waiting) and any("2 s" in md for md in waiting), waiting
    assert ex.shows(reply_text(user("slow one")))
    assert "waiting for the first chunk" not in ex.markdown()  # the saved outputs hold the reply only


def test_interrupt_while_waiting_for_the_first_chunk(kernel, server):
    import threading
    import time

    server.expire_nonces()  # the cached nonce is stale: a 403, start_session, then the slow retry
    disconnects = server.stats.disconnects
    execution = kernel.submit("%%opchat -t interrupted\nthink hard [[fault:slow_first_byte]]")
    started = []

    def on_message(msg):
        if msg["msg_type"] == "execute_input" and not started:
            started.append(time.monotonic())
            threading.Timer(1.6, kernel.interrupt).start()

    kernel.collect(execution, timeout=30, on_message=on_message)
    took = time.monotonic() - started[0]
    assert execution.error["ename"] == "StoppedError", execution.error
    assert took < 3.0, took  # not the 3.5 s the server would have made us wait
    shown = [m["content"]["data"].get("text/markdown", "") for m in execution.of_type("display_data", "update_display_data")]
    assert any("waiting for the first chunk… 1 s" in md for md in shown), shown
    assert "waiting for the first chunk" not in execution.markdown()
    assert "stopped before any reply arrived" in execution.markdown()
    server.wait_for(lambda s: s.disconnects > disconnects, timeout=3)
    assert [r["endpoint"] for r in server.stats.recent[-3:]] == ["submit", "start_session", "submit"]
    ex = kernel.run("%%opchat -t interrupted\nand now?")
    assert ex.shows(reply_text(user("and now?")))  # the stopped turn stays out of history
