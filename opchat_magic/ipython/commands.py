"""The single-word commands of ``%opchat``: ``providers``, ``config``, ``models``, ``help``.

Any other ``%opchat`` line is a one-line chat (``oneline.py``).
"""
from __future__ import annotations

import os
from typing import Optional

from IPython.core.error import UsageError
from IPython.display import display

from ..errors import OpchatError, redact
from .quiet import quiet

__all__ = ["run_command", "show_models", "show_threads", "show_history", "adopt_threads", "HELP"]

HELP = """\
**opchat-magic**

| write | to |
|---|---|
| `%%opchat [-t THREAD] [-m MODEL] [-p PROVIDER] [-s SYSTEM] [--image PATH]` + text | send the cell as a message |
| `%opchat [flags] What is a monad?` | send one line (it may end in `?`) |
| `{name}` `{In[N]}` `{Out[N]}` `{Err[N]}` `{Err}` in a message | insert a variable, a cell's source, output (figures as images) or error; `-N` counts back; `{{ }}` are braces |
| `%opchat_explain [N]` | ask about the last error (or cell N's) |
| `%opchat_retry` · `%opchat_reset` · `%opchat_history` · `%opchat_threads` · `%opchat_panel` | retry, clear, show, list threads, open the chat panel |
| `%opchat_threads --notebooks` · `%opchat_adopt N` | other notebooks' stored threads; adopt them (a renamed or moved notebook) |
| `%opchat providers` · `%opchat models [NAME]` · `%opchat config` | list providers, the models a server offers, the settings |
"""


def run_command(word: str, settings) -> None:
    """Show what ``word`` asks for (``models`` is the magics' own: it needs the loop and the endpoint)."""
    # Tables with a text/plain form too: terminal IPython prints them aligned (render/tables.py).
    from ..render.tables import Table, Text

    if word == "providers":
        from ..providers.registry import available

        rows = [[p.name, "yes" if p.working else "no", p.default_model or "", p.url or "",
                 p.error or (p.cls.__module__ + "." + p.cls.__qualname__ if p.cls else "")]
                for p in available()]
        display(Table(["name", "working", "default model", "base URL", "class"], rows,
                      code=["name", "class"], title="Providers (%config OpchatMagics.provider = NAME)"))
    elif word == "config":
        names = sorted(settings.trait_names(config=True))
        from ..settings import shown_setting  # URL credentials and secret-named options as ***

        display(Table(["setting", "value"], [[n, shown_setting(getattr(settings, n))] for n in names],
                      code=["setting", "value"], title="Settings (%config OpchatMagics.NAME = VALUE)"))
    else:  # help
        display(Text(HELP))


def show_models(settings, provider: Optional[str]) -> None:
    """``%opchat models [NAME]``: the models the configured provider's server (or NAME's) offers."""
    from ..loop import get_loop
    from ..model_list import LISTING_TIMEOUT, model_listing
    from ..settings import KEY_VARIABLES, SettingsError, provider_endpoint

    try:
        listing = get_loop().run(model_listing(settings, provider), timeout=LISTING_TIMEOUT + 5)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None
    except (OpchatError, TimeoutError, OSError) as exc:
        name = provider or settings.provider
        where = provider_endpoint(settings, provider) or "its default endpoint"
        text = f"Could not list the models of {name} ({where}): {exc}"
        secrets = tuple(v for v in (os.environ.get(k) for k in KEY_VARIABLES) if v)
        raise quiet(exc, redact(text, secrets)) from None
    display({"text/markdown": listing.markdown(), "text/plain": listing.plain()}, raw=True)


def show_threads(conversation, default_thread: str, notebooks: bool = False) -> None:
    """``%opchat_threads``: this notebook's threads; ``--notebooks``: every notebook's stored history."""
    from ..render.tables import Table

    if notebooks:
        display(_notebooks_table(conversation))
        return
    rows = []
    for name in conversation.threads():
        thread = conversation.thread(name)
        failed = thread.last_failed
        state = f"{failed.status} (retry with %opchat_retry -t {name})" if failed else "ok"
        mark = " (default)" if name == default_thread else ""
        rows.append([name + mark, len(thread.messages), state])
    hint = ""
    if not any(r[1] for r in rows) and _others(conversation):
        hint = ("No history here yet; other notebooks have stored threads (a renamed or moved notebook?): "
                "%opchat_threads --notebooks lists them, %opchat_adopt N takes them over.")
    display(Table(["thread", "messages", "last turn"], rows, title=hint, empty="No threads yet."))


def _others(conversation) -> list:
    store = getattr(conversation, "store", None)
    if store is None:
        return []
    try:
        return [n for n in store.notebooks() if n["key"] != conversation.key]
    except Exception:  # a broken history file: listing it is not worth an error here
        return []


def _notebooks_table(conversation):
    import os
    import time

    from ..render.tables import Table

    rows = []
    for i, n in enumerate(_others(conversation), 1):
        key = n["key"]
        where = "no notebook (a kernel's own)" if key.startswith("session:") else (
            "exists" if os.path.exists(key) else "gone (moved or renamed?)")
        rows.append([i, key, where, n["threads"], n["messages"],
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(n["last"]))])
    return Table(["#", "notebook", "file", "threads", "messages", "last used"], rows,
                 title=f"Stored history of other notebooks (this one: {conversation.key}); "
                       "%opchat_adopt # takes a notebook's threads over",
                 empty="No other notebook has stored history.")


def adopt_threads(conversation, ref: str, names) -> None:
    """``%opchat_adopt NOTEBOOK [THREAD ...]``: NOTEBOOK is a number from ``--notebooks`` or a path/key."""
    others = _others(conversation)
    key = None
    if ref.isdigit() and 1 <= int(ref) <= len(others):
        key = others[int(ref) - 1]["key"]
    else:
        keys = {n["key"] for n in others}
        candidates = [ref, os.path.abspath(os.path.expanduser(ref))]
        key = next((k for k in candidates if k in keys), None)
    if key is None:
        raise UsageError(f"No stored notebook {ref!r}: `%opchat_threads --notebooks` lists them "
                         "(use a number from it, or the old notebook's path).")
    try:
        renames = conversation.adopt(key, list(names) or None)
    except KeyError as exc:
        raise UsageError(exc.args[0] if exc.args else str(exc)) from None
    moved = ", ".join(old if old == new else f"{old} (now {new})" for old, new in renames.items())
    print(f"opchat: adopted from {key}: {moved}. They continue here; %opchat_threads lists them.")


def show_history(thread) -> None:
    """``%opchat_history``: the transcript, Markdown in Jupyter and plain text in a terminal."""
    from ..render import escape_text, sanitize_markdown
    from ..render.tables import Text, transcript_text

    transcript = thread.to_markdown()
    if not transcript.strip():
        display(Text(f"*Thread {escape_text(thread.name)} is empty.*", f"Thread {thread.name!r} is empty."))
        return
    display(Text(sanitize_markdown(transcript), transcript_text(thread)))
