"""ChatPanel in a real ipykernel, talking to the local server over 127.0.0.1.

The panel is driven the way its buttons drive it (``panel.send()``,
``panel.stop()``, ``panel.retry()``); every wait polls a kernel value with a
deadline, so a hang fails fast instead of eating the suite's timeout.
"""
from __future__ import annotations

import re
import time

import pytest

from opchat_magic.server import echo_history as user, LocalServer, reply_text

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0.01) as srv:
        yield srv


@pytest.fixture(scope="module")
def kernel(server, kernel_on):
    return kernel_on(server, "panel.ipynb", setup=(
        "from opchat_magic.panel import ChatPanel, SEND_MARK, show_panel\n"
        "from IPython import get_ipython\n"
        "magics = get_ipython().magics_manager.registry['OpchatMagics']\n"
        "panels = []\n"
        "def new_panel(**kw):\n"
        "    p = ChatPanel(**kw); panels.append(p); return p\n"
        "def shown(p):\n"  # the transcript with whitespace collapsed (blocks are joined by blank lines)
        "    return ' '.join(p.transcript_markdown().split())\n"))


@pytest.fixture(autouse=True)
def fresh(kernel, server):
    server.clear_fault()
    kernel.run("for _p in panels: _p.close()\npanels.clear()\n%opchat_reset --all")
    kernel.run("panel = new_panel(thread='default')")
    yield



def history(*texts):
    """The committed history after turns ``texts`` (user/assistant dicts)."""
    out = []
    for i, t in enumerate(texts):
        out.append({"role": "user", "content": t})
        out.append({"role": "assistant", "content": reply_text(user(*texts[: i + 1]))})
    return out


def flat(text):
    """``text`` with whitespace collapsed, to compare with ``shown(panel)`` and rendered blocks."""
    return " ".join(text.split())


def wait_for(kernel, expression, timeout=30.0, interval=0.05):
    """Poll ``expression`` in the kernel until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = kernel.value(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression!r} still falsy after {timeout} s")
        time.sleep(interval)


def wait_idle(kernel, name="panel", timeout=30.0):
    wait_for(kernel, f"not {name}.busy", timeout=timeout)


def messages(kernel, name="panel"):
    """The panel's thread history; cell text arrives with its trailing newline, stripped here."""
    return [{"role": m["role"], "content": m["content"].strip()}
            for m in kernel.value(f"[m.to_dict() for m in {name}.thread.messages]")]


def test_send_streams_without_blocking_the_kernel(kernel, server):
    text = "hello [[chunks:120]] [[delay:0.02]]"  # ~2.4 s of streaming
    completed = server.stats.completed
    kernel.run(f"panel.input.value = {text!r}\n_chat = panel.send()")
    # send() returned (the cell ended) while the reply is still streaming: no clock needed.
    assert kernel.value("panel.busy and not _chat.done") is True, "send() must return at once"
    assert kernel.value("panel.input.value") == ""
    assert kernel.value("panel.send_button.disabled") is True
    assert kernel.value("panel.stop_button.disabled") is False
    # Other cells run while the panel streams.
    ex = kernel.run("1+1")
    assert ex.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "2"
    assert kernel.value("panel.busy") is True and server.stats.completed == completed  # still streaming
    # The transcript grows while the reply streams.
    expected = reply_text(user(text), chunk_size=server.config.chunk_size)
    partial = wait_for(kernel, f"panel.busy and {flat(expected[:12])!r} in shown(panel) and shown(panel)",
                       timeout=10)
    assert flat(expected[-12:]) not in partial
    assert kernel.value("panel.busy") is True, "the reply should still be streaming"
    assert "Streaming" in kernel.value("panel.status_text")
    wait_idle(kernel)
    assert messages(kernel) == [{"role": "user", "content": text}, {"role": "assistant", "content": expected}]
    shown = kernel.value("shown(panel)")
    assert flat(expected)[-40:] in shown
    status = kernel.value("panel.status_text")
    # The status line says the state; the footer (the cell's format) is under the reply, once.
    assert status.startswith("✓ Reply complete") and "first chunk" not in status, status
    assert re.search(r"opchatgpts · .+ · \d+ in / \d+ out tokens · first chunk", shown.replace("\\", "")), shown
    assert kernel.value("panel.send_button.disabled") is False
    assert kernel.value("panel.stop_button.disabled") is True
    assert kernel.value("panel.retry_button.layout.display") == "none"


