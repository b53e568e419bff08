"""The chat panel's view: its widgets, the transcript, the status line.

The view draws; it decides nothing. The controller (``controller.py``)
tells it what to show. Widgets are created on the kernel's thread only; from
the private loop the view is only told to set traits (the status line, the
buttons, the live reply's face), which ipywidgets allows from any thread.

Enter to send: ipywidgets' ``Textarea`` has no key events and syncs its value on
every keystroke (``continuous_update``), so Enter cannot be told from a newline
on the kernel side. The view adds a few lines of JavaScript (a trusted
``application/javascript`` output, no extension): plain Enter in the panel's
text area appends an invisible marker (U+2063) to the value instead of a
newline; the kernel sees the marker arrive with the value (state updates keep
their order, unlike a button click racing a throttled value update), strips it
and sends. Shift+Enter inserts a newline as usual. Where that JavaScript does
not run (an untrusted notebook, a frontend without a JavaScript renderer), the
Send button is the way to send.
"""
from __future__ import annotations

import html
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["PanelView", "SEND_MARK"]

# Appended to the input's value by the Enter key helper: "send this".
SEND_MARK = "\u2063"  # INVISIBLE SEPARATOR

# A newline between two non-blank lines: made a Markdown hard break in user messages.
_HARD_BREAK = re.compile(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)")

_ENTER_TO_SEND_JS = r"""
(function () {
  if (window.__opchatEnterToSend) { return; }
  window.__opchatEnterToSend = true;
  document.addEventListener('keydown', function (event) {
    if (event.key !== 'Enter' || event.shiftKey || event.ctrlKey || event.altKey ||
        event.metaKey || event.isComposing) { return; }
    var area = event.target;
    if (!area || area.tagName !== 'TEXTAREA' || !area.closest) { return; }
    if (!area.closest('.opchat-panel-input')) { return; }
    event.preventDefault();
    event.stopPropagation();
    var panel = area.closest('.opchat-panel');
    var send = panel && panel.querySelector('.opchat-panel-send');
    if (!send || send.disabled || area.disabled || !area.value.trim()) { return; }
    area.value = area.value + '\u2063';
    area.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
})();
"""

_CSS = """
<style>
.opchat-panel .opchat-transcript { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px; }
.opchat-panel .opchat-msg { padding: 0 8px; margin: 4px 0; }
.opchat-panel .opchat-msg-user { border-left: 3px solid var(--jp-brand-color1, #1976d2);
  background: var(--jp-layout-color2, #f5f5f5); }
.opchat-panel .opchat-msg-assistant { border-left: 3px solid var(--jp-border-color1, #bbb); }
.opchat-panel .opchat-role { font-size: 85%; font-weight: bold; opacity: 0.75; }
.opchat-panel .opchat-status { font-size: 90%; min-height: 1.4em; }
.opchat-panel .opchat-status-error { color: var(--jp-error-color1, #c62828); }
.opchat-panel .opchat-status-busy { color: var(--jp-warn-color1, #ef6c00); }
.jp-OutputArea-child:has(.opchat-panel) + .jp-OutputArea-child:has(.opchat-panel-copy) { display: none; }
</style>
"""


def markdown_widget(text: str):
    """An Output widget showing ``text`` (already sanitised) as Markdown."""
    import ipywidgets as w

    out = w.Output(layout=w.Layout(width="100%"))
    out.outputs = ({"output_type": "display_data", "data": {"text/markdown": text, "text/plain": text},
                    "metadata": {}},)
    return out


def close_tree(widget) -> None:
    for child in getattr(widget, "children", ()) or ():
        close_tree(child)
    try:
        widget.close()
    except Exception:
        pass


