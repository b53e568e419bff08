"""The IPython face of opchat-magic: ``%%opchat`` and its companions.

The magics only read flags and cell text; the settings live in
``settings.py`` (``%config OpchatMagics.<name> = ...`` still configures them),
history and store in the kernel's :class:`~opchat_magic.session.Session`, and
the turn is driven by ``turn.py``, exactly as the panel drives it.

How a cell waits for its reply without freezing the kernel: in ipykernel the
input transformer (``ipython/transformer.py``) rewrites a ``%%opchat`` cell
into a top-level ``await``; ipykernel runs it as a task, a kernel interrupt
cancels that task, and the cancellation stops the stream (closing its
connection) before the cell ends. Elsewhere (terminal IPython, autoawait off)
the magic blocks in short slices, and Ctrl+C does the same.

Adding a magic: a method here decorated with ``@line_magic``/``@cell_magic``
(and ``magic_arguments`` for flags); reach state through ``self.session``;
raise ``UsageError`` for misuse.
"""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .commands import adopt_threads, run_command, show_history, show_models, show_threads
from .quiet import quiet as _quiet
from .oneline import LineFlagError, is_command, parse_line

from ..errors import OpchatError

MAGIC_NAME = "opchat"
_TRAILING_BLANK = re.compile(r"(?:\r?\n[ \t]*)+\Z")


