"""The renderer: text chunks of one reply in, Markdown outputs out.

It knows nothing of HTTP or providers. Chunks go through a
:class:`~.blocks.BlockSplitter`; a completed block is sanitised once and sent
once (``face.add_block``); the open tail is sanitised and re-sent
(``face.set_tail``), throttled:

* the first chunk renders at once; later renders happen at most once per
  ``interval`` seconds (``feed`` marks the reply dirty; the owner calls
  ``tick()`` every 50-100 ms to flush it);
* a dirty tail is re-sent only when the tail bytes sent so far stay within
  ``budget`` bytes per byte of reply received, or when ``max_lag`` seconds
  have passed since the last render. With the tail capped by the splitter,
  the bytes sent are at most about ``(1 + budget) * len(reply)`` plus
  ``tail cap / max_lag`` per second: linear in the reply, never quadratic.

Reasoning ("thinking") text goes to ``feed_reasoning``: it is shown apart,
before the reply, by :class:`~.reasoning.ReasoningPart` (same throttle, bounded
updates), and closed (collapsed) when the first answer chunk arrives or the
turn ends.

Not thread-safe: the owner makes sure calls come from one thread at a time.
"""
from __future__ import annotations

import time
from typing import Any, Callable, List, Optional

from .blocks import BlockSplitter
from .reasoning import ReasoningPart
from .sanitize import sanitize_markdown

__all__ = ["Renderer", "STOPPED", "STOPPED_EMPTY"]

# U+25A0, not the ⏹ emoji: common UI fonts (and headless Chromium's) lack the emoji.
STOPPED = "■ stopped — partial reply"
STOPPED_EMPTY = "■ stopped before any reply arrived"


class Renderer:
    def __init__(
        self,
        face: Any,
        interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_lag: float = 0.25,
        budget: float = 1.5,
        max_chars: int = 2000,
        max_fence_lines: int = 40,
    ):
        self.face = face
        self.interval = interval
        self.clock = clock
        self.max_lag = max(max_lag, interval)
        self.budget = budget
        self._raw = bool(getattr(face, "streams_raw", False))
        self._splitter = BlockSplitter(max_chars=max_chars, max_fence_lines=max_fence_lines)
        self._chunks: List[str] = []
        self._last: Optional[float] = None
        self._dirty = False
        self._credit = 0.0
        self._tail_md = ""
        self._closed = False
        self.reasoning = ReasoningPart(face, clock, interval=interval, max_lag=self.max_lag, budget=budget)
        # counters (benchmarks, tests)
        self.chars = 0  # reply characters received
        self.blocks_sent = 0  # add_block calls
        self.tail_updates = 0  # set_tail calls (or raw writes)
        self.bytes_sent = 0  # characters of Markdown handed to the face

    # -- the reply -----------------------------------------------------------
    @property
    def text(self) -> str:
        """The raw reply so far."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    @property
    def closed(self) -> bool:
        return self._closed

    def feed_reasoning(self, chunk: str) -> None:
        """A chunk of the model's reasoning: shown apart, before the reply, secondary."""
        if not self._closed:
            self.reasoning.feed(chunk)

    def feed(self, chunk: str) -> None:
        if not chunk or self._closed:
            return
        if not self.reasoning.closed and self.reasoning.started:
            self.reasoning.close()  # the answer began: the thinking part folds away
        self._chunks.append(chunk)
        self.chars += len(chunk)
        if self._raw:
            self.face.write(chunk)
            self.tail_updates += 1
            self.bytes_sent += len(chunk)
            return
        self._splitter.feed(chunk)
        self._credit += self.budget * len(chunk)
        self._dirty = True
        now = self.clock()
        if self._last is None:
            self._render(now)
        else:
            self._maybe_render(now)

    def tick(self) -> None:
        """Flush a dirty tail once its interval has passed (call every ~50-100 ms)."""
        if self._closed:
            return
        if not self.reasoning.closed:
            self.reasoning.tick()
        if self._dirty:
            self._maybe_render(self.clock())

    def finish(self, footer: Optional[str] = None) -> None:
        """The reply is complete: render everything, close the tail, add the footer."""
        if self._closed:
            return
        self._final()
        if footer:
            self.face.footer(footer)

    def fail(self, message: str, stopped: bool = False) -> None:
        """The reply ended early: keep what arrived, then a clear marker."""
        if self._closed:
            return
        self._final()
        if stopped:
            self.face.error(STOPPED if self.chars else STOPPED_EMPTY)
        else:
            self.face.error("⚠ " + (message or "error"))

    # -- rendering -----------------------------------------------------------
    def _maybe_render(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed < self.interval:
            return
        if (
            self._splitter.pending
            or self._credit >= self._splitter.tail_len
            or elapsed >= self.max_lag
        ):
            self._render(now)

    def _send_blocks(self, blocks: List[str]) -> None:
        for block in blocks:
            if not block.strip():
                continue
            md = sanitize_markdown(block)
            self.face.add_block(md)
            self.blocks_sent += 1
            self.bytes_sent += len(md)
            self._tail_md = ""  # the face's tail (if any) became this block

    def _render(self, now: float) -> None:
        self._send_blocks(self._splitter.take_completed())
        tail = self._splitter.tail
        md = sanitize_markdown(tail) if tail.strip() else ""
        if md != self._tail_md:
            self.face.set_tail(md)
            self.tail_updates += 1
            self.bytes_sent += len(md)
            self._credit -= len(md)
            self._tail_md = md
        self._dirty = False
        self._last = now

    def _final(self) -> None:
        self.reasoning.close()
        self._closed = True
        if not self._raw:
            self._send_blocks(self._splitter.close())
        self.face.close_tail()
        self._dirty = False
