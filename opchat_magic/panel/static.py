"""A static copy of a panel's transcript, for the notebook reopened without its kernel.

A saved notebook keeps the panel as a widget view, and without the kernel
(or widget state) JupyterLab shows "Error displaying widget: model not
found" in its place. So the panel is displayed as two outputs: the widget,
then this copy, a Markdown transcript of the panel's thread kept up to date
with ``update_display`` (from any thread: JupyterLab routes display updates
by id, also after the cell has ended). While the widget lives, its own CSS
hides the copy (``panel/view.py``); once it is dead, the copy's CSS hides
the dead widget's error line, and the transcript reads as static Markdown in
its place. An untrusted notebook (no CSS at all) shows the widget's plain
text line, then the copy.
"""
from __future__ import annotations

import threading
import uuid
from typing import List, Optional

__all__ = ["StaticCopy", "COPY_CLASS"]

COPY_CLASS = "opchat-panel-copy"

# Trusted notebooks only (a reopened, untrusted one drops <style>): the dead widget's
# error text (a widget node with no child elements) is hidden when this copy follows it.
_STYLE = ("<style>.jp-OutputArea-child:has(+ .jp-OutputArea-child ." + COPY_CLASS + ") "
          ".jupyter-widgets:not(:has(*)) { display: none; }</style>")

WIDGET_TEXT = "Chat panel (live while its kernel runs; a copy of its transcript follows)"


class StaticCopy:
    """The copy's display ids (a panel may be displayed more than once) and its last content."""

    def __init__(self) -> None:
        self._ids: List[str] = []
        self._last: Optional[dict] = None
        self._lock = threading.Lock()

    def display(self, widget_bundle: dict, thread) -> None:
        """Display the widget, then the copy right after it (the CSS pairs them by position)."""
        from IPython.display import display

        data = dict(widget_bundle)
        data["text/plain"] = WIDGET_TEXT
        display(data, raw=True)
        display_id = "opchat-panel-copy-" + uuid.uuid4().hex
        bundle = self.bundle(thread)
        with self._lock:
            self._ids.append(display_id)
            self._last = bundle
        display(bundle, raw=True, display_id=display_id)

    def update(self, thread) -> None:
        """Refresh every displayed copy, if the transcript changed (any thread)."""
        if not self._ids:
            return
        bundle = self.bundle(thread)
        with self._lock:
            if bundle == self._last:
                return
            self._last = bundle
            ids = list(self._ids)
        from IPython.display import update_display

        for display_id in ids:
            update_display(bundle, raw=True, display_id=display_id)

    @staticmethod
    def bundle(thread) -> dict:
        from ..render import escape_text, sanitize_markdown
        from ..render.tables import transcript_text

        transcript = thread.to_markdown()
        head = f"*Chat panel, thread {escape_text(thread.name)}: a copy of its transcript.*"
        body = sanitize_markdown(transcript) if transcript.strip() else "*(no messages yet)*"
        return {"text/markdown": f'{_STYLE}<div class="{COPY_CLASS}"></div>\n\n{head}\n\n{body}',
                "text/plain": f"Chat panel, thread {thread.name!r}:\n{transcript_text(thread)}"}
