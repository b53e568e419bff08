"""``ChatPanel``: a chat widget over the same conversation as the ``%%opchat`` cells.

The panel is a second front door (see ARCHITECTURE.md): a turn it sends is a
:class:`~opchat_magic.chat.ChatTurn` on the private loop, on a thread of the
``OpchatMagics`` conversation, so panel and cells share one history. Nothing
here streams, keeps history or decodes anything itself.

Threads of control:

* Button clicks (Send, Stop, Retry, New thread) arrive on the kernel's main
  thread. They start or cancel a turn and return at once; the kernel stays
  free to run other cells while the reply streams.
* The reply is rendered on the private loop thread by a small task that drains
  the turn's chunks into a :class:`~opchat_magic.render.Renderer` with a
  ``WidgetFace`` every ``update_interval`` seconds (the renderer throttles
  itself). From that thread the panel only sets traits (the face also adds
  one ``Output`` per completed block, by trait sets on its own VBox; never
  ``with out:`` capture).
* The panel's own widgets are created on the kernel's thread. When the loop
  thread sees something that needs new ones (a ``%%opchat`` cell committed a
  turn on the panel's thread, made a thread), it hands the refresh to the
  kernel's event loop, which runs it between cells or while a cell awaits.
  The thread is looked at every ``WATCH_INTERVAL`` seconds (Thread has no
  commit callback).

Enter to send: ipywidgets' ``Textarea`` has no key events and syncs its value on
every keystroke (``continuous_update``), so Enter cannot be told from a newline
on the kernel side. The panel adds a few lines of JavaScript (a trusted
``application/javascript`` output, no extension): plain Enter in the panel's
text area appends an invisible marker (U+2063) to the value instead of a
newline; the kernel sees the marker arrive with the value (state updates keep
their order, unlike a button click racing a throttled value update), strips it
and sends. Shift+Enter inserts a newline as usual. Where that JavaScript does
not run (an untrusted notebook, a frontend without a JavaScript renderer), the
Send button is the way to send.
"""
from __future__ import annotations

import asyncio
import html
import re
import threading
import time
import weakref
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

from .errors import StoppedError, ThreadBusyError

__all__ = ["ChatPanel", "show_panel", "last_panel", "SEND_MARK"]

# Appended to the input's value by the Enter key helper: "send this".
SEND_MARK = "\u2063"  # INVISIBLE SEPARATOR

# A newline between two non-blank lines: made a Markdown hard break in user messages.
_HARD_BREAK = re.compile(r"(?<=\S)[ \t]*\n(?=[ \t]*\S)")

# Seconds between looks at the thread for changes made elsewhere (cells).
WATCH_INTERVAL = 0.5

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
</style>
"""

_last: Optional["weakref.ref[ChatPanel]"] = None


def last_panel() -> Optional["ChatPanel"]:
    """The panel made most recently in this process (None if gone)."""
    return _last() if _last is not None else None


def show_panel(magics, thread: Optional[str] = None) -> "ChatPanel":
    """Make a panel on ``thread`` (default: ``magics.thread``), display it, return it.

    What ``%opchat_panel [-t THREAD]`` calls. The panel is already displayed, so
    the magic should return None (returning the panel would display it twice).
    """
    from IPython.display import display

    panel = ChatPanel(thread=thread, magics=magics)
    display(panel)
    return panel


def _default_magics():
    """The loaded extension's OpchatMagics; loads the extension in IPython, else a standalone one."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython is a dependency
        shell = None
    from .magics import OpchatMagics, load_ipython_extension

    if shell is None:
        return OpchatMagics(shell=None)
    registry = shell.magics_manager.registry
    if "OpchatMagics" not in registry:
        # One conversation per kernel: cells and panels must share it.
        load_ipython_extension(shell)
    return registry["OpchatMagics"]


def _markdown_widget(text: str):
    """An Output widget showing ``text`` (already sanitised) as Markdown."""
    import ipywidgets as w

    out = w.Output(layout=w.Layout(width="100%"))
    out.outputs = ({"output_type": "display_data", "data": {"text/markdown": text, "text/plain": text},
                    "metadata": {}},)
    return out


