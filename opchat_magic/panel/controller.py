"""``ChatPanel``: the chat widget's controller, a second front door into the Session.

A turn the panel sends is a :class:`~opchat_magic.turn.ChatTurn` on a thread
of the kernel's Session, driven by the same ``turn.drive`` as an awaited
``%%opchat`` cell; only the face differs (a ``WidgetFace`` in the panel's
transcript). Nothing here streams, keeps history or decides a turn's outcome.
The panel never imports the magics.

Threads of control:

* Button clicks (Send, Stop, Retry, New thread) arrive on the kernel's main
  thread. They start or cancel a turn and return at once; the kernel stays
  free to run other cells while the reply streams.
* The turn is driven by a coroutine on the private loop thread; from there
  the panel only sets traits.
* History changes made elsewhere (a ``%%opchat`` cell, another panel) arrive
  as events: the conversation's change callback (``Conversation.subscribe``)
  and IPython's ``post_run_cell`` (through the Session). Rebuilding the
  transcript makes widgets, so a change heard on another thread is handed to
  the kernel's event loop, which runs it between cells or while a cell awaits.
  Nothing polls.
"""
from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Optional

from ..errors import OpchatError, ThreadBusyError
from .static import StaticCopy
from .view import SEND_MARK, PanelView

__all__ = ["ChatPanel", "show_panel", "last_panel", "SEND_MARK"]

_last: Optional["weakref.ref[ChatPanel]"] = None


def last_panel() -> Optional["ChatPanel"]:
    """The panel made most recently in this process (None if gone)."""
    return _last() if _last is not None else None


def show_panel(session=None, thread: Optional[str] = None) -> "ChatPanel":
    """Make a panel on ``thread`` (default: the ``thread`` setting), display it, return it.

    What ``%opchat_panel [-t THREAD]`` calls. The panel is already displayed, so
    the magic returns None (returning the panel would display it twice).
    """
    from IPython.display import display

    panel = ChatPanel(thread=thread, session=session)
    display(panel)
    return panel


def _default_session():
    """The running kernel's Session; in IPython the extension is loaded too, so cells share it."""
    from ..session import get_session

    session = get_session()
    shell = session.shell
    if shell is not None and "OpchatMagics" not in shell.magics_manager.registry:
        shell.extension_manager.load_extension("opchat_magic")  # through IPython: no import of the magics
    return session


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    return text or type(exc).__name__


def _providers(current: str):
    """(registry names, the entry for ``current``), ``current`` added if the registry lacks it."""
    try:
        from ..providers.registry import available

        names = [info.name for info in available() if not info.broken]
    except Exception:
        names = []
    current = (current or "").strip()
    for name in names:
        if name.lower() == current.lower():
            return names, name
    return names + [current], current  # an alias or a registered-later name: offer it as is


