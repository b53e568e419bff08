"""Tables and transcripts that read well everywhere: Markdown in Jupyter, aligned text in a terminal.

``display(Table(...))`` sends both a ``text/markdown`` and a ``text/plain``
representation: JupyterLab and Notebook 7 render the Markdown; terminal
IPython (and ``jupyter console``, and a saved notebook read as text) prints
the plain one, an aligned table, instead of
``<IPython.core.display.Markdown object>``.

Cells are plain text (thread names, model ids, config values: user or server
text): escaped for Markdown, stripped of control characters for terminals.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable, List, Optional, Sequence

from ..scrub import show_controls
from .sanitize import escape_text

__all__ = ["Table", "Text", "plain_cell", "transcript_text"]

# C0/C1 controls (terminal escape sequences) never reach a terminal
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_CELL = 80


def plain_cell(value: object, limit: int = MAX_CELL) -> str:
    """One line of printable text, at most ``limit`` columns wide (an ellipsis marks a cut)."""
    text = " ".join(show_controls(str(value)).split())  # escapes visible, as everywhere a terminal is
    if _width(text) > limit:
        out, width = [], 0
        for ch in text:
            w = _char_width(ch)
            if width + w > limit - 1:
                break
            out.append(ch)
            width += w
        text = "".join(out) + "…"
    return text


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(_char_width(ch) for ch in text)


def _md_cell(value: object, code: bool) -> str:
    text = " ".join(_CONTROL.sub(" ", str(value)).split())
    if code and text:
        fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
        pad = " " if text.startswith("`") or text.endswith("`") else ""
        return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")
    return escape_text(text) if text else ""


class Table:
    """Rows under a header; ``code`` names the columns shown as code in Markdown."""

    def __init__(self, headers: Sequence[str], rows: Iterable[Sequence[object]], *,
                 code: Sequence[str] = (), title: str = "", empty: str = "(nothing)"):
        self.headers = [str(h) for h in headers]
        self.rows: List[List[object]] = [list(r) for r in rows]
        self.code = {self.headers.index(c) for c in code if c in self.headers}
        self.title = title
        self.empty = empty

    # -- Markdown (Jupyter) ------------------------------------------------
    def _repr_markdown_(self) -> str:
        lines = []
        if self.title:
            lines += [f"**{escape_text(self.title)}**", ""]
        if not self.rows:
            return "\n".join(lines + [f"*{escape_text(self.empty)}*"])
        lines.append("| " + " | ".join(escape_text(h) for h in self.headers) + " |")
        lines.append("|" + "---|" * len(self.headers))
        for row in self.rows:
            lines.append("| " + " | ".join(_md_cell(v, i in self.code) for i, v in enumerate(row)) + " |")
        return "\n".join(lines)

    # -- text (terminals) --------------------------------------------------
    def text(self) -> str:
        lines = [plain_cell(self.title, 200)] if self.title else []
        if not self.rows:
            return "\n".join(lines + [self.empty])
        cells = [[plain_cell(h) for h in self.headers]] + [[plain_cell(v) for v in row] for row in self.rows]
        widths = [max(_width(r[i]) for r in cells) for i in range(len(self.headers))]

        def line(row: List[str]) -> str:
            return "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths)).rstrip()

        lines.append(line(cells[0]))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(line(r) for r in cells[1:])
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.text())


class Text:
    """Any Markdown document with its own plain-text form (a transcript, a message)."""

    def __init__(self, markdown: str, text: Optional[str] = None):
        self.markdown = markdown
        source = markdown if text is None else text
        self.plain = "\n".join(show_controls(line.replace("\t", "    ")) for line in source.split("\n"))

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __repr__(self) -> str:
        return self.plain

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.plain)


def transcript_text(thread, width: int = 72) -> str:
    """A history thread's transcript for a terminal: plain text, a line between turns
    (the Markdown form is ``thread.to_markdown()``)."""
    rule = "-" * width
    parts = []
    if thread.system:
        parts.append(f"System:\n{thread.system}")
    for turn in thread.turns:
        said = f"You:\n{turn.user}\n\n"
        if turn.status == "complete":
            said += f"Assistant:\n{turn.reply}"
        else:
            why = "stopped" if turn.status == "stopped" else f"failed: {turn.error or 'unknown error'}"
            said += f"Assistant ({why}; not in the history sent to the model, can be retried):"
            said += f"\n{turn.reply}" if turn.reply else ""
        parts.append(said)
    return f"\n{rule}\n".join(parts)
