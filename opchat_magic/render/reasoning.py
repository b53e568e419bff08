"""The reasoning ("thinking") part of a reply: shown apart from the answer, secondary.

Reasoning arrives before the answer (``Reasoning`` chunks of a provider opened
with ``reasoning=True``). It is shown in one output of its own, above the
reply: while it streams, an open ``<details>`` block with a "Thinking…"
summary and the latest part of the text as a quote; when it ends (the first
answer chunk, or the end of the turn) the same output becomes a *collapsed*
``<details>`` whose summary says how long it was, holding the whole text.

Model text is hostile input: it is shown as plain text, every paragraph passed
through :func:`~.sanitize.escape_text` (Markdown and HTML inert), inside tags
this module writes itself.

Cost stays linear in the reasoning: while streaming, each update carries at
most ``window`` characters (the tail of the text), and updates are throttled
like the answer's tail (at most one per ``interval``; beyond the first, only
when the bytes sent stay within ``budget`` per byte received or ``max_lag``
passed). The final state is sent once.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from ..scrub import show_controls
from .chunks import Chunks
from .sanitize import escape_text

__all__ = ["ReasoningPart", "reasoning_markdown", "reasoning_plain", "THINKING", "thought_summary"]

THINKING = "Thinking…"
_PARAGRAPHS = re.compile(r"\n\s*\n")
# C0/C1 controls except tab and newline (plain-text bundles reach terminals too).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def thought_summary(text: str) -> str:
    n = len(text)
    return f"Thought · {n:,} character{'s' if n != 1 else ''}"


def _quoted(text: str) -> str:
    paragraphs = [escape_text(p) for p in _PARAGRAPHS.split(_CONTROL.sub("", text))]
    return "\n>\n".join("> " + p for p in paragraphs if p)


def reasoning_markdown(text: str, final: bool, window: int = 0) -> str:
    """The Markdown of the reasoning part: open while streaming (last ``window`` chars), collapsed when final."""
    if final:
        return f"<details><summary>{thought_summary(text)}</summary>\n\n{_quoted(text)}\n\n</details>"
    shown = text
    if window and len(text) > window:
        shown = "…" + text[-window:]
    return f"<details open><summary>{THINKING}</summary>\n\n{_quoted(shown)}\n\n</details>"


def reasoning_plain(text: str) -> str:
    """The plain-text form (nbconvert to text, terminals): labelled, controls shown as visible escapes.

    The same function as every other text bound for a terminal (``scrub.show_controls``), so bidi
    overrides and escape sequences are seen, never obeyed."""
    return f"[{thought_summary(text)}]\n" + show_controls(text).strip()


class ReasoningPart:
    """Accumulates reasoning chunks and shows them through ``face.set_reasoning(md, plain, final)``."""

    def __init__(
        self,
        face: Any,
        clock: Callable[[], float],
        *,
        interval: float = 0.05,
        max_lag: float = 0.25,
        budget: float = 1.5,
        window: int = 1200,
    ):
        self.face = face
        self.clock = clock
        self.interval = interval
        self.max_lag = max(max_lag, interval)
        self.budget = budget
        self.window = window
        self._raw = bool(getattr(face, "streams_raw", False))
        self._chunks = Chunks()
        self._last: Optional[float] = None
        self._dirty = False
        self._credit = 0.0
        self.closed = False
        self.chars = 0
        self.updates = 0
        self.bytes_sent = 0

    @property
    def text(self) -> str:
        return self._chunks.text

    @property
    def started(self) -> bool:
        return self.chars > 0

    def feed(self, chunk: str) -> None:
        if not chunk or self.closed:
            return
        self._chunks.append(chunk)
        self.chars += len(chunk)
        if self._raw:
            self.face.write_reasoning(chunk)
            self.updates += 1
            self.bytes_sent += len(chunk)
            return
        self._credit += self.budget * len(chunk)
        self._dirty = True
        now = self.clock()
        if self._last is None:
            self._render(now)
        else:
            self.tick(now)

    def tick(self, now: Optional[float] = None) -> None:
        if not self._dirty or self.closed or self._raw:
            return
        now = self.clock() if now is None else now
        elapsed = now - self._last
        if elapsed < self.interval:
            return
        if self._credit >= min(self.chars, self.window) or elapsed >= self.max_lag:
            self._render(now)

    def _render(self, now: float) -> None:
        # only the window's end is shown: read that much, not the whole text per update
        shown = self._chunks.last(self.window + 1) if self.window else self.text
        md = reasoning_markdown(shown, final=False, window=self.window)
        self.face.set_reasoning(md, None, False)
        self.updates += 1
        self.bytes_sent += len(md)
        self._credit -= len(md)
        self._dirty = False
        self._last = now

    def close(self) -> None:
        """The reasoning is over: its final, collapsed state (once). No-op if none came."""
        if self.closed:
            return
        self.closed = True
        if not self.chars:
            return
        if self._raw:
            self.face.close_reasoning()
            return
        text = self.text
        md = reasoning_markdown(text, final=True)
        self.face.set_reasoning(md, reasoning_plain(text), True)
        self.updates += 1
        self.bytes_sent += len(md)
        self._dirty = False
