"""The history model: threads of turns, what to send, what to keep.

A turn (the user's text and the assistant's reply) enters a thread's history
only when its reply completes. A failed or stopped turn stays out of what is
sent next time, but is kept (partial text included) as the thread's
``last_failed`` so the user can see it and retry it.

Thread safety: the chat panel drives turns from the private loop thread while
``%%opchat`` cells run on the kernel's main thread, over the same Conversation.
Each Thread has a lock around its state changes; the Conversation has a lock
around its map of threads. Locks are taken Conversation -> Thread -> Store,
never the other way round.

Persistence is delegated to a store (``store.Store``) given by the caller,
written through a :class:`~opchat_magic.history.writer.Writer` (one thread
of its own, writes in order), so a database locked by another kernel never
stalls a stream. Without a store a conversation lives in memory only. State
changes happen in memory first, then in the store: a locked or full disk
costs the saved copy of one turn (retried, then reported with a
``HistoryNotSavedWarning``), never the session's own history.

Retry semantics (the same for every front door): a thread keeps at most one
failed or stopped turn, its latest; ``%opchat_retry -t NAME`` (the panel's
Retry) sends that one again. A later turn that completes on the thread
supersedes it: the failure leaves the retry slot (and the store), because
retrying it afterwards would append an old question after newer answers.

Change events: ``Conversation.subscribe(callback)`` calls
``callback(thread_name, what)`` after each change (``begin``, ``commit``,
``fail``, ``reset``, ``new``), on the thread that made it; the panel listens
instead of polling.
"""
from __future__ import annotations

import dataclasses
import secrets
import string
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

from ..errors import OpchatError, ThreadBusyError

if TYPE_CHECKING:  # the writer is a collaborator passed in; no runtime import
    from .writer import Writer

Listener = Callable[[str, str], None]

__all__ = [
    "Message",
    "Blobs",
    "Turn",
    "Thread",
    "Conversation",
    "EmptyMessageError",
    "UnknownThreadError",
    "TurnStateError",
    "HistoryNotSavedWarning",
    "STATUSES",
]

STATUSES = ("pending", "complete", "failed", "stopped")


class EmptyMessageError(OpchatError, ValueError):
    """There is nothing to send: the text is empty or only whitespace."""


class TurnStateError(OpchatError, ValueError):
    """A turn was used where it does not belong (another thread, or not the one in flight)."""


class UnknownThreadError(OpchatError, KeyError):
    """No thread by that name. A KeyError, for ``except KeyError`` callers."""

    def __str__(self) -> str:  # KeyError's str() would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class HistoryNotSavedWarning(UserWarning):
    """The store could not save a change; the in-memory history is unaffected."""


@dataclass(frozen=True)
class Message:
    """One chat message as providers take it. Frozen: history handed out can't be edited in place.

    ``images``: references to the images a user message carried (``Image.ref()``
    dicts: sha256, mime, source, size), never the bytes; ``to_dict`` is the text
    alone, ``Thread.request_messages`` puts the images back in for a provider that takes them.
    """

    role: str
    content: str
    images: tuple = ()

    def to_dict(self) -> Dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass
class Turn:
    """One exchange: the user's text and, once it ends, the reply and how it ended."""

    thread: str
    user: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    reply: str = ""
    status: str = "pending"
    error: Optional[str] = None
    usage: Optional[dict] = None
    provider: str = ""
    model: str = ""
    started_at: float = field(default_factory=time.time)  # wall clock: shown to users, stored
    finished_at: Optional[float] = None
    retry_of: Optional[str] = None  # id of the failed turn this one sends again
    images: list = field(default_factory=list)  # references (sha256, mime, source, size), not bytes
    chat_id: str = ""  # the thread's conversation id when the turn was sent (AI Engine's chatId)

    @property
    def retryable(self) -> bool:
        return self.status in ("failed", "stopped")

    @property
    def finished(self) -> bool:
        return self.status != "pending"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Turn":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_CHAT_ID_CHARS = string.ascii_lowercase + string.digits


def new_chat_id() -> str:
    """A fresh conversation id: 10 characters of ``[a-z0-9]``, as AI Engine's chatbot makes them."""
    return "".join(secrets.choice(_CHAT_ID_CHARS) for _ in range(10))