def _close_tree(widget) -> None:
    for child in getattr(widget, "children", ()) or ():
        _close_tree(child)
    try:
        widget.close()
    except Exception:
        pass


class ChatPanel:
    """A chat widget on one thread of the notebook's conversation.

    ``ChatPanel(thread="default", magics=None)``; ``magics`` is an
    ``OpchatMagics`` (None: the loaded extension's, loading it if needed, or a
    standalone configuration outside IPython). Display it like any widget.

    Programmatic use (what the buttons do)::

        panel.input.value = "Hello"; panel.send()   # or panel.send("Hello")
        panel.stop(); panel.retry(); panel.switch_thread("other"); panel.refresh()
        panel.busy          # a reply is streaming from this panel
        panel.status_text   # the status line, as plain text
        panel.transcript_markdown()  # what the transcript shows, as Markdown

    Widgets: ``widget`` (the whole panel), ``transcript``, ``input``,
    ``send_button``, ``stop_button``, ``retry_button``, ``thread_select``,
    ``new_thread``, ``new_thread_button``, ``provider_select``, ``model``,
    ``status``.
    """

    def __init__(self, thread: Optional[str] = None, magics=None, *, max_height: str = "420px",
                 watch: bool = True):
        import ipywidgets as w

        global _last
        self.magics = magics if magics is not None else _default_magics()
        self.conversation = self.magics.conversation
        self.thread = self.conversation.thread(thread or self.magics.thread)
        self.interval = float(getattr(self.magics, "update_interval", 0.05) or 0.05)
        self.chat = None  # the ChatTurn streaming now, if any
        self._renderer = None
        self._lock = threading.RLock()
        self._shown: Dict[tuple, Any] = {}  # (turn id, status) -> the turn's widget
        self._seen = None  # the thread's signature when the transcript was last built
        self._closed = False
        self._updating = False  # set while the panel itself changes selector values
        self._refresh_queued = False  # a refresh waits for the kernel's loop
        self._kernel_loop = self._running_loop()

        # -- the widgets -------------------------------------------------------
        self._style = w.HTML(_CSS)
        self._keys = w.Output(layout=w.Layout(display="none"))
        self._keys.outputs = ({"output_type": "display_data", "metadata": {},
                               "data": {"application/javascript": _ENTER_TO_SEND_JS, "text/plain": ""}},)
        compact = {"description_width": "initial"}
        self.thread_select = w.Dropdown(description="Thread", options=self.conversation.threads(),
                                        value=self.thread.name, style=compact, layout=w.Layout(width="200px"))
        self.new_thread = w.Text(placeholder="new thread name", layout=w.Layout(width="140px"))
        self.new_thread_button = w.Button(description="New", tooltip="Start (or open) the thread named left",
                                          layout=w.Layout(width="60px"))
        providers, current = self._providers(self.magics.provider)
        self.provider_select = w.Dropdown(description="Provider", options=providers, value=current,
                                          style=compact, layout=w.Layout(width="200px"))
        self.model = w.Text(value=self.magics.model, placeholder="default model", description="Model",
                            style=compact, layout=w.Layout(width="200px"))
        self._items = w.VBox(layout=w.Layout(width="100%"))
        self._live = w.VBox(layout=w.Layout(width="100%"))
        # column-reverse keeps the box scrolled to its end (newest at the bottom) as it grows.
        self.transcript = w.Box([w.VBox([self._items, self._live], layout=w.Layout(width="100%",
                                                                                   flex="0 0 auto"))],
                                layout=w.Layout(flex_flow="column-reverse", overflow="auto",
                                                max_height=max_height, min_height="60px", width="100%"))
        self.transcript.add_class("opchat-transcript")
        self.input = w.Textarea(placeholder="Message (Enter sends, Shift+Enter for a new line)", rows=3,
                                layout=w.Layout(width="100%"))
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
        self.status = w.HTML(layout=w.Layout(width="100%"))
        self.status.add_class("opchat-status")
        self.widget = w.VBox([
            self._style, self._keys,
            w.HBox([self.thread_select, self.new_thread, self.new_thread_button,
                    self.provider_select, self.model], layout=w.Layout(flex_flow="row wrap")),
            self.transcript,
            self.input,
            w.HBox([self.send_button, self.stop_button, self.retry_button]),
            self.status,
        ], layout=w.Layout(width="100%"))
        self.widget.add_class("opchat-panel")
        self._status_text, self._status_kind = "", ""

        # -- wiring ------------------------------------------------------------
        self.send_button.on_click(lambda _b: self.send())
        self.stop_button.on_click(lambda _b: self.stop())
        self.retry_button.on_click(lambda _b: self.retry())
        self.new_thread_button.on_click(lambda _b: self._new_thread())
        self.thread_select.observe(self._on_thread_selected, "value")
        self.input.observe(self._on_input, "value")

        self.refresh()
        if watch:
            self._start_watch()
        _last = weakref.ref(self)

    # -- display -------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = ", streaming" if self.busy else ""
        return f"<ChatPanel thread={self.thread.name!r}{state}>"

    # -- state ---------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A reply is streaming from this panel."""
        return self.chat is not None

    @property
    def status_text(self) -> str:
        """The status line as plain text."""
        return self._status_text

    def close(self) -> None:
        """Stop any reply, stop watching the thread, close every widget."""
        self._closed = True
        self.stop()
        _close_tree(self.widget)

    # -- actions -------------------------------------------------------------
    def send(self, text: Optional[str] = None):
        """Send ``text`` (default: the input box) on the panel's thread; returns the ChatTurn or None.

        Returns at once: the reply streams on the private loop. None means
        nothing was sent; the status line says why (a reply already streaming,
        the thread busy with another cell, an empty message, a bad provider).
        """
        from_input = text is None
        if from_input:
            text = self.input.value
        return self._send(text.replace(SEND_MARK, ""), from_input)

    def _send(self, text: str, from_input: bool):
        if self.busy:
            self._set_status("A reply is still streaming: wait for it or Stop it first.", "busy")
            return None
        if not text.strip():
            self._set_status("Nothing to send: write a message first.", "error")
            return None
        return self._start(text, from_input)

    def retry(self):
        """Send the thread's last failed or stopped turn again; returns the ChatTurn or None."""
        if self.busy:
            self._set_status("A reply is still streaming: wait for it or Stop it first.", "busy")
            return None
        if self.thread.last_failed is None:
            self._set_status(f"Thread {self.thread.name!r} has no failed message to retry.", "error")
            self.retry_button.layout.display = "none"
            return None
        return self._start(None, False)

    def stop(self) -> None:
        """Stop the streaming reply: the connection closes, the partial text stays, marked stopped."""
        chat = self.chat
        if chat is not None:
            self.stop_button.disabled = True
            chat.cancel()

    def switch_thread(self, name: str) -> None:
        """Show (and send on) thread ``name``, creating it if new."""
        name = (name or "").strip()
        if not name:
            self._set_status("A thread needs a name.", "error")
            return
        if self.busy:
            self._set_status("Stop the streaming reply before switching threads.", "busy")
            self._select_thread(self.thread.name)
            return
        self.thread = self.conversation.thread(name)
        self._set_status("", "")
        self.retry_button.layout.display = "none"
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the thread list and the transcript from the conversation (kernel thread)."""
        with self._lock:
            self._update_thread_options()
            self._rebuild(create=True)

    # -- starting a turn -----------------------------------------------------
    def _options(self):
        args = SimpleNamespace(provider=self.provider_select.value or None,
                               model=self.model.value.strip() or None)
        return self.magics.chat_options(args)

    def _start(self, text: Optional[str], from_input: bool):
        import ipywidgets as w

        from .chat import ChatTurn
        from .loop import get_loop
        from .render import Renderer, WidgetFace

        try:
            options = self._options()
        except Exception as exc:  # an unknown provider, a bad setting
            self._set_status(_message(exc), "error")
            return None
        wake = asyncio.Event()
        try:
            chat = ChatTurn(self.thread, text, options, on_chunk=wake.set)
        except ThreadBusyError as exc:
            self._set_status(f"Thread busy: {exc}", "busy")
            return None
        except ValueError as exc:  # an empty message, nothing to retry
            self._set_status(_message(exc), "error")
            return None
        try:
            with self._lock:
                self._rebuild(create=True)  # catch up with cells before the new turn appears
                face = WidgetFace()
                renderer = Renderer(face, interval=self.interval)
                user = self._message_widget("user", chat.turn.user)
                turn_box = w.VBox([user, self._message_box("assistant", face.widget)],
                                  layout=w.Layout(width="100%"))
                self._live.children = (turn_box,)
                self.chat, self._renderer = chat, renderer
                if from_input:
                    self.input.value = ""
                self._set_streaming(True)
                self._set_status("Streaming…", "busy")
            chat.start()
            get_loop().submit(self._drive(chat, renderer, turn_box, wake))
        except BaseException as exc:
            # Never leave the thread busy forever because the panel failed to start.
            if not chat.done:
                chat.thread.fail(chat.turn, error=_message(exc), partial="", stopped=False)
            self.chat = self._renderer = None
            self._set_streaming(False)
            self._set_status(_message(exc), "error")
            raise
        return chat

    # -- the private loop side -------------------------------------------------
    async def _drive(self, chat, renderer, turn_box, wake: asyncio.Event) -> None:
        """Render ``chat`` as it streams; runs on the private loop. Sets traits only."""
        try:
            status_due = 0.0
            while not chat.done:
                try:
                    await asyncio.wait_for(wake.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
                wake.clear()
                text = chat.drain()
                if text:
                    renderer.feed(text)
                renderer.tick()
                now = time.monotonic()
                if now >= status_due and not chat.done:
                    status_due = now + 0.25
                    self._set_status(self._progress(chat), "busy")
            if chat.future.cancelled():
                # Stop: give the stream's task up to a second to unwind and close its connection.
                finished = getattr(chat.future, "finished", None)
                deadline = time.monotonic() + 1.0
                while finished is not None and not finished.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            self._conclude(chat, renderer)
        except Exception as exc:  # the panel's own failure: say so, never leave it stuck
            self._set_status(f"The panel failed to render the reply: {_message(exc)}", "error")
        finally:
            with self._lock:
                self.chat = self._renderer = None
                turn = chat.turn
                if turn.status in ("complete", "failed", "stopped"):
                    self._shown[(turn.id, turn.status)] = turn_box
                if self._live.children and self._live.children[0] is turn_box:
                    self._live.children = ()
                    self._items.children = tuple(self._items.children) + (turn_box,)
                self._set_streaming(False)
            self._sync_from_loop()

    def _conclude(self, chat, renderer) -> None:
        text = chat.drain()
        if text:
            renderer.feed(text)
        error = chat.error
        if error is None and chat.future.cancelled():
            error = StoppedError(partial=chat.text)
        if error is None:
            error = chat.future.exception()
        if error is not None:
            stopped = isinstance(error, StoppedError)
            message = chat.describe(error)
            renderer.fail(message, stopped=stopped)
            self.retry_button.layout.display = None
            if stopped:
                self._set_status(f"■ Stopped after {len(chat.text)} characters: the partial reply stays "
                                 "above, out of the history. Retry sends the message again.", "stopped")
            else:
                self._set_status(f"{type(error).__name__}: {message} (nothing was added to the history; "
                                 "Retry sends the message again)", "error")
            return
        from .magics import footer_text

        reply = chat.future.result()
        footer = footer_text(reply)
        renderer.finish(footer if getattr(self.magics, "footer", True) else None)
        # An earlier stopped/failed turn that this one did not answer stays retryable.
        self.retry_button.layout.display = None if chat.thread.last_failed is not None else "none"
        self._set_status("✓ " + (footer or "done"), "done")

    @staticmethod
    def _progress(chat) -> str:
        reply = chat.reply
        parts = [f"Streaming… {len(chat.text)} characters"]
        if reply is not None:
            if reply.time_to_first_chunk is not None:
                parts.append(f"first chunk {reply.time_to_first_chunk:.2f} s")
            parts.append(f"{time.perf_counter() - reply.started_at:.1f} s")
        return " · ".join(parts)

    # -- watching the thread for changes made elsewhere --------------------------
    def _signature(self):
        """What the transcript was built from: O(1) in the thread's length (``Thread.version``)."""
        thread = self.thread
        pending = thread.pending
        return (thread.name, thread.version, pending.id if pending is not None else None,
                tuple(self.conversation.threads()))

    def _start_watch(self) -> None:
        from .loop import get_loop

        ref = weakref.ref(self)

        async def watch():
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                panel = ref()
                if panel is None or panel._closed:
                    return
                try:
                    panel._check_thread()
                except Exception:
                    pass
                del panel

        get_loop().submit(watch())

    def _check_thread(self) -> None:
        """On the loop: if a cell changed the thread (or made one), refresh on the kernel thread."""
        if self.busy:
            return
        thread = self.thread
        pending = thread.pending
        if pending is not None:
            if self._status_kind != "elsewhere":
                self._set_status(f"Thread {thread.name!r} is answering elsewhere (a %%opchat cell or "
                                 "another panel)…", "elsewhere")
            return
        if self._status_kind == "elsewhere":
            self._set_status("", "")
        if self._signature() != self._seen:
            self._sync_from_loop()

    def _sync_from_loop(self) -> None:
        """Bring the transcript up to date from the loop thread, creating no widgets there."""
        with self._lock:
            if self.busy:
                return
            names = self.conversation.threads()
            if tuple(self.thread_select.options) == tuple(names) and self._rebuild(create=False):
                return
            if self._refresh_queued:  # the kernel is busy with a cell; one queued refresh is enough
                return
            self._refresh_queued = True
        self._in_kernel(self._queued_refresh)

    def _queued_refresh(self) -> None:
        self._refresh_queued = False
        self.refresh()

    def _in_kernel(self, fn) -> None:
        loop = self._kernel_loop
        if loop is not None and not loop.is_closed() and loop.is_running():
            loop.call_soon_threadsafe(self._guarded, fn)
        else:  # no kernel loop (plain Python): no frontend to race with
            self._guarded(fn)

    def _guarded(self, fn) -> None:
        if self._closed:
            return
        try:
            fn()
        except Exception as exc:
            self._set_status(f"The panel failed to refresh: {_message(exc)}", "error")

    @staticmethod
    def _running_loop():
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return loop if threading.current_thread() is threading.main_thread() else None

    # -- the transcript ----------------------------------------------------------
    def _rebuild(self, create: bool) -> bool:
        """Show the thread's turns; reuse each turn's widget. False if ``create`` was needed."""
        turns = self.thread.turns
        items: List[Any] = []
        for turn in turns:
            key = (turn.id, turn.status)
            box = self._shown.get(key)
            if box is None:
                if not create:
                    return False
                box = self._shown[key] = self._turn_widget(turn)
            items.append(box)
        if tuple(items) != tuple(self._items.children):
            self._items.children = tuple(items)
        self._seen = self._signature()
        if create:
            keep = set(map(id, items)) | set(map(id, self._live.children))
            for key, box in list(self._shown.items()):
                if id(box) not in keep:
                    del self._shown[key]
                    _close_tree(box)
            failed = self.thread.last_failed
            if not self.busy:
                self.retry_button.layout.display = None if failed is not None else "none"
        return True

    def _turn_widget(self, turn):
        import ipywidgets as w

        from .render import escape_text, sanitize_markdown

        user = self._message_widget("user", turn.user)
        body = sanitize_markdown(turn.reply) if turn.reply else ""
        if turn.status == "complete":
            note = _turn_footer(turn)
            if note:
                body += f"\n\n*{escape_text(note)}*"
        elif turn.status == "stopped":
            body += "\n\n*■ Stopped: not part of the history sent to the model; Retry sends it again.*"
        else:
            error = (turn.error or "unknown error").replace("\n", " ")
            body += f"\n\n*✗ Failed: {escape_text(error)}. Not part of the history; Retry sends it again.*"
        return w.VBox([user, self._message_box("assistant", _markdown_widget(body.strip()))],
                      layout=w.Layout(width="100%"))

    def _message_widget(self, role: str, text: str):
        from .render import sanitize_markdown

        shown = sanitize_markdown(text)
        if role == "user":  # what the user typed on separate lines stays on separate lines
            shown = _HARD_BREAK.sub("  \n", shown)
        return self._message_box(role, _markdown_widget(shown))

    @staticmethod
    def _message_box(role: str, body):
        """One message: its role label ("You" / "Assistant") over ``body``, styled by role."""
        import ipywidgets as w

        name = "You" if role == "user" else "Assistant"
        label = w.HTML(f"<span class='opchat-role'>{html.escape(name)}</span>")
        box = w.VBox([label, body], layout=w.Layout(width="100%"))
        box.add_class("opchat-msg")
        box.add_class(f"opchat-msg-{role}")
        return box

    def transcript_markdown(self) -> str:
        """The Markdown (and status text) the transcript shows now, in order: for tests and export."""
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
                parts.append(html.unescape(_strip_tags(widget.value)))

        walk(self._items)
        walk(self._live)
        return "\n\n".join(p for p in parts if p)

    # -- selectors ---------------------------------------------------------------
    def _update_thread_options(self) -> None:
        names = self.conversation.threads()
        if self.thread.name not in names:
            names.append(self.thread.name)
        self._updating = True
        try:
            if tuple(self.thread_select.options) != tuple(names):
                self.thread_select.options = names
            if self.thread_select.value != self.thread.name:
                self.thread_select.value = self.thread.name
        finally:
            self._updating = False

    def _select_thread(self, name: str) -> None:
        self._updating = True
        try:
            self.thread_select.value = name
        finally:
            self._updating = False

    def _on_thread_selected(self, change) -> None:
        if self._updating or change["new"] is None or change["new"] == self.thread.name:
            return
        self.switch_thread(change["new"])

    def _new_thread(self) -> None:
        name = self.new_thread.value.strip()
        if not name:
            self._set_status("Type a name for the new thread first.", "error")
            return
        if self.busy:
            self._set_status("Stop the streaming reply before switching threads.", "busy")
            return
        self.new_thread.value = ""
        self.switch_thread(name)

    def _on_input(self, change) -> None:
        new = change["new"] or ""
        if SEND_MARK not in new:
            return
        text = new.replace(SEND_MARK, "")
        if self._send(text, from_input=True) is None:
            self.input.value = text  # keep what the user wrote; the status line says why

    @staticmethod
    def _providers(current: str):
        """(registry names, the entry for ``current``), ``current`` added if the registry lacks it."""
        try:
            from .providers.registry import available

            names = [info.name for info in available() if not info.broken]
        except Exception:
            names = []
        current = (current or "").strip()
        for name in names:
            if name.lower() == current.lower():
                return names, name
        return names + [current], current  # an alias or a registered-later name: offer it as is

    # -- small helpers -------------------------------------------------------------
    _STATUS_CSS = {"error": "opchat-status-error", "busy": "opchat-status-busy",
                   "elsewhere": "opchat-status-busy", "stopped": "opchat-status-busy"}

    def _set_status(self, text: str, kind: str) -> None:
        """Set the status line (plain ``text``; ``kind`` picks its colour). Safe from any thread."""
        if text and kind in ("busy", "elsewhere") and not text.startswith("●"):
            text = "● " + text
        if text and kind == "error" and not text.startswith("✗"):
            text = "✗ " + text
        self._status_text, self._status_kind = text, kind
        css = self._STATUS_CSS.get(kind, "")
        self.status.value = f"<span class='{css}'>{html.escape(text)}</span>" if text else ""

    def _set_streaming(self, streaming: bool) -> None:
        self.send_button.disabled = streaming
        self.stop_button.disabled = not streaming
        self.thread_select.disabled = streaming
        self.new_thread_button.disabled = streaming
        self.provider_select.disabled = streaming
        self.model.disabled = streaming
        if streaming:
            self.retry_button.layout.display = "none"


def _turn_footer(turn) -> str:
    """A committed turn's footer, in the live reply's format (``magics.footer_text``).

    A stored Turn keeps its usage as a dict and no first-chunk time: the
    reply-shaped view passed on has only what the Turn knows.
    """
    from .magics import footer_text

    usage = turn.usage if isinstance(turn.usage, dict) else {}
    took = turn.finished_at - turn.started_at if turn.finished_at and turn.started_at else None
    return footer_text(SimpleNamespace(usage=SimpleNamespace(total_tokens=usage.get("total_tokens")),
                                       time_to_first_chunk=None, total_time=took,
                                       provider=turn.provider, model=turn.model))


def _strip_tags(text: str) -> str:
    return re.sub(r"<[^>]*>", "", text or "")


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    return text or type(exc).__name__
