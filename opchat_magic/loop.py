"""The private event loop: one daemon thread that runs every stream.

Why a thread of our own: the Jupyter kernel already runs an asyncio loop, and
running a second stream inside it needs ``nest_asyncio.apply()``, which patches
the kernel's loop for every library in the process. Streams run here instead;
the waiting side only holds ``concurrent.futures.Future`` objects (the magic
waits on them in short slices, so an interrupt is seen at once). Only this module touches threads and
event loops.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import AsyncIterator, Awaitable, Callable, Generic, Iterator, List, Optional, TypeVar

T = TypeVar("T")

# How long the waiting side sleeps between looks: small enough that a kernel
# interrupt cancels the stream well within a second.
WAIT_SLICE = 0.1


class Job(Generic[T]):
    """A coroutine running on the private loop, as seen from another thread.

    ``future`` is the cross-thread ``concurrent.futures.Future``: it reads
    "cancelled" the moment ``cancel()`` is called, before the task has unwound.
    ``finished`` (a ``threading.Event``) is set only when the coroutine has
    really ended (its connection closed); ``on_finished`` callbacks run then, on
    whichever thread ended it, so an event-loop waiter can hand itself a wake-up
    with ``call_soon_threadsafe`` instead of polling.
    """

    def __init__(self) -> None:
        self.future: "concurrent.futures.Future[T]" = None  # type: ignore[assignment]
        self.finished = threading.Event()
        self._callbacks: List[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _finish(self) -> None:
        with self._lock:
            if self.finished.is_set():
                return
            self.finished.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_finished(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the coroutine has ended (at once if it already has)."""
        with self._lock:
            if not self.finished.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def done(self) -> bool:
        return self.future.done()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def cancel(self) -> bool:
        """Cancel the task; it closes its connection as it unwinds (see ``finished``)."""
        return self.future.cancel()

    def result(self, timeout: Optional[float] = None) -> T:
        return self.future.result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        return self.future.exception(timeout)

    async def wait_finished(self, limit: float = 1.0) -> bool:
        """From a coroutine on any loop: wait (without blocking it) until the job has ended."""
        if self.finished.is_set():
            return True
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(None))

        self.on_finished(wake)
        try:
            await asyncio.wait_for(asyncio.shield(ended), limit)
        except asyncio.TimeoutError:
            pass
        return self.finished.is_set()


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str = "opchat-loop"):
        self._name = name
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait(10)
                self._loop = loop
            return self._loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Awaitable[T]) -> "Job[T]":
        """Schedule ``coro`` on the private loop; return its :class:`Job`.

        Cancelling the job's future cancels the task; the job is ``finished``
        when the task has really ended (or, cancelled before it began, never ran).
        """
        job: Job = Job()
        future: concurrent.futures.Future = concurrent.futures.Future()
        job.future = future
        loop = self.loop

        def start() -> None:
            if future.cancelled():
                coro.close()
                job._finish()
                return
            task = loop.create_task(coro)

            def task_done(t: asyncio.Task) -> None:
                try:
                    if not future.cancelled():
                        if t.cancelled():
                            future.cancel()
                        elif t.exception() is not None:
                            future.set_exception(t.exception())
                        else:
                            future.set_result(t.result())
                except concurrent.futures.InvalidStateError:  # cancelled from another thread just now
                    pass
                finally:
                    job._finish()

            task.add_done_callback(task_done)
            future.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(task.cancel))

        loop.call_soon_threadsafe(start)
        return job

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Run ``coro`` to its end from a plain thread, waking often so Ctrl+C works."""
        if self.in_loop_thread():
            raise RuntimeError("LoopThread.run() called from the loop thread itself")
        return block(self.submit(coro), timeout=timeout)

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator from synchronous code, one item per round trip."""
        async def next_item():
            return await agen.__anext__()

        try:
            while True:
                try:
                    yield self.run(next_item())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                try:
                    self.run(aclose(), timeout=5)
                except Exception:
                    pass


def block(job: "Job[T]", timeout: Optional[float] = None) -> T:
    """Wait for ``job`` in slices; KeyboardInterrupt cancels it and is re-raised.

    Done-ness is asked with ``concurrent.futures.wait``, never inferred from a
    TimeoutError: since Python 3.11 that is the builtin TimeoutError, which the
    stream's own StreamTimeoutError subclasses, so catching it would mistake a
    timed-out stream for one still running.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done, _ = concurrent.futures.wait([job.future], timeout=WAIT_SLICE)
            if done:
                return job.result()
            if deadline is not None and time.monotonic() > deadline:
                job.cancel()
                raise TimeoutError("timed out waiting for the private loop")
    except KeyboardInterrupt:
        job.cancel()
        job.finished.wait(1.0)  # give the cancelled task a second to close its connection
        raise


_default: Optional[LoopThread] = None
_default_lock = threading.Lock()


def get_loop() -> LoopThread:
    """The process-wide private loop."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LoopThread()
        return _default
