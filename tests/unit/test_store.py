"""The SQLite store: round trips, privacy, isolation, and atomic writes under interrupts and kills."""
from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opchat_magic.history import Message
from opchat_magic.history.store import SCHEMA_VERSION, Store, StoreError, default_path, notebook_key

REPO = Path(__file__).resolve().parents[2]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and signals")


def pair(i, thread=""):
    return Message("user", f"{thread}q{i}"), Message("assistant", f"{thread}a{i}")


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "history.sqlite3") as s:
        yield s


def assert_whole_turns(loaded):
    for name, messages in loaded.items():
        assert len(messages) % 2 == 0, name
        assert [m.role for m in messages] == ["user", "assistant"] * (len(messages) // 2), name


# -- round trips -------------------------------------------------------------------
def test_round_trip(store):
    store.append_turn("nb", "default", *pair(0), meta={"provider": "openai", "usage": {"total_tokens": 9}})
    store.append_turn("nb", "default", *pair(1))
    store.append_turn("nb", "work", Message("user", "héllo 🌍"), Message("assistant", "multi\nline\x00ok"))
    loaded = store.load("nb")
    assert loaded == {
        "default": [*pair(0), *pair(1)],
        "work": [Message("user", "héllo 🌍"), Message("assistant", "multi\nline\x00ok")],
    }
    turns = store.load_turns("nb")["default"]
    assert turns[0]["meta"] == {"provider": "openai", "usage": {"total_tokens": 9}}
    assert store.threads("nb") == ["default", "work"]


def test_threads_load_in_the_order_they_began(store):
    for thread in ("zeta", "alpha", "zeta", "mid"):
        store.append_turn("nb", thread, *pair(0, thread))
    assert list(store.load_turns("nb")) == ["zeta", "alpha", "mid"]
    assert [len(t) for t in store.load_turns("nb").values()] == [2, 1, 1]


def test_history_survives_a_new_store(tmp_path):
    path = tmp_path / "h.db"
    first = Store(path)
    for i in range(3):
        first.append_turn("nb", "default", *pair(i))
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.load("nb")
    with Store(path) as second:  # the kernel restarted
        assert second.load("nb") == {"default": [m for i in range(3) for m in pair(i)]}
        second.append_turn("nb", "default", *pair(3))
        assert len(second.load("nb")["default"]) == 8


def test_keys_are_isolated(store):
    store.append_turn("/a.ipynb", "default", *pair(0, "a"))
    store.append_turn("/b.ipynb", "default", *pair(0, "b"))
    assert store.load("/a.ipynb") == {"default": list(pair(0, "a"))}
    assert store.load("/b.ipynb") == {"default": list(pair(0, "b"))}
    assert store.load("/c.ipynb") == {}
    store.reset("/a.ipynb")
    assert store.load("/a.ipynb") == {} and store.load("/b.ipynb") != {}


def test_reset_one_thread_or_all(store):
    for thread in ("x", "y"):
        store.append_turn("nb", thread, *pair(0, thread))
        store.append_turn("other", thread, *pair(0, thread))
    store.reset("nb", "x")
    assert set(store.load("nb")) == {"y"}
    store.reset("nb")
    assert store.load("nb") == {} and store.threads("nb") == []
    assert set(store.load("other")) == {"x", "y"}


def test_failed_turns_are_kept_apart_from_history(store):
    from opchat_magic.history import Turn

    store.append_turn("nb", "t", *pair(0))
    turn = Turn(thread="t", user="q1", reply="partial", status="stopped", error="stopped by the user",
                provider="p", model="m")
    store.record_failed("nb", "t", turn)
    assert store.load("nb") == {"t": list(pair(0))}  # not history
    failed = store.load_failed("nb")["t"]
    assert (failed["id"], failed["user"], failed["reply"], failed["status"]) == (turn.id, "q1", "partial", "stopped")
    assert (failed["provider"], failed["model"], failed["position"]) == ("p", "m", 1)

    newer = Turn(thread="t", user="q2", status="failed", error="boom")
    store.record_failed("nb", "t", newer)  # replaces: only the last one is retryable
    assert store.load_failed("nb")["t"]["user"] == "q2"
    store.append_turn("nb", "t", Message("user", "q2"), Message("assistant", "a2"), clear_failed=True)
    assert store.load_failed("nb") == {}


def test_meta_keeps_only_known_fields(tmp_path):
    path = tmp_path / "h.db"
    with Store(path) as store:
        store.append_turn("nb", "t", *pair(0), meta={"model": "m", "api_key": "sk-secret-123",
                                                     "headers": {"Authorization": "Bearer sk-secret-123"}})
        assert store.load_turns("nb")["t"][0]["meta"] == {"model": "m"}
        assert b"sk-secret" not in Path(f"{path}-wal").read_bytes()
    assert b"sk-secret" not in path.read_bytes()


# -- the file ------------------------------------------------------------------------
@posix_only
def test_file_is_private(tmp_path):
    path = tmp_path / "new" / "deeper" / "h.db"
    old = os.umask(0o022)
    try:
        with Store(path) as store:
            store.append_turn("nb", "t", *pair(0))
            for name in (path, Path(f"{path}-wal")):
                assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old)
    # an explicit path inside an existing folder leaves that folder's mode alone
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    Store(shared / "h.db").close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