def _usage_dict(usage: Any) -> Optional[dict]:
    """Usage as a plain dict, whether given as a dict or as providers.base.Usage."""
    if usage is None:
        return None
    if isinstance(usage, dict):
        return dict(usage)
    if dataclasses.is_dataclass(usage):
        # Counts the server did not report stay out of history rather than as nulls.
        return {k: v for k, v in dataclasses.asdict(usage).items() if v is not None}
    return dict(getattr(usage, "__dict__", {})) or None


class Blobs:
    """Image bytes by content hash, outside the message rows.

    A turn keeps only references (``Turn.images``); the bytes are held here
    for this session and written once per hash to the store's blob table
    with the turn. After a kernel restart, ``get`` reads them back from the
    store: that is how a restored or retried turn finds its images.
    """

    def __init__(self, store: Any = None):
        self._store = store
        self._data: Dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, sha256: str, data: bytes) -> None:
        with self._lock:
            self._data[sha256] = data

    def get(self, sha256: str) -> Optional[bytes]:
        with self._lock:
            found = self._data.get(sha256)
        if found is None and self._store is not None:
            try:
                found = self._store.load_blob(sha256)
            except Exception:  # a closed or broken store: the image is gone, the turn still sends
                found = None
            if found is not None:
                self.put(sha256, found)
        return found

    def of(self, refs: List[dict]) -> Dict[str, "tuple[str, bytes]"]:
        """{sha256: (mime, bytes)} of the references whose bytes are known: what the store writes."""
        out = {}
        for ref in refs:
            data = self.get(ref.get("sha256", ""))
            if data is not None:
                out[ref["sha256"]] = (ref.get("mime") or "", data)
        return out


