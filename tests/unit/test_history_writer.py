"""History writes on their own thread: in order, never blocking the caller, waiting out a lock."""
from __future__ import annotations

import sqlite3

from opchat_magic.history import Conversation, Store


def test_writes_wait_out_a_lock_in_order_and_say_so(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = Store(path)
    conversation = Conversation("nb", store=store)
    told = []
    conversation.writer.on_problem = told.append
    thread = conversation.thread("t")

    holder = sqlite3.connect(path, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(5):
            thread.commit(thread.begin(f"q{i}"), f"a{i}")  # memory at once, the write queued
        assert [m.content for m in thread.messages][-2:] == ["q4", "a4"]
        assert not conversation.flush(0.6)  # still waiting for the lock
        assert conversation.writer.waiting_for_lock
        assert any("locked by another process" in t for t in told), told
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert conversation.flush(10)
    assert not conversation.writer.waiting_for_lock
    assert any("free again" in t for t in told), told
    assert [m.content for m in store.load("nb")["t"]] == [c for i in range(5) for c in (f"q{i}", f"a{i}")]
    conversation.close()


def test_close_finishes_the_queue_then_closes_the_store(tmp_path):
    store = Store(tmp_path / "h.sqlite3")
    conversation = Conversation("nb", store=store)
    thread = conversation.thread()
    for i in range(20):
        thread.commit(thread.begin(f"q{i}"), f"a{i}")
    conversation.close()
    assert store._conn is None  # closed, after the writes
    with Store(tmp_path / "h.sqlite3") as again:
        assert len(again.load("nb")["default"]) == 40