@posix_only
def test_loose_permissions_are_tightened(tmp_path):
    path = tmp_path / "h.db"
    Store(path).close()
    os.chmod(path, 0o644)
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@posix_only
def test_default_path_is_private_under_the_jupyter_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("OPCHAT_HISTORY_DB", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    expected = tmp_path / "data" / "opchat_magic" / "history.sqlite3"
    assert default_path() == expected
    expected.parent.mkdir(parents=True)
    os.chmod(expected.parent, 0o755)  # our own folder, found too open: tightened
    with Store() as store:
        assert store.path == str(expected)
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600

    monkeypatch.setenv("OPCHAT_HISTORY_DB", str(tmp_path / "elsewhere.db"))
    assert default_path() == tmp_path / "elsewhere.db"


def test_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "h.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="OPCHAT_HISTORY_DB"):
        Store(path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_memory_store():
    with Store(":memory:") as store:
        store.append_turn("nb", "t", *pair(0))
        assert store.load("nb") == {"t": list(pair(0))}


# -- atomic writes ------------------------------------------------------------------------
class Exploding:
    """An assistant message whose content raises once the user row is already written."""

    role = "assistant"

    def __init__(self, exc):
        self.exc = exc

    @property
    def content(self):
        raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_exception_inside_a_write_leaves_no_half_turn(store, exc):
    store.append_turn("nb", "t", *pair(0))
    with pytest.raises(type(exc)):
        store.append_turn("nb", "t", Message("user", "half"), Exploding(exc))
    assert store.load("nb") == {"t": list(pair(0))}
    assert store.integrity_check() == "ok"
    store.append_turn("nb", "t", *pair(1))  # and the store still works
    assert store.load("nb") == {"t": [*pair(0), *pair(1)]}


def test_a_transaction_left_open_is_rolled_back_first(store):
    # What an interrupt landing inside the rollback itself would leave behind.
    store._conn.execute("BEGIN IMMEDIATE")
    store._conn.execute("INSERT INTO messages (key, thread, seq, role, content, turn_id, created)"
                        " VALUES ('nb', 't', 0, 'user', 'orphan', 'x', 0)")
    store.append_turn("nb", "t", *pair(0))
    assert store.load("nb") == {"t": list(pair(0))}


@posix_only
def test_kernel_interrupts_during_writes(store):
    """SIGALRM stands in for the kernel's SIGINT: a KeyboardInterrupt at a random bytecode."""
    state = {"armed": False}

    def interrupt(signum, frame):
        if state["armed"]:
            state["armed"] = False  # one per attempt, so the test's own except clause is safe
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    attempts = interrupted = 0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            attempts += 1
            try:
                state["armed"] = True
                store.append_turn("nb", "t", Message("user", f"q{attempts}"), Message("assistant", "a" * 2000))
                state["armed"] = False
            except KeyboardInterrupt:
                interrupted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupted > 0, "no write was interrupted: the test proved nothing"
    assert store.integrity_check() == "ok"
    loaded = store.load("nb")
    assert_whole_turns(loaded)
    stored = len(loaded.get("t", [])) // 2
    assert attempts - interrupted <= stored <= attempts
    store.append_turn("nb", "t", *pair(0))
    assert len(store.load("nb")["t"]) // 2 == stored + 1


WRITER = r"""
import sys
from opchat_magic.history import Message
from opchat_magic.history.store import Store

store = Store(sys.argv[1])
i = 0
while True:
    for thread in ("a", "b", "c"):
        store.append_turn("nb", thread, Message("user", f"q{i}" * 50), Message("assistant", f"a{i}" * 500),
                          meta={"model": "m", "usage": {"total_tokens": i}})
    i += 1
    if i == 20:
        print("ready", flush=True)
"""


@posix_only
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_killed_mid_write_leaves_only_whole_turns(tmp_path, delay):
    path = tmp_path / "h.db"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Store(path) as store:
        loaded = store.load("nb")
        assert set(loaded) == {"a", "b", "c"}
        assert_whole_turns(loaded)
        assert all(len(messages) >= 40 for messages in loaded.values())
        rows = store._read("SELECT COUNT(*) FROM messages")[0][0]
        assert rows == sum(len(m) for m in loaded.values())  # no stray half turn on disk either
        store.append_turn("nb", "a", *pair(0))  # the file is usable after the crash


# -- keys ---------------------------------------------------------------------------------------
def test_notebook_key_from_jupyter_server(tmp_path, monkeypatch):
    notebook = tmp_path / "work" / "analysis.ipynb"
    notebook.parent.mkdir()
    notebook.write_text("{}")
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "work" / ".." / "work" / "analysis.ipynb"))
    assert notebook_key() == str(notebook.resolve())
    # relative to the server's root: the kernel runs in the notebook's folder
    monkeypatch.setenv("JPY_SESSION_NAME", "work/analysis.ipynb")
    monkeypatch.chdir(notebook.parent)
    assert notebook_key() == str(notebook.resolve())
    assert notebook_key({"__vsc_ipynb_file__": "/elsewhere.ipynb"}) == str(notebook.resolve())


def test_notebook_key_from_vscode_then_session(tmp_path, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert notebook_key({"__vsc_ipynb_file__": str(tmp_path / "nb.ipynb")}) == str((tmp_path / "nb.ipynb").resolve())
    key = notebook_key({})
    assert key.startswith(f"session:{os.getpid()}-")
    assert notebook_key(None) == key  # stable for the life of the kernel

    env = {k: v for k, v in os.environ.items() if k != "JPY_SESSION_NAME"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    other = subprocess.run([sys.executable, "-c", "from opchat_magic.history.store import notebook_key; print(notebook_key())"],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert other.startswith("session:") and other != key  # another scratch kernel, other history