class Thread:
    """One line of conversation: committed turns, the turn in flight, the last failed one.

    ``writer``/``key``/``notify`` are set by Conversation; a Thread made on its
    own (``Thread("scratch")``) lives in memory only and tells no one.
    """

    def __init__(self, name: str, system: Optional[str] = None, *, writer: Optional["Writer"] = None,
                 key: Optional[str] = None, notify: Optional[Listener] = None, blobs: Optional[Blobs] = None):
        self.name = name
        self.blobs = blobs if blobs is not None else Blobs()
        self.system = system
        self._writer = writer
        self._key = key
        self._notify = notify
        self._lock = threading.RLock()
        # Copy-on-write: commit replaces the list in one assignment, so a reader
        # (or an interrupt) never sees a user message without its reply.
        self._history: List[Turn] = []
        self._pending: Optional[Turn] = None
        self._failed: Optional[Turn] = None
        self._failed_at = 0  # how many committed turns preceded the failed one
        self._version = 0  # bumped by every change to history or the failed turn
        # The conversation's id on the server (AI Engine's chatId: one discussion per
        # thread). Kept across restarts through the turns' stored meta; a reset starts
        # a new one, so the site starts a new discussion too.
        self.chat_id = new_chat_id()

    # -- views -------------------------------------------------------------
    @property
    def messages(self) -> List[Message]:
        """The committed history, user and assistant alternating. A fresh list each time."""
        return [m for t in self._history
                for m in (Message("user", t.user, tuple(t.images)), Message("assistant", t.reply))]

    @property
    def version(self) -> int:
        """A counter that changes whenever ``messages``, ``turns`` or ``last_failed`` may have.

        Bumped by commit, fail, reset and restore (not by ``begin``: see ``pending``). A
        cheap "anything new?" check for watchers, instead of comparing ``messages``.
        """
        return self._version

    @property
    def pending(self) -> Optional[Turn]:
        """The turn in flight (the same object ``begin`` returned), if any."""
        return self._pending

    @property
    def last_failed(self) -> Optional[Turn]:
        """A copy of the last failed or stopped turn, until it is retried successfully or reset."""
        failed = self._failed
        return dataclasses.replace(failed) if failed is not None else None

    @property
    def turns(self) -> List[Turn]:
        """For display: committed turns plus the last failed one where it happened (copies)."""
        with self._lock:
            shown = [dataclasses.replace(t) for t in self._history]
            if self._failed is not None:
                shown.insert(min(self._failed_at, len(shown)), dataclasses.replace(self._failed))
        return shown

    def __repr__(self) -> str:
        state = ", streaming" if self._pending else ""
        state += f", last {self._failed.status}" if self._failed else ""
        return f"<Thread {self.name!r}: {len(self._history)} turns{state}>"

    # -- a turn's life -----------------------------------------------------
    def begin(self, user_text: str, provider: str = "", model: str = "", *, retry_of: Optional[str] = None,
              images: Any = ()) -> Turn:
        """Start a turn. One at a time per thread, so replies enter history in the order asked.

        ``images``: :class:`~opchat_magic.images.Image` objects (their bytes go to
        ``blobs``) or references already stored (a retry).
        """
        if not isinstance(user_text, str):
            raise TypeError(f"the message must be text, not {type(user_text).__name__}")
        if not user_text.strip():
            raise EmptyMessageError("Nothing to send: the message is empty.")
        with self._lock:
            if self._pending is not None:
                raise ThreadBusyError(
                    f"Thread {self.name!r} is still answering the previous message; wait for it, stop it, "
                    f"or send this one on another thread.")
            turn = Turn(thread=self.name, user=user_text, provider=provider or "", model=model or "",
                        retry_of=retry_of, images=self._keep(images), chat_id=self.chat_id)
            self._pending = turn
        self._tell("begin")
        return turn

    def _keep(self, images: Any) -> List[dict]:
        """References for ``images``; the bytes of new ones go to ``blobs``."""
        refs = []
        for image in images or ():
            if isinstance(image, dict):
                refs.append(dict(image))
            else:
                self.blobs.put(image.sha256, image.data)
                refs.append(image.ref())
        return refs

    def _content(self, text: str, refs: Any, images: bool) -> Any:
        """A user message's content: text, or text and image parts when the provider takes images."""
        if not images or not refs:
            return text
        from ..images import expand_refs

        return expand_refs([{"type": "text", "text": text}] + [dict(r, type="image") for r in refs],
                           self.blobs.get)

    def request_messages(self, turn: Union[Turn, str], max_messages: Optional[int] = None,
                         max_chars: Optional[int] = None, system: Optional[str] = None,
                         include_history: bool = True, images: bool = False) -> List[Dict[str, Any]]:
        """The messages to send for ``turn``: [system], trimmed history, the new user message.

        ``system`` overrides the thread's system prompt (``""`` sends none).
        ``max_messages`` and ``max_chars`` bound the conversation part of the
        request (history plus the new message; the system prompt is not
        counted): history is dropped oldest first, whole user/assistant pairs
        at a time, and never starts with an assistant message. The new
        message is always sent, even when it alone exceeds a limit. A string
        instead of a Turn previews the request without starting a turn.
        ``images``: the provider takes image content parts; user messages that
        carried images then send them again (their bytes found in ``blobs`` by
        hash), else only their text.
        """
        if isinstance(turn, Turn):
            if turn.thread != self.name:
                raise TurnStateError(f"That turn belongs to thread {turn.thread!r}, not {self.name!r}.")
            if turn.status != "pending":
                raise TurnStateError(f"That turn has already ended ({turn.status}); begin a new one.")
            user_text, refs = turn.user, turn.images
        else:
            user_text, refs = turn, []
        for label, limit in (("max_messages", max_messages), ("max_chars", max_chars)):
            if limit is not None and limit < 0:
                raise ValueError(f"{label} must be 0 or more, not {limit}")
        history = self.messages if include_history else []
        sent = _trim(history, len(user_text), max_messages, max_chars)
        out: List[Dict[str, str]] = []
        prompt = self.system if system is None else system
        if prompt:
            out.append({"role": "system", "content": prompt})
        out.extend({"role": m.role, "content": self._content(m.content, m.images, images)} for m in sent)
        out.append({"role": "user", "content": self._content(user_text, refs, images)})
        return out

    def commit(self, turn: Turn, reply_text: str, usage: Any = None) -> bool:
        """The reply completed: the turn enters history (and the store, in one transaction).

        Returns False, changing nothing, if the turn had already ended: Stop and
        end-of-stream can race between the panel's and the kernel's threads,
        and the first to finish the turn wins.
        """
        with self._lock:
            if not self._owns(turn):
                return False
            turn.reply = reply_text or ""
            turn.usage = _usage_dict(usage)
            turn.status = "complete"
            turn.error = None
            turn.finished_at = time.time()
            # A completed turn supersedes the pending failure, whether it was its retry
            # or not: see the module's retry semantics.
            superseded = self._failed is not None
            # One assignment statement: no point between these stores where an
            # interrupt can land and leave the thread busy forever.
            self._history, self._failed, self._pending = self._history + [dataclasses.replace(turn)], None, None
            self._version += 1
            self._save("append_turn", Message("user", turn.user, tuple(turn.images)),
                       Message("assistant", turn.reply), _turn_meta(turn), clear_failed=superseded,
                       **self._blob_kwargs(turn))
        self._tell("commit")
        return True

    def fail(self, turn: Turn, error: str, partial: str = "", stopped: bool = False) -> bool:
        """The reply failed or was stopped: keep it, out of history, as the retryable turn.

        Returns False if the turn had already ended (see ``commit``).
        """
        with self._lock:
            if not self._owns(turn):
                return False
            turn.reply = partial or ""
            turn.error = error
            turn.status = "stopped" if stopped else "failed"
            turn.finished_at = time.time()
            kept = dataclasses.replace(turn)
            self._failed, self._failed_at, self._pending = kept, len(self._history), None
            self._version += 1
            self._save("record_failed", kept, **self._blob_kwargs(kept))
        self._tell("fail")
        return True

    def retry(self, provider: Optional[str] = None, model: Optional[str] = None) -> Optional[Turn]:
        """A new pending turn sending the last failed turn's text again (None if there is none)."""
        with self._lock:
            failed = self._failed
            if failed is None:
                return None
            return self.begin(failed.user, provider=failed.provider if provider is None else provider,
                              model=failed.model if model is None else model, retry_of=failed.id,
                              images=failed.images)

    def reset(self) -> None:
        """Forget the history and the failed turn, here and in the store.

        A turn in flight is left alone: it finishes and, if it completes,
        becomes the first turn of the fresh history. The user saw that question
        and its answer arrive after the reset, so it is the one exchange they
        would expect the model to remember; refusing the reset instead would
        make "clear" fail exactly when a reply is taking too long.
        """
        with self._lock:
            self._history, self._failed, self._failed_at = [], None, 0
            self.chat_id = new_chat_id()
            self._version += 1
            self._save("reset")
        self._tell("reset")

    def _owns(self, turn: Turn) -> bool:
        """Whether ``turn`` is this thread's turn in flight; False if it already ended."""
        if turn.thread != self.name:
            raise TurnStateError(f"That turn belongs to thread {turn.thread!r}, not {self.name!r}.")
        if self._pending is not None and self._pending.id == turn.id:
            return True
        if turn.status == "pending":
            raise TurnStateError(f"That turn was never begun on thread {self.name!r}.")
        return False

    def _blob_kwargs(self, turn: Turn) -> Dict[str, Any]:
        # Only when there are images: a store written before images existed is called as before.
        return {"blobs": self.blobs.of(turn.images)} if turn.images else {}

    def _save(self, what: str, *args, **kwargs) -> None:
        """Queue one store write; the writer thread does it (in order) and reports failures."""
        if self._writer is not None:
            self._writer.write(what, self._key, self.name, *args, **kwargs)

    def wait_saved(self, timeout: Optional[float] = None) -> bool:
        """Wait until this session's queued history writes are on disk; False if ``timeout`` ran out."""
        return self._writer.flush(timeout) if self._writer is not None else True

    def _tell(self, what: str) -> None:
        if self._notify is not None:
            self._notify(self.name, what)

    def _restore(self, turns: List[dict], failed: Optional[dict]) -> None:
        with self._lock:
            self._history = [_turn_from_store(self.name, t) for t in turns]
            if failed is not None:
                self._failed = Turn.from_dict({**failed, "thread": self.name})
                self._failed_at = int(failed.get("position") or 0)
            # The conversation goes on where it was: the latest turn's chat id.
            latest = self._history[-1] if self._history else None
            if self._failed is not None and (latest is None or self._failed_at >= len(self._history)):
                latest = self._failed
            if latest is not None and latest.chat_id:
                self.chat_id = latest.chat_id
            self._version += 1

    # -- export ------------------------------------------------------------
    def to_markdown(self) -> str:
        """A readable transcript: the system prompt, each turn (a rule between turns), the failed turn marked."""
        parts = []
        if self.system:
            parts.append(f"**System:**\n\n{self.system}")
        for turn in self.turns:
            said = [f"**You:**\n\n{turn.user}"]
            if turn.images:
                said.append("*(images: " + ", ".join(i.get("source") or i.get("mime", "image")
                                                   for i in turn.images) + ")*")
            if turn.status == "complete":
                said.append(f"**Assistant:**\n\n{turn.reply}")
            else:
                why = "stopped" if turn.status == "stopped" else f"failed: {turn.error or 'unknown error'}"
                note = f"**Assistant** *({why}; not part of the history sent to the model, can be retried)*:"
                said.append(f"{note}\n\n{turn.reply}" if turn.reply else note)
            parts.append("\n\n".join(said))
        return "\n\n---\n\n".join(parts) + ("\n" if parts else "")

    def to_json(self) -> Dict[str, Any]:
        failed = self._failed
        return {
            "name": self.name,
            "system": self.system,
            "chat_id": self.chat_id,  # the conversation's id on the server (an AI Engine site's discussion)
            # Image references (hash, type, source, size) ride along; the bytes stay in the store.
            "messages": [dict(m.to_dict(), images=list(m.images)) if m.images else m.to_dict()
                         for m in self.messages],
            "last_failed": failed.to_dict() if failed is not None else None,
        }


