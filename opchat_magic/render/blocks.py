"""Incremental Markdown block splitter.

The renderer shows a streaming reply as a run of Markdown outputs: one per
finished block, plus one "tail" output for the block still being written.
Only the tail is ever re-sent, so the bytes sent grow linearly with the reply.

The splitter works on complete lines only, each line looked at once, so the
blocks it produces do not depend on how the reply was chunked, and the work is
amortised linear in the reply length. Decisions are approximate CommonMark,
tuned to one rule: a cut may only fall where the pieces, rendered as separate
Markdown documents, look like the whole. Where that is unsure, lines stay
together (keeping lines together never changes the rendering).

Blocks are exact substrings of the reply, so ``"".join(blocks) + tail`` is the
reply, with one exception, the caps that keep the tail small:

* a paragraph (or list, or table) over ``max_chars`` is cut at a line
  boundary (a list only before an item, a paragraph only before a line that
  starts with a letter; a table repeats its header row in the tail);
* a fenced code block over ``max_fence_lines`` lines (or ``4 * max_chars``
  characters) is cut at a line boundary: the emitted piece gets a closing
  fence and the tail reopens the fence with the same opening line, so every
  piece renders as a code block (a fence inside a list item likewise: the
  rest goes on as a top-level fence);
* a single line over ``max_chars`` characters is cut before a letter (after
  a space if possible), the rest continuing the same paragraph or code (an
  opening fence line that long, i.e. a 2,000-char info string, is cut too,
  and the code after it then shows as text);
* any open block over ``4 * max_chars`` characters is cut at the next line
  boundary, whatever it is (the guarantee that the tail stays bounded).

Synthetic fence and table-header lines are the only text not in the reply;
:attr:`BlockSplitter.synthetic` counts them.
"""
from __future__ import annotations

import re
from typing import List, Optional

# The CommonMark rules the sanitiser shares live in .commonmark (one copy);
# the private aliases keep this module's code as it was.
from .commonmark import closes_run as _closes_run
from .commonmark import fence_closes as _fence_closes
from .commonmark import fence_open as _fence_open
from .commonmark import indent as _indent