def test_enter_marker_sends(kernel):
    # What the front-end helper does on Enter: the value arrives with SEND_MARK appended.
    kernel.run("panel.input.value = 'via enter' + SEND_MARK")
    wait_idle(kernel)
    assert messages(kernel) == history("via enter")
    assert kernel.value("panel.input.value") == ""


def test_panel_and_cells_share_one_history(kernel):
    kernel.run("panel.send('one')")
    wait_idle(kernel)
    ex = kernel.run("%%opchat\ntwo")
    assert flat(reply_text(user("one", "two"))) in flat(ex.markdown())
    # The panel's transcript picks up the cell's turn by itself.
    wait_for(kernel, f"{flat(reply_text(user('one', 'two')))!r} in shown(panel)", timeout=10)
    kernel.run("panel.send('three')")
    wait_idle(kernel)
    assert messages(kernel) == history("one", "two", "three")
    shown = kernel.value("shown(panel)")
    asked = ["one", "two", "three"]
    for n in range(1, len(asked) + 1):  # each reply shown exactly once, none twice after the refresh
        assert shown.count(flat(reply_text(user(*asked[:n])))) == 1, asked[:n]
    # A cell sees the panel's turns too.
    ex = kernel.run("%%opchat\nfour")
    assert flat(reply_text(user("one", "two", "three", "four"))) in flat(ex.markdown())


def test_stop_closes_the_connection_and_keeps_the_partial_reply(kernel, server):
    kernel.run("panel.send('first')")
    wait_idle(kernel)
    before = server.stats.disconnects
    kernel.run("_chat = panel.send('long one [[chunks:400]] [[delay:0.02]]')")
    wait_for(kernel, "len(_chat.text) > 20", timeout=10)
    kernel.run("panel.stop()")
    wait_idle(kernel, timeout=5)
    stats = server.wait_for(lambda st: st.disconnects > before, timeout=3)
    assert stats.disconnects == before + 1
    assert stats.disconnect_events[-1]["chunks_sent"] < 400  # cut by the Stop, not by the end of the reply
    failed = kernel.value("(lambda t: [t.status, t.reply, t.user])(panel.thread.last_failed)")
    assert failed[0] == "stopped" and failed[1] and failed[2].startswith("long one")
    assert messages(kernel) == history("first")  # the stopped turn stays out of history
    shown = kernel.value("shown(panel)")
    assert flat(failed[1])[:20] in shown  # the partial reply stays visible...
    assert "stopped" in shown.lower()  # ...marked as stopped
    assert "Stopped" in kernel.value("panel.status_text")
    assert kernel.value("panel.retry_button.layout.display") is None
    assert kernel.value("panel.send_button.disabled") is False
    # Send again: the stopped turn was not sent as history.
    kernel.run("panel.send('after')")
    wait_idle(kernel)
    assert messages(kernel) == history("first", "after")


