"""The prompt ``%opchat_explain`` (and the panel's "Explain last error") sends.

One builder for both front doors: the failing cell's source, the error's type,
message and traceback (no ANSI codes), and a short instruction. The source and
the traceback are each bounded by the same cap as any interpolated value.
"""
from __future__ import annotations

import re
from typing import Optional

from .cell_errors import CellError, ErrorLog
from .references import CellReferenceError, Prompt
from .values import DEFAULT_CAP, Cut, clip

__all__ = ["INSTRUCTION", "explain_prompt", "find_error", "fence"]

INSTRUCTION = ("Explain the error this cell of my Jupyter notebook raised: what caused it, and how to fix it. "
               "Be brief, and show the corrected code.")
# For an endpoint that takes short messages (AI Engine's chatbots: 512 characters by default).
SHORT_INSTRUCTION = "Explain this Jupyter error and how to fix it."
_RULE = re.compile(r"^-{20,}$\n?", re.M)  # IPython's dashed rule above a traceback


def fence(text: str, info: str = "") -> str:
    """``text`` in a Markdown code fence longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


def find_error(log: Optional[ErrorLog], number: Optional[int] = None, current: Optional[int] = None) -> CellError:
    """The last recorded error, or cell ``number``'s (negative: counted back from ``current``)."""
    if log is None:
        raise CellReferenceError("Errors are not being recorded in this shell (they are from "
                                 "`%load_ext opchat_magic` on).")
    if number is None:
        record = log.last()
        if record is None:
            raise CellReferenceError("No cell has raised an error since opchat_magic was loaded: "
                                     "nothing to explain.")
        return record
    target = number
    if number < 0 and current is not None:
        target = current + number
    record = log.get(target)
    if record is None:
        raised = log.counts()
        raise CellReferenceError(
            f"Cell {target} raised no error"
            + (f"; cells that raised: {', '.join(map(str, raised[-10:]))}." if raised else "; no cell has raised one yet."))
    return record


def explain_prompt(error: CellError, cap: int = DEFAULT_CAP, instruction: str = INSTRUCTION,
                   budget: Optional[int] = None) -> Prompt:
    """The explain request for ``error``, with what was cut to fit ``cap``.

    ``budget``: the most characters the endpoint takes in one message. When the
    full request is longer, a compact one is sent: a short instruction, the
    traceback's last lines and then the source's first lines, as many as fit
    (each cut reported, so the footer says so).
    """
    label = f"In[{error.execution_count}]" if error.execution_count is not None else "the cell"
    where = f"Err[{error.execution_count}]" if error.execution_count is not None else "the traceback"
    source, source_cut = clip(error.source, cap, label)
    traceback, traceback_cut = clip(error.traceback, cap, where)
    references = [label] + ([where] if error.execution_count is not None else [])

    def build(instruction, source, traceback) -> str:
        parts = [instruction, "", f"Cell {label}:" if error.execution_count is not None else "The cell:",
                 fence(source, "python"), "", f"Error: {error.summary}"]
        if traceback.strip() and traceback.strip() != error.summary:
            parts += ["", "Traceback:", fence(traceback)]
        return "\n".join(parts)

    text = build(instruction, source, traceback)
    cuts = [c for c in (source_cut, traceback_cut) if c is not None]
    if budget is None or len(text) <= budget:
        return Prompt(text, [], cuts, references)
    # Compact: the rule and blank lines go, then the traceback keeps its end, then the source its start.
    traceback = "\n".join(line for line in _RULE.sub("", traceback).splitlines() if line.strip())
    fixed = len(build(SHORT_INSTRUCTION, "", ""))
    room = max(0, budget - fixed - 20)  # 20: the second fence and its newlines
    source_room = min(len(source), max(room // 3, room - len(traceback)))
    kept_source = _head(source, source_room)
    kept_traceback = _tail(traceback, room - len(kept_source))
    cuts = [c for c in (Cut(label, len(error.source), len(kept_source)) if len(kept_source) < len(error.source)
                        else None,
                        Cut(where, len(error.traceback), len(kept_traceback))
                        if len(kept_traceback) < len(error.traceback) else None) if c is not None]
    return Prompt(build(SHORT_INSTRUCTION, kept_source, kept_traceback), [], cuts, references)


def _head(text: str, room: int) -> str:
    """The first whole lines of ``text`` that fit in ``room`` characters (at least a prefix)."""
    if len(text) <= room:
        return text
    cut = text.rfind("\n", 0, room)
    return text[: cut if cut > 0 else room]


def _tail(text: str, room: int) -> str:
    """The last whole lines of ``text`` that fit in ``room`` characters (at least a suffix)."""
    if len(text) <= room:
        return text
    if room <= 0:
        return ""
    cut = text.find("\n", len(text) - room)
    return text[cut + 1:] if 0 <= cut < len(text) - 1 else text[-room:]
