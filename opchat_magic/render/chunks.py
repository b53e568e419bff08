"""Text that arrives in chunks: appended in O(1), joined only when asked.

The renderer keeps the reply this way and the reasoning part the reasoning:
neither joins the whole text per chunk. ``last(n)`` reads the end without
joining the rest (the reasoning part's streaming window).
"""
from __future__ import annotations

from typing import List

__all__ = ["Chunks"]


class Chunks:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: List[str] = []

    def append(self, chunk: str) -> None:
        self._parts.append(chunk)

    def __bool__(self) -> bool:
        return bool(self._parts)

    @property
    def text(self) -> str:
        """All of it (joined once; later calls join only what came since)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def last(self, n: int) -> str:
        """The last ``n`` characters (all, if fewer), joining only the chunks they span."""
        if n <= 0:
            return ""
        k, got = len(self._parts), 0
        while k and got < n:
            k -= 1
            got += len(self._parts[k])
        return "".join(self._parts[k:])[-n:]
