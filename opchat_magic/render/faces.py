"""Where a reply is shown: three faces with one small interface.

Every face takes already sanitised Markdown:

``add_block(md)``   a completed block, final: if a tail is showing, the tail
                    output becomes this block (its last update), else a new
                    output is added;
``set_tail(md)``    replace the open tail (creating its output on first use;
                    an empty ``md`` creates nothing);
``close_tail()``    the tail output, if any, stays as it is, final;
                    (tail states carry ``text/markdown`` only; final outputs,
                    i.e. blocks, footer, error, also carry ``text/plain``)
``footer(text)``    a last small line (plain text, escaped here);
``error(text)``     an error or "stopped" line (plain text, escaped here);
``set_reasoning(md, plain, final)``  show or replace the reasoning part, one
                    output of its own (see ``reasoning.py``; ``plain`` is its
                    text/plain form, given with the final state).

:class:`TerminalFace` also has ``write(text)`` and ``streams_raw = True``: the
renderer then hands it the raw chunks as they arrive instead of blocks.

Importing this module is cheap: IPython and ipywidgets load on first use.
"""
from __future__ import annotations

import sys
import uuid
from typing import Any, Callable, Optional, TextIO

from ..scrub import show_controls
from .sanitize import escape_text

__all__ = ["DisplayFace", "WidgetFace", "TerminalFace", "choose_face", "in_kernel"]


def _bundle(md: str) -> dict:
    """A final output: Markdown, and the same text for plain-text frontends."""
    return {"text/markdown": md, "text/plain": md}


def _tail_bundle(md: str) -> dict:
    """A passing state of the tail: Markdown only (its final state is a full bundle)."""
    return {"text/markdown": md}


def _footer_md(text: str) -> str:
    return "*" + escape_text(text) + "*" if text.strip() else ""


def _error_md(text: str) -> str:
    return "**" + escape_text(text) + "**" if text.strip() else ""


class DisplayFace:
    """IPython display handles (a Jupyter kernel; the default for ``%%opchat``).

    A completed block is displayed once and never sent again; the tail lives
    in one display handle updated with ``update_display``; when it completes,
    the handle gets its final content and the next tail gets a new handle. So
    the saved notebook holds the whole reply as static Markdown outputs.
    Drive it from the cell's own thread or task (display messages are
    addressed to the parent of the current execution).
    """

    def __init__(
        self,
        display: Optional[Callable[..., Any]] = None,
        update_display: Optional[Callable[..., Any]] = None,
    ):
        if display is None or update_display is None:
            from IPython.display import display as _display, update_display as _update

            display = display or _display
            update_display = update_display or _update
        self._display = display
        self._update = update_display
        self._tail_id: Optional[str] = None
        self._tail_md = ""
        self._reasoning_id: Optional[str] = None

    def set_reasoning(self, md: str, plain: Optional[str], final: bool) -> None:
        data = {"text/markdown": md, "text/plain": plain} if plain is not None else _tail_bundle(md)
        if self._reasoning_id is None:
            self._reasoning_id = "opchat-thinking-" + uuid.uuid4().hex
            self._display(data, raw=True, display_id=self._reasoning_id)
        else:
            self._update(data, raw=True, display_id=self._reasoning_id)

    def add_block(self, md: str) -> None:
        if self._tail_id is not None:
            self._update(_bundle(md), raw=True, display_id=self._tail_id)
            self._tail_id, self._tail_md = None, ""
        elif md:
            self._display(_bundle(md), raw=True)

    def set_tail(self, md: str) -> None:
        if self._tail_id is None:
            if not md:
                return
            self._tail_id = "opchat-" + uuid.uuid4().hex
            self._display(_tail_bundle(md), raw=True, display_id=self._tail_id)
        elif md != self._tail_md:
            self._update(_tail_bundle(md), raw=True, display_id=self._tail_id)
        self._tail_md = md

    def close_tail(self) -> None:
        self._tail_id, self._tail_md = None, ""

    def footer(self, text: str) -> None:
        md = _footer_md(text)
        if md:
            self._display({"text/markdown": md, "text/plain": text}, raw=True)

    def error(self, text: str) -> None:
        md = _error_md(text)
        if md:
            self._display({"text/markdown": md, "text/plain": text}, raw=True)


