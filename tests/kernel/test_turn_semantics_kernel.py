"""The turn's races and retry semantics, each proven in a real kernel through a cell AND the panel.

* Stop (or an interrupt) landing just after the commit: reported complete, not stopped.
* The interrupt hint names the thread: ``%opchat_retry -t long``.
* Retry semantics: one failed turn per thread; a later completed turn supersedes it.
* Every asyncio object is awaited on the loop (thread) that made it.
* The panel hears history changes by events: right after a cell, no polling task.
* A database held locked by another process while a reply streams: the stream is
  not slowed, the turn is in history at once and on disk when the lock frees.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from opchat_magic.server import LocalServer, reply_text
from opchat_magic.server import echo_history as user
from test_openai_magic_kernel import wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0.01) as srv:
        yield srv


SETUP = """
import asyncio, threading, time, _thread
from opchat_magic.panel import ChatPanel
from opchat_magic.session import get_session
session = get_session()
def shown(p):
    return ' '.join(p.transcript_markdown().split())
def state(name):
    t = session.conversation.thread(name)
    return {'messages': [m.content.strip() for m in t.messages],
            'failed': None if t.last_failed is None else t.last_failed.status, 'pending': t.pending is not None}
def wait_until(pred, limit=20):
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            raise AssertionError('timed out')
        time.sleep(0.02)
import opchat_magic.turn as _turn_mod
_front_door_stopped = threading.Event()  # set when a front door cancels a turn (ChatTurn.cancel)
_orig_cancel = _turn_mod.ChatTurn.cancel
def _recording_cancel(self):
    _orig_cancel(self)
    _front_door_stopped.set()
_turn_mod.ChatTurn.cancel = _recording_cancel
race_seen = None
def stop_after_commit(name, stop):
    # The thread's next commit succeeds, then `stop()` runs a hair too late (still inside the
    # stream's task), and the task does not end until the front door has acted on the Stop
    # (cancelled the turn): the race, every time, whatever the machine's load.
    t = session.conversation.thread(name)
    commit = t.commit
    def late(*a, **k):
        done = commit(*a, **k)
        t.commit = commit
        global race_seen
        _front_door_stopped.clear()
        stop()
        race_seen = _front_door_stopped.wait(10)  # the tests check it: the race really happened
        return done
    t.commit = late
