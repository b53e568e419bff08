"""History writes on a thread of their own, in order, off every stream.

Why: a write waits for SQLite's lock, and another kernel (or a ``sqlite3``
shell) may hold it for seconds. Done on the private loop, that wait stalled
every stream and the panel; done on the kernel's thread, it froze the cell.
Here each write is queued and one daemon thread does them in the order they
were asked, so what is on disk is what happened in memory, in order.

A write that finds the database locked is tried again until the lock frees
(up to ``patience`` seconds); the first such wait and any write given up are
reported through ``on_problem`` (the Conversation makes it a ``HistoryNotSavedWarning``),
so the user is told, while the session's own history is never affected.
"""
from __future__ import annotations

import queue
import sqlite3
import threading
import time
import warnings
from typing import Any, Callable, Optional

__all__ = ["Writer"]

# How long a write keeps trying while another process holds the database lock.
PATIENCE = 300.0
RETRY_EVERY = 0.25


def _locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class Writer:
    """Runs ``store.<method>(*args)`` calls one at a time on a daemon thread."""

    def __init__(self, store: Any, on_problem: Optional[Callable[[str], None]] = None,
                 patience: float = PATIENCE, on_recreated: Optional[Callable[[str], int]] = None):
        self.store = store
        # the file was deleted or replaced and opened anew: save what memory holds into it again
        # (returns how many turns it saved); the user is told once per event
        self.on_recreated = on_recreated
        self.on_problem = on_problem or (lambda message: warnings.warn(message, UserWarning, stacklevel=2))
        self.patience = patience
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._idle = threading.Condition()
        self._unfinished = 0
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self.waiting_for_lock = False  # a write is waiting for another process's lock now
        set_busy = getattr(store, "set_busy_timeout", None)
        if set_busy is not None:
            try:
                set_busy(RETRY_EVERY)
            except Exception:  # a closed or odd store: its writes will report themselves
                pass

    def write(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue ``store.method(*args, **kwargs)``; returns at once."""
        if self._closed:
            self.on_problem(f"opchat-magic: the history database {self._where()} is closed; "
                            f"a change was not saved.")
            return
        with self._idle:
            self._unfinished += 1
        self._ensure_thread()
        self._queue.put((method, args, kwargs))

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued write is done; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued writes (up to ``timeout`` s), stop the thread, close the store."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
        self.store.close()

    # -- the writer thread -------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="opchat-history-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            method, args, kwargs = item
            try:
                self._do(method, args, kwargs)
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()

    def _check_file(self) -> None:
        check = getattr(self.store, "check_file", None)
        if check is None:
            return
        try:
            what = check()
        except Exception as exc:
            self.on_problem(f"opchat-magic could not save history to {self._where()}: {exc}")
            return
        if not what:
            return
        saved = 0
        if self.on_recreated is not None:
            try:
                saved = self.on_recreated(what)
            except Exception as exc:
                self.on_problem(f"opchat-magic: the history database {self._where()} was {what} while the "
                                f"kernel ran; re-saving this session's turns into it failed: {exc}")
                return
        how = "re-created" if what == "deleted" else "opened anew"
        self.on_problem(f"opchat-magic: the history database {self._where()} was {what} while the kernel "
                        f"ran; it was {how} and this notebook's {saved} turn(s) in memory were saved into it "
                        "again (nothing is lost).")

    def _do(self, method: str, args: tuple, kwargs: dict) -> None:
        deadline = time.monotonic() + self.patience
        self._check_file()  # at the next write: a deleted or replaced file is noticed here
        while True:
            try:
                getattr(self.store, method)(*args, **kwargs)
            except Exception as exc:
                if _locked(exc) and time.monotonic() < deadline:
                    if not self.waiting_for_lock:
                        self.waiting_for_lock = True
                        self.on_problem(f"opchat-magic: the history database {self._where()} is locked by "
                                        "another process; the change is kept in memory and saved when the "
                                        "lock frees.")
                    time.sleep(RETRY_EVERY)
                    continue
                self.waiting_for_lock = False
                self.on_problem(f"opchat-magic could not save history to {self._where()}: {exc}")
                return
            if self.waiting_for_lock:
                self.waiting_for_lock = False
                self.on_problem(f"opchat-magic: the history database {self._where()} is free again; "
                                "the waiting change is saved.")
            return

    def _where(self) -> str:
        return str(getattr(self.store, "path", "the history database"))
