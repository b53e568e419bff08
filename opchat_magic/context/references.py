"""``{...}`` fields in a prompt: notebook variables and cells, resolved before anything is sent.

A prompt may hold

- ``{name}``: the notebook variable ``name`` (its text, a DataFrame summary, or an image);
- ``{In[N]}``: the source of input cell N, as typed;
- ``{Out[N]}``: output N (its text, or an image when it is a figure or an image);
- ``{Err[N]}``: the error cell N raised (type, message, traceback without ANSI codes);
- ``{Err}``: the last error;
- ``{{`` and ``}}``: a literal brace.

A negative N counts back from the current cell (``{In[-1]}`` is the cell
before this one). A field is one line with no braces inside it. Anything else
in braces (``{x.real}``, ``{Out}``, a reference to a cell that has no such
input, output or error) is a :class:`CellReferenceError` naming the field, and
nothing is sent: a prompt is never sent with a field left in it literally.

Every value goes through :mod:`.values`, so each one is bounded by the cap and
each cut is reported in :attr:`Prompt.cuts`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from ..errors import OpchatError
from ..images import MAX_IMAGE_BYTES, Image
from .cell_errors import ErrorLog, error_log
from .values import DEFAULT_CAP, Cut, clip, value_content

__all__ = ["CellReferenceError", "Notebook", "Prompt", "resolve", "FIELD_HELP"]

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}\n]*)\}")
_CELL_REF = re.compile(r"^(In|Out|Err)(?:\[\s*([+-]?\d+)\s*\])?$")
FIELD_HELP = "{name}, {In[N]}, {Out[N]}, {Err[N]} or {Err}"
_NOTHING_SENT = " Nothing was sent."


class CellReferenceError(OpchatError, ValueError):
    """A ``{...}`` field that names no variable, no cell, or is not a field at all.

    The magics raise it as IPython's ``UsageError`` (one line, no traceback:
    IPython shows only that exact class so); the panel shows it in its status line.
    """

    def __init__(self, message: str, field_text: str = ""):
        super().__init__(message + _NOTHING_SENT)
        self.field = field_text


@dataclass
class Notebook:
    """What a prompt can refer to: the shell's namespace, inputs, outputs and recorded errors."""

    namespace: Mapping[str, Any] = field(default_factory=dict)
    inputs: Sequence[str] = ()                     # source of cell N at index N (index 0 unused)
    outputs: Mapping[int, Any] = field(default_factory=dict)
    errors: Optional[ErrorLog] = None
    current: int = 1                               # the running cell's number; -N counts back from it

    @classmethod
    def from_shell(cls, shell, errors: Optional[ErrorLog] = None) -> "Notebook":
        history = shell.history_manager
        errors = errors if errors is not None else error_log(shell)
        inputs = history.input_hist_raw
        # The running cell's number: IPython 8 says it in execution_count, IPython 9 has already
        # moved execution_count on to the next cell while this one runs. The stored inputs agree in
        # both: the running cell is the last one; with no cell running (the panel), the next is current.
        if errors is not None:
            current = len(inputs) - 1 if errors.running else len(inputs)
        else:
            current = shell.execution_count
        return cls(
            namespace=shell.user_ns,
            inputs=inputs,
            outputs=history.output_hist,
            errors=errors,
            current=current,
        )


@dataclass
class Prompt:
    """A resolved prompt: its text, the images it attaches, what was cut, what it referred to."""

    text: str
    images: list = field(default_factory=list)      # Image, in order, each once
    cuts: list = field(default_factory=list)        # Cut
    references: list = field(default_factory=list)  # the fields resolved, e.g. "In[3]", "df"

    @property
    def notice(self) -> str:
        """One footer note saying what was cut (``max_value_chars``), or "" when nothing was."""
        if not self.cuts:
            return ""
        return "input cut: " + "; ".join(cut.describe() for cut in self.cuts)


def _cell_number(kind: str, raw: str, notebook: Notebook, token: str) -> int:
    n = int(raw)
    if n < 0:
        target = notebook.current + n
        if target < 1:
            raise CellReferenceError(
                f"{token} counts back {-n} cells from cell {notebook.current}, before the first cell.", token)
        return target
    if n == 0:
        raise CellReferenceError(f"{token}: cells are numbered from 1.", token)
    return n


def _some(numbers, limit: int = 10) -> str:
    numbers = sorted(numbers)
    shown = ", ".join(str(n) for n in numbers[-limit:])
    return ("..., " if len(numbers) > limit else "") + shown


