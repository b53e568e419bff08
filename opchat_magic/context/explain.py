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
from .values import DEFAULT_CAP, clip

__all__ = ["INSTRUCTION", "explain_prompt", "find_error", "fence"]

INSTRUCTION = ("Explain the error this cell of my Jupyter notebook raised: what caused it, and how to fix it. "
               "Be brief, and show the corrected code.")


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


def explain_prompt(error: CellError, cap: int = DEFAULT_CAP, instruction: str = INSTRUCTION) -> Prompt:
    """The explain request for ``error``, with what was cut to fit ``cap``."""
    label = f"In[{error.execution_count}]" if error.execution_count is not None else "the cell"
    source, source_cut = clip(error.source, cap, label)
    where = f"Err[{error.execution_count}]" if error.execution_count is not None else "the traceback"
    traceback, traceback_cut = clip(error.traceback, cap, where)
    parts = [instruction, "", f"Cell {label}:" if error.execution_count is not None else "The cell:",
             fence(source, "python"), "", f"Error: {error.summary}"]
    if traceback.strip() and traceback.strip() != error.summary:
        parts += ["", "Traceback:", fence(traceback)]
    cuts = [c for c in (source_cut, traceback_cut) if c is not None]
    references = [label] + ([where] if error.execution_count is not None else [])
    return Prompt("\n".join(parts), [], cuts, references)