def test_error_shows_status_and_retry_sends_it_again(kernel, server):
    kernel.run("panel.send('kept')")
    wait_idle(kernel)
    server.set_fault("http_500", count=1)
    kernel.run("panel.send('this one fails')")
    wait_idle(kernel)
    status = kernel.value("panel.status_text")
    assert "HTTP 500" in status and "Retry" in status, status
    assert messages(kernel) == history("kept")  # nothing added on failure
    assert kernel.value("panel.thread.last_failed.status") == "failed"
    assert kernel.value("panel.retry_button.layout.display") is None
    assert "HTTP 500" in kernel.value("shown(panel)")  # the transcript says why, not only the status line
    # Rebuilt from the thread (as after a thread switch), the failed turn is marked and explained.
    kernel.run("panel.view._shown.clear(); panel.view._items.children = (); panel.refresh()")
    rebuilt = kernel.value("shown(panel)")
    assert "Failed: HTTP 500" in rebuilt and "Not part of the history" in rebuilt, rebuilt
    kernel.run("panel.retry()")
    wait_idle(kernel)
    assert messages(kernel) == history("kept", "this one fails")
    assert kernel.value("panel.thread.last_failed") is None
    assert kernel.value("panel.retry_button.layout.display") == "none"
    shown = kernel.value("shown(panel)")
    assert shown.count("this one fails") == 2  # the user message and the echo of its reply, once
    assert "HTTP 500" not in shown


def test_busy_thread_is_reported(kernel):
    # A turn pending on the thread (as a streaming %%opchat cell leaves it): Send says so.
    kernel.run("_held = panel.thread.begin('held elsewhere')")
    assert kernel.value("panel.send('mine') is None") is True
    assert "busy" in kernel.value("panel.status_text").lower()
    kernel.run("panel.thread.fail(_held, error='released')")
    # Two panels on one thread: the second is told the thread is busy, nothing is lost.
    kernel.run("other = new_panel(thread='default')\n"
               "_chat = panel.send('streaming [[chunks:300]] [[delay:0.02]]')")
    assert kernel.value("other.send('second') is None") is True
    assert "busy" in kernel.value("other.status_text").lower()
    # A cell on the same thread meanwhile is refused too, not interleaved.
    ex = kernel.run("%%opchat\nfrom a cell", check=False)
    assert ex.status == "error" and "still answering" in ex.stderr, (ex.status, ex.stderr)
    wait_for(kernel, "'elsewhere' in other.status_text", timeout=5)
    kernel.run("panel.stop()")
    wait_idle(kernel)
    assert messages(kernel) == []
    kernel.run("other.send('second')")
    wait_idle(kernel, "other")
    assert messages(kernel, "other") == history("second")
    # The first panel shows the other panel's turn after its next look at the thread.
    wait_for(kernel, f"{flat(reply_text(user('second')))!r} in shown(panel)", timeout=10)


def test_threads_selector_and_model(kernel):
    kernel.run("panel.send('on default')")
    wait_idle(kernel)
    kernel.run("panel.new_thread.value = 'side'\npanel.new_thread_button.click()")
    assert kernel.value("panel.thread.name") == "side"
    assert "side" in kernel.value("list(panel.thread_select.options)")
    assert kernel.value("shown(panel)") == ""
    kernel.run("panel.model.value = 'my-model'\npanel.send('on side')")
    wait_idle(kernel)
    assert messages(kernel) == history("on side")
    assert kernel.value("panel.thread.turns[-1].model") == "my-model"
    kernel.run("panel.thread_select.value = 'default'")
    assert kernel.value("panel.thread.name") == "default"
    assert flat(reply_text(user("on default"))) in kernel.value("shown(panel)")
    # Provider choices come from the registry.
    providers = kernel.value("list(panel.provider_select.options)")
    assert "opchatgpts" in providers and "openai" in providers
    # A thread made by a cell shows up in the selector.
    kernel.run("%%opchat -t from_cell\nhi")
    wait_for(kernel, "'from_cell' in panel.thread_select.options", timeout=10)


def test_hostile_reply_is_sanitised(kernel):
    kernel.run("panel.send('[[html]]')")
    wait_idle(kernel)
    shown = kernel.value("shown(panel)")
    assert "Hostile reply" in shown
    assert "<img" not in shown and "<script" not in shown
    assert "](javascript:" not in shown.replace(" ", "").lower()


