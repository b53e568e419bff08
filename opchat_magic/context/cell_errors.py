"""The errors each cell raised, recorded as they happen (IPython keeps only the last).

``{Err[N]}``, ``{Err}`` and ``%opchat_explain`` need the error a given cell
raised, long after IPython has moved on: IPython itself keeps no per-cell
errors (only ``sys.last_value``). A ``post_run_cell`` hook records, per
execution count, the cell's source and its error's type, message and traceback
text, formatted by IPython's own traceback formatter (what the user saw) with
the ANSI colours stripped.

The text is made when the error happens, not kept as the exception: an
exception holds its traceback, and so every frame's locals (often large
arrays), alive. In ipykernel the text IPython already formatted for the
frontend (``shell._last_traceback``, cleared by our ``pre_run_cell`` hook so
it can only be this cell's) is reused: formatting a traceback again would
double what a failing cell costs.
"""
from __future__ import annotations

import re
import threading
import traceback as _traceback
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

__all__ = ["CellError", "ErrorLog", "install", "uninstall", "error_log", "strip_ansi"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# A huge traceback (deep recursion) is kept head and tail: the model needs the
# outermost cell frame and the innermost failing line, not 3,000 repeats.
MAX_TRACEBACK_CHARS = 50_000
# IPython's rich formatter reads source around every frame: seconds for a deep
# recursion, on top of the same work IPython just did to show it. Deeper than
# this, Python's own formatter (which folds repeated frames) is used.
MAX_RICH_FRAMES = 100
# Cells that run an opchat command are not "the notebook's errors": explaining
# "that cell referenced a cell that does not exist" helps no one.
_OPCHAT_CELL = re.compile(r"^\s*%{1,2}opchat")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and control sequences."""
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class CellError:
    """What cell ``execution_count`` raised."""

    execution_count: Optional[int]
    type: str        # the exception's class name, e.g. "ZeroDivisionError"
    message: str     # str(exception)
    traceback: str   # as the user saw it, without ANSI codes
    source: str      # the cell's source, as typed

    @property
    def summary(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    def text(self) -> str:
        """The error as prompt text: type and message, then the traceback."""
        if not self.traceback or self.traceback.strip() == self.summary:
            return self.summary
        return f"{self.summary}\n\n{self.traceback}"


def _bounded(text: str, limit: int = MAX_TRACEBACK_CHARS) -> str:
    if len(text) <= limit:
        return text
    head, tail = text[: limit // 2], text[-limit // 2:]
    return f"{head}\n[... {len(text) - len(head) - len(tail):,} characters of traceback left out ...]\n{tail}"


def format_error(shell, error: BaseException, before_exec: bool = False) -> str:
    """The traceback text IPython showed for ``error`` (no ANSI), or Python's own if that fails."""
    from IPython.core.error import UsageError

    render = getattr(error, "_render_traceback_", None)
    shown = getattr(shell, "_last_traceback", None)  # ipykernel: what this cell's frontend got
    try:
        if isinstance(shown, list) and shown and not isinstance(error, UsageError):
            lines = shown
        elif callable(render):
            lines = render()
        elif isinstance(error, UsageError):
            lines = [f"UsageError: {error}"]  # IPython shows a usage error as one line, no stack
        elif before_exec or isinstance(error, SyntaxError):
            lines = shell.SyntaxTB.structured_traceback(type(error), error, [])
        elif _depth(error.__traceback__) > MAX_RICH_FRAMES:
            lines = [_plain_traceback(shell, error)]
        else:
            lines = shell.InteractiveTB.structured_traceback(type(error), error, error.__traceback__)
        text = "\n".join(lines)
    except Exception:  # a formatter that breaks must not lose the error
        text = _plain_traceback(shell, error)
    return _bounded(strip_ansi(text).strip("\n"))


def _depth(tb, stop: int = 10_000) -> int:
    n = 0
    while tb is not None and n < stop:
        n, tb = n + 1, tb.tb_next
    return n


def _plain_traceback(shell, error: BaseException) -> str:
    """Python's own traceback (it folds repeated frames), cells named as IPython names them."""
    tb = error.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the first frame is IPython's run_code, not the user's
    text = "".join(_traceback.format_exception(type(error), error, tb))
    name = getattr(getattr(shell, "compile", None), "format_code_name", None)
    if name is None:
        return text

    def cell(match):
        try:
            named = name(match.group(1))
        except Exception:
            named = None
        return f"{named[0]} {named[1]}" if named else match.group(0)

    return re.sub(r'File "([^"]+)"', cell, text)


class ErrorLog:
    """The recorded errors of one shell, by execution count (the last ``limit`` kept)."""

    def __init__(self, shell, limit: int = 500):
        self.shell = shell
        self.limit = limit
        self._errors: "OrderedDict[Optional[int], CellError]" = OrderedDict()
        self._lock = threading.Lock()
        self._last: Optional[CellError] = None
        # True between pre_run_cell and post_run_cell: a reference resolved then belongs to the running cell.
        self.running = False

    # -- the hooks ---------------------------------------------------------
    def pre_run_cell(self, info=None) -> None:
        self.running = True
        # ipykernel clears it in run_cell but not on its async path: clear it here, so what
        # post_run_cell finds there was shown for this cell.
        if getattr(self.shell, "_last_traceback", None) is not None:
            self.shell._last_traceback = None

    def post_run_cell(self, result) -> None:
        self.running = False
        error = getattr(result, "error_in_exec", None)
        before = error is None
        if before:
            error = getattr(result, "error_before_exec", None)
        if error is None:
            return
        info = getattr(result, "info", None)
        source = getattr(info, "raw_cell", None) or ""
        if _OPCHAT_CELL.match(source):
            return
        self.add(CellError(
            execution_count=getattr(result, "execution_count", None),
            type=type(error).__name__,
            message=str(error),
            traceback=format_error(self.shell, error, before_exec=before),
            source=source,
        ))

    def add(self, record: CellError) -> None:
        with self._lock:
            self._errors.pop(record.execution_count, None)
            self._errors[record.execution_count] = record
            self._last = record
            while len(self._errors) > self.limit:
                self._errors.popitem(last=False)

    # -- reading -----------------------------------------------------------
    def get(self, execution_count: int) -> Optional[CellError]:
        with self._lock:
            return self._errors.get(execution_count)

    def last(self) -> Optional[CellError]:
        with self._lock:
            return self._last

    def counts(self) -> list:
        """Execution counts that raised, oldest first."""
        with self._lock:
            return [n for n in self._errors if n is not None]

    def __len__(self) -> int:
        with self._lock:
            return len(self._errors)

    def clear(self) -> None:
        with self._lock:
            self._errors.clear()
            self._last = None


_logs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_logs_lock = threading.Lock()


def install(shell) -> ErrorLog:
    """Start recording ``shell``'s cell errors (idempotent); the extension's load calls it."""
    with _logs_lock:
        log = _logs.get(shell)
        if log is None:
            log = _logs[shell] = ErrorLog(shell)
            shell.events.register("pre_run_cell", log.pre_run_cell)
            shell.events.register("post_run_cell", log.post_run_cell)
        return log


def uninstall(shell) -> None:
    """Stop recording (the extension's unload calls it); the recorded errors are dropped."""
    with _logs_lock:
        log = _logs.pop(shell, None)
    if log is not None:
        for event, callback in (("pre_run_cell", log.pre_run_cell), ("post_run_cell", log.post_run_cell)):
            try:
                shell.events.unregister(event, callback)
            except ValueError:
                pass


def error_log(shell) -> Optional[ErrorLog]:
    """The shell's log, if recording was installed."""
    with _logs_lock:
        return _logs.get(shell)