class _Resolver:
    def __init__(self, notebook: Notebook, cap: int, max_image_bytes: int):
        self.notebook = notebook
        self.cap = cap
        self.max_image_bytes = max_image_bytes
        self.images: "dict[str, Image]" = {}
        self.cuts: list = []
        self.references: list = []

    def __call__(self, match: "re.Match") -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        inner = match.group(1).strip()
        ref = _CELL_REF.match(inner)
        if ref:
            return self._cell(ref.group(1), ref.group(2), "{" + inner + "}")
        if inner.isidentifier():
            return self._variable(inner, token)
        if not inner:
            raise CellReferenceError(
                f"Empty braces {token} in the prompt: write {{name}} for a variable, or {{{{}}}} "
                "to send braces literally.", token)
        raise CellReferenceError(
            f"{token} in the prompt is neither a variable name nor a cell reference ({FIELD_HELP}). "
            f"Put the value in a variable and write {{that_name}}, or write {{{token}}} to send the "
            "braces literally.", token)

    # -- fields ------------------------------------------------------------
    def _variable(self, name: str, token: str) -> str:
        namespace = self.notebook.namespace
        if name not in namespace:
            raise CellReferenceError(
                f"{token} names no variable in the notebook. Define it, or write {{{token}}} to send "
                "the braces literally.", token)
        return self._content(namespace[name], name)

    def _cell(self, kind: str, number: Optional[str], token: str) -> str:
        if number is None:
            if kind == "Err":
                return self._last_error(token)
            raise CellReferenceError(
                f"{token} needs a cell number: {{{kind}[3]}} for cell 3, or {{{kind}[-1]}} for the cell "
                "before this one.", token)
        n = _cell_number(kind, number, self.notebook, token)
        if kind == "In":
            return self._input(n, token)
        if kind == "Out":
            return self._output(n, token)
        return self._error(n, token)

    def _input(self, n: int, token: str) -> str:
        inputs = self.notebook.inputs
        if n >= len(inputs):
            last = len(inputs) - 1
            raise CellReferenceError(
                f"{token}: cell {n} has not run yet" + (f" (the last cell run is {last})." if last > 0 else "."),
                token)
        return self._text(inputs[n], f"In[{n}]")

    def _output(self, n: int, token: str) -> str:
        outputs = self.notebook.outputs
        if n not in outputs:
            having = [k for k in outputs if isinstance(k, int)]
            why = (" (a cell has an output when its last line is an expression whose value is not None"
                   " and does not end with ';').")
            raise CellReferenceError(
                f"{token}: cell {n} has no output{why}"
                + (f" Cells with an output: {_some(having)}." if having else " No cell has an output yet."),
                token)
        return self._content(outputs[n], f"Out[{n}]")

    def _error(self, n: int, token: str) -> str:
        log = self._log(token)
        record = log.get(n)
        if record is None:
            raised = log.counts()
            raise CellReferenceError(
                f"{token}: cell {n} raised no error"
                + (f" (cells that raised: {_some(raised)})." if raised else " (no cell has raised one yet)."),
                token)
        return self._text(record.text(), f"Err[{n}]")

    def _last_error(self, token: str) -> str:
        record = self._log(token).last()
        if record is None:
            raise CellReferenceError(f"{token}: no cell has raised an error since opchat_magic was loaded.", token)
        label = f"Err[{record.execution_count}]" if record.execution_count is not None else "Err"
        return self._text(record.text(), label)

    def _log(self, token: str) -> ErrorLog:
        if self.notebook.errors is None:
            raise CellReferenceError(
                f"{token}: errors are not being recorded in this shell (they are from `%load_ext opchat_magic` on).",
                token)
        return self.notebook.errors

    # -- values ------------------------------------------------------------
    def _text(self, text: str, what: str) -> str:
        self.references.append(what)
        text, cut = clip(text, self.cap, what)
        if cut is not None:
            self.cuts.append(cut)
        return text

    def _content(self, value: Any, what: str) -> str:
        self.references.append(what)
        content, cut = value_content(value, self.cap, what, self.max_image_bytes)
        if isinstance(content, Image):
            self.images.setdefault(content.sha256, content)
            return f"[image: {what}]"
        if cut is not None:
            self.cuts.append(cut)
        return content


def resolve(template: str, notebook: Notebook, *, cap: int = DEFAULT_CAP,
            max_image_bytes: int = MAX_IMAGE_BYTES) -> Prompt:
    """Replace every field of ``template``; raise :class:`CellReferenceError` on the first bad one."""
    resolver = _Resolver(notebook, cap, max_image_bytes)
    text = _FIELD.sub(resolver, template)
    return Prompt(text, list(resolver.images.values()), resolver.cuts, resolver.references)