class WidgetFace:
    """An ``ipywidgets.VBox`` of ``Output`` widgets, one per block (the chat panel).

    Only traits are set (never ``with out:`` capture), so it may be driven
    from a thread that is not the kernel's. A completed block's Output is
    never touched again; only the tail Output's ``outputs`` is replaced.
    Outputs sit in a small tree (``widget`` -> chapters -> pages -> Outputs,
    at most ``page_size`` children each) so that adding a block re-sends a
    short ``children`` list, never one that grows with the reply; all
    Outputs share one Layout widget, all pages and chapters another.
    """

    def __init__(self, page_size: int = 16):
        import ipywidgets

        self._w = ipywidgets
        self._page_size = max(2, page_size)
        self._out_layout = ipywidgets.Layout()
        self._box_layout = ipywidgets.Layout()
        self.widget = ipywidgets.VBox()
        self._chapter: Any = None
        self._page: Any = None
        self._tail: Any = None
        self._tail_md = ""
        self._reasoning: Any = None

    def set_reasoning(self, md: str, plain: Optional[str], final: bool) -> None:
        data = {"text/markdown": md, "text/plain": plain} if plain is not None else _tail_bundle(md)
        if self._reasoning is None:
            self._reasoning = self._add_output(data)
        else:
            self._reasoning.outputs = self._outputs(data)

    @staticmethod
    def _outputs(data: dict) -> tuple:
        return ({"output_type": "display_data", "data": data, "metadata": {}},)

    def _box(self, child: Any) -> Any:
        return self._w.VBox(children=(child,), layout=self._box_layout)

    def _add_output(self, data: dict) -> Any:
        out = self._w.Output(layout=self._out_layout, outputs=self._outputs(data))
        size = self._page_size
        if self._page is not None and len(self._page.children) < size:
            self._page.children = self._page.children + (out,)
        else:
            self._page = self._box(out)
            if self._chapter is not None and len(self._chapter.children) < size:
                self._chapter.children = self._chapter.children + (self._page,)
            else:
                self._chapter = self._box(self._page)
                self.widget.children = self.widget.children + (self._chapter,)
        return out

    def add_block(self, md: str) -> None:
        if self._tail is not None:
            self._tail.outputs = self._outputs(_bundle(md))
            self._tail, self._tail_md = None, ""
        elif md:
            self._add_output(_bundle(md))

    def set_tail(self, md: str) -> None:
        if self._tail is None:
            if not md:
                return
            self._tail = self._add_output(_tail_bundle(md))
        elif md != self._tail_md:
            self._tail.outputs = self._outputs(_tail_bundle(md))
        self._tail_md = md

    def close_tail(self) -> None:
        self._tail, self._tail_md = None, ""

    def footer(self, text: str) -> None:
        md = _footer_md(text)
        if md:
            self._add_output({"text/markdown": md, "text/plain": text})

    def error(self, text: str) -> None:
        md = _error_md(text)
        if md:
            self._add_output({"text/markdown": md, "text/plain": text})

    def advice(self, advice: Any) -> None:
        """A formatted message (no endpoint answered): its Markdown, and its text for plain frontends."""
        self._add_output({"text/markdown": advice.markdown, "text/plain": advice.text})

    @property
    def outputs(self) -> list:
        """Every Output widget, in order (tests, the panel)."""
        return [out for chapter in self.widget.children for page in chapter.children for out in page.children]


class TerminalFace:
    """Plain text to a stream (IPython terminal, jupyter console, no frontend).

    Writes each new piece of raw text as it arrives and flushes; no
    re-renders. Control characters (terminal escapes: C0 but newline and
    tab, C1, bidi overrides) show as visible escapes (``\x1b]52;...``), by
    :func:`opchat_magic.scrub.show_controls`, the same function that cleans
    error messages: a reply or an error can never drive the terminal.
    """

    streams_raw = True

    def __init__(self, stream: Optional[TextIO] = None):
        self._stream = stream
        self._at_line_start = True
        self._tail = ""
        self._thinking = False
        self._cr = False  # a chunk ended in "\r": CR LF may be cut between two chunks

    # Reasoning: labelled, and dimmed (SGR 2) where the stream is a terminal.
    def _dim(self, on: bool) -> None:
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            self.stream.write("\x1b[2m" if on else "\x1b[0m")

    def write_reasoning(self, text: str) -> None:
        if not self._thinking:
            self._thinking = True
            if not self._at_line_start:
                self.write("\n")
            self._dim(True)
            self.write("[thinking] ")
        self.write(text)

    def close_reasoning(self) -> None:
        if self._thinking:
            self._thinking = False
            if not self._at_line_start:
                self.write("\n")
            self._dim(False)
            self.write("[/thinking]\n")
            self.stream.flush()

    def set_reasoning(self, md: str, plain: Optional[str], final: bool) -> None:
        if final and plain is not None:  # the block interface, for completeness: the final text once
            self.close_tail()
            self.write(plain + "\n")

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def write(self, text: str) -> None:
        if self._cr:
            self._cr = False
            text = ("" if text.startswith("\n") else "\r") + text
        if text.endswith("\r"):
            self._cr, text = True, text[:-1]
        text = show_controls(text)
        if not text:
            return
        stream = self.stream
        stream.write(text)
        stream.flush()
        self._at_line_start = text.endswith("\n")

    # the block interface, for completeness: prints what it can without re-rendering
    def set_tail(self, md: str) -> None:
        if md.startswith(self._tail):
            self.write(md[len(self._tail) :])
            self._tail = md

    def add_block(self, md: str) -> None:
        if md.startswith(self._tail):
            self.write(md[len(self._tail) :])
        else:
            self.close_tail()
            self.write(md)
        self._tail = ""

    def close_tail(self) -> None:
        if not self._at_line_start:
            self.write("\n")
        self._tail = ""

    def footer(self, text: str) -> None:
        self.close_tail()
        self.write(" ".join(text.split()) + "\n")

    def error(self, text: str) -> None:
        self.footer(text)


def in_kernel() -> bool:
    """Running inside an ipykernel (without importing IPython or ipykernel)."""
    ipython = sys.modules.get("IPython")
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if ipython is None or zmqshell is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and isinstance(shell, zmqshell.ZMQInteractiveShell)


def choose_face(kind: str = "auto") -> Callable[..., Any]:
    """The face class (a factory) for ``kind``: auto | display | widget | terminal.

    ``auto`` is :class:`DisplayFace` inside a Jupyter kernel, else
    :class:`TerminalFace`.
    """
    kind = (kind or "auto").lower()
    if kind == "auto":
        return DisplayFace if in_kernel() else TerminalFace
    faces = {"display": DisplayFace, "widget": WidgetFace, "terminal": TerminalFace}
    try:
        return faces[kind]
    except KeyError:
        raise ValueError(f"unknown renderer {kind!r}: auto, display, widget or terminal") from None