class ChatPanel:
    """A chat widget on one thread of the notebook's conversation.

    ``ChatPanel(thread=None, session=None)``: ``session`` defaults to the
    kernel's (see ``session.get_session``). Display it like any widget.

    Programmatic use (what the buttons do)::

        panel.input.value = "Hello"; panel.send()   # or panel.send("Hello")
        panel.stop(); panel.retry(); panel.switch_thread("other"); panel.refresh()
        panel.busy          # a reply is streaming from this panel
        panel.status_text   # the status line, as plain text
        panel.transcript_markdown()  # what the transcript shows, as Markdown

    Widgets (from ``panel.view``): ``widget``, ``transcript``, ``input``,
    ``send_button``, ``stop_button``, ``retry_button``, ``thread_select``,
    ``new_thread``, ``new_thread_button``, ``provider_select``, ``model``, ``status``.
    """

    def __init__(self, thread: Optional[str] = None, session=None, *, max_height: str = "420px", magics=None):
        global _last
        if session is None and magics is not None:  # the 0.1 signature: ChatPanel(magics=...)
            session = magics.session
        self.session = getattr(session, "session", session) if session is not None else _default_session()
        settings = self.session.settings
        self.conversation = self.session.conversation
        self.thread = self.conversation.thread(thread or settings.thread)
        self.chat = None  # the ChatTurn streaming from this panel, if any
        self.outcome = None  # how the panel's last turn ended
        self._copy = StaticCopy()
        self._lock = threading.RLock()
        self._closed = False
        self._refresh_queued = False
        self._kernel_loop = _running_loop()
        providers, current = _providers(settings.provider)
        self.view = PanelView(threads=self.conversation.threads(), thread=self.thread.name,
                              providers=providers, provider=current, model=settings.model,
                              max_height=max_height)
        self.view.remote_images = settings.remote_images  # the transcript's images, as the cells'
        for name in ("widget", "transcript", "input", "send_button", "stop_button", "retry_button",
                     "explain_button", "thread_select", "new_thread", "new_thread_button", "provider_select",
                     "model", "status"):
            setattr(self, name, getattr(self.view, name))
        self.view.connect(send=self.send, stop=self.stop, retry=self.retry, new_thread=self._new_thread,
                          thread_selected=self._thread_selected, input_marked=self._input_marked,
                          explain=self.explain)
        self.refresh()
        self.view.show_explain(self.session.has_error)
        ref = weakref.ref(self)
        self._unsubscribe = [
            self.conversation.subscribe(lambda name, what: _call(ref, "_history_changed", name, what)),
            self.session.on_cell_end(lambda: _call(ref, "_cell_ended")),
        ]
        _last = weakref.ref(self)

    def _ipython_display_(self) -> None:  # the widget, then a static copy of the transcript (panel/static.py)
        self._copy.display(self.widget._repr_mimebundle_(), self.thread)

    def __repr__(self) -> str:
        return f"<ChatPanel thread={self.thread.name!r}{', streaming' if self.busy else ''}>"

    @property
    def busy(self) -> bool:
        """A reply is streaming from this panel."""
        return self.chat is not None

    @property
    def status_text(self) -> str:
        return self.view.status_text

    def transcript_markdown(self) -> str:
        return self.view.transcript_markdown()

    def close(self) -> None:
        """Stop any reply, stop listening, close every widget."""
        self._closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self.stop()
        self.view.close()

    # -- actions (kernel thread) -------------------------------------------------------------
    def send(self, text: Optional[str] = None):
        """Send ``text`` (default: the input box); returns the ChatTurn, or None (the status says why).

        Returns at once: the reply streams on the private loop.
        """
        from_input = text is None
        if from_input:
            text = self.input.value
        return self._send(text.replace(SEND_MARK, ""), from_input)

    def _send(self, text: str, from_input: bool, prompt=None):
        if self.busy:
            self.view.set_status("A reply is still streaming: wait for it or Stop it first.", "busy")
            return None
        if not text.strip():
            self.view.set_status("Nothing to send: write a message first.", "error")
            return None
        return self._start(text, from_input, prompt)

    def explain(self):
        """Ask about the last error a cell raised (what "Explain last error" does); the ChatTurn or None."""
        try:
            options = self.session.options(provider=self.provider_select.value or None)
            prompt = self.session.explain_prompt(options=options)
        except (OpchatError, KeyError, ValueError) as exc:  # no error recorded yet, an unknown provider
            return self.view.set_status(_message(exc), "error")
        return self._send(prompt.text, False, prompt=prompt)

    def retry(self):
        """Send the thread's failed or stopped turn again; returns the ChatTurn or None."""
        if self.busy:
            self.view.set_status("A reply is still streaming: wait for it or Stop it first.", "busy")
            return None
        if self.thread.last_failed is None:
            self.view.set_status(f"Thread {self.thread.name!r} has no failed message to retry.", "error")
            self.view.show_retry(False)
            return None
        return self._start(None, False)

    def stop(self) -> None:
        """Stop the streaming reply: the connection closes; what happened is decided by the turn."""
        chat = self.chat
        if chat is not None:
            self.stop_button.disabled = True
            chat.cancel()

    def switch_thread(self, name: str) -> None:
        """Show (and send on) thread ``name``, creating it if new."""
        name = (name or "").strip()
        if not name:
            self.view.set_status("A thread needs a name.", "error")
            return
        if self.busy:
            self.view.set_status("Stop the streaming reply before switching threads.", "busy")
            self.view.set_threads(self.conversation.threads(), self.thread.name)
            return
        self.thread = self.conversation.thread(name)
        self.view.set_status("", "")
        self.view.show_retry(False)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the thread list and the transcript from the conversation (kernel thread)."""
        with self._lock:
            self._refresh_queued = False
            self.view.set_threads(self.conversation.threads(), self.thread.name)
            self.view.show_turns(self.thread.turns, create=True)
            if not self.busy:
                self.view.show_retry(self.thread.last_failed is not None)
        self._copy.update(self.thread)

    def _new_thread(self, name: str) -> None:
        if not name:
            self.view.set_status("Type a name for the new thread first.", "error")
            return
        if self.busy:
            self.view.set_status("Stop the streaming reply before switching threads.", "busy")
            return
        self.new_thread.value = ""
        self.switch_thread(name)

    def _thread_selected(self, name: str) -> None:
        if name != self.thread.name:
            self.switch_thread(name)

    def _input_marked(self, text: str) -> None:
        if self._send(text, from_input=True) is None:
            self.input.value = text  # keep what the user wrote; the status line says why

    # -- a turn ------------------------------------------------------------------------------
    def _start(self, text: Optional[str], from_input: bool, prompt=None):
        from ..loop import get_loop
        from ..render import Renderer, WidgetFace
        from ..settings import SettingsError

        try:
            options = self.session.options(provider=self.provider_select.value or None,
                                           model=self.model.value.strip() or None)
        except (SettingsError, KeyError, ValueError) as exc:  # an unknown provider, a bad setting
            self.view.set_status(_message(exc), "error")
            return None
        try:
            # The same {name}/{In[N]}/{Out[N]}/{Err[N]} fields as a %%opchat cell, resolved here.
            chat = self.session.begin(self.thread, text, options, prompt=prompt)
        except ThreadBusyError as exc:
            self.view.set_status(f"Thread busy: {exc}", "busy")
            return None
        except (ValueError, OpchatError) as exc:  # empty, nothing to retry, a bad {field}, images refused
            self.view.set_status(_message(exc), "error")
            return None
        try:
            with self._lock:
                self.view.show_turns(self.thread.turns, create=True)  # catch up before the new turn shows
                face = WidgetFace()
                renderer = Renderer(face, interval=options.interval, remote_images=options.remote_images)
                box = self.view.start_live(chat.turn.user, face.widget)
                self.chat = chat
                if from_input:
                    self.input.value = ""
                self.view.set_streaming(True)
                self.view.set_status("Streaming…", "busy")
            chat.start()
            get_loop().submit(self._drive(chat, renderer, box))
        except BaseException as exc:
            # Never leave the thread busy forever because the panel failed to start.
            chat.cancel()
            if chat.job is None:
                chat.conclude()
            self.chat = None
            self.view.set_streaming(False)
            self.view.set_status(_message(exc), "error")
            raise
        return chat

    async def _drive(self, chat, renderer, box) -> None:
        """On the private loop: the one turn driver, then the panel's status line."""
        due = [0.0]

        def progress(turn) -> None:
            now = time.monotonic()
            if now >= due[0]:
                due[0] = now + 0.25
                self.view.set_status(_progress(turn), "busy")

        try:
            outcome = await chat.drive(renderer, progress=progress)
            self.outcome = outcome
            self.session.completed(outcome)
            # A complete turn supersedes an earlier failed one (see history.model): Retry goes.
            self.view.show_outcome(outcome, retry=self.thread.last_failed is not None)
        except Exception as exc:  # the panel's own failure: say so, never leave it stuck
            self.view.set_status(f"The panel failed to render the reply: {_message(exc)}", "error")
        finally:
            with self._lock:
                self.chat = None
                self.view.end_live(box, chat.turn)
                self.view.set_streaming(False)
                self.view.show_explain(self.session.has_error)
            self._sync()

    # -- events from elsewhere ------------------------------------------------------------------
    def _history_changed(self, name: str, what: str) -> None:
        """A conversation change event, on whichever thread made it."""
        if self._closed or self.busy:
            return
        if what == "new":
            self._sync()
            return
        if name != self.thread.name:
            return
        if what == "begin":
            _say_elsewhere(self.view, self.thread.name)
            return
        if self.view.status_kind == "elsewhere":
            self.view.set_status("", "")
        self._sync()

    def _cell_ended(self) -> None:
        if not self._closed and not self.busy:
            self.refresh()
            self.view.show_explain(self.session.has_error)
            if self.thread.pending is not None:
                _say_elsewhere(self.view, self.thread.name)

    def _sync(self) -> None:
        """Bring the transcript up to date from any thread, creating widgets only on the kernel's."""
        with self._lock:
            if self.busy or self._closed:
                return
            names = self.conversation.threads()
            if tuple(self.thread_select.options) == tuple(names) and \
                    self.view.show_turns(self.thread.turns, create=False):
                if not self.busy:
                    self.view.show_retry(self.thread.last_failed is not None)
                self._copy.update(self.thread)
                return
            if self._refresh_queued:  # the kernel is busy with a cell; one queued refresh is enough
                return
            self._refresh_queued = True
        self._in_kernel(self.refresh)

    def _in_kernel(self, fn) -> None:
        loop = self._kernel_loop
        if threading.current_thread() is threading.main_thread():
            self._guarded(fn)
        elif loop is not None and not loop.is_closed() and loop.is_running():
            loop.call_soon_threadsafe(self._guarded, fn)
        else:  # no kernel loop (plain Python): no frontend to race with
            self._guarded(fn)

    def _guarded(self, fn) -> None:
        if self._closed:
            return
        try:
            fn()
        except Exception as exc:
            self.view.set_status(f"The panel failed to refresh: {_message(exc)}", "error")


def _say_elsewhere(view, thread_name: str) -> None:
    view.set_status(f"Thread {thread_name!r} is busy answering elsewhere (a %%opchat cell or another panel)…",
                    "elsewhere")


def _running_loop():
    """The kernel's event loop when called on its main thread (where panels are made), else None."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if threading.current_thread() is threading.main_thread() else None


def _call(ref, method: str, *args) -> None:
    panel = ref()
    if panel is not None:
        getattr(panel, method)(*args)


def _progress(turn) -> str:
    reply = turn.reply
    if reply is not None and reply.first_chunk_at is None and not turn.text:
        # Nothing yet: a server may think for minutes first (AI Engine waits up to 300 s, silently).
        return f"Waiting for the first chunk… {time.perf_counter() - reply.started_at:.0f} s"
    parts = [f"Streaming… {len(turn.text)} characters"]
    if reply is not None:
        if reply.time_to_first_chunk is not None:
            parts.append(f"first chunk {reply.time_to_first_chunk:.2f} s")
        parts.append(f"{time.perf_counter() - reply.started_at:.1f} s")
    return " · ".join(parts)