"""


@pytest.fixture(scope="module")
def kernel(server, kernel_on):
    return kernel_on(server, "semantics.ipynb", setup=SETUP)


@pytest.fixture(autouse=True)
def fresh(kernel, server):
    server.clear_fault()
    kernel.run("%autoawait on\n%opchat_reset --all")
    yield


def squash(text):
    return " ".join(text.split())


# -- Stop just after the commit ------------------------------------------------------------------

def test_interrupt_after_commit_is_complete_in_the_awaited_cell(kernel):
    # The kernel interrupt of an awaited cell is a cancellation of its task: do exactly that.
    kernel.run("_loop = asyncio.get_running_loop()\n"
               "def _cancel_cell():\n"
               "    for t in asyncio.all_tasks(_loop):\n"
               "        if '_await_cell' in repr(t.get_coro()) or 'run_cell' in repr(t.get_coro()):\n"
               "            _loop.call_soon_threadsafe(t.cancel)\n"
               "stop_after_commit('race', _cancel_cell)")
    ex = kernel.run("%%opchat -t race\nracing", check=False)
    assert ex.status == "ok", (ex.error, ex.stderr)
    assert squash(reply_text(user("racing"))) in squash(ex.markdown())
    assert "Stopped" not in ex.markdown() + ex.stderr
    assert kernel.value("race_seen") is True  # the cell cancelled the turn after it had committed
    assert kernel.value("state('race')") == {"messages": ["racing", reply_text(user("racing"))],
                                             "failed": None, "pending": False}


def test_interrupt_after_commit_is_complete_in_the_blocking_cell(kernel):
    kernel.run("%autoawait off")
    kernel.run("stop_after_commit('race2', _thread.interrupt_main)")
    ex = kernel.run("%%opchat -t race2\nracing too", check=False)
    kernel.run("%autoawait on")
    assert ex.status == "ok", (ex.error, ex.stderr)
    assert "Stopped" not in ex.markdown() + ex.stderr
    assert kernel.value("race_seen") is True
    assert kernel.value("state('race2')")["failed"] is None
    assert len(kernel.value("state('race2')")["messages"]) == 2


def test_stop_after_commit_is_complete_in_the_panel(kernel):
    kernel.run("panel = ChatPanel(thread='race3')\nstop_after_commit('race3', panel.stop)\n"
               "panel.send('panel racing')")
    wait_for(kernel, "not panel.busy")
    assert kernel.value("race_seen") is True
    status = kernel.value("panel.status_text")
    assert status.startswith("✓"), status
    assert kernel.value("panel.outcome.status") == "complete"
    assert kernel.value("panel.retry_button.layout.display") == "none"
    assert kernel.value("state('race3')")["failed"] is None
    kernel.run("panel.close()")


# -- the interrupt hint names the thread -------------------------------------------------------------

def test_interrupt_hint_names_the_thread_and_retry_sends_it(kernel):
    execution = kernel.submit("%%opchat -t long\nlong [[chunks:400]] [[delay:0.02]]")
    threading.Timer(1.0, kernel.interrupt).start()
    kernel.collect(execution, timeout=30)
    text = "\n".join([execution.stderr, *(execution.error or {}).get("traceback", [])])
    assert execution.error and execution.error["ename"] == "StoppedError", execution.error
    assert "%opchat_retry -t long" in text, text
    assert kernel.value("state('long')")["failed"] == "stopped"
    assert kernel.value("state('default')")["failed"] is None
    ex = kernel.run("%opchat_retry -t long", timeout=60)
    assert ex.status == "ok"
    assert kernel.value("state('long')")["failed"] is None


# -- retry semantics -------------------------------------------------------------------------------------

def test_a_later_success_supersedes_the_failure_in_cells(kernel, server):
    server.set_fault("http_500", count=1)
    ex = kernel.run("%%opchat -t r\nfirst question", check=False)
    assert ex.status == "error" and "%opchat_retry -t r" in ex.stderr + "".join(ex.error["traceback"])
    assert kernel.value("state('r')")["failed"] == "failed"
    kernel.run("%%opchat -t r\nsecond question")
    assert kernel.value("state('r')") == {"messages": ["second question", reply_text(user("second question"))],
                                          "failed": None, "pending": False}
    ex = kernel.run("%opchat_retry -t r", check=False)
    assert ex.status == "error" and "no failed turn" in ex.stderr + str(ex.error), ex.error


def test_a_later_success_supersedes_the_failure_in_the_panel(kernel, server):
    server.set_fault("http_500", count=1)
    kernel.run("panel = ChatPanel(thread='rp')\npanel.send('first question')")
    wait_for(kernel, "not panel.busy")
    assert kernel.value("panel.retry_button.layout.display") is None  # Retry offered
    kernel.run("panel.send('second question')")
    wait_for(kernel, "not panel.busy")
    assert kernel.value("panel.retry_button.layout.display") == "none"
    assert kernel.value("panel.retry() is None") is True
    assert "no failed message" in kernel.value("panel.status_text")
    assert kernel.value("state('rp')")["messages"] == ["second question", reply_text(user("second question"))]
    kernel.run("panel.close()")


# -- asyncio objects stay on their loop ----------------------------------------------------------------

def test_every_asyncio_event_is_awaited_on_the_thread_that_made_it(kernel):
    kernel.run(textwrap.dedent("""
        _seen = []
        _orig_init, _orig_wait = asyncio.Event.__init__, asyncio.Event.wait
        def _init(self, *a, **k):
            _orig_init(self, *a, **k)
            self._made_on = threading.current_thread().name
        async def _wait(self):
            _seen.append((getattr(self, '_made_on', None), threading.current_thread().name))
            return await _orig_wait(self)
        asyncio.Event.__init__, asyncio.Event.wait = _init, _wait
        """))
    try:
        kernel.run("%%opchat -t ev\nevents [[chunks:20]]")
        kernel.run("panel = ChatPanel(thread='ev2')\npanel.send('panel events [[chunks:20]]')")
        wait_for(kernel, "not panel.busy")
        seen = kernel.value("_seen")
    finally:
        kernel.run("asyncio.Event.__init__, asyncio.Event.wait = _orig_init, _orig_wait\npanel.close()")
    assert seen, "no asyncio.Event was awaited: the check saw nothing"
    assert {made == waited for made, waited in seen} == {True}, seen
    assert {waited for _, waited in seen} >= {"MainThread", "opchat-loop"}, seen  # cell and panel both drove


# -- the panel hears history by events ------------------------------------------------------------------

def test_panel_hears_a_cell_at_once_and_polls_nothing(kernel):
    kernel.run("panel = ChatPanel(thread='shared')")
    # Nothing runs on the private loop while the panel is idle: no watcher task.
    assert kernel.value("len(asyncio.all_tasks(__import__('opchat_magic.loop').loop.get_loop().loop))") == 0
    kernel.run("%%opchat -t shared\nfrom a cell")
    # The very next look, no waiting: the commit event (or post_run_cell) already refreshed it.
    assert squash(reply_text(user("from a cell"))) in kernel.value("shown(panel)")
    kernel.run("%%opchat -t brand_new\nanother thread")
    assert "brand_new" in kernel.value("list(panel.thread_select.options)")
    kernel.run("%opchat_reset shared")
    assert kernel.value("shown(panel)") == ""
    kernel.run("panel.close()")


# -- a locked database --------------------------------------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # hold it until told
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def _hold(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    proc.wait(10)


def test_a_locked_database_slows_no_stream_and_the_turn_is_saved_when_it_frees(kernel):
    path = kernel.value("session.conversation.store.path")
    body = "locked [[chunks:40]] [[delay:0.01]]"
    kernel.run(f"%%opchat -t lk\nfree {body}")
    proc = _hold(path)
    try:
        ex = kernel.run(f"%%opchat -t lk\nheld {body}", timeout=60)
        # Not slowed, shown by the order of events rather than a clock: the reply streamed to its end
        # and the cell finished while its history write still waited for the other process's lock
        # (the footer says so: the user is told).
        assert "history not saved yet" in ex.markdown()
        assert squash(reply_text(user(f"free {body}", f"held {body}"))) in squash(ex.markdown())
        # In history at once (memory), while the write waits for the lock.
        assert len(kernel.value("state('lk')['messages']")) == 4
        # The panel, too, streams and finishes while the lock is held.
        kernel.run(f"panel = ChatPanel(thread='lk2')\npanel.send('panel {body}')")
        wait_for(kernel, "not panel.busy", timeout=20)
        assert kernel.value("panel.status_text").startswith("✓")
        assert "history not saved yet" in kernel.value("shown(panel)")  # under the panel's reply too
        assert kernel.value("session.conversation.writer.waiting_for_lock") is True
        on_disk = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3; c = sqlite3.connect({path!r}, timeout=1)
            print(c.execute("SELECT COUNT(*) FROM messages WHERE content LIKE 'held%'").fetchone()[0])""")],
            capture_output=True, text=True)
        assert on_disk.stdout.strip() == "0", on_disk  # not yet written: WAL readers see the old state
    finally:
        _release(proc)
    assert kernel.value("session.conversation.flush(20)") is True
    kernel.run("panel.close()")
    import sqlite3

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT content FROM messages WHERE thread IN ('lk', 'lk2') ORDER BY thread, seq").fetchall()
    contents = [r[0].strip() for r in rows]
    assert f"held {body}" in contents and f"panel {body}" in contents, contents


# -- %reload_ext ----------------------------------------------------------------------------------------

def test_reload_ext_leaves_one_configurable_and_one_open_database(kernel):
    count_open = ("(lambda p: sum(1 for f in __import__('os').listdir('/proc/self/fd') "
                  "if __import__('os').path.realpath('/proc/self/fd/' + f) == p))"
                  "(__import__('os').path.realpath(get_session().conversation.store.path))")
    kernel.run("%%opchat -t reload\nbefore the reload")
    before = kernel.value(count_open)
    assert before >= 1
    for _ in range(3):
        kernel.run("%reload_ext opchat_magic")
    kernel.run("%%opchat -t reload\nafter the reload")  # the new session has restored the thread
    assert kernel.value(count_open) == before  # the old sessions' connections are closed, not leaked
    names = kernel.value("[type(c).__name__ for c in get_ipython().configurables "
                         "if type(c).__name__.startswith('Opchat')]")
    assert names == ["OpchatSettings"], names
    assert kernel.value("len(get_session().conversation.thread('reload').messages)") == 4
    kernel.run("session = get_session()")  # the helpers above use the live session