@magics_class
class OpchatMagics(Magics):
    """Chat with a streaming model from notebook cells.

    Settings: ``%config OpchatMagics.<trait> = value`` (see ``%opchat config``).
    """

    def __init__(self, shell=None, session=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        if session is None:
            from ..session import get_session

            session = get_session(shell)
        self.session = session
        if shell is not None:
            # Magics.__init__ listed this object as a configurable; it holds no settings
            # (they are session.settings), so keep the shell's list to the one that does.
            shell.configurables[:] = [c for c in shell.configurables if c is not self]

    @classmethod
    def section_names(cls):
        # Config under "OpchatMagics" is for the settings (settings.py), which hold the traits now.
        return [name for name in super().section_names() if name != "OpchatMagics"]

    # -- state -------------------------------------------------------------
    @property
    def settings(self):
        return self.session.settings

    @property
    def conversation(self):
        """The notebook's threads (the session's)."""
        return self.session.conversation

    @property
    def last_reply(self):
        """The last completed Reply (text, usage, timings), for tools."""
        return self.session.last_reply

    def _thread(self, name: Optional[str], create: bool = True):
        try:
            return self.session.thread(name, create=create)
        except KeyError as exc:
            raise UsageError(_plain(exc)) from None

    def _options(self, args=None, **extra):
        from ..settings import SettingsError

        try:
            return self.session.options(provider=getattr(args, "provider", None),
                                        model=getattr(args, "model", None),
                                        system=getattr(args, "system", None), **extra)
        except SettingsError as exc:
            raise UsageError(str(exc)) from None

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
    @argument("--image", action="append", default=[], metavar="PATH",
              help="Send this image (PNG, JPEG, GIF or WebP) with the message, to a vision model; repeatable.")
    @cell_magic(MAGIC_NAME)
    def opchat(self, line, cell):
        """Send the cell as the next user message and stream the reply.

        Fields in the cell are filled in from the notebook before sending:
        ``{name}`` a variable, ``{In[N]}`` cell N's source, ``{Out[N]}`` its
        output (a figure or image is sent as an image), ``{Err[N]}`` the error
        it raised, ``{Err}`` the last error; a negative N counts back from this
        cell; ``{{`` and ``}}`` are literal braces. A value longer than
        ``max_value_chars`` is cut, and the footer says so. The reply is stored
        in ``_`` (and in VAR with -o). A failed or interrupted turn stays out
        of the history; ``%opchat_retry`` sends it again.
        """
        return self._run_sync(self._prepare(line, cell))

    async def opchat_async(self, line: str, cell: str):
        """The awaitable form the input transformer rewrites ``%%opchat`` cells into."""
        return await self._run_async(self._prepare(line, cell))

    def _prepare(self, line: str, cell: str):
        args = self._parse(self.opchat, line)
        if args.output and not args.output.isidentifier():
            raise UsageError(f"-o needs a variable name, not {args.output!r}.")
        # Sent as written, minus the trailing newline and blank lines a cell always ends with:
        # a real model answers 'Name one fruit.\n' differently from 'Name one fruit.'.
        cell = _TRAILING_BLANK.sub("", cell or "")
        if not cell.strip():
            raise UsageError("The %%opchat cell is empty: write your message below the %%opchat line.")
        return self._request(args, cell, args.image)

    def _request(self, args, text: str, image_paths=(), prompt=None):
        """A turn ready to begin (its {fields} are resolved when it begins). Nothing is sent yet."""
        options = self._options(args, include_history=not args.no_history, retryable=not args.no_history)
        if args.no_history:
            from ..history import Thread

            thread = Thread(f"{args.thread or self.settings.thread} (no history)")
        else:
            thread = self._thread(args.thread)
        return _Request(args, thread, text, options, image_paths, prompt)

    @staticmethod
    def _parse(magic, line: str):
        try:
            return parse_argstring(magic, line)
        except UsageError as exc:
            raise UsageError(f"{exc}\nSee `%%opchat?` for the flags.") from None

    # -- running a turn (the one driver in turn.py does the work) ---------------
    def _begin(self, request):
        try:
            return self.session.begin(request.thread, request.text, request.options,
                                      image_paths=request.image_paths, prompt=request.prompt)
        except (OpchatError, ValueError) as exc:  # busy, empty, a bad {field}, an image refused
            raise UsageError(_usage_text(exc)) from None

    def _renderer(self, args):
        from ..render import Renderer, choose_face

        kind = self.settings.renderer
        if args.format == "text" and kind == "auto":
            kind = "terminal"
        return Renderer(choose_face(kind)(), interval=self.settings.update_interval,
                        remote_images=self.settings.remote_images)

    async def _run_async(self, request):
        turn = self._begin(request)
        renderer = self._renderer(request.args)
        outcome = await turn.drive(renderer)
        return self._conclude(request.args, outcome)

    def _run_sync(self, request):
        turn = self._begin(request)
        renderer = self._renderer(request.args)
        outcome = turn.drive_blocking(renderer)
        return self._conclude(request.args, outcome)

    def _conclude(self, args, outcome):
        """What a cell does with the outcome the driver decided (and already rendered)."""
        self.session.completed(outcome)
        if not outcome.complete:
            raise _quiet(outcome.error, outcome.summary())
        reply_text = outcome.reply.text
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
            export_thread(thread, args.export)
            return
        show_history(thread)

    @magic_arguments()
    @argument("--notebooks", action="store_true",
              help="List other notebooks' stored threads (a renamed or moved notebook's history) to adopt.")
    @line_magic("opchat_threads")
    def opchat_threads(self, line):
        """List this notebook's threads (with --notebooks: other notebooks' stored history)."""
        args = self._parse(self.opchat_threads, line)
        show_threads(self.conversation, self.settings.thread, notebooks=args.notebooks)

    @magic_arguments()
    @argument("notebook", help="A number from `%%opchat_threads --notebooks`, or the old notebook's path.")
    @argument("thread", nargs="*", help="Threads to take over (default: all of them).")
    @line_magic("opchat_adopt")
    def opchat_adopt(self, line):
        """Take over another notebook's stored threads: history follows a renamed or moved notebook."""
        args = self._parse(self.opchat_adopt, line)
        adopt_threads(self.conversation, args.notebook, args.thread)

    @magic_arguments()
    @argument("-t", "--thread", help="Thread whose last failed turn to send again.")
    @line_magic("opchat_retry")
    def opchat_retry(self, line):
        """Send the last failed or stopped turn of a thread again."""
        args = self._parse(self.opchat_retry, line)
        thread = self._thread(args.thread, create=False)
        if thread.last_failed is None:
            raise UsageError(f"Thread {thread.name!r} has no failed turn to retry.")
        cell_args = self._parse(self.opchat, "")
        return self._run_sync(_Request(cell_args, thread, None, self._options(cell_args)))

    @magic_arguments()
    @argument("-t", "--thread", help="Thread the panel opens on. Default: OpchatMagics.thread.")
    @line_magic("opchat_panel")
    def opchat_panel(self, line):
        """Show a chat panel (input, Send, Stop, transcript) sharing the notebook's history."""
        from ..panel import show_panel

        args = self._parse(self.opchat_panel, line)
        show_panel(self.session, thread=args.thread)

    @line_magic(MAGIC_NAME)
    def opchat_line(self, line):
        """`%opchat What is a monad?`: one-line chat. Flags first: -t THREAD, -m MODEL, -p PROVIDER,
        -s SYSTEM, --image PATH (repeatable), `--` ends them. The same {fields} as a %%opchat cell.
        The single words `providers`, `config`, `models [NAME]` and `help` are commands instead."""
        if is_command(line):
            return self._command(line)
        return self._run_sync(self._prepare_line(line))

    async def opchat_line_async(self, line: str):
        """The awaitable form the input transformer rewrites ``%opchat <message>`` lines into."""
        if is_command(line):
            return self._command(line)
        return await self._run_async(self._prepare_line(line))

    def _command(self, line: str) -> None:
        word, _, rest = line.strip().partition(" ")
        if word == "models":  # `%opchat models [NAME]`: what the provider's server (or NAME's) offers
            return show_models(self.settings, rest.strip() or None)
        return run_command(word, self.settings)

    def _prepare_line(self, line: str):
        try:
            flags = parse_line(line)
        except LineFlagError as exc:
            raise UsageError(str(exc)) from None
        if not flags.text:
            raise UsageError("%opchat needs a message after its flags, e.g. `%opchat What is a monad?`; "
                             "see `%opchat help`.")
        args = self._parse(self.opchat, "")
        args.thread, args.model, args.provider, args.system = flags.thread, flags.model, flags.provider, flags.system
        return self._request(args, flags.text, flags.images)

    @magic_arguments()
    @argument("cell", nargs="?", type=int,
              help="Cell whose error to explain; negative counts back from this cell. Default: the last error.")
    @argument("-t", "--thread", help="Thread to ask on. Default: OpchatMagics.thread.")
    @argument("-m", "--model", help="Model for this turn.")
    @argument("-p", "--provider", help="Provider for this turn.")
    @argument("-s", "--system", help="System prompt for this turn.")
    @line_magic("opchat_explain")
    def opchat_explain(self, line):
        """Ask the model about the last error (or cell N's): its cell's source, type, message and traceback.

        The reply streams and joins the thread like any turn.
        """
        return self._run_sync(self._prepare_explain(line))

    async def opchat_explain_async(self, line: str):
        return await self._run_async(self._prepare_explain(line))

    def _prepare_explain(self, line: str):
        parsed = self._parse(self.opchat_explain, line)
        args = self._parse(self.opchat, "")
        args.thread, args.model, args.provider, args.system = parsed.thread, parsed.model, parsed.provider, parsed.system
        request = self._request(args, "")
        try:  # sized for the endpoint (AI Engine takes 512 characters by default)
            request.prompt = self.session.explain_prompt(parsed.cell, request.options)
        except OpchatError as exc:  # nothing to explain
            raise UsageError(str(exc)) from None
        request.text = request.prompt.text
        return request


class _Request:
    """One turn a magic is about to begin: flags, thread, text (None: retry), options, images, or a ready prompt."""

    __slots__ = ("args", "thread", "text", "options", "image_paths", "prompt")

    def __init__(self, args, thread, text, options, image_paths=(), prompt=None):
        self.args, self.thread, self.text, self.options = args, thread, text, options
        self.image_paths, self.prompt = list(image_paths), prompt




def export_thread(thread, target: str) -> None:
    """`%opchat_history --export FILE`: a .md or .json file; a clear UsageError when it cannot be written."""
    path = Path(target.strip("'\"")).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(thread.to_json(), indent=2, ensure_ascii=False)
    elif suffix in (".md", ".markdown"):
        text = thread.to_markdown()
    else:
        raise UsageError(f"--export writes .md or .json files, not {path.name!r}.")
    if not path.parent.is_dir():
        raise UsageError(f"--export: cannot write {path}: the folder {path.parent} does not exist.")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--export: cannot write {path}: {exc.strerror or exc}.") from None
    print(f"opchat: thread {thread.name!r} written to {path}")


def _clean_help(magic, usage_prefix: str) -> None:
    """magic_arguments writes help as reStructuredText (``::``, double backticks) with a ``%name``
    usage line; make it read as plain text, and name a cell magic ``%%name``."""
    doc = magic.__doc__ or ""
    doc = re.sub(r"^::\n\n  %", "Usage: " + usage_prefix, doc)
    magic.__doc__ = doc.replace("``", "`")
    parser = getattr(magic, "parser", None)
    if parser is not None and usage_prefix == "%%":
        parser.prog = "%%" + parser.prog.lstrip("%")


def extract_code(markdown: str) -> str:
    """The reply's fenced code blocks, joined: what `-f code` puts in the next cell."""
    from ..render import code_blocks  # what CommonMark reads as code, by the renderer's own splitter

    return "\n\n".join(c.rstrip("\n") for c in code_blocks(markdown))


def _usage_text(exc: BaseException) -> str:
    text = str(exc)
    return text if "Nothing was sent" in text else f"{text} Nothing was sent."


def _plain(exc: BaseException) -> str:
    """A KeyError's message without the quotes str(KeyError) adds."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


for _magic, _prefix in ((OpchatMagics.opchat, "%%"), (OpchatMagics.opchat_reset, "%"),
                        (OpchatMagics.opchat_history, "%"), (OpchatMagics.opchat_retry, "%"),
                        (OpchatMagics.opchat_panel, "%"), (OpchatMagics.opchat_explain, "%"),
                        (OpchatMagics.opchat_threads, "%"), (OpchatMagics.opchat_adopt, "%")):
    _clean_help(_magic, _prefix)
OpchatMagics.opchat_line.__doc__ = ("Usage: %opchat [flags] MESSAGE | %opchat providers | %opchat config | "
                                    "%opchat models [NAME] | %opchat help\n\n" + OpchatMagics.opchat_line.__doc__)


# -- wiring into IPython -------------------------------------------------------

def load_ipython_extension(ipython) -> None:
    """Register the magics and the cell rewrite; open the kernel's Session (restoring history)."""
    from ..session import get_session
    from .transformer import install

    if "OpchatMagics" in ipython.magics_manager.registry:
        return
    session = get_session(ipython)
    ipython.register_magics(OpchatMagics(shell=ipython, session=session))
    install(ipython)
    if session.settings.persist:
        session.conversation  # restore history now, so the first cell doesn't pay for it
    warm_up()


# What the first reply cell would import: loaded on the private loop thread right
# after `%load_ext`, while the user types, so the first cell pays only for its
# request (the issue measured 0.15 s of imports in it). `%load_ext` itself only
# starts the thread.
WARM_MODULES = (
    "aiohttp",
    "opchat_magic.providers.http",
    "opchat_magic.providers.opchatgpts",
    "opchat_magic.providers.openai_compat",
    "opchat_magic.turn",
    "opchat_magic.render.renderer",
    "opchat_magic.render.faces",
    "opchat_magic.render.footer",
    "opchat_magic.render.tables",
    "opchat_magic.unreachable",
    "IPython.display",
)


def warm_up() -> None:
    """Import the first cell's modules (and list the providers) on the private loop, in the background."""
    from ..loop import get_loop

    async def warm() -> None:
        import importlib

        await asyncio.sleep(0.05)  # let the `%load_ext` cell finish first: it must not wait on these imports
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # warming is an optimisation: the cell reports real failures
                pass
            await asyncio.sleep(0)
        try:
            from ..providers.http import ssl_context_from_env
            from ..providers.registry import names

            names()  # the entry-point scan
            ssl_context_from_env()  # a CA bundle from SSL_CERT_FILE: ~0.1 s to load, cached
        except Exception:
            pass

    get_loop().submit(warm())


def unload_ipython_extension(ipython) -> None:
    """Undo ``load_ipython_extension``: magics, rewrite, and the Session (its store closed)."""
    from ..session import close_session
    from .transformer import uninstall

    uninstall(ipython)
    magics = ipython.magics_manager.registry.pop("OpchatMagics", None)
    for kind in ("cell", "line"):
        table = ipython.magics_manager.magics[kind]
        for name, fn in list(table.items()):
            if getattr(fn, "__self__", None) is magics:
                del table[name]
    if magics is not None:
        ipython.configurables[:] = [c for c in ipython.configurables if c is not magics]
    close_session(ipython)