def _trim(history: List[Message], new_chars: int, max_messages: Optional[int],
          max_chars: Optional[int]) -> List[Message]:
    """The longest suffix of ``history`` that starts with a user message and fits the limits.

    The limits count the new message as well. Walking back from the newest
    message, only starts at a user message are candidates, so pairs stay whole.
    """
    if max_messages is None and max_chars is None:
        start = 0
    else:
        start = len(history)
        count, chars = 1, new_chars
        for i in range(len(history) - 1, -1, -1):
            count += 1
            chars += len(history[i].content)
            if (max_messages is not None and count > max_messages) or (max_chars is not None and chars > max_chars):
                break
            if history[i].role == "user":
                start = i
    while start < len(history) and history[start].role != "user":
        start += 1
    return history[start:]


def _turn_meta(turn: Turn) -> Dict[str, Any]:
    return {"turn_id": turn.id, "provider": turn.provider, "model": turn.model, "usage": turn.usage,
            "started_at": turn.started_at, "finished_at": turn.finished_at, "retry_of": turn.retry_of,
            "chat_id": turn.chat_id}


def _turn_from_store(thread: str, data: dict) -> Turn:
    meta = data.get("meta") or {}
    usage = meta.get("usage")
    return Turn(thread=thread, user=data["user"], id=data.get("id") or uuid.uuid4().hex, reply=data["reply"],
                status="complete", usage=usage if isinstance(usage, dict) else None,
                provider=meta.get("provider") or "", model=meta.get("model") or "",
                started_at=meta.get("started_at") or data.get("created") or 0.0,
                finished_at=meta.get("finished_at"), retry_of=meta.get("retry_of"),
                images=list(data.get("images") or []), chat_id=meta.get("chat_id") or "")


