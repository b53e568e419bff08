"""Bytes to lines: the incremental line splitter of an event stream.

aiohttp's ``StreamReader`` line iteration refuses lines over 64 KiB and knows
only ``\\n``; an event stream may carry multi-megabyte ``data:`` lines and may
end lines in ``\\n``, ``\\r\\n`` or a lone ``\\r``. This decoder takes chunks as the
network delivers them, split anywhere, and returns whole lines.
"""
from __future__ import annotations

import codecs

from ..errors import SSEDecodeError

__all__ = ["LineDecoder", "DEFAULT_MAX_LINE_BYTES"]

DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024

# The stateless primitive under codecs' incremental UTF-8 decoder: with
# final=False it stops before a multibyte character cut by the chunk boundary
# and reports how much it consumed. Holding the leftover bytes ourselves spares
# a Python-level wrapper call per chunk and gives exact stream offsets in errors.
_utf8_decode = codecs.utf_8_decode


def _utf8_len(text: str) -> int:
    # isascii() is O(1) on CPython (a flag on the string object), so the common
    # case never pays for an encode just to count bytes.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class LineDecoder:
    """Incremental bytes-to-lines decoder for ``text/event-stream``.

    ``decode(chunk)`` returns the lines completed by ``chunk`` (terminators
    removed); ``flush()`` returns a last unterminated line at end of stream.
    Lines longer than ``max_line_bytes`` (UTF-8 bytes, terminator excluded)
    raise :class:`SSEDecodeError`, as does invalid UTF-8 -- but not at the
    cost of the good text before it: a chunk with invalid bytes returns the
    lines completed before them, and the error (naming the stream's byte
    offset) is raised by :meth:`raise_pending`, or by the next ``decode`` /
    ``flush``.
    """

    __slots__ = ("max_line_bytes", "_undecoded", "_offset", "_started", "_after_cr", "_pieces", "_pending_bytes",
                 "_error")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._undecoded = b""  # tail of a multibyte character cut by a chunk boundary
        self._offset = 0  # bytes decoded so far, to point errors at a stream position
        self._started = False  # the BOM may only be dropped at the very start
        # The last chunk ended in "\r": that line was already returned (a lone CR
        # is a full terminator), so a "\n" opening the next chunk is the second
        # half of a CRLF, not an empty line that would dispatch an event.
        self._after_cr = False
        # An unfinished line as a list of pieces, joined once when it completes:
        # concatenating per chunk would be quadratic for a huge line in small chunks.
        self._pieces: list = []
        self._pending_bytes = 0
        self._error = None  # invalid UTF-8 seen: raised once the lines before it are out

    def raise_pending(self) -> None:
        """Raise the :class:`SSEDecodeError` of invalid bytes seen by the last ``decode``, if any."""
        if self._error is not None:
            raise self._error

    def decode(self, chunk: bytes) -> list:
        if self._error is not None:
            raise self._error
        if self._undecoded:
            chunk = self._undecoded + chunk
        try:
            text, used = _utf8_decode(chunk, "strict", False)
        except UnicodeDecodeError as exc:
            # Keep what came before the bad bytes: decode that, report the rest later.
            self._error = self._utf8_error(exc)
            chunk = chunk[: exc.start]
            text, used = _utf8_decode(chunk, "strict", True)
        if used < len(chunk):
            self._undecoded = bytes(chunk[used:])
        elif self._undecoded:
            self._undecoded = b""
        self._offset += used
        if not text:
            return []

        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        if self._after_cr:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        # Only \r and \n end lines in SSE; str.splitlines() would also split on
        # \x0b, \x1c, \x85, \u2028..., which may legitimately appear in data.
        if "\r" in text:
            self._after_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        tail = lines.pop()

        if self._pieces:
            if not lines:
                self._add_pending(tail)
                return []
            head = lines[0]
            if self._pending_bytes + _utf8_len(head) > self.max_line_bytes:
                raise self._too_long(self._pending_bytes + _utf8_len(head))
            self._pieces.append(head)
            lines[0] = "".join(self._pieces)
            self._pieces = []
            self._pending_bytes = 0
        if tail:
            self._add_pending(tail)
        # A line wholly inside this chunk is no longer than the chunk, so the
        # per-line check is needed only for chunks bigger than the limit.
        if len(chunk) > self.max_line_bytes and lines:
            for line in lines:
                size = _utf8_len(line)
                if size > self.max_line_bytes:
                    raise self._too_long(size)
        return lines

    def flush(self) -> list:
        """End of stream: the unterminated last line, if any; resets the decoder."""
        self.raise_pending()
        undecoded, offset, pieces = self._undecoded, self._offset, self._pieces
        self.__init__(self.max_line_bytes)
        if undecoded:
            raise SSEDecodeError(
                f"invalid UTF-8 in event stream: stream ended inside a multibyte character "
                f"({undecoded!r} at byte offset {offset})"
            )
        return ["".join(pieces)] if pieces else []

    def _add_pending(self, piece: str) -> None:
        self._pieces.append(piece)
        self._pending_bytes += _utf8_len(piece)
        # Raise while the line is still growing, not when it ends: the limit is
        # there to bound memory against a stream that never sends a newline.
        if self._pending_bytes > self.max_line_bytes:
            raise self._too_long(self._pending_bytes)

    def _too_long(self, size: int) -> SSEDecodeError:
        return SSEDecodeError(
            f"event-stream line too long: over {size} bytes exceeds max_line_bytes={self.max_line_bytes}"
        )

    def _utf8_error(self, exc: UnicodeDecodeError) -> SSEDecodeError:
        bad = exc.object[exc.start:exc.end]
        return SSEDecodeError(
            f"invalid UTF-8 in event stream at byte offset {self._offset + exc.start}: "
            f"{bytes(bad)!r} ({exc.reason})"
        )
