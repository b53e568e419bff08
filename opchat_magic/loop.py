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
from typing import AsyncIterator, Awaitable, Iterator, Optional, TypeVar

T = TypeVar("T")

# How long the waiting side sleeps between looks: small enough that a kernel
# interrupt cancels the stream well within a second.
WAIT_SLICE = 0.1


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

    def submit(self, coro: Awaitable[T]) -> "concurrent.futures.Future[T]":
        """Schedule ``coro`` on the private loop; cancelling the future cancels the task.

        A cross-thread future reads "cancelled" the moment cancel() is called,
        before the task has unwound; ``future.finished`` (a threading.Event) is
        set only when the coroutine has really ended, its connection closed.
        """
        finished = threading.Event()

        async def run():
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        future.finished = finished
        return future

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


def block(future: "concurrent.futures.Future[T]", timeout: Optional[float] = None) -> T:
    """Wait for ``future`` in slices; KeyboardInterrupt cancels it and is re-raised.

    Done-ness is asked with ``concurrent.futures.wait``, never inferred from a
    TimeoutError: since Python 3.11 that is the builtin TimeoutError, which the
    stream's own StreamTimeoutError subclasses, so catching it would mistake a
    timed-out stream for one still running.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done, _ = concurrent.futures.wait([future], timeout=WAIT_SLICE)
            if done:
                return future.result()
            if deadline is not None and time.monotonic() > deadline:
                future.cancel()
                raise TimeoutError("timed out waiting for the private loop")
    except KeyboardInterrupt:
        future.cancel()
        _wait_cancelled(future)
        raise


def _wait_cancelled(future: concurrent.futures.Future, limit: float = 1.0) -> None:
    """Give the cancelled task up to ``limit`` seconds to close its connection."""
    finished = getattr(future, "finished", None)
    if finished is not None:
        finished.wait(limit)


_default: Optional[LoopThread] = None
_default_lock = threading.Lock()


def get_loop() -> LoopThread:
    """The process-wide private loop."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LoopThread()
        return _default