def test_constructors(kernel):
    # session=None: the kernel's Session, the one the magics use, so one shared conversation.
    assert kernel.value("panel.session is magics.session") is True
    assert kernel.value("panel.conversation is magics.conversation") is True
    # The 0.1 signatures still work: ChatPanel(magics=...), show_panel(magics, ...).
    assert kernel.value("(lambda p: (p.session is magics.session, p.close())[0])(ChatPanel(magics=magics))") is True
    ex = kernel.run("_shown = show_panel(magics, thread='shown')")
    assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"]
               for m in ex.of_type("display_data"))
    assert kernel.value("_shown.thread.name") == "shown"
    assert kernel.value("repr(_shown)").startswith("<ChatPanel")
    kernel.run("_shown.close()")


def test_package_exports_chat_panel(kernel):
    assert kernel.value("__import__('opchat_magic').ChatPanel is ChatPanel") is True


def test_line_magic_shows_a_panel(kernel):
    # %opchat_panel [-t THREAD] is wired by the extension to panel.show_panel.
    ex = kernel.run("%opchat_panel -t from_magic")
    assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"]
               for m in ex.of_type("display_data"))
    assert not ex.of_type("execute_result"), "the panel is displayed once, not echoed as Out[n]"
    assert kernel.value("__import__('opchat_magic.panel').panel.last_panel().thread.name") == "from_magic"


def test_panel_shows_how_long_it_has_waited_for_the_first_chunk(kernel, server):
    # The server sends nothing for fault_delay (3 s), as AI Engine while its model thinks.
    kernel.run("panel.input.value = 'slow [[fault:slow_first_byte]]'\n_chat = panel.send()")
    status = wait_for(kernel, "'Waiting for the first chunk' in panel.status_text and "
                              "not panel.status_text.endswith(' 0 s') and panel.status_text", timeout=10)
    assert re.search(r"Waiting for the first chunk… [12] s", status), status
    assert "waiting for the first chunk" in wait_for(kernel, "'waiting for the first chunk' in shown(panel) "
                                                             "and shown(panel)", timeout=10)
    wait_idle(kernel)
    shown = kernel.value("shown(panel)")
    assert flat(reply_text(user("slow")))[:20] in shown and "waiting for the first chunk" not in shown
    assert kernel.value("panel.status_text").startswith("✓")


def test_stop_while_waiting_for_the_first_chunk(kernel, server):
    before = server.stats.disconnects
    kernel.run("_chat = panel.send('slow [[fault:slow_first_byte]]')")
    wait_for(kernel, "'waiting for the first chunk' in shown(panel)", timeout=10)
    kernel.run("panel.stop()")
    wait_idle(kernel, timeout=3)  # well before the server's 3 s wait is over
    server.wait_for(lambda st: st.disconnects > before, timeout=3)
    shown = kernel.value("shown(panel)")
    assert "waiting for the first chunk" not in shown and "stopped before any reply arrived" in shown
    assert kernel.value("panel.thread.last_failed.status") == "stopped"
    assert "Stopped" in kernel.value("panel.status_text")


def test_unreachable_endpoint_shows_one_message_in_the_transcript_and_the_state_in_the_status(kernel, server):
    from opchat_magic.testing import free_port

    port = free_port()
    kernel.run("import opchat_magic.probe as _p\n_saved_candidates = _p.CANDIDATES\n"
               f"_p.CANDIDATES = (_p.Candidate('vLLM', {server.port}, 'vllm'),)\n"
               f"_saved_url = magics.settings.url\nmagics.settings.url = 'http://127.0.0.1:{port}'")
    try:
        kernel.run("panel.send('anyone there?')")
        wait_idle(kernel)
        shown = kernel.value("shown(panel)")
        assert shown.count("Nothing is listening at") == 1, shown
        assert f"opchat-magic serve --port {port}" in shown
        assert "%config OpchatMagics.provider = 'vllm'" in shown
        status = kernel.value("panel.status_text")
        assert status.startswith(f"✗ Nothing is listening at http://127.0.0.1:{port}") and "Retry" in status, status
        assert kernel.value("panel.retry_button.layout.display") != "none"
    finally:
        kernel.run("_p.CANDIDATES = _saved_candidates\nmagics.settings.url = _saved_url")
