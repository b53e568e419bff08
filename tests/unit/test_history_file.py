"""Issue 12, finding 9: the history file deleted or replaced while the kernel runs.

SQLite keeps writing into an unlinked (or renamed-away) file: every later turn
went into a file nobody could open again. Now the next write notices, opens the
file anew (re-creating it), saves the notebook's turns held in memory into it,
and warns once; nothing is lost and nothing is saved twice.
"""
from __future__ import annotations

import os
import shutil
import warnings

import pytest

from opchat_magic.history import Conversation
from opchat_magic.history.store import Store


def turn(thread, text):
    t = thread.begin(text)
    thread.commit(t, "reply to " + text)


def stored(path, key="nb.ipynb"):
    with Store(path) as store:
        return [(m.role, m.content) for m in store.load(key).get("default", [])]


def remove_db(path):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(path) + suffix):
            os.remove(str(path) + suffix)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_history_file_gone_or_replaced_is_noticed_and_nothing_is_lost(tmp_path, how):
    path = tmp_path / "history.sqlite3"
    conversation = Conversation("nb.ipynb", store=Store(path))
    thread = conversation.thread()
    turn(thread, "one")
    assert conversation.flush(10)
    if how == "deleted":
        remove_db(path)
    else:  # another file in its place (a restored copy: the same turns, a new inode)
        copy = tmp_path / "copy.sqlite3"
        with Store(path) as other:  # checkpoint the WAL into the main file, so the copy is whole
            other._read("PRAGMA wal_checkpoint(FULL)")
        shutil.copyfile(path, copy)
        remove_db(path)
        os.rename(copy, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        turn(thread, "two")
        assert conversation.flush(10)
        turn(thread, "three")
        assert conversation.flush(10)
    told = [str(w.message) for w in caught if how in str(w.message)]
    assert len(told) == 1, [str(w.message) for w in caught]  # once, not per write
    assert "nothing is lost" in told[0] and str(path) in told[0]
    conversation.close()
    assert path.exists()
    assert stored(path) == [("user", "one"), ("assistant", "reply to one"), ("user", "two"),
                            ("assistant", "reply to two"), ("user", "three"), ("assistant", "reply to three")]


def test_unchanged_file_costs_one_stat_and_no_warning(tmp_path):
    path = tmp_path / "history.sqlite3"
    conversation = Conversation("nb.ipynb", store=Store(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            turn(conversation.thread(), f"t{i}")
        assert conversation.flush(10)
    assert not [w for w in caught if "history" in str(w.message)]
    conversation.close()
    assert len(stored(path)) == 6