class PanelView:
    """The panel's widgets. ``widget`` is the whole panel; the rest are its parts.

    Parts: ``transcript``, ``input``, ``send_button``, ``stop_button``,
    ``retry_button``, ``thread_select``, ``new_thread``, ``new_thread_button``,
    ``provider_select``, ``model``, ``status``.
    """

    _STATUS_CSS = {"error": "opchat-status-error", "busy": "opchat-status-busy",
                   "elsewhere": "opchat-status-busy", "stopped": "opchat-status-busy"}

    def __init__(self, *, threads: Sequence[str], thread: str, providers: Sequence[str], provider: str,
                 model: str, max_height: str = "420px"):
        import ipywidgets as w

        self._shown: Dict[tuple, Any] = {}  # (turn id, status) -> the turn's widget
        self.remote_images: Any = False  # which images a reply may load (the remote_images setting)
        self._style = w.HTML(_CSS)
        self._keys = w.Output(layout=w.Layout(display="none"))
        self._keys.outputs = ({"output_type": "display_data", "metadata": {},
                               "data": {"application/javascript": _ENTER_TO_SEND_JS, "text/plain": ""}},)
        compact = {"description_width": "initial"}
        self.thread_select = w.Dropdown(description="Thread", options=list(threads), value=thread,
                                        style=compact, layout=w.Layout(width="200px"))
        self.new_thread = w.Text(placeholder="new thread name", layout=w.Layout(width="140px"))
        self.new_thread_button = w.Button(description="New", tooltip="Start (or open) the thread named left",
                                          layout=w.Layout(width="60px"))
        self.provider_select = w.Dropdown(description="Provider", options=list(providers), value=provider,
                                          style=compact, layout=w.Layout(width="200px"))
        self.model = w.Text(value=model, placeholder="default model", description="Model",
                            style=compact, layout=w.Layout(width="200px"))
        self._items = w.VBox(layout=w.Layout(width="100%"))
        self._live = w.VBox(layout=w.Layout(width="100%"))
        # column-reverse keeps the box scrolled to its end (newest at the bottom) as it grows.
        self.transcript = w.Box([w.VBox([self._items, self._live], layout=w.Layout(width="100%",
                                                                                   flex="0 0 auto"))],
                                layout=w.Layout(flex_flow="column-reverse", overflow="auto",
                                                max_height=max_height, min_height="60px", width="100%"))
        self.transcript.add_class("opchat-transcript")
        self.input = w.Textarea(placeholder="Message (Enter sends, Shift+Enter for a new line; "
                                            "{name}, {In[N]}, {Out[N]}, {Err} cite the notebook)",
                                rows=3, layout=w.Layout(width="100%"))
        self.input.add_class("opchat-panel-input")
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane",
                                    tooltip="Send the message (Enter)")
        self.send_button.add_class("opchat-panel-send")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="Stop the reply; the partial text stays, out of the history")
        self.stop_button.add_class("opchat-panel-stop")
        self.retry_button = w.Button(description="Retry", icon="redo", button_style="warning",
                                     tooltip="Send the failed message again", layout=w.Layout(display="none"))
        self.retry_button.add_class("opchat-panel-retry")
        self.explain_button = w.Button(description="Explain last error", icon="question-circle",
                                       tooltip="Ask about the last error a cell raised (its source, type, "
                                               "message and traceback)", disabled=True,
                                       layout=w.Layout(width="auto"))
        self.explain_button.add_class("opchat-panel-explain")
        self.status = w.HTML(layout=w.Layout(width="100%"))
        self.status.add_class("opchat-status")
        self.widget = w.VBox([
            self._style, self._keys,
            w.HBox([self.thread_select, self.new_thread, self.new_thread_button,
                    self.provider_select, self.model], layout=w.Layout(flex_flow="row wrap")),
            self.transcript,
            self.input,
            w.HBox([self.send_button, self.stop_button, self.retry_button, self.explain_button]),
            self.status,
        ], layout=w.Layout(width="100%"))
        self.widget.add_class("opchat-panel")
        self.status_text, self.status_kind = "", ""
        self._updating = False  # set while the view itself changes selector values

    # -- wiring ---------------------------------------------------------------------
    def connect(self, *, send: Callable[[], None], stop: Callable[[], None], retry: Callable[[], None],
                new_thread: Callable[[str], None], thread_selected: Callable[[str], None],
                input_marked: Callable[[str], None], explain: Callable[[], None]) -> None:
        """Route the widgets' events to the controller's actions."""
        self.send_button.on_click(lambda _b: send())
        self.explain_button.on_click(lambda _b: explain())
        self.stop_button.on_click(lambda _b: stop())
        self.retry_button.on_click(lambda _b: retry())
        self.new_thread_button.on_click(lambda _b: new_thread(self.new_thread.value.strip()))

        def selected(change) -> None:
            if not self._updating and change["new"] is not None:
                thread_selected(change["new"])

        def typed(change) -> None:
            new = change["new"] or ""
            if SEND_MARK in new:
                input_marked(new.replace(SEND_MARK, ""))

        self.thread_select.observe(selected, "value")
        self.input.observe(typed, "value")

    # -- status and buttons (safe from any thread: trait sets only) --------------------
    def set_status(self, text: str, kind: str) -> None:
        """Set the status line (plain ``text``; ``kind`` picks its colour)."""
        if text and kind in ("busy", "elsewhere") and not text.startswith("●"):
            text = "● " + text
        if text and kind == "error" and not text.startswith("✗"):
            text = "✗ " + text
        self.status_text, self.status_kind = text, kind
        css = self._STATUS_CSS.get(kind, "")
        self.status.value = f"<span class='{css}'>{html.escape(text)}</span>" if text else ""

    def set_streaming(self, streaming: bool) -> None:
        for widget in (self.thread_select, self.new_thread_button, self.provider_select, self.model):
            widget.disabled = streaming
        self.send_button.disabled = streaming
        self.stop_button.disabled = not streaming
        if streaming:
            self.explain_button.disabled = True
        if streaming:
            self.retry_button.layout.display = "none"

    def show_explain(self, enabled: bool) -> None:
        """Enable "Explain last error" while there is an error to explain."""
        self.explain_button.disabled = not enabled

    def show_outcome(self, outcome, retry: bool) -> None:
        """The status line and Retry button once a turn from this panel has ended."""
        if outcome.complete:
            # The footer is under the reply already; the status line says the state.
            self.show_retry(retry)
            self.set_status(f"✓ Reply complete ({outcome.chars:,} characters); ready for the next message.", "done")
        elif outcome.stopped:
            self.show_retry(True)
            self.set_status(f"■ Stopped after {outcome.chars} characters: the partial reply stays "
                            "above, out of the history. Retry sends the message again.", "stopped")
        elif outcome.advice is not None:  # nothing answered: the message is in the transcript
            self.show_retry(True)
            self.set_status(f"✗ {outcome.advice.title} See the message above; Retry sends the message again.",
                            "error")
        else:
            self.show_retry(True)
            self.set_status(f"{type(outcome.error).__name__}: {outcome.message} (nothing was added to "
                            "the history; Retry sends the message again)", "error")

    def show_retry(self, show: bool) -> None:
        self.retry_button.layout.display = None if show else "none"

    def set_threads(self, names: List[str], current: str) -> None:
        """The thread selector's options and value, without firing the controller's handler."""
        if current not in names:
            names = names + [current]
        self._updating = True
        try:
            if tuple(self.thread_select.options) != tuple(names):
                self.thread_select.options = names
            if self.thread_select.value != current:
                self.thread_select.value = current
        finally:
            self._updating = False

    # -- the transcript ------------------------------------------------------------------
    def show_turns(self, turns, create: bool) -> bool:
        """Show ``turns``, reusing each turn's widget. False (nothing changed) if one had to be made
        and ``create`` is False (the caller is not on the kernel's thread)."""
        items: List[Any] = []
        for turn in turns:
            key = (turn.id, turn.status)
            box = self._shown.get(key)
            if box is None:
                if not create:
                    return False
                box = self._shown[key] = self.turn_widget(turn)
            items.append(box)
        if tuple(items) != tuple(self._items.children):
            self._items.children = tuple(items)
        if create:
            keep = set(map(id, items)) | set(map(id, self._live.children))
            for key, box in list(self._shown.items()):
                if id(box) not in keep:
                    del self._shown[key]
                    close_tree(box)
        return True

    def start_live(self, user_text: str, face_widget) -> Any:
        """Show the turn being sent: the user's message and the reply's live face (kernel thread)."""
        import ipywidgets as w

        box = w.VBox([self.message_widget("user", user_text), self.message_box("assistant", face_widget)],
                     layout=w.Layout(width="100%"))
        self._live.children = (box,)
        return box

    def end_live(self, box, turn) -> None:
        """The live turn has ended: it joins the transcript as it is (trait sets only)."""
        if turn.status in ("complete", "failed", "stopped"):
            self._shown[(turn.id, turn.status)] = box
        if self._live.children and self._live.children[0] is box:
            self._live.children = ()
            self._items.children = tuple(self._items.children) + (box,)

    def turn_widget(self, turn):
        import ipywidgets as w

        from ..render import escape_text, sanitize_markdown

        user = self.message_widget("user", turn.user)
        body = sanitize_markdown(turn.reply, self.remote_images) if turn.reply else ""
        if turn.status == "complete":
            note = _turn_footer(turn)
            if note:
                body += f"\n\n*{escape_text(note)}*"
        elif turn.status == "stopped":
            body += "\n\n*■ Stopped: not part of the history sent to the model; Retry sends it again.*"
        else:
            error = (turn.error or "unknown error").replace("\n", " ")
            body += f"\n\n*✗ Failed: {escape_text(error)}. Not part of the history; Retry sends it again.*"
        return w.VBox([user, self.message_box("assistant", markdown_widget(body.strip()))],
                      layout=w.Layout(width="100%"))

    def message_widget(self, role: str, text: str):
        from ..render import sanitize_markdown

        shown = sanitize_markdown(text)
        if role == "user":  # what the user typed on separate lines stays on separate lines
            shown = _HARD_BREAK.sub("  \n", shown)
        return self.message_box(role, markdown_widget(shown))

    @staticmethod
    def message_box(role: str, body):
        """One message: its role label ("You" / "Assistant") over ``body``, styled by role."""
        import ipywidgets as w

        name = "You" if role == "user" else "Assistant"
        label = w.HTML(f"<span class='opchat-role'>{html.escape(name)}</span>")
        box = w.VBox([label, body], layout=w.Layout(width="100%"))
        box.add_class("opchat-msg")
        box.add_class(f"opchat-msg-{role}")
        return box

    def transcript_markdown(self) -> str:
        """The Markdown (and status text) the transcript shows now, in order."""
        parts: List[str] = []

        def walk(widget):
            outputs = getattr(widget, "outputs", None)
            if outputs is not None:
                for o in outputs:
                    data = o.get("data", {})
                    if "text/markdown" in data:
                        parts.append(data["text/markdown"])
                    elif "text/plain" in data:
                        parts.append(data["text/plain"])
                    elif "text" in o:
                        parts.append(o["text"])
            elif hasattr(widget, "children"):
                for child in widget.children:
                    walk(child)
            elif type(widget).__name__ in ("HTML", "HTMLMath", "Label"):
                parts.append(html.unescape(re.sub(r"<[^>]*>", "", widget.value or "")))

        walk(self._items)
        walk(self._live)
        return "\n\n".join(p for p in parts if p)

    def close(self) -> None:
        close_tree(self.widget)


def _turn_footer(turn) -> str:
    """A stored turn's footer, in the live reply's format: a Turn has usage as a dict, no first-chunk time."""
    from types import SimpleNamespace

    from ..render.footer import footer_text

    took = turn.finished_at - turn.started_at if turn.finished_at and turn.started_at else None
    return footer_text(SimpleNamespace(provider=turn.provider, model=turn.model, usage=turn.usage,
                                       time_to_first_chunk=None, total_time=took))
