"""One chat turn, and the one driver every front door runs it with.

A :class:`ChatTurn` begins a turn on a history thread, streams the reply as a
task on the private loop (``loop.py``) and decides the turn's outcome in one
place (:meth:`ChatTurn.conclude`): complete, failed or stopped. The front
doors (the ``%%opchat`` cell in its blocking and awaited forms, the chat
panel) all drive it the same way, differing only in the face their renderer
draws on:

* ``turn.drive_blocking(renderer)`` - a plain thread (terminal IPython, a
  cell without autoawait): waits in slices, Ctrl+C stops the stream.
* ``await turn.drive(renderer)`` - a coroutine on whatever loop runs it: the
  kernel's (an awaited cell; a kernel interrupt cancels it, which stops the
  stream) or the private loop (the panel; its Stop button cancels the turn).

Every asyncio object a driver waits on is made inside the loop that awaits
it; the stream's task only reaches it through ``call_soon_threadsafe``.

Outcome rules (the races, handled here once):

* The thread's own record decides. History is written where the stream ends
  (commit or fail, on the private loop), so a Stop or an interrupt that lands
  just after the commit reports the reply as complete, not stopped.
* A stream task that never ran (cancelled before it began) or did not unwind
  within a second is failed here as stopped, so the thread is never left busy.
"""
from __future__ import annotations

import asyncio
import shlex
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import OpchatError, StoppedError, redact
from .loop import WAIT_SLICE, Job, LoopThread, get_loop
from .providers.base import Reasoning

__all__ = ["TurnOptions", "ChatTurn", "Outcome", "retry_command"]

# How long a stopped stream may take to close its connection before the driver moves on.
UNWIND_LIMIT = 1.0
# How long a driver waits, after the stream, for the turn's history write before saying it is late
# (off the private loop: a busy database never stalls a stream, only this footer note waits).
SAVE_GRACE = 0.2
NOT_SAVED_YET = ("history not saved yet: the database is locked by another process; "
                 "it is saved when the lock frees")


@dataclass
class TurnOptions:
    """What one turn needs besides the text: where to send it, what to include, how to show it."""

    provider: Any  # an AsyncGeneratorProvider class
    model: str = ""
    provider_kwargs: dict = field(default_factory=dict)
    system: Optional[str] = None
    max_messages: Optional[int] = None
    max_chars: Optional[int] = None
    include_history: bool = True
    secrets: tuple = ()  # strings to scrub from any error text shown to the user
    footer: bool = True  # tokens and timings under the reply
    remote_images: Any = False  # render.ImagePolicy: which images may load from the network
    interval: float = 0.05  # seconds between re-renders of the growing block
    retryable: bool = True  # False for a --no-history turn: its thread is thrown away
    provider_name: str = ""  # the provider's registered name (the footer shows it)


def retry_command(thread_name: str) -> str:
    """The line that retries ``thread_name``'s failed turn; always names the thread."""
    return f"%opchat_retry -t {shlex.quote(thread_name)}"


@dataclass
class Outcome:
    """How a turn ended, as every front door reports it."""

    status: str  # complete | failed | stopped
    reply: Any = None  # the provider's Reply when complete
    error: Optional[BaseException] = None
    message: str = ""  # one secret-free paragraph on what went wrong
    retry: str = ""  # the command that retries it ("" when it cannot be retried)
    chars: int = 0  # characters that arrived
    footer: str = ""  # the line under a complete reply (render/footer.py), notes included
    saved: bool = True  # False: the history write was still waiting when the turn was shown
    advice: Any = None  # unreachable.Advice when nothing answered: the one message a user reads

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def stopped(self) -> bool:
        return self.status == "stopped"

    def summary(self) -> str:
        """What a cell says when the turn did not complete."""
        again = f"`{self.retry}` sends it again." if self.retry else "Run the cell again to resend it."
        if self.stopped:
            return f"■ Stopped: what arrived is kept above. {again}"
        if self.advice is not None:
            again = f"Then run the cell again ({self.retry} resends it)." if self.retry else "Then run the cell again."
            return f"{self.advice.text}\n{again}"
        return f"{type(self.error).__name__}: {self.message}\n{again}"


