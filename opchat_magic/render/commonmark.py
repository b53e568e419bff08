"""The CommonMark rules that the block splitter and the sanitiser share.

One copy of each rule, so the two can never disagree on where a fenced code
block opens or closes (a sanitiser that thought a fence closed where the
splitter did not would let raw HTML through, or escape code).
"""
from __future__ import annotations

import re

__all__ = ["FENCE", "indent", "span_not_fence", "fence_open", "closes_run", "fence_closes"]

# A fence-like line: indent (group 1), the backtick or tilde run (2), the info string (3).
FENCE = re.compile(r"( {0,3})(`{3,}|~{3,})(.*)")


def indent(line: str) -> int:
    """Columns of leading whitespace (tabs to the next multiple of 4)."""
    col = 0
    for ch in line:
        if ch == " ":
            col += 1
        elif ch == "\t":
            col += 4 - col % 4
        else:
            break
    return col


def span_not_fence(m) -> bool:
    """A fence-like match (run in group 2, info in 3) whose backtick run has a
    backtick in its info string: an inline code span, not a fence (CommonMark)."""
    return m.group(2)[0] == "`" and "`" in m.group(3)


def fence_open(line: str):
    """(indent, char, length) if ``line`` opens a fenced code block."""
    m = FENCE.match(line)
    if not m or span_not_fence(m):
        return None
    run = m.group(2)
    return len(m.group(1)), run[0], len(run)


def closes_run(body: str, ch: str, n: int) -> bool:
    """``body`` (indent already removed) is a run of at least ``n`` ``ch``, then blanks."""
    run = len(body) - len(body.lstrip(ch))
    return run >= n and not body[run:].strip(" \t")


def fence_closes(line: str, ch: str, n: int) -> bool:
    """CommonMark: ``line`` closes a fence of ``n`` ``ch`` (indent 0-3 spaces)."""
    s = line.rstrip("\n")
    body = s.lstrip(" ")
    return len(s) - len(body) <= 3 and closes_run(body, ch, n)
