"""One chat turn: from the user's text to a committed (or failed) reply.

Both front doors (the ``%%opchat`` magic and the chat panel) run turns through
here, so history, streaming and failure handling exist once. The stream runs as
a task on the private loop (``loop.py``); the front door drains the chunks that
arrived and renders them on its own schedule. The turn's fate (commit, or fail
and keep for retry) is decided on the private loop, where the stream ends, so a
front door that stops waiting cannot leave history half-written.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import OpchatError, StoppedError, redact
from .loop import LoopThread, get_loop


@dataclass
class ChatOptions:
    """What one turn needs besides the text: where to send it and what to include."""

    provider: Any  # an AsyncGeneratorProvider class
    model: str = ""
    provider_kwargs: dict = field(default_factory=dict)
    system: Optional[str] = None
    max_messages: Optional[int] = None
    max_chars: Optional[int] = None
    include_history: bool = True
    secrets: tuple = ()  # strings to scrub from any error text shown to the user


class ChatTurn:
    """A turn in flight. Create it with ``start``; read chunks with ``drain``.

    Thread-safety: chunks are appended on the private loop and taken by the
    front door's thread under one lock; ``on_chunk`` is called (on the private
    loop) only when the buffer goes from empty to non-empty, so a waiting front
    door wakes once per batch rather than once per chunk.
    """

    def __init__(self, thread, user_text: Optional[str], options: ChatOptions,
                 on_chunk: Optional[Callable[[], None]] = None):
        """Begin a turn on ``thread``; ``user_text=None`` retries its last failed turn."""
        self.thread = thread
        self.options = options
        provider = getattr(options.provider, "__name__", "")
        if user_text is None:
            self.turn = thread.retry(provider=provider, model=options.model)
            if self.turn is None:
                raise ValueError(f"Thread {thread.name!r} has no failed turn to retry.")
        else:
            self.turn = thread.begin(user_text, provider=provider, model=options.model)
        self.messages = thread.request_messages(
            self.turn,
            max_messages=options.max_messages,
            max_chars=options.max_chars,
            system=options.system,
            include_history=options.include_history,
        )
        self.reply = None  # the provider's Reply, once the stream has started
        self.error: Optional[BaseException] = None
        self.future = None
        self._on_chunk = on_chunk
        self._lock = threading.Lock()
        self._pending: list = []
        self._received: list = []

    # -- running -----------------------------------------------------------
    def start(self, loop: Optional[LoopThread] = None) -> "ChatTurn":
        self.future = (loop or get_loop()).submit(self._run())
        return self

    async def _run(self):
        opts = self.options
        stream = opts.provider.create_async_generator(opts.model, self.messages, **opts.provider_kwargs)
        self.reply = stream.reply
        try:
            async with stream:
                async for text in stream:
                    self._push(text)
        except asyncio.CancelledError:
            self._finish_failed(StoppedError(partial=self.text), stopped=True)
            raise
        except Exception as exc:  # every failure becomes a kept, retryable turn
            self._finish_failed(exc, stopped=False)
            raise
        self.thread.commit(self.turn, stream.reply.text, usage=stream.reply.usage)
        return stream.reply

    def _push(self, text: str) -> None:
        with self._lock:
            was_empty = not self._pending
            self._pending.append(text)
            self._received.append(text)
        if was_empty and self._on_chunk is not None:
            self._on_chunk()

    def _finish_failed(self, exc: BaseException, stopped: bool) -> None:
        self.error = exc
        self.thread.fail(self.turn, error=self.describe(exc), partial=self.text, stopped=stopped)

    # -- reading -----------------------------------------------------------
    def drain(self) -> str:
        """The text that arrived since the last call."""
        with self._lock:
            if not self._pending:
                return ""
            chunks, self._pending = self._pending, []
        return "".join(chunks)

    @property
    def text(self) -> str:
        """Everything received so far."""
        with self._lock:
            return "".join(self._received)

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def cancel(self) -> None:
        """Stop the stream; its task closes the connection as it unwinds."""
        if self.future is not None:
            self.future.cancel()

    def wait_closed(self, limit: float = 1.0) -> bool:
        """Wait until the stream's task has really ended (connection closed)."""
        finished = getattr(self.future, "finished", None)
        return finished.wait(limit) if finished is not None else True

    def describe(self, exc: BaseException) -> str:
        """A one-paragraph, secret-free account of what went wrong."""
        if isinstance(exc, StoppedError):
            return "stopped by the user"
        if isinstance(exc, OpchatError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
        return redact(text, self.options.secrets)