def _unreachable(options: TurnOptions, outcome: Outcome) -> Optional[tuple]:
    """(error, url) when a turn failed because nothing answered and nothing arrived (then: advice)."""
    from .unreachable import is_unreachable

    if outcome.complete or outcome.stopped or outcome.chars or outcome.error is None:
        return None
    if not is_unreachable(outcome.error):
        return None
    url = getattr(outcome.error, "url", "") or options.provider_kwargs.get(
        getattr(options.provider, "url_kwarg", "url"), "")
    return outcome.error, url


class ChatTurn:
    """A turn in flight. Create it (it begins the turn), ``start`` it, drive it.

    ``ChatTurn(thread, None, options)`` retries the thread's failed turn.
    Chunks are appended on the private loop and taken by the driver under one
    lock; the driver's wake-up is called only when the buffer goes from empty
    to non-empty, so a waiting driver wakes once per batch, not per chunk.
    """

    def __init__(self, thread, user_text: Optional[str], options: TurnOptions,
                 on_chunk: Optional[Callable[[], None]] = None, *, images=(), notes=()):
        self.thread = thread
        self.options = options
        self.notes = list(notes)  # footer remarks about the request (what was cut to fit)
        provider = getattr(options.provider, "__name__", "")
        takes_images = bool(getattr(options.provider, "supports_images", False))
        if user_text is None:
            failed = thread.last_failed
            images = failed.images if failed is not None else ()
        if images and not takes_images:
            # Before the turn begins: nothing is sent, nothing is kept as a failed turn.
            from .images import not_supported

            name = getattr(options.provider, "images_refusal", "") or f"The provider {provider or '?'}"
            raise not_supported(name, len(images))
        if user_text is None:
            self.turn = thread.retry(provider=provider, model=options.model)
            if self.turn is None:
                raise ValueError(f"Thread {thread.name!r} has no failed turn to retry.")
        else:
            self.turn = thread.begin(user_text, provider=provider, model=options.model, images=images)
        self.messages = thread.request_messages(
            self.turn,
            max_messages=options.max_messages,
            max_chars=options.max_chars,
            system=options.system,
            include_history=options.include_history,
            images=takes_images,
        )
        self.reply = None  # the provider's Reply, once the stream has started
        self.error: Optional[BaseException] = None
        self.job: Optional[Job] = None
        self._wake = on_chunk
        self._lock = threading.Lock()
        self._pending: list = []
        self._received: list = []
        self._outcome: Optional[Outcome] = None

    # -- the stream, on the private loop -----------------------------------------
    def start(self, loop: Optional[LoopThread] = None) -> "ChatTurn":
        self.job = (loop or get_loop()).submit(self._run())
        return self

    async def _run(self):
        opts = self.options
        kwargs = opts.provider_kwargs
        if self.turn.chat_id and "chat_id" not in kwargs:
            # One server-side conversation per thread (AI Engine's chatId, so its Discussions keep
            # one discussion per thread); providers without such an id ignore the keyword.
            kwargs = {**kwargs, "chat_id": self.turn.chat_id}
        # reasoning=True: Reasoning chunks come too, for the renderer's thinking part. They
        # never reach the history: the commit below takes reply.text, the answer alone.
        stream = opts.provider.create_async_generator(opts.model, self.messages, reasoning=True, **kwargs)
        self.reply = stream.reply
        try:
            async with stream:
                async for text in stream:
                    self._push(text)
        except asyncio.CancelledError:
            self._fail(StoppedError(partial=self.text), stopped=True)
            raise
        except Exception as exc:  # every failure becomes a kept, retryable turn
            self._fail(exc, stopped=False)
            raise
        self.thread.commit(self.turn, stream.reply.text, usage=stream.reply.usage)
        return stream.reply

    def _push(self, text: str) -> None:
        with self._lock:
            was_empty = not self._pending
            self._pending.append(text)
            if text.__class__ is not Reasoning:  # what arrived of the answer: the partial kept on failure
                self._received.append(text)
            wake = self._wake
        if was_empty and wake is not None:
            wake()

    def _fail(self, exc: BaseException, stopped: bool) -> None:
        # The first to end the turn wins (the stream, or conclude() for a task that never ran).
        if self.thread.fail(self.turn, error=self.describe(exc), partial=self.text, stopped=stopped):
            self.error = exc

    # -- reading ------------------------------------------------------------------
    def drain(self) -> str:
        """The answer text that arrived since the last call (reasoning since then is dropped)."""
        return self.drain_parts()[1]

    def drain_parts(self) -> "tuple[str, str]":
        """(reasoning, answer text) that arrived since the last call."""
        with self._lock:
            if not self._pending:
                return "", ""
            chunks, self._pending = self._pending, []
        thoughts = [c for c in chunks if c.__class__ is Reasoning]
        if not thoughts:
            return "", "".join(chunks)
        return "".join(thoughts), "".join(c for c in chunks if c.__class__ is not Reasoning)

    @property
    def text(self) -> str:
        """Everything received so far."""
        with self._lock:
            return "".join(self._received)

    @property
    def future(self):
        """The stream's cross-thread future (``job.future``)."""
        return self.job.future if self.job is not None else None

    @property
    def done(self) -> bool:
        return self.job is not None and self.job.done()

    def cancel(self) -> None:
        """Stop the stream; its task closes the connection as it unwinds. Safe from any thread."""
        if self.job is not None:
            self.job.cancel()

    def wait_closed(self, limit: float = UNWIND_LIMIT) -> bool:
        """Block until the stream's task has really ended (connection closed)."""
        return self.job.finished.wait(limit) if self.job is not None else True

    def describe(self, exc: BaseException) -> str:
        """A one-paragraph, secret-free account of what went wrong."""
        if isinstance(exc, StoppedError):
            return "stopped by the user"
        text = str(exc) if isinstance(exc, OpchatError) else f"{type(exc).__name__}: {exc}"
        return redact(text, self.options.secrets)

    # -- the outcome, decided once ----------------------------------------------------
    def conclude(self) -> Outcome:
        """How the turn ended. Call once the job is done (and finished, or given up on)."""
        if self._outcome is not None:
            return self._outcome
        if self.turn.status == "pending":
            # The task never ran, or is still unwinding past the limit: end the turn here.
            cancelled = self.job is None or self.job.cancelled()
            exc = None if cancelled else self.job.exception()
            if exc is None:
                self._fail(StoppedError(partial=self.text), stopped=True)
            else:
                self._fail(exc, stopped=isinstance(exc, StoppedError))
        status = self.turn.status
        chars = len(self.text)
        if status == "complete":
            outcome = Outcome("complete", reply=self.reply, chars=chars)
        else:
            error = self.error
            if error is None:  # ended by fail() elsewhere (a reset race): still say what the thread says
                error = StoppedError(partial=self.text) if status == "stopped" else OpchatError(self.turn.error or "")
            retry = retry_command(self.thread.name) if self.options.retryable else ""
            outcome = Outcome(status, error=error, message=self.describe(error), retry=retry, chars=chars)
        self._outcome = outcome
        return outcome

    def render(self, renderer, outcome: Outcome, footer: Optional[str]) -> None:
        """Show the end of the turn on ``renderer``'s face: the rest of the text, then footer or failure."""
        self._feed(renderer)
        if outcome.complete:
            renderer.finish(footer if self.options.footer else None)
        else:
            renderer.fail(outcome.message, stopped=outcome.stopped, advice=outcome.advice)

    # -- the drivers -------------------------------------------------------------------
    def _feed(self, renderer) -> None:
        reasoning, text = self.drain_parts()
        if reasoning:
            renderer.feed_reasoning(reasoning)
        if text:
            renderer.feed(text)

    def _pump(self, renderer) -> None:
        self._feed(renderer)
        renderer.tick()

    def _footer(self, saved: bool) -> str:
        """The footer line of the completed reply (render/footer.py: one format for cell and panel)."""
        from .render.footer import footer_text

        reply = self.reply
        # A failover provider answers with one of its members: name the one that answered.
        own = getattr(reply, "provider", "") == getattr(self.options.provider, "__name__", None)
        return footer_text(reply, provider=self.options.provider_name if own else "",
                           notes=self.notes + ([] if saved else [NOT_SAVED_YET]))

    def _finish(self, renderer, saved: bool, found=None) -> Outcome:
        """Conclude, then render the end: the footer, or the failure (with advice when nothing answered).

        ``found``: local servers already probed (the async driver probes off its loop); None probes here.
        """
        outcome = self.conclude()
        if outcome.complete:
            outcome.saved = saved
            outcome.footer = self._footer(saved)
        elif outcome.advice is None and (unreachable := _unreachable(self.options, outcome)) is not None:
            from .unreachable import advise, probe_for

            error, url = unreachable
            if found is None:
                found = probe_for(error, url)
            outcome.advice = advise(error, url, provider=self.options.provider_name, found=found)
        self.render(renderer, outcome, outcome.footer or None)
        return outcome

    def drive_blocking(self, renderer) -> Outcome:
        """Start (if needed) and render the turn from a plain thread; Ctrl+C stops it."""
        wake = threading.Event()
        with self._lock:
            self._wake = wake.set
        if self.job is None:
            self.start()
        interval = self.options.interval
        try:
            while not self.done:
                wake.wait(min(interval, WAIT_SLICE))
                wake.clear()
                self._pump(renderer)
        except KeyboardInterrupt:
            self.cancel()
            self.wait_closed(UNWIND_LIMIT)
        else:
            if self.job.cancelled():
                self.wait_closed(UNWIND_LIMIT)
        saved = self.thread.wait_saved(SAVE_GRACE) if self.turn.status == "complete" else True
        return self._finish(renderer, saved)

    async def drive(self, renderer, progress: Optional[Callable[["ChatTurn"], None]] = None) -> Outcome:
        """Start (if needed) and render the turn from a coroutine on any loop.

        Cancelling the coroutine (a kernel interrupt) or the turn (Stop) stops
        the stream; either way the turn is concluded and rendered here.
        ``progress(turn)`` is called on each render tick while it streams.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()  # made here, in the loop that awaits it

        def poke() -> None:
            loop.call_soon_threadsafe(wake.set)

        with self._lock:
            self._wake = poke
        if self.job is None:
            self.start()
        done = asyncio.wrap_future(self.job.future)
        interval = self.options.interval
        try:
            while not done.done():
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({done, waiter}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                wake.clear()
                self._pump(renderer)
                if progress is not None and not done.done():
                    progress(self)
        except asyncio.CancelledError:
            # A kernel interrupt: stop the stream (closing its connection), keep what arrived.
            self.cancel()
        if self.job.cancelled():
            try:
                await self.job.wait_finished(UNWIND_LIMIT)
            except asyncio.CancelledError:  # a second interrupt: stop waiting, conclude now
                pass
        saved = True
        if self.turn.status == "complete":
            try:  # off this loop (the panel's is the private one, where streams run)
                saved = await loop.run_in_executor(None, self.thread.wait_saved, SAVE_GRACE)
            except asyncio.CancelledError:
                saved = False
        found = None
        unreachable = _unreachable(self.options, self.conclude())
        if unreachable is not None:
            from .unreachable import probe_for_async

            try:  # on the private loop, bounded (0.3 s)
                found = await probe_for_async(*unreachable)
            except asyncio.CancelledError:  # interrupted while looking: say it without the servers
                found = []
        return self._finish(renderer, saved, found)
