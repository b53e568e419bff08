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

__all__ = ["run_command", "show_models", "HELP"]

HELP = """\
**opchat-magic**

| write | to |
|---|---|
| `%%opchat [-t THREAD] [-m MODEL] [-p PROVIDER] [-s SYSTEM] [--image PATH]` + text | send the cell as a message |
| `%opchat [flags] What is a monad?` | send one line (it may end in `?`) |
| `{name}` `{In[N]}` `{Out[N]}` `{Err[N]}` `{Err}` in a message | insert a variable, a cell's source, output (figures as images) or error; `-N` counts back; `{{ }}` are braces |
| `%opchat_explain [N]` | ask about the last error (or cell N's) |
| `%opchat_retry` · `%opchat_reset` · `%opchat_history` · `%opchat_threads` · `%opchat_panel` | retry, clear, show, list threads, open the chat panel |
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
        display(Table(["setting", "value"], [[n, repr(getattr(settings, n))] for n in names],
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
