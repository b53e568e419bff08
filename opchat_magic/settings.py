"""The configurable settings, and building one turn's options from them.

``OpchatSettings`` holds every trait a user configures. It is configured under
the name users already know, ``OpchatMagics`` (``%config OpchatMagics.url =
...``, ``c.OpchatMagics.url`` in ``ipython_config.py``), and under its own
class name too. One instance per kernel lives in the :class:`~.session.Session`.

``turn_options(settings, ...)`` turns the settings plus a front door's
per-turn choices (a cell's ``-p/-m/-s`` flags, the panel's selectors) into a
:class:`~.turn.TurnOptions`: one path for every front door.

Adding a setting: add a trait here with ``.tag(config=True)`` and a ``help``
that says what it does; read it in ``turn_options`` (if it shapes a turn) or
where it is used, through ``session.settings``.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Optional

from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, Union
from traitlets.config import Configurable

from .errors import OpchatError

if TYPE_CHECKING:  # turn.py (and the loop, providers) load on the first turn, not at %load_ext
    from .turn import TurnOptions

__all__ = ["OpchatSettings", "SettingsError", "turn_options", "CONFIG_SECTION"]

# The config section users write (and error hints print): the name the traits had when they lived on the magics.
CONFIG_SECTION = "OpchatMagics"

# Environment variables that may hold keys: their values are scrubbed from errors.
KEY_VARIABLES = ("OPCHAT_API_KEY", "OPENAI_API_KEY")


class SettingsError(OpchatError, ValueError):
    """A setting or a per-turn choice names something that does not exist (a provider, say)."""


class OpchatSettings(Configurable):
    """opchat-magic's settings: ``%config OpchatMagics.<trait> = value``; ``%opchat config`` lists them."""

    provider = Unicode("opchatgpts", help="Provider name (see `%opchat providers`).").tag(config=True)
    model = Unicode("", help="Model name; empty means the provider's default.").tag(config=True)
    url = Unicode(
        "", help="Endpoint: the AI Engine site (opchatgpts) or base URL (openai); empty means the "
                 "provider's default and its environment variables (OPCHAT_URL, OPENAI_BASE_URL).",
    ).tag(config=True)
    endpoints = Dict(help="Endpoint per provider name, for cells that pick a provider with -p NAME "
                          "(e.g. {'ollama': 'http://gpu-box:11434/v1'}); `url` still applies to `provider`.").tag(config=True)
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
    read_timeout = Float(
        None, allow_none=True,
        help="Seconds the stream may stay silent before it is abandoned; None: the provider's default "
             "(opchatgpts 310 s: AI Engine gives its model 300 s and sends nothing meanwhile; openai 60 s).",
    ).tag(config=True)
    bot_id = Unicode("default", help="AI Engine: the site's chatbot (botId); an unknown one is answered by "
                                     "the site's default chatbot.").tag(config=True)
    context_id = Union([Int(), Unicode()], default_value=None, allow_none=True,
                       help="AI Engine: contextId, the WordPress post whose text a content-aware chatbot reads; "
                            "None (the plugin's own chatbot outside a post). opchatgpts.net's page was 28.",
                       ).tag(config=True)
    provider_options = Dict(help="Extra keyword arguments for the provider (bot_id, context_id, nonce, ...). "
                                 "Keys belong in environment variables, not here.").tag(config=True)
    failover = List(Unicode(), help="Provider names tried in order when the first fails before any text.").tag(config=True)
    footer = Bool(True, help="Show tokens and timings under each reply.").tag(config=True)
    remote_images = Union(
        [Bool(), List(Unicode())], default_value=False,
        help="Images in replies that may load from the network: False (default: only data: images show; "
             "any other shows as a link, so a reply cannot make the page fetch a URL it chose), True (all), "
             "or a list of host names, e.g. ['upload.wikimedia.org'].",
    ).tag(config=True)
    max_value_chars = Int(100_000, min=0, help="Longest text one {reference} ({name}, {In[N]}, {Out[N]}, "
                          "{Err[N]}) puts in a prompt; a longer value is cut with a marker saying how much "
                          "was left out, and the footer says so (0: no limit).").tag(config=True)
    max_image_bytes = Int(20 * 1024 * 1024, min=1, help="Largest image (--image, or an image {Out[N]}) "
                          "sent to a vision model, in bytes.").tag(config=True)

    @classmethod
    def section_names(cls):
        # Config written for ``OpchatMagics`` applies here (it comes last, so it wins over the class name).
        names = super().section_names()
        return names + [CONFIG_SECTION] if CONFIG_SECTION not in names else names

    def describe(self) -> str:
        """Every setting and its value, as a Markdown list (``%opchat config``)."""
        names = sorted(self.trait_names(config=True))
        return "\n".join(f"- `{n}` = `{shown_setting(getattr(self, n))}`" for n in names)