def _warn_not_saved(message: str) -> None:
    warnings.warn(message, HistoryNotSavedWarning, stacklevel=2)


class Conversation:
    """All threads of one notebook, restored from ``store`` under ``key``.

    Writes go through a :class:`Writer` made here (one thread, in order);
    ``flush()`` waits for them, ``close()`` flushes and closes the store.
    """

    def __init__(self, key: str, store: Any = None, restore: bool = True):
        self.key = key
        self.store = store
        self.default_thread = "default"
        self._lock = threading.Lock()
        self._listeners: List[Listener] = []
        if store is not None:
            from .writer import Writer

            self.writer: Optional["Writer"] = Writer(store, on_problem=_warn_not_saved,
                                                     on_recreated=self._save_again)
        else:
            self.writer = None
        self.blobs = Blobs(store)  # image bytes by hash, shared by the threads (store: after a restart)
        self._threads: Dict[str, Thread] = {self.default_thread: self._new(self.default_thread)}
        if store is not None and restore:
            self._restore()

    # -- change events -------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(thread_name, what)`` after every change; returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, name: str, what: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(name, what)
            except Exception as exc:  # a broken listener must not break a turn
                warnings.warn(f"opchat-magic: a history listener failed: {exc!r}", RuntimeWarning, stacklevel=2)

    def _save_again(self, what: str) -> int:
        """The history file was deleted or replaced: write every thread's turns into the new one
        (on the writer thread; the store skips turns it already holds). Returns the turns saved."""
        with self._lock:
            threads = list(self._threads.values())
        saved = 0
        for thread in threads:
            for turn in thread.turns:
                if turn.status == "complete":
                    self.store.append_turn(self.key, thread.name, Message("user", turn.user, tuple(turn.images)),
                                           Message("assistant", turn.reply), _turn_meta(turn),
                                           **thread._blob_kwargs(turn))
                    saved += 1
            failed = thread.last_failed
            if failed is not None:
                self.store.record_failed(self.key, thread.name, failed, **thread._blob_kwargs(failed))
        return saved

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued history write is done; False if ``timeout`` ran out first."""
        return self.writer.flush(timeout) if self.writer is not None else True

    def close(self) -> None:
        """Finish the queued writes and close the store (the history stays in memory)."""
        if self.writer is not None:
            self.writer.close()
        elif self.store is not None:
            self.store.close()

    def _restore(self) -> None:
        try:
            turns = self.store.load_turns(self.key)
            failed = self.store.load_failed(self.key)
        except Exception as exc:  # a broken file must not stop the extension from loading
            warnings.warn(f"opchat-magic could not restore history from "
                          f"{getattr(self.store, 'path', 'the history database')}: {exc}",
                          HistoryNotSavedWarning, stacklevel=3)
            return
        for name in list(turns) + [n for n in failed if n not in turns]:
            thread = self._threads.setdefault(name, self._new(name))
            thread._restore(turns.get(name, []), failed.get(name))

    def _new(self, name: str) -> Thread:
        return Thread(name, writer=self.writer, key=self.key, notify=self._notify, blobs=self.blobs)

    def thread(self, name: Optional[str] = None, create: bool = True) -> Thread:
        """The thread called ``name`` (default: ``default_thread``), made if new unless ``create=False``."""
        name = self.default_thread if name is None else name
        if not isinstance(name, str) or not name.strip():
            raise ValueError("A thread needs a name that is not empty.")
        with self._lock:
            found = self._threads.get(name)
            if found is None:
                if not create:
                    known = ", ".join(repr(n) for n in self._threads) or "none"
                    raise UnknownThreadError(f"No thread named {name!r} in this notebook. Known threads: {known}.")
                found = self._threads[name] = self._new(name)
            else:
                return found
        self._notify(name, "new")
        return found

    def threads(self) -> List[str]:
        """Thread names, in the order they were first used."""
        with self._lock:
            return list(self._threads)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._threads

    def reset(self, name: Optional[str] = None) -> None:
        """Clear one thread (default: ``default_thread``). The thread itself stays, empty."""
        self.thread(name, create=False).reset()

    def adopt(self, old_key: str, names: Optional[List[str]] = None) -> Dict[str, str]:
        """Take over threads stored under another notebook's key (a renamed or moved notebook).

        ``names``: which threads (default: all of them). A name this notebook
        already uses gets the old notebook's file name added. Returns
        ``{old name: name here}``. The store moves them in one transaction;
        they are loaded here and announced as new threads.
        """
        if self.store is None:
            raise UnknownThreadError("History is not stored (persist is off): there is nothing to adopt.")
        if old_key == self.key:
            raise UnknownThreadError("That is this notebook's own history.")
        self.flush()
        stored = self.store.threads(old_key)
        wanted = stored if not names else names
        missing = [n for n in wanted if n not in stored]
        if missing or not stored:
            raise UnknownThreadError(f"No stored thread {', '.join(map(repr, missing)) or ''} under "
                                     f"{old_key!r}; it holds {', '.join(map(repr, stored)) or 'nothing'}.")
        stem = old_key.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "adopted"
        renames: Dict[str, str] = {}
        with self._lock:  # an empty thread (the default one, made on load) may take a stored name
            taken = {n for n, t in self._threads.items() if t.messages or t.last_failed or t.pending}
        taken |= set(self.store.threads(self.key))
        for name in wanted:
            new, n = name, 1
            while new in taken:
                new = f"{name} ({stem})" if n == 1 else f"{name} ({stem} {n})"
                n += 1
            taken.add(new)
            renames[name] = new
        self.store.move_threads(old_key, self.key, renames)
        turns, failed = self.store.load_turns(self.key), self.store.load_failed(self.key)
        for new in renames.values():
            with self._lock:
                thread = self._threads.setdefault(new, self._new(new))
            thread._restore(turns.get(new, []), failed.get(new))
            self._notify(new, "new")
        return renames

    def reset_all(self) -> None:
        """Clear every thread of this notebook, in memory and in the store.

        Threads stay in the map, empty: a front door may still hold one, and
        it must keep writing where the others read.
        """
        if self.writer is not None:
            # The whole key first: that also clears what was stored but never loaded
            # (a restore that failed). Then each thread, which clears its own rows
            # again, so a turn committing in between is gone from memory and disk alike.
            self.writer.write("reset", self.key)
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.reset()

    def __repr__(self) -> str:
        return f"<Conversation {self.key!r}: threads {self.threads()}>"
