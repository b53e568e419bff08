"""SQLite persistence of a notebook's threads, so history survives a kernel restart.

One database file holds the history of every notebook, each under its key
(``notebook_key``: the notebook's resolved path). Only this module touches
SQLite.

What is stored: message text, the images a user message carried (as
references in the ``images`` column; the bytes once per SHA-256 in the
``blobs`` table, so a resent or restored turn finds them by hash), and for each turn a small meta record
(provider, model, usage, timings) filtered through ``META_KEYS``. Never an API
key: callers must not put secrets in message content or meta, and the
allow-list drops any other meta key (a URL, headers) rather than trust them.

Durability: every write is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction,
rolled back on any exception, KeyboardInterrupt included (a kernel interrupt
can land in the middle of a write). A killed process leaves at most an
uncommitted transaction, which SQLite's WAL discards on the next open: a turn
is on disk whole or not at all.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from .model import Message
from ..errors import OpchatError

__all__ = ["Store", "StoreError", "default_path", "notebook_key", "META_KEYS", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2  # 2: image references (messages.images, failed_turns.images) and the blobs table

# The only meta fields written to disk. An allow-list, so that a caller passing
# its whole request context cannot leak a key or an authenticated URL.
META_KEYS = frozenset({
    "turn_id", "provider", "model", "usage", "started_at", "finished_at",
    "first_chunk_at", "time_to_first_chunk", "total_time", "retry_of", "chat_id",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id      INTEGER PRIMARY KEY,
    key     TEXT    NOT NULL,   -- the notebook (see notebook_key)
    thread  TEXT    NOT NULL,
    seq     INTEGER NOT NULL,   -- position in the thread (a turn takes two)
    role    TEXT    NOT NULL,
    content TEXT    NOT NULL,
    turn_id TEXT    NOT NULL,   -- the user and assistant rows of one turn share it
    meta    TEXT,               -- JSON, on the assistant row (META_KEYS only)
    created REAL    NOT NULL,
    images  TEXT,               -- JSON list of image references (sha256, mime, source, size), on user rows
    UNIQUE (key, thread, seq)
);
CREATE TABLE IF NOT EXISTS failed_turns (
    key      TEXT    NOT NULL,
    thread   TEXT    NOT NULL,
    turn_id  TEXT    NOT NULL,
    user     TEXT    NOT NULL,
    reply    TEXT    NOT NULL,  -- the partial text that arrived before it failed or was stopped
    status   TEXT    NOT NULL,  -- failed | stopped
    error    TEXT,
    meta     TEXT,
    position INTEGER NOT NULL,  -- number of committed turns before it, to show it in place
    created  REAL    NOT NULL,
    images   TEXT,              -- as messages.images
    PRIMARY KEY (key, thread)   -- only the last failed turn of a thread is kept: it is the retryable one
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256  TEXT PRIMARY KEY,   -- what the references name
    mime    TEXT NOT NULL,
    data    BLOB NOT NULL,
    created REAL NOT NULL
);
"""

# Blobs no reference names any more (after a reset, or a failed turn replaced).
_DROP_ORPHAN_BLOBS = """
DELETE FROM blobs WHERE sha256 NOT IN (
    SELECT json_extract(j.value, '$.sha256') FROM messages AS m, json_each(m.images) AS j
    WHERE m.images IS NOT NULL
    UNION
    SELECT json_extract(j.value, '$.sha256') FROM failed_turns AS f, json_each(f.images) AS j
    WHERE f.images IS NOT NULL)
"""

# A stable per-process session id: two scratch kernels (no notebook path) get
# different keys, and so never see each other's history.
_PROCESS_STARTED = int(time.time())


class StoreError(OpchatError):
    """The history database cannot be opened or used."""


# -- where ---------------------------------------------------------------------
def default_path() -> Path:
    """``$OPCHAT_HISTORY_DB``, else ``<jupyter data dir>/opchat_magic/history.sqlite3``."""
    override = os.environ.get("OPCHAT_HISTORY_DB")
    if override:
        return Path(override).expanduser()
    try:
        from jupyter_core.paths import jupyter_data_dir

        base = Path(jupyter_data_dir())
    except ImportError:
        base = Path("~/.local/share/jupyter").expanduser()
    return base / "opchat_magic" / "history.sqlite3"