# Words that make an option name secret, matched against the name's words (``api_key``,
# ``proxyPassword``, ``X-Auth-Token``), never as substrings: ``max_tokens`` and ``author`` are not secrets.
_SECRET_WORDS = frozenset({"key", "apikey", "password", "passwd", "pwd", "secret", "token", "nonce", "auth",
                           "authorization", "credential", "credentials"})
_NAME_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_name(name) -> bool:
    """Whether an option named ``name`` holds a secret (one rule for display and for error scrubbing)."""
    return any(word.lower() in _SECRET_WORDS for word in _NAME_WORD.findall(str(name)))


def shown_setting(value) -> str:
    """A setting as ``%opchat config`` shows it: URL credentials and secret-named entries as ``***``."""
    from .scrub import redact_userinfo

    if isinstance(value, dict):
        value = {k: ("***" if v and v != "auto" and is_secret_name(k) else v) for k, v in value.items()}
    return redact_userinfo(repr(value))


def provider_class(name: str):
    """The registered provider class called ``name``; SettingsError if none is."""
    from .providers.registry import get_provider

    try:
        return get_provider(name)
    except KeyError as exc:
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        raise SettingsError(f"{text}\nPick one with -p NAME or %config {CONFIG_SECTION}.provider.") from None


def provider_endpoint(settings: OpchatSettings, provider: Optional[str] = None) -> str:
    """The configured endpoint of ``provider`` (None: the configured provider); "" for its own default.

    The configured provider's is ``url`` (else its ``endpoints`` entry); any other's, its ``endpoints`` entry.
    """
    name = (provider or settings.provider).strip().lower()
    own = {str(k).strip().lower(): str(v) for k, v in settings.endpoints.items() if v}.get(name, "")
    if name == settings.provider.strip().lower():
        return settings.url or own
    return own


def turn_options(settings: OpchatSettings, *, provider: Optional[str] = None, model: Optional[str] = None,
                 system: Optional[str] = None, include_history: bool = True,
                 retryable: bool = True) -> TurnOptions:
    """Everything a turn needs, from the settings and a front door's per-turn choices.

    ``provider``/``model``/``system`` override the settings for this turn
    (None or empty: the setting). ``url`` is the configured provider's
    endpoint; a provider override uses that provider's own endpoint from
    ``endpoints``, else its default and environment (an AI Engine URL means
    nothing to Ollama). The reply's footer names the endpoint used.
    """
    from .turn import TurnOptions

    chosen = provider or None
    cls = provider_class(chosen or settings.provider)
    if settings.failover:
        from .providers.failover import failover_provider

        cls = failover_provider([cls] + [provider_class(n) for n in settings.failover])
    kwargs = dict(settings.provider_options)
    kwargs.setdefault("connect_timeout", settings.connect_timeout)
    if settings.read_timeout is not None:
        kwargs.setdefault("read_timeout", settings.read_timeout)
    for name in getattr(cls, "site_options", ()):  # AI Engine: which chatbot, which post
        kwargs.setdefault(name, getattr(settings, name))
    endpoint = provider_endpoint(settings, chosen)
    if endpoint:
        kwargs.setdefault(getattr(cls, "url_kwarg", "url"), endpoint)
    secrets = tuple(v for v in (os.environ.get(k) for k in KEY_VARIABLES) if v)
    secrets += tuple(str(v) for k, v in kwargs.items() if v and v != "auto" and is_secret_name(k))
    return TurnOptions(
        provider=cls,
        model=model or settings.model,
        provider_kwargs=kwargs,
        system=system or settings.system or None,
        max_messages=settings.max_history or None,
        max_chars=settings.max_history_chars or None,
        include_history=include_history,
        secrets=secrets,
        footer=settings.footer,
        remote_images=settings.remote_images,
        interval=settings.update_interval,
        retryable=retryable,
        provider_name=_registered_name(cls, chosen or settings.provider),
    )


def _registered_name(cls, asked: str) -> str:
    """The name the footer shows: the registry's for this class, else what was asked for."""
    from .providers.registry import name_of

    return name_of(cls) or asked.strip().lower()
