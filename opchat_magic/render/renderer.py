"""The renderer: text chunks of one reply in, Markdown outputs out.

It knows nothing of HTTP or providers. Chunks go through a
:class:`~.blocks.BlockSplitter`. The face shows one **open output**
(``face.set_tail``): the completed blocks it has gathered so far plus the
open tail, sanitised as one text. Once it holds
``group_chars`` characters of completed blocks (or a tenth of the reply so
far, if larger), it is sent once more, final (``face.add_block``), and the
next output opens. So a reply makes few outputs whatever its length (about 20
for 100 K characters, 40 for 1 M): JupyterLab and Notebook 7 show at most 50
outputs per cell and hide the rest behind a button, tail included.

Re-sends of the open output are throttled:

* the first chunk renders at once; later renders happen at most once per
  ``interval`` seconds (``feed`` marks the reply dirty; the owner calls
  ``tick()`` every 50-100 ms to flush it);
* a dirty output is re-sent only when the bytes re-sent so far stay within
  ``budget`` bytes per byte of reply received, or when the last render is
  ``max_lag`` seconds old *and* re-sending keeps within ``lag_rate``
  characters per second. The bytes sent are at most about
  ``(2 + budget) * len(reply)`` plus ``lag_rate`` per second of streaming:
  linear in the reply, never quadratic.

Until the first chunk (of reply or reasoning) arrives, ``tick()`` shows how long
the reply has been awaited, in the tail, once a second after ``WAIT_SHOWN``
seconds: a server may think for minutes before it sends anything (AI Engine
waits up to 300 s for its model and sends no keep-alive). The first chunk, or
the end of the turn, replaces that line.

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
from .chunks import Chunks
from .reasoning import ReasoningPart
from .sanitize import ImagePolicy, sanitize_markdown

__all__ = ["Renderer", "STOPPED", "STOPPED_EMPTY", "WAIT_SHOWN", "waiting_text"]

# U+25A0, not the ⏹ emoji: common UI fonts (and headless Chromium's) lack the emoji.
STOPPED = "■ stopped — partial reply"
STOPPED_EMPTY = "■ stopped before any reply arrived"
# Seconds before the "waiting" line appears: a quick reply never shows it.
WAIT_SHOWN = 1.0


def waiting_text(seconds: float) -> str:
    """The line shown while no chunk has arrived yet (Markdown)."""
    return f"*⏳ waiting for the first chunk… {int(seconds)} s*"


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
        group_chars: int = 4000,
        lag_rate: float = 6000.0,
        remote_images=False,
    ):
        # which images may show inline (render.ImagePolicy): by default none that
        # would make the page fetch a URL the model chose
        self.images = ImagePolicy(remote_images)
        self.face = face
        self.interval = interval
        self.clock = clock
        self.max_lag = max(max_lag, interval)
        self.budget = budget
        self._raw = bool(getattr(face, "streams_raw", False))
        self._splitter = BlockSplitter(max_chars=max_chars, max_fence_lines=max_fence_lines)
        self._chunks = Chunks()  # the raw reply
        self._last: Optional[float] = None
        self._dirty = False
        self._credit = 0.0
        self._tail_md = ""  # what the open output shows now
        self._group: List[str] = []  # completed blocks (sanitised) in the open output
        self._group_len = 0
        self.group_chars = group_chars
        self.lag_rate = lag_rate
        self._closed = False
        self._started = clock()
        self._waiting = 0  # whole seconds shown in the waiting line (0: not shown)
        self.reasoning = ReasoningPart(face, clock, interval=interval, max_lag=self.max_lag, budget=budget)
        # counters (benchmarks, tests)
        self.chars = 0  # reply characters received
        self.blocks = 0  # completed blocks
        self.blocks_sent = 0  # add_block calls (final outputs)
        self.tail_updates = 0  # set_tail calls (or raw writes)
        self.bytes_sent = 0  # characters of Markdown handed to the face

    # -- the reply -----------------------------------------------------------
    @property
    def text(self) -> str:
        """The raw reply so far."""
        return self._chunks.text

    @property
    def closed(self) -> bool:
        return self._closed

    def feed_reasoning(self, chunk: str) -> None:
        """A chunk of the model's reasoning: shown apart, before the reply, secondary."""
        if not self._closed:
            if self._tail_md and self.waiting:
                self._drop_waiting()  # the thinking part comes first; the reply's tail, after it
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

    @property
    def waiting(self) -> bool:
        """No chunk yet (neither reply nor reasoning)."""
        return self._last is None and not self.reasoning.started and not self._chunks

    def tick(self) -> None:
        """Flush a dirty tail once its interval has passed (call every ~50-100 ms)."""
        if self._closed:
            return
        if self.waiting and not self._raw:
            self._show_waiting(self.clock() - self._started)
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

    def fail(self, message: str, stopped: bool = False, advice: Any = None) -> None:
        """The reply ended early: keep what arrived, then a clear marker.

        ``advice`` (an :class:`~opchat_magic.unreachable.Advice`: nothing answered)
        goes to a face that shows messages (``face.advice``, the panel's); a cell
        or a terminal shows it once, as the cell's error, so their faces add nothing.
        """
        if self._closed:
            return
        self._final()
        if stopped:
            self.face.error(STOPPED if self.chars else STOPPED_EMPTY)
        elif advice is not None:
            show = getattr(self.face, "advice", None)
            if show is not None:
                show(advice)
        else:
            self.face.error("⚠ " + (message or "error"))

    # -- rendering -----------------------------------------------------------
    def _view_len(self) -> int:
        return self._group_len + self._splitter.tail_len

    def _show_waiting(self, elapsed: float) -> None:
        seconds = int(elapsed)
        if elapsed < WAIT_SHOWN or seconds == self._waiting:
            return
        self._waiting = seconds
        md = waiting_text(seconds)
        self.face.set_tail(md)
        self.tail_updates += 1
        self.bytes_sent += len(md)
        self._tail_md = md

    def _drop_waiting(self) -> None:
        self.face.set_tail("")
        self.face.close_tail()
        self._tail_md = ""

    def _maybe_render(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed < self.interval:
            return
        view = self._view_len()
        if self._credit >= view or (elapsed >= self.max_lag and elapsed * self.lag_rate >= view):
            self._render(now)

    def _take_blocks(self, blocks: List[str], final: bool = False) -> None:
        """Gather completed blocks into the open output; close it when it is big enough."""
        for block in blocks:
            if not block.strip():
                continue
            # raw: the open output is sanitised as one document (see _group_md)
            self._group.append(block)
            self._group_len += len(block)
            self.blocks += 1
            if self._group_len >= max(self.group_chars, self.chars // 10):
                self._close_output()
        if final and self._group:
            self._close_output()

    def _group_md(self, tail: str = "") -> str:
        """The open output's Markdown: its blocks and ``tail`` sanitised as one text.

        Not block by block: sanitised pieces, joined, are not a sanitised
        whole (a math span of JupyterLab's may open in one block and close in
        the next, carrying a quote into an attribute)."""
        raw = "".join(self._group) + (tail if tail.strip() else "")
        return sanitize_markdown(raw, self.images) if raw.strip() else ""

    def _close_output(self) -> None:
        md = self._group_md()
        self._group, self._group_len = [], 0
        self.face.add_block(md)  # the open output's final state
        self.blocks_sent += 1
        self.bytes_sent += len(md)
        self._tail_md = ""  # the next output opens on the next render

    def _render(self, now: float) -> None:
        self._take_blocks(self._splitter.take_completed())
        tail = self._splitter.tail
        md = self._group_md(tail)
        if md != self._tail_md:
            self.face.set_tail(md)
            self.tail_updates += 1
            self.bytes_sent += len(md)
            self._credit -= len(md)
            self._tail_md = md
        self._dirty = False
        self._last = now

    def _final(self) -> None:
        if self._tail_md and self.waiting:  # the waiting line goes; a marker or nothing takes its place
            self._drop_waiting()
        self.reasoning.close()
        self._closed = True
        if not self._raw:
            self._take_blocks(self._splitter.close(), final=True)
        self.face.close_tail()
        self._dirty = False