def notebook_key(user_ns: Optional[dict] = None) -> str:
    """The key a notebook's history is stored under.

    1. ``JPY_SESSION_NAME``: jupyter_server sets it to the notebook's path for
       kernels it starts for a notebook. It may be relative to the server's
       root; the kernel's working directory is the notebook's folder, so a
       relative value is found there first.
    2. ``__vsc_ipynb_file__`` in the user namespace: set by VS Code.
    3. ``session:<pid>-<start time>``: a kernel with no notebook keeps its
       history to itself for its lifetime.
    """
    session = os.environ.get("JPY_SESSION_NAME", "").strip()
    if session:
        return _normalise(session)
    vscode = (user_ns or {}).get("__vsc_ipynb_file__")
    if isinstance(vscode, str) and vscode.strip():
        return _normalise(vscode.strip())
    return f"session:{os.getpid()}-{_PROCESS_STARTED}"


def _normalise(path: str) -> str:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        here = Path.cwd() / candidate.name
        candidate = here if here.exists() else Path.cwd() / candidate
    try:
        return str(candidate.resolve())
    except OSError:  # an unreachable mount: the absolute form is still a fine key
        return str(candidate.absolute())


def _file_identity(path: str) -> Optional[tuple]:
    """(device, inode) of the file at ``path``, None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _private_file(path: Path, tighten_dir: bool) -> None:
    """Create ``path``'s folder (0700) and the file itself (0600) before SQLite opens it.

    SQLite would create the file with the umask's permissions (often 0644:
    readable by every user of a shared JupyterHub machine). Its -wal and -shm
    files copy the main file's mode, so making the main file private is enough.
    """
    folder = path.parent
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name != "posix":
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        return
    # mkdir's mode is filtered by the umask; set it outright on what we created.
    # An existing folder is tightened only if it is our own (the default one):
    # never chmod a folder like /tmp that OPCHAT_HISTORY_DB happens to point into.
    for made in missing:
        os.chmod(made, 0o700)
    if tighten_dir and folder.stat().st_mode & 0o077:
        os.chmod(folder, 0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if name.stat().st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def _meta_json(meta: Optional[dict]) -> Optional[str]:
    if not meta:
        return None
    kept = {k: v for k, v in meta.items() if k in META_KEYS and v is not None}
    return json.dumps(kept, default=str, ensure_ascii=False) if kept else None


def _images_json(refs: Any) -> Optional[str]:
    if not refs:
        return None
    kept = [{k: r.get(k) for k in ("sha256", "mime", "source", "size")} for r in refs if isinstance(r, dict)]
    return json.dumps(kept, ensure_ascii=False) if kept else None


def _images_load(text: Optional[str]) -> list:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [r for r in value if isinstance(r, dict) and isinstance(r.get("sha256"), str)] \
        if isinstance(value, list) else []


def _put_blobs(conn: sqlite3.Connection, blobs: Optional[dict]) -> None:
    """Write ``{sha256: (mime, bytes)}`` once per hash."""
    now = time.time()
    for sha256, (mime, data) in (blobs or {}).items():
        conn.execute("INSERT OR IGNORE INTO blobs (sha256, mime, data, created) VALUES (?, ?, ?, ?)",
                     (sha256, mime or "", sqlite3.Binary(data), now))


def _meta_load(text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- the store -------------------------------------------------------------------
class Store:
    """The history database.

    One connection, shared by every thread behind a lock
    (``check_same_thread=False``). Why not a connection per thread: writers are
    serialised by SQLite anyway, the panel's loop thread and the kernel's main
    thread would each hold a connection that nobody closes, and one connection
    makes ``close()`` close everything. The lock also keeps one transaction
    from interleaving with another's statements on the shared connection.
    """

    def __init__(self, path: "str | os.PathLike[str] | None" = None):
        self._lock = threading.RLock()
        if path is None:
            path = default_path()
            tighten = True
        else:
            tighten = False
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._conn: Optional[sqlite3.Connection] = None
        try:
            self._open(tighten)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"Cannot open the history database {self.path}: {exc}. Move the file aside, "
                             "set OPCHAT_HISTORY_DB to another path, or "
                             "`%config OpchatMagics.persist = False`.") from exc

    def _open(self, tighten: bool = False) -> None:
        if not self._memory:
            _private_file(Path(self.path), tighten_dir=tighten)
        # isolation_level=None: no implicit BEGINs; transactions are ours, explicit.
        # timeout: another kernel may be writing to the same file.
        self._conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._setup()
        self._identity = _file_identity(self.path) if not self._memory else None

    def check_file(self) -> Optional[str]:
        """Is the file still the one opened? ``"deleted"`` or ``"replaced"`` if not (it is then
        opened anew at the same path, re-created if gone), None if it is.

        SQLite keeps writing into a file that was unlinked or renamed away; without this
        check, every later turn would land in a file nobody can open again.
        """
        if self._memory:
            return None
        with self._lock:
            if self._conn is None:
                return None
            now = _file_identity(self.path)
            if now == self._identity:
                return None
            what = "deleted" if now is None else "replaced"
            try:
                self._conn.close()
            finally:
                self._conn = None
            try:
                self._open()
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"The history database {self.path} was {what} while the kernel ran, and "
                                 f"cannot be re-created: {exc}") from exc
            return what

    def _setup(self) -> None:
        conn = self._conn
        if not self._memory:
            conn.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
            conn.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable against a crashed process
        with self._transaction() as c:
            # Statement by statement (executescript() would COMMIT our transaction
            # first); so no ';' inside the schema's comments.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            row = c.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is None:
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] < 2:
                # Version 1 files: the image columns (the blobs table was made above).
                for table in ("messages", "failed_turns"):
                    columns = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
                    if "images" not in columns:
                        c.execute(f"ALTER TABLE {table} ADD COLUMN images TEXT")
                c.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(f"The history database {self.path} was written by a newer opchat-magic "
                                 f"(schema {row[0]}; this one knows {SCHEMA_VERSION}). Upgrade, or set "
                                 "OPCHAT_HISTORY_DB to another file.")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any exception, KeyboardInterrupt included."""
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                # An interrupt landed between BEGIN and our rollback last time: undo that first.
                conn.execute("ROLLBACK")
            try:
                # IMMEDIATE takes the write lock now, so reading the next seq and
                # writing it are one step even with another kernel on the same file.
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def set_busy_timeout(self, seconds: float) -> None:
        """How long one statement waits for another process's lock before "database is locked".

        The writer thread sets it short and retries itself, so it can tell the user
        early that the file is locked, instead of sitting inside SQLite for 10 s.
        """
        with self._lock:
            self._connection().execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"The history database {self.path} is closed.")
        return self._conn

    def _read(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    # -- writing -----------------------------------------------------------
    def append_turn(self, key: str, thread: str, user: Message, assistant: Message,
                    meta: Optional[dict] = None, clear_failed: bool = False, blobs: Optional[dict] = None) -> None:
        """Add one completed turn (its user and assistant messages) in one transaction.

        ``clear_failed`` also drops the thread's failed turn, in the same
        transaction: the turn being stored is its successful retry.
        ``blobs``: ``{sha256: (mime, bytes)}`` of the images ``user.images`` names.
        """
        meta = dict(meta or {})
        turn_id = str(meta.get("turn_id") or os.urandom(16).hex())
        now = time.time()
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM messages WHERE key=? AND thread=? AND turn_id=? LIMIT 1",
                            (key, thread, turn_id)).fetchone():
                return  # already saved (a history re-saved into a re-created file): once only
            (last,) = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM messages WHERE key=? AND thread=?",
                                   (key, thread)).fetchone()
            _put_blobs(conn, blobs)
            for offset, (message, extra) in enumerate(((user, None), (assistant, _meta_json(meta)))):
                conn.execute(
                    "INSERT INTO messages (key, thread, seq, role, content, turn_id, meta, created, images)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, thread, last + 1 + offset, message.role, message.content, turn_id, extra, now,
                     _images_json(getattr(message, "images", ()))))
            if clear_failed:
                conn.execute("DELETE FROM failed_turns WHERE key=? AND thread=?", (key, thread))
                conn.execute(_DROP_ORPHAN_BLOBS)

    def record_failed(self, key: str, thread: str, turn: Any, blobs: Optional[dict] = None) -> None:
        """Keep ``turn`` (a failed or stopped Turn) as the thread's retryable turn.

        It is not history: ``load`` never returns it. It replaces any earlier failed turn.
        """
        data = turn.to_dict() if hasattr(turn, "to_dict") else dict(turn)
        meta = {k: data.get(k) for k in META_KEYS if k in data}
        meta["turn_id"] = data.get("id")
        with self._transaction() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM messages WHERE key=? AND thread=?",
                                    (key, thread)).fetchone()
            _put_blobs(conn, blobs)
            conn.execute(
                "INSERT OR REPLACE INTO failed_turns"
                " (key, thread, turn_id, user, reply, status, error, meta, position, created, images)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, thread, str(data.get("id") or ""), data.get("user") or "", data.get("reply") or "",
                 data.get("status") or "failed", data.get("error"), _meta_json(meta), count // 2, time.time(),
                 _images_json(data.get("images"))))
            conn.execute(_DROP_ORPHAN_BLOBS)

    def clear_failed(self, key: str, thread: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM failed_turns WHERE key=? AND thread=?", (key, thread))
            conn.execute(_DROP_ORPHAN_BLOBS)

    def reset(self, key: str, thread: Optional[str] = None) -> None:
        """Forget one thread of ``key`` (or all of them when ``thread`` is None)."""
        where, args = ("key=?", (key,)) if thread is None else ("key=? AND thread=?", (key, thread))
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM messages WHERE {where}", args)
            conn.execute(f"DELETE FROM failed_turns WHERE {where}", args)
            conn.execute(_DROP_ORPHAN_BLOBS)

    # -- reading -----------------------------------------------------------
    def load_turns(self, key: str) -> Dict[str, List[dict]]:
        """Each thread's completed turns, oldest first: dicts of id, user, reply, meta, created.

        Rows that do not form a whole turn (a user row followed by the
        assistant row of the same turn) are skipped; transactions should make
        them impossible, so this is only a guard against a hand-edited file.
        """
        rows = self._read("SELECT thread, role, content, turn_id, meta, created, id, images FROM messages"
                          " WHERE key=? ORDER BY thread, seq", (key,))
        first: Dict[str, int] = {}  # each thread's oldest row id: threads come back in the order begun
        for row in rows:
            first[row[0]] = min(first.get(row[0], row[6]), row[6])
        turns: Dict[str, List[dict]] = {name: [] for name in sorted(first, key=first.__getitem__)}
        waiting: Optional[tuple] = None
        for thread, role, content, turn_id, meta, created, _, images in rows:
            if role == "user":
                waiting = (thread, content, turn_id, created, images)
            elif role == "assistant" and waiting and waiting[0] == thread and waiting[2] == turn_id:
                turns[thread].append({"id": turn_id, "user": waiting[1], "reply": content,
                                      "meta": _meta_load(meta), "created": waiting[3],
                                      "images": _images_load(waiting[4])})
                waiting = None
            else:
                waiting = None
        return {name: found for name, found in turns.items() if found}

    def load(self, key: str) -> Dict[str, List[Message]]:
        """Each thread's history as messages, alternating user / assistant."""
        return {name: [m for t in turns for m in (Message("user", t["user"], tuple(t["images"])),
                                                  Message("assistant", t["reply"]))]
                for name, turns in self.load_turns(key).items()}

    def load_failed(self, key: str) -> Dict[str, dict]:
        """Each thread's kept failed or stopped turn, as a Turn-shaped dict plus ``position``."""
        found = {}
        for thread, turn_id, user, reply, status, error, meta, position, created, images in self._read(
                "SELECT thread, turn_id, user, reply, status, error, meta, position, created, images"
                " FROM failed_turns WHERE key=?", (key,)):
            data = _meta_load(meta)
            data.pop("turn_id", None)
            data.update(id=turn_id, thread=thread, user=user, reply=reply, status=status, error=error,
                        position=position, images=_images_load(images))
            data.setdefault("finished_at", created)
            found[thread] = data
        return found

    def load_blob(self, sha256: str) -> Optional[bytes]:
        """The bytes of the image with this SHA-256, or None if none is stored."""
        rows = self._read("SELECT data FROM blobs WHERE sha256=?", (sha256,))
        return bytes(rows[0][0]) if rows else None

    def notebooks(self) -> List[dict]:
        """Every notebook with stored turns, most recently used first:
        ``{key, threads, messages, last}`` (``last``: time of its newest message)."""
        rows = self._read("SELECT key, COUNT(DISTINCT thread), COUNT(*), MAX(created) FROM messages"
                          " GROUP BY key ORDER BY MAX(created) DESC")
        return [{"key": k, "threads": t, "messages": m, "last": last} for k, t, m, last in rows]

    def move_threads(self, old_key: str, new_key: str, renames: Dict[str, str]) -> None:
        """Give threads of ``old_key`` to ``new_key`` (``{old name: new name}``), in one transaction:
        a renamed or moved notebook adopting its history."""
        with self._transaction() as conn:
            for old, new in renames.items():
                for table in ("messages", "failed_turns"):
                    conn.execute(f"UPDATE {table} SET key=?, thread=? WHERE key=? AND thread=?",
                                 (new_key, new, old_key, old))

    def threads(self, key: str) -> List[str]:
        """Names of the threads stored under ``key``, oldest first."""
        rows = self._read("SELECT thread, MIN(created) AS first FROM ("
                          " SELECT thread, created FROM messages WHERE key=?"
                          " UNION ALL SELECT thread, created FROM failed_turns WHERE key=?)"
                          " GROUP BY thread ORDER BY first, thread", (key, key))
        return [name for name, _ in rows]

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file: ``'ok'`` when it is sound."""
        return self._read("PRAGMA integrity_check")[0][0]

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"
