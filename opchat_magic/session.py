"""One Session per kernel: the settings, the conversation and its store.

Every front door (the magics, each chat panel) reaches the same Session with
``get_session(shell)``, so cells and panels share one history and one set of
settings. ``close_session(shell)`` (what ``unload_ipython_extension`` and
``%reload_ext`` call) finishes the queued history writes, closes the SQLite
connection and takes the settings out of ``shell.configurables``: after a
reload there is one configurable and one open connection, never two.

The Session also relays "a cell just ran" (IPython's ``post_run_cell``) to
whoever listens (the panels), next to the conversation's own change events,
and records the error each cell raises (``context/cell_errors.py``), which
``{Err[N]}`` and "explain this error" read. ``prompt()`` and
``explain_prompt()`` turn what a user typed into what is sent, the same for
every front door.
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable, Dict, List, Optional

from .settings import OpchatSettings, turn_options

__all__ = ["Session", "get_session", "close_session", "current_session"]


class Session:
    """Settings + conversation (+ store) of one kernel. ``close()`` releases the store."""

    def __init__(self, shell=None, settings: Optional[OpchatSettings] = None):
        self.shell = shell
        # parent=shell: the settings read the shell's config (ipython_config.py, %config).
        self.settings = settings if settings is not None else OpchatSettings(parent=shell)
        if shell is not None and self.settings not in shell.configurables:
            shell.configurables.append(self.settings)
        self.last_reply = None  # the last completed Reply (text, usage, timings), for tools
        self._conversation = None
        self._lock = threading.Lock()
        self._cell_listeners: List[Callable[[], None]] = []
        self._closed = False
        self.errors = None  # the cells' errors, recorded from now on (context.cell_errors.ErrorLog)
        if shell is not None:
            from .context.cell_errors import install

            self.errors = install(shell)
            shell.events.register("post_run_cell", self._after_cell)

    # -- history ---------------------------------------------------------------------
    @property
    def conversation(self):
        """The notebook's threads, restored from the store on first use."""
        with self._lock:
            if self._conversation is None:
                self._conversation = self._open_conversation()
            return self._conversation

    def _open_conversation(self):
        from .history import Conversation, Store, StoreError, notebook_key

        store = None
        if self.settings.persist:
            try:
                store = Store(self.settings.history_db or None)
            except (StoreError, OSError) as exc:
                # A damaged or unreadable history file must not stop the chat.
                warnings.warn(f"opchat: history is not saved this session: {exc}", stacklevel=3)
        key = notebook_key(self.shell.user_ns if self.shell is not None else None)
        return Conversation(key, store=store, restore=store is not None)

    def thread(self, name: Optional[str] = None, create: bool = True):
        """A thread of the conversation (default: the ``thread`` setting)."""
        return self.conversation.thread(name or self.settings.thread, create=create)

    # -- turns -------------------------------------------------------------------------
    def options(self, **choices):
        """A turn's options from the settings and per-turn ``choices`` (see ``settings.turn_options``)."""
        return turn_options(self.settings, **choices)

    def begin(self, thread, text: Optional[str], options, *, image_paths=(), prompt=None):
        """A :class:`~.turn.ChatTurn` on ``thread`` (``text=None``: retry its failed turn); not started.

        ``text``'s ``{...}`` fields are resolved and ``image_paths`` loaded
        first (:meth:`prompt`), unless ``prompt`` is given already resolved
        (``explain_prompt``). A bad field, an image that can't be sent or a
        provider that takes no images raises an ``OpchatError`` before
        anything is sent or kept.
        """
        from .turn import ChatTurn

        if text is None:
            return ChatTurn(thread, None, options)
        if prompt is None:
            prompt = self.prompt(text, image_paths)
        return ChatTurn(thread, prompt.text, options, images=prompt.images,
                        notes=[prompt.notice] if prompt.notice else [])

    # -- what is sent --------------------------------------------------------------------
    def _notebook(self):
        from .context.references import Notebook

        return Notebook.from_shell(self.shell, self.errors) if self.shell is not None else Notebook()

    def prompt(self, text: str, image_paths=()):
        """``text`` with its ``{...}`` fields resolved, plus the images of ``image_paths``.

        Raises ``CellReferenceError`` (a UsageError) for a bad field and
        ``ImageError`` for an image that can't be sent; nothing is sent then.
        The result's ``images`` are the files first, then the referenced
        images, each once; ``notice`` says what was cut.
        """
        from .context.references import resolve
        from .images import load_image

        limit = self.settings.max_image_bytes
        files = [load_image(path, limit) for path in image_paths or ()]
        prompt = resolve(text, self._notebook(), cap=self.settings.max_value_chars, max_image_bytes=limit)
        seen, images = set(), []
        for image in files + prompt.images:
            if image.sha256 not in seen:
                seen.add(image.sha256)
                images.append(image)
        prompt.images = images
        return prompt

    @property
    def has_error(self) -> bool:
        """A cell has raised an error since the extension loaded (there is one to explain)."""
        return self.errors is not None and self.errors.last() is not None

    def explain_prompt(self, number: Optional[int] = None, options=None):
        """The request that explains the last error (or cell ``number``'s; negative counts back).

        ``options`` (the turn's): an endpoint with a message limit (``provider.input_limit``,
        or ``input_limit`` in the provider options) gets a request that fits it.
        """
        from .context.explain import explain_prompt, find_error

        budget = None
        if options is not None:
            budget = options.provider_kwargs.get("input_limit") or getattr(options.provider, "input_limit", None)
        current = self._notebook().current if self.shell is not None else None  # same count as {In[-1]}
        return explain_prompt(find_error(self.errors, number, current), cap=self.settings.max_value_chars,
                              budget=budget or None)

    def completed(self, outcome) -> None:
        """A front door reports a turn's outcome; a complete one becomes ``last_reply``."""
        if outcome.complete:
            self.last_reply = outcome.reply

    # -- events ------------------------------------------------------------------------
    def on_cell_end(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every cell (IPython ``post_run_cell``); returns the unsubscriber."""
        self._cell_listeners.append(callback)
        return lambda: callback in self._cell_listeners and self._cell_listeners.remove(callback)

    def _after_cell(self, result=None) -> None:
        for callback in list(self._cell_listeners):
            try:
                callback()
            except Exception as exc:
                warnings.warn(f"opchat-magic: a post_run_cell listener failed: {exc!r}", RuntimeWarning)

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued history writes, close the store, leave the shell as it was."""
        if self._closed:
            return
        self._closed = True
        shell = self.shell
        if shell is not None:
            try:
                shell.events.unregister("post_run_cell", self._after_cell)
            except ValueError:
                pass
            from .context.cell_errors import uninstall

            uninstall(shell)
            shell.configurables[:] = [c for c in shell.configurables if c is not self.settings]
        self._cell_listeners.clear()
        with self._lock:
            conversation, self._conversation = self._conversation, None
        if conversation is not None:
            conversation.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<Session {'closed' if self._closed else 'open'}: {self._conversation!r}>"


_sessions: Dict[int, Session] = {}
_sessions_lock = threading.Lock()


def get_session(shell=None, create: bool = True) -> Optional[Session]:
    """The Session of ``shell`` (default: the running IPython, else a process-wide one)."""
    if shell is None:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:  # pragma: no cover - IPython is a dependency
            shell = None
    with _sessions_lock:
        found = _sessions.get(id(shell))
        if found is not None and found.shell is shell and not found.closed:
            return found
        if not create:
            return None
        found = _sessions[id(shell)] = Session(shell)
        return found


def current_session() -> Optional[Session]:
    """The running IPython's Session if one is open (never makes one)."""
    return get_session(None, create=False)


def close_session(shell=None) -> None:
    """Close ``shell``'s Session, if it has one."""
    with _sessions_lock:
        found = _sessions.pop(id(shell), None)
    if found is not None:
        found.close()