_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
_THEMATIC = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_SETEXT = re.compile(r" {0,3}(?:=+|-+)[ \t]*$")
_ITEM = re.compile(r"( {0,3})([-+*]|(\d{1,9})[.)])([ \t]|$)")
_TABLE_DELIM = re.compile(r" {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_BLANK = re.compile(r"[ \t]*\n?$")


def _long_cut(s: str, cap: int) -> int:
    """Where to cut a line longer than ``cap``: decided on ``s[:cap + 1]`` only.

    The rest starts a line of its own in the next piece, so it should start
    with a letter (no heading, list item or fence): prefer the last place
    where whitespace is followed by a letter, then one inside a word, then
    any character that starts no block; cut hard at cap only when the
    line holds nothing but Markdown punctuation there.
    """
    lo = max(1, cap // 2)
    for i in range(cap, lo, -1):
        if s[i - 1] in " \t" and s[i].isalpha():
            return i
    for i in range(cap, lo, -1):
        if s[i].isalpha() and s[i - 1].isalpha():
            return i
    for i in range(cap, lo, -1):  # no letters: anything that starts no Markdown block
        if s[i] not in _BLOCK_START and not _ORDERED.match(s, i):
            return i
    return cap


_BLOCK_START = frozenset(" \t#>-+*=_`~|[]!<:")
_ORDERED = re.compile(r"\d{1,9}[.)]")


class BlockSplitter:
    """Split a streamed Markdown reply into completed blocks and an open tail.

    ``feed(text)`` as chunks arrive; ``take_completed()`` returns the blocks
    completed since the last call (each once); ``tail`` is the open block;
    ``close()`` ends the reply and returns the remaining blocks.
    """

    def __init__(self, max_chars: int = 2000, max_fence_lines: int = 40):
        self.max_chars = max_chars
        self.max_fence_lines = max_fence_lines
        self.hard_cap = 4 * max_chars
        self.synthetic = 0  # synthetic lines added by caps (fence close/reopen, table header)
        self._done: List[str] = []
        self._parts: List[str] = []  # the incomplete last line, in pieces
        self._plen = 0
        self._open: List[str] = []  # complete lines of the open block
        self._olen = 0
        self._kind: Optional[str] = None  # None|para|list|fence|indent|table
        self._cont = False  # the next line continues a line cut for length
        # fence state
        self._fence: Optional[tuple] = None  # (indent, char, length)
        self._fence_line = ""
        self._fence_n = 0
        # list state
        self._list_blank = False
        self._inner: Optional[tuple] = None  # a fence inside a list item: (char, length)
        self._inner_line = ""
        self._inner_n = 0
        # table state
        self._header: List[str] = []

    # -- public -------------------------------------------------------------
    def feed(self, text: str) -> None:
        if not text:
            return
        start = 0
        nl = text.find("\n")
        while nl != -1:
            piece = text[start : nl + 1]
            if self._parts:
                self._parts.append(piece)
                line = "".join(self._parts)
                self._parts, self._plen = [], 0
            else:
                line = piece
            self._complete_line(line)
            start = nl + 1
            nl = text.find("\n", start)
        if start < len(text):
            rest = text[start:]
            self._parts.append(rest)
            self._plen += len(rest)
            if self._plen > self.max_chars:
                self._cut_partial()

    def take_completed(self) -> List[str]:
        done, self._done = self._done, []
        return done

    @property
    def tail(self) -> str:
        return "".join(self._open) + "".join(self._parts)

    @property
    def pending(self) -> bool:
        """Completed blocks are waiting for :meth:`take_completed`."""
        return bool(self._done)

    @property
    def tail_len(self) -> int:
        return self._olen + self._plen

    def close(self) -> List[str]:
        """End of the reply: the open block (and partial line) completes."""
        rest = self.tail
        self._parts, self._plen = [], 0
        self._open, self._olen = [], 0
        if rest:
            self._done.append(rest)
        self._reset_kind()
        return self.take_completed()

    # -- lines --------------------------------------------------------------
    def _cut_partial(self) -> None:
        s = "".join(self._parts)
        while len(s) > self.max_chars:
            cut = _long_cut(s, self.max_chars)
            self._long_piece(s[:cut])
            s = s[cut:]
        self._parts, self._plen = ([s], len(s)) if s else ([], 0)

    def _complete_line(self, line: str) -> None:
        while len(line) - 1 > self.max_chars:  # -1: the newline
            cut = _long_cut(line, self.max_chars)
            self._long_piece(line[:cut])
            line = line[cut:]
        if self._cont:
            self._cont = False
            self._append(line)
            if self._kind == "fence":
                self._fence_n += 1
            return
        if self._olen > self.hard_cap and self._kind is not None:
            self._cut_here()
        _LINE[self._kind](self, line)

    def _long_piece(self, piece: str) -> None:
        """A line too long to wait for: emit the open block up to ``piece``."""
        if self._kind == "fence":
            self._append(piece + "\n")
            self.synthetic += 1  # the newline; close and reopen count below
            self._reopen_fence()
        else:
            self._append(piece)
            self._emit()
            self._kind = "para"
        self._cont = True

    def _append(self, line: str) -> None:
        self._open.append(line)
        self._olen += len(line)

    def _emit(self) -> None:
        if self._open:
            self._done.append("".join(self._open))
        self._open, self._olen = [], 0
        self._reset_kind()

    def _reset_kind(self) -> None:
        self._kind = None
        self._fence = None
        self._list_blank = False
        self._inner = None
        self._header = []

    def _reopen_fence(self) -> None:
        """Cap a fence: the emitted piece gets a closing fence, the tail reopens it."""
        fence = self._fence
        indent, ch, n = fence
        self._append(" " * indent + ch * n + "\n")
        self._emit()
        self._kind, self._fence = "fence", fence
        self._append(self._fence_line)
        self._fence_n = 0
        self.synthetic += 2

    def _reopen_table(self) -> None:
        """Cap a table: emit it; the tail repeats its header rows."""
        header = self._header
        self._emit()
        self._kind, self._header = "table", header
        for h in header:
            self._append(h)
        self.synthetic += len(header)

    def _cut_here(self) -> None:
        """Hard cap: cut the open block at this line boundary, whatever it is."""
        kind = self._kind
        if kind == "fence":
            self._reopen_fence()
        elif kind == "table":
            self._reopen_table()
        elif kind == "list" and self._inner is not None:
            self._split_inner()
        else:
            self._emit()
            self._kind = "para" if kind == "para" else None

    def _split_inner(self) -> None:
        """Cut a list block inside a fenced block of one of its items.

        The piece gets a closing fence; the rest goes on as a top-level
        fence reopened with the item's opening line (indent at most 3).
        """
        ch, n = self._inner
        opener = self._inner_line
        lead = opener[: len(opener) - len(opener.lstrip(" \t"))]
        self._append(lead + ch * n + "\n")
        self._emit()
        indent = min(len(lead.expandtabs(4)), 3)
        self._kind, self._fence = "fence", (indent, ch, n)
        self._fence_line = " " * indent + opener.lstrip(" \t")
        self._append(self._fence_line)
        self._fence_n = 0
        self.synthetic += 2

    def _start(self, line: str) -> None:
        """First non-blank line of a block (leading blank lines may precede it)."""
        fence = _fence_open(line)
        if fence:
            self._kind, self._fence, self._fence_line = "fence", fence, line
            self._fence_n = 0
            self._append(line)
        elif _HEADING.match(line) or _THEMATIC.match(line):
            self._append(line)
            self._emit()
        elif _ITEM.match(line):
            self._kind = "list"
            self._append(line)
        elif _indent(line) >= 4:
            self._kind = "indent"
            self._append(line)
        else:
            self._kind = "para"
            self._append(line)

    def _line_none(self, line: str) -> None:
        if _BLANK.match(line):
            self._append(line)
        else:
            self._start(line)

    def _interrupts_para(self, line: str) -> bool:
        if _fence_open(line) or _HEADING.match(line) or _THEMATIC.match(line):
            return True
        m = _ITEM.match(line)
        if m:
            if m.group(3) is not None:
                return int(m.group(3)) == 1 and bool(line[m.end() :].strip())
            return bool(line[m.end() :].strip())
        return False

    def _line_para(self, line: str) -> None:
        if _BLANK.match(line):
            self._append(line)
            self._emit()
        elif _SETEXT.match(line):
            self._append(line)
            self._emit()
        elif (
            _TABLE_DELIM.match(line)
            and "|" in line
            and len(self._open) == 1
            and "|" in self._open[0]
        ):
            self._kind = "table"
            self._header = [self._open[0], line]
            self._append(line)
        elif self._interrupts_para(line):
            self._emit()
            self._start(line)
        elif self._olen >= self.max_chars and line.lstrip()[:1].isalpha():
            self._emit()
            self._start(line)
        else:
            self._append(line)

    def _line_table(self, line: str) -> None:
        if _BLANK.match(line):
            self._append(line)
            self._emit()
        elif self._interrupts_para(line) or line.lstrip().startswith(">"):
            self._emit()
            self._start(line)
        else:
            if self._olen >= self.max_chars:
                self._reopen_table()
            self._append(line)

    def _line_indent(self, line: str) -> None:
        if _BLANK.match(line) or _indent(line) >= 4:
            self._append(line)
        else:
            self._emit()
            self._start(line)

    def _line_fence(self, line: str) -> None:
        _, ch, n = self._fence
        if _fence_closes(line, ch, n):
            self._append(line)
            self._emit()
            return
        # (the character cap of a fence is the hard cap in _complete_line)
        if self._fence_n >= self.max_fence_lines:
            self._reopen_fence()
        self._append(line)
        self._fence_n += 1

    def _line_list(self, line: str) -> None:
        if self._inner is not None:  # inside a fence within a list item
            ch, n = self._inner
            if _closes_run(line.lstrip(" \t").rstrip("\n"), ch, n):  # at any indent
                self._append(line)
                self._inner = None
                return
            if self._inner_n >= self.max_fence_lines:
                self._split_inner()
                self._line_fence(line)
                return
            self._append(line)
            self._inner_n += 1
            return
        if _BLANK.match(line):
            self._append(line)
            self._list_blank = True
            return
        ind = _indent(line)
        # an indent under 4 is spaces only, which _FENCE allows: strip it either way
        fence = _fence_open(line.lstrip(" \t"))
        if fence and ind >= 2:
            self._inner = (fence[1], fence[2])
            self._inner_line, self._inner_n = line, 0
            self._append(line)
            self._list_blank = False
            return
        if _THEMATIC.match(line):
            self._emit()
            self._start(line)
            return
        item = _ITEM.match(line)
        if item:
            if len(item.group(1)) <= 1 and self._olen >= self.max_chars:
                self._emit()  # cap: cut before a top-level item
                self._kind = "list"
            self._append(line)
            self._list_blank = False
            return
        if ind >= 2:
            self._append(line)
            self._list_blank = False
            return
        if self._list_blank or fence or _HEADING.match(line):
            self._emit()
            self._start(line)
            return
        self._append(line)  # lazy continuation of the item's paragraph


_LINE = {
    None: BlockSplitter._line_none,
    "para": BlockSplitter._line_para,
    "list": BlockSplitter._line_list,
    "fence": BlockSplitter._line_fence,
    "indent": BlockSplitter._line_indent,
    "table": BlockSplitter._line_table,
}  # the line handler of each kind of open block


# -- code blocks: what `-f code` takes -----------------------------------------------

def _strip_columns(line: str, n: int) -> str:
    """``line`` without its first ``n`` columns of indentation (tabs to the next multiple of 4)."""
    col = i = 0
    while i < len(line) and col < n:
        ch = line[i]
        if ch == " ":
            col += 1
        elif ch == "\t":
            width = 4 - col % 4
            if col + width > n:  # a tab straddling the cut leaves its remaining columns as spaces
                return " " * (col + width - n) + line[i + 1 :]
            col += width
        else:
            break
        i += 1
    return line[i:]


def _fence_content(lines: List[str], strip: int, ch: str, n: int, any_indent: bool = False) -> "tuple[str, int]":
    """(content, lines used) of a fence whose opening line is already taken: up to the
    closing fence (or the end), each line without up to ``strip`` leading spaces."""
    out = []
    for k, line in enumerate(lines):
        body = line.rstrip("\n")
        if (_closes_run(body.lstrip(" \t"), ch, n) if any_indent else _fence_closes(body, ch, n)):
            return "".join(out), k + 1
        if any_indent and body.strip() and _indent(body) < strip:
            return "".join(out), k  # in a list item: a line left of the item's content ends it
        out.append(_strip_columns(line, strip) if strip else line)
    return "".join(out), len(lines)


def code_blocks(text: str) -> List[str]:
    """The contents of the code blocks of ``text``, as CommonMark reads them, in order.

    Read with the renderer's own :class:`BlockSplitter` (caps off), so `-f code`
    takes exactly what the reply shows as code: fenced blocks closed by a run of
    at least the opening length indented 0-3 spaces (or the end of the text),
    fences inside list items, and indented code blocks (4+ columns after a
    blank line). Each content ends with a newline, as CommonMark's does.
    """
    if not text:
        return []
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    big = len(text) + 2
    splitter = BlockSplitter(max_chars=big, max_fence_lines=big)
    # (a last line without its newline would stay in the open block: end it)
    added = not text.endswith("\n")
    splitter.feed(text + "\n" if added else text)
    found: List[str] = []
    blocks = splitter.close()
    if added and blocks:  # the newline added above is no part of an unclosed fence
        blocks[-1] = blocks[-1][:-1]
    for block in blocks:
        lines = block.splitlines(keepends=True)
        k = 0
        while k < len(lines) and _BLANK.match(lines[k]):
            k += 1
        if k == len(lines):
            continue
        first = lines[k]
        fence = _fence_open(first)
        if fence:
            indent, ch, n = fence
            found.append(_fence_content(lines[k + 1 :], indent, ch, n)[0])
        elif _indent(first) >= 4:
            body = [_strip_columns(line, 4) if line.strip() else line.lstrip(" \t") for line in lines[k:]]
            while body and not body[-1].strip():
                body.pop()
            if body and not body[-1].endswith("\n"):
                body[-1] += "\n"
            found.append("".join(body))
        elif _ITEM.match(first):
            found.extend(_list_fences(lines[k:]))
    return found


def _list_fences(lines: List[str]) -> List[str]:
    """Fenced blocks inside the items of a list block (the splitter's reading: indented 2+)."""
    found: List[str] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        fence = _fence_open(line.lstrip(" \t"))
        item = _ITEM.match(line)
        if item and not fence:
            rest = line[item.end() :]
            fence = _fence_open(rest.lstrip(" ")) if rest.strip() else None
            if fence:  # "- ```": the fence opens the item itself
                strip = len(line) - len(rest.lstrip(" "))
                content, used = _fence_content(lines[k + 1 :], strip, fence[1], fence[2], any_indent=True)
                found.append(content)
                k += 1 + used
                continue
        elif fence and _indent(line) >= 2:
            strip = len(line) - len(line.lstrip(" "))
            content, used = _fence_content(lines[k + 1 :], strip, fence[1], fence[2], any_indent=True)
            found.append(content)
            k += 1 + used
            continue
        k += 1
    return found
