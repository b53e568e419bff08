"""The IPython face of opchat-magic: ``%%opchat`` and its companions.

``OpchatMagics`` is a configurable ``Magics`` subclass, so every trait below can
be set with ``%config OpchatMagics.<name> = ...`` or in ``ipython_config.py``.

How a cell waits for its reply without freezing the kernel: in ipykernel an
input transformer rewrites a ``%%opchat`` cell into a top-level
``await run_cell_async(...)``. ipykernel then runs the cell as a task, a kernel
interrupt cancels that task, and the cancellation stops the stream on the
private loop (closing its connection) before the cell ends. Elsewhere (terminal
IPython, autoawait off) the magic blocks in short slices, and Ctrl+C does the same.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from pathlib import Path
from typing import Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import Markdown, display
from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode

from .errors import OpchatError, StoppedError, ThreadBusyError

MAGIC_NAME = "opchat"
_FIRST_LINE = re.compile(r"^\s*%%opchat(\s.*)?$", re.S)
_VARIABLE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FENCE = re.compile(r"^(```+|~~~+)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
# Environment variables that may hold keys: their values are scrubbed from errors.
_KEY_VARIABLES = ("OPCHAT_API_KEY", "OPENAI_API_KEY")


@magics_class
class OpchatMagics(Magics):
    """Chat with a streaming model from notebook cells.

    Configure with ``%config OpchatMagics.<trait> = value``; see ``%config OpchatMagics``.
    """

    provider = Unicode("opchatgpts", help="Provider name (see `%opchat providers`).").tag(config=True)
    model = Unicode("", help="Model name; empty means the provider's default.").tag(config=True)
    url = Unicode(
        "", help="Endpoint: the AI Engine site (opchatgpts) or base URL (openai); empty means the "
                 "provider's default and its environment variables (OPCHAT_URL, OPENAI_BASE_URL).",
    ).tag(config=True)
    system = Unicode("", help="System prompt sent before the history (empty: none).").tag(config=True)
    thread = Unicode("default", help="Thread used when a cell names none.").tag(config=True)
    max_history = Int(0, help="Most history messages sent per turn (0: all). Storage keeps all.").tag(config=True)
    max_history_chars = Int(0, help="Most history characters sent per turn (0: no limit).").tag(config=True)
    renderer = Enum(["auto", "display", "widget", "terminal"], "auto",
                    help="How replies are shown: auto picks display in Jupyter, terminal elsewhere.").tag(config=True)
    update_interval = Float(0.05, help="Seconds between re-renders of the growing block.").tag(config=True)
    persist = Bool(True, help="Keep history in SQLite across kernel restarts.").tag(config=True)
    history_db = Unicode("", help="History database path (empty: Jupyter data dir).").tag(config=True)
    connect_timeout = Float(10.0, help="Seconds to wait for a connection.").tag(config=True)
    read_timeout = Float(60.0, help="Seconds the stream may stay silent before it is abandoned.").tag(config=True)
    provider_options = Dict(help="Extra keyword arguments for the provider (bot_id, context_id, nonce, ...). "
                                 "Keys belong in environment variables, not here.").tag(config=True)
    failover = List(Unicode(), help="Provider names tried in order when the first fails before any text.").tag(config=True)
    footer = Bool(True, help="Show tokens and timings under each reply.").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self._conversation = None
        self._conversation_lock = threading.Lock()
        self.last_reply = None  # the last completed Reply (text, usage, timings), for tools

    # -- state -------------------------------------------------------------
    @property
    def conversation(self):
        """The notebook's threads, restored from the store on first use."""
        with self._conversation_lock:
            if self._conversation is None:
                from .conversation import Conversation
                from .store import Store, StoreError, notebook_key

                store = None
                if self.persist:
                    try:
                        store = Store(self.history_db or None)
                    except (StoreError, OSError) as exc:
                        # A damaged or unreadable history file must not stop the chat.
                        import warnings

                        warnings.warn(f"opchat: history is not saved this session: {exc}", stacklevel=2)
                key = notebook_key(self.shell.user_ns if self.shell is not None else None)
                self._conversation = Conversation(key, store=store, restore=store is not None)
            return self._conversation

    def _thread(self, name: Optional[str], create: bool = True):
        name = name or self.thread
        try:
            return self.conversation.thread(name, create=create)
        except KeyError as exc:
            raise UsageError(_plain(exc)) from None

    def _provider_class(self, name: Optional[str]):
        from .providers.registry import get_provider

        try:
            return get_provider(name or self.provider)
        except KeyError as exc:
            raise UsageError(f"{_plain(exc)}\nPick one with -p NAME or %config OpchatMagics.provider.") from None

    def chat_options(self, args=None):
        """Everything a turn needs, from the traits and the cell's flags."""
        from .chat import ChatOptions

        chosen = getattr(args, "provider", None)
        provider = self._provider_class(chosen)
        if self.failover:
            from .providers.failover import failover_provider

            provider = failover_provider([provider] + [self._provider_class(n) for n in self.failover])
        kwargs = dict(self.provider_options)
        kwargs.setdefault("connect_timeout", self.connect_timeout)
        kwargs.setdefault("read_timeout", self.read_timeout)
        # `url` is the configured provider's endpoint; a `-p` override uses that
        # provider's own default and environment (an AI Engine URL means nothing to Ollama).
        if self.url and (chosen is None or chosen == self.provider):
            kwargs.setdefault(getattr(provider, "url_kwarg", "url"), self.url)
        secrets = tuple(v for v in (os.environ.get(k) for k in _KEY_VARIABLES) if v)
        secrets += tuple(str(v) for k, v in kwargs.items() if "key" in k.lower() and v)
        return ChatOptions(
            provider=provider,
            model=getattr(args, "model", None) or self.model,
            provider_kwargs=kwargs,
            system=getattr(args, "system", None) or self.system or None,
            max_messages=self.max_history or None,
            max_chars=self.max_history_chars or None,
            include_history=not getattr(args, "no_history", False),
            secrets=secrets,
        )

    # -- the cell magic ----------------------------------------------------
    @magic_arguments()
    @argument("-t", "--thread", help="Thread to continue (created if new). Default: OpchatMagics.thread.")
    @argument("-m", "--model", help="Model for this cell. Default: OpchatMagics.model.")
    @argument("-p", "--provider", help="Provider for this cell (see `%%opchat providers`).")
    @argument("-s", "--system", help="System prompt for this cell.")
    @argument("-f", "--format", choices=["markdown", "text", "code"], default="markdown",
              help="markdown: render the reply; text: plain text; code: also put the reply's code in the next cell.")
    @argument("-o", "--output", metavar="VAR", help="Store the reply text in this variable.")
    @argument("--no-history", action="store_true",
              help="Send only this message (no earlier turns) and keep it out of the thread.")
    @cell_magic(MAGIC_NAME)
    def opchat(self, line, cell):
        """Send the cell as the next user message and stream the reply.

        ``{name}`` in the cell is replaced by the notebook variable ``name``;
        write ``{{`` and ``}}`` for literal braces. The reply is stored in ``_``
        (and in VAR with -o). A failed or interrupted turn stays out of the
        history; ``%opchat_retry`` sends it again.
        """
        return self._run_sync(*self._prepare(line, cell))

    async def opchat_async(self, line: str, cell: str):
        """The awaitable form the input transformer rewrites ``%%opchat`` cells into."""
        return await self._run_async(*self._prepare(line, cell))

    def _prepare(self, line: str, cell: str):
        args = self._parse(self.opchat, line)
        text = self._interpolate(cell or "")
        if not text.strip():
            raise UsageError("The %%opchat cell is empty: write your message below the %%opchat line.")
        if args.output and not args.output.isidentifier():
            raise UsageError(f"-o needs a variable name, not {args.output!r}.")
        options = self.chat_options(args)
        if args.no_history:
            from .conversation import Thread

            thread = Thread(f"{args.thread or self.thread} (no history)")
        else:
            thread = self._thread(args.thread)
        return args, thread, text, options

    @staticmethod
    def _parse(magic, line: str):
        try:
            return parse_argstring(magic, line)
        except UsageError as exc:
            raise UsageError(f"{exc}\nSee `%%opchat?` for the flags.") from None

    def _interpolate(self, text: str) -> str:
        namespace = self.shell.user_ns if self.shell is not None else {}

        def value(match):
            token = match.group(0)
            if token in ("{{", "}}"):
                return token[0]
            name = match.group(1)
            if name not in namespace:
                raise UsageError(f"{{{name}}} names no variable in the notebook. Define it, or write "
                                 f"{{{{{name}}}}} to send the braces literally.")
            return str(namespace[name])

        return _VARIABLE.sub(value, text)

    # -- running a turn ----------------------------------------------------
    def _start(self, args, thread, text, options, on_chunk):
        from .chat import ChatTurn

        try:
            return ChatTurn(thread, text, options, on_chunk=on_chunk)
        except ThreadBusyError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _renderer(self, args):
        from .render import Renderer, choose_face

        kind = "terminal" if args.format == "text" and self.renderer == "auto" else self.renderer
        return Renderer(choose_face(kind)(), interval=self.update_interval)

    async def _run_async(self, args, thread, text, options):
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        chat = self._start(args, thread, text, options, on_chunk=lambda: loop.call_soon_threadsafe(wake.set))
        renderer = self._renderer(args)
        chat.start()
        done = asyncio.wrap_future(chat.future)
        try:
            while not done.done():
                waiter = asyncio.ensure_future(wake.wait())
                await asyncio.wait({done, waiter}, timeout=self.update_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                wake.clear()
                self._pump(chat, renderer)
        except asyncio.CancelledError:
            # A kernel interrupt: stop the stream (closing its connection), keep what arrived.
            self._stop(chat)
        return self._conclude(args, chat, renderer)

    def _run_sync(self, args, thread, text, options):
        wake = threading.Event()
        chat = self._start(args, thread, text, options, on_chunk=wake.set)
        renderer = self._renderer(args)
        chat.start()
        try:
            while not chat.done:
                wake.wait(self.update_interval)
                wake.clear()
                self._pump(chat, renderer)
        except KeyboardInterrupt:
            self._stop(chat)
        return self._conclude(args, chat, renderer)

    @staticmethod
    def _pump(chat, renderer) -> None:
        text = chat.drain()
        if text:
            renderer.feed(text)
        renderer.tick()

    @staticmethod
    def _stop(chat) -> None:
        chat.cancel()
        chat.wait_closed(1.0)

    def _conclude(self, args, chat, renderer):
        text = chat.drain()
        if text:
            renderer.feed(text)
        # The turn's own status decides: a Stop that lost the race with the
        # commit leaves a cancelled future, but a complete, committed reply.
        completed = chat.turn.status == "complete"
        error = None if completed else chat.error
        if error is None and not completed:
            error = StoppedError(partial=chat.text) if chat.future.cancelled() else chat.future.exception()
        if error is not None:
            stopped = isinstance(error, StoppedError)
            message = chat.describe(error)
            renderer.fail(message, stopped=stopped)
            raise _quiet(error, "■ Stopped: what arrived is kept above. %opchat_retry sends it again."
                         if stopped else f"{type(error).__name__}: {message}\n%opchat_retry sends it again.")
        reply = self.last_reply = chat.reply
        renderer.finish(footer_text(reply) if self.footer else None)
        reply_text = reply.text
        if args.output:
            self.shell.user_ns[args.output] = reply_text
        if args.format == "code":
            code = extract_code(reply_text)
            if code:
                self.shell.set_next_input(code, replace=False)
        if self.shell is not None and getattr(self.shell, "displayhook", None) is not None:
            # `_` holds the reply, without echoing it as Out[n] under the rendered reply.
            self.shell.displayhook.update_user_ns(reply_text)
        return None

    # -- line magics -------------------------------------------------------
    @magic_arguments()
    @argument("thread", nargs="?", help="Thread to clear. Default: OpchatMagics.thread.")
    @argument("--all", action="store_true", help="Clear every thread of this notebook.")
    @line_magic("opchat_reset")
    def opchat_reset(self, line):
        """Clear a thread's history (stored history too)."""
        args = self._parse(self.opchat_reset, line)
        if args.all:
            self.conversation.reset_all()
            print("opchat: every thread cleared.")
            return
        thread = self._thread(args.thread, create=False)
        self.conversation.reset(thread.name)
        print(f"opchat: thread {thread.name!r} cleared.")

    @magic_arguments()
    @argument("thread", nargs="?", help="Thread to show. Default: OpchatMagics.thread.")
    @argument("--export", metavar="FILE", help="Write the thread to FILE.md or FILE.json instead of showing it.")
    @line_magic("opchat_history")
    def opchat_history(self, line):
        """Show a thread's history, or export it to Markdown or JSON."""
        args = self._parse(self.opchat_history, line)
        thread = self._thread(args.thread, create=False)
        if args.export:
            path = Path(args.export.strip("'\"")).expanduser()
            if path.suffix.lower() == ".json":
                path.write_text(json.dumps(thread.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")
            elif path.suffix.lower() in (".md", ".markdown"):
                path.write_text(thread.to_markdown(), encoding="utf-8")
            else:
                raise UsageError(f"--export writes .md or .json files, not {path.name!r}.")
            print(f"opchat: thread {thread.name!r} written to {path}")
            return
        from .render import sanitize_markdown

        transcript = thread.to_markdown()
        display(Markdown(sanitize_markdown(transcript) if transcript.strip() else f"*Thread {thread.name!r} is empty.*"))

    @line_magic("opchat_threads")
    def opchat_threads(self, line):
        """List this notebook's threads."""
        from .render import escape_text

        rows = ["| thread | messages | last turn |", "|---|---|---|"]
        for name in self.conversation.threads():
            thread = self.conversation.thread(name)
            failed = thread.last_failed
            state = f"{failed.status} (retry with %opchat_retry -t {name})" if failed else "ok"
            mark = " (default)" if name == self.thread else ""
            # Thread names are user text (and come back from the store): escape them.
            rows.append(f"| {escape_text(name)}{mark} | {len(thread.messages)} | {escape_text(state)} |")
        display(Markdown("\n".join(rows)))

    @magic_arguments()
    @argument("-t", "--thread", help="Thread whose last failed turn to send again.")
    @line_magic("opchat_retry")
    def opchat_retry(self, line):
        """Send the last failed or stopped turn of a thread again."""
        args = self._parse(self.opchat_retry, line)
        thread = self._thread(args.thread, create=False)
        if thread.last_failed is None:
            raise UsageError(f"Thread {thread.name!r} has no failed turn to retry.")
        cell_args = self._parse(self.opchat, "" if not args.thread else f"-t {args.thread}")
        return self._run_sync(cell_args, thread, None, self.chat_options(cell_args))

    @magic_arguments()
    @argument("-t", "--thread", help="Thread the panel opens on. Default: OpchatMagics.thread.")
    @line_magic("opchat_panel")
    def opchat_panel(self, line):
        """Show a chat panel (input, Send, Stop, transcript) sharing the notebook's history."""
        from .panel import show_panel

        args = self._parse(self.opchat_panel, line)
        show_panel(self, thread=args.thread)

    @line_magic(MAGIC_NAME)
    def opchat_line(self, line):
        """`%opchat providers`: list providers. `%opchat config`: show settings."""
        word = line.strip()
        if word == "providers":
            from .providers.registry import providers_table

            display(Markdown(providers_table()))
        elif word == "config":
            names = sorted(self.trait_names(config=True))
            display(Markdown("\n".join(f"- `{n}` = `{getattr(self, n)!r}`" for n in names)))
        else:
            raise UsageError("%opchat takes `providers` or `config`; a chat goes in a %%opchat cell.")


def footer_text(reply) -> str:
    """Tokens and timings under a reply: `12 tokens · first chunk 0.08 s · 1.20 s`."""
    parts = []
    usage = reply.usage
    if usage is not None and usage.total_tokens is not None:
        parts.append(f"{usage.total_tokens} tokens")
    if reply.time_to_first_chunk is not None:
        parts.append(f"first chunk {reply.time_to_first_chunk:.2f} s")
    if reply.total_time is not None:
        parts.append(f"{reply.total_time:.2f} s")
    if reply.provider:
        parts.append(reply.provider + (f" / {reply.model}" if reply.model else ""))
    return " · ".join(parts)


def extract_code(markdown: str) -> str:
    """The reply's fenced code blocks, joined: what `-f code` puts in the next cell."""
    return "\n\n".join(m.group(2).rstrip("\n") for m in _FENCE.finditer(markdown))


def _plain(exc: BaseException) -> str:
    """A KeyError's message without the quotes str(KeyError) adds."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


def _quiet(error: BaseException, text: str) -> BaseException:
    """Make IPython show ``text`` instead of a traceback for ``error``.

    The error keeps its type (so tools see `HTTPStatusError`, say), but a user
    reads one clear sentence, never a stack of aiohttp frames.
    """
    if not isinstance(error, Exception):
        error = OpchatError(text)
    try:
        error._render_traceback_ = lambda: text.splitlines()
    except AttributeError:  # exceptions with __slots__
        wrapped = OpchatError(text)
        wrapped._render_traceback_ = lambda: text.splitlines()
        return wrapped
    return error


# -- wiring into IPython -------------------------------------------------------

def transform_opchat_cell(lines: list) -> list:
    """Rewrite a ``%%opchat`` cell into a top-level await (see module docstring)."""
    if not lines or not _FIRST_LINE.match(lines[0]):
        return lines
    first = lines[0].strip()
    if first.endswith("?"):
        return lines  # `%%opchat?` asks for help
    line = first[len("%%" + MAGIC_NAME):].strip()
    body = "".join(lines[1:])
    return [f"await __import__('opchat_magic.magics').magics._await_cell({line!r}, {body!r})\n"]


async def _await_cell(line: str, cell: str):
    from IPython import get_ipython

    magics = get_ipython().magics_manager.registry["OpchatMagics"]
    return await magics.opchat_async(line, cell)


def _can_await(shell) -> bool:
    """True in ipykernel with autoawait on: the only place the rewrite is used."""
    return type(shell).__name__ == "ZMQInteractiveShell" and getattr(shell, "autoawait", False)


class _Transformer:
    """Applies the rewrite only while the shell can run top-level await."""

    def __init__(self, shell):
        self.shell = shell

    def __call__(self, lines):
        return transform_opchat_cell(lines) if _can_await(self.shell) else lines


def load_ipython_extension(ipython) -> None:
    if "OpchatMagics" in ipython.magics_manager.registry:
        return
    magics = OpchatMagics(shell=ipython)
    ipython.register_magics(magics)
    ipython.input_transformers_cleanup.append(_Transformer(ipython))
    if magics.persist:
        magics.conversation  # restore history now, so the first cell doesn't pay for it


def unload_ipython_extension(ipython) -> None:
    ipython.input_transformers_cleanup[:] = [
        t for t in ipython.input_transformers_cleanup if not isinstance(t, _Transformer)]
    magics = ipython.magics_manager.registry.pop("OpchatMagics", None)
    for kind in ("cell", "line"):
        table = ipython.magics_manager.magics[kind]
        for name, fn in list(table.items()):
            if getattr(fn, "__self__", None) is magics:
                del table[name]
