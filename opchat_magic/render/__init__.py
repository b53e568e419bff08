"""Streaming Markdown rendering of one reply: blocks, sanitising, throttle, faces.

``Renderer(face).feed(chunk)`` ... ``.finish(footer)``; the face is chosen once
with ``choose_face("auto" | "display" | "widget" | "terminal")``. Importing
this package is cheap: IPython and ipywidgets load only when a face needs them.
"""
from .blocks import BlockSplitter, code_blocks
from .faces import DisplayFace, TerminalFace, WidgetFace, choose_face, in_kernel
from .renderer import STOPPED, STOPPED_EMPTY, Renderer
from .sanitize import ImagePolicy, escape_text, sanitize_markdown

__all__ = [
    "Renderer",
    "BlockSplitter",
    "code_blocks",
    "ImagePolicy",
    "sanitize_markdown",
    "escape_text",
    "DisplayFace",
    "WidgetFace",
    "TerminalFace",
    "choose_face",
    "in_kernel",
    "STOPPED",
    "STOPPED_EMPTY",
]
