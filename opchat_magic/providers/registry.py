"""Provider names -> provider classes: built-ins, aliases, and third-party plugins.

Built-ins are named here and imported on first use (importing this module does
not import the provider modules). Third-party providers declare an entry point in the group
``opchat_magic.providers``::

    [project.entry-points."opchat_magic.providers"]
    mybackend = "my_package.provider:MyProvider"

Entry points are read once, lazily (call :func:`refresh` after installing a
plugin into a running kernel), and only *loaded* (imported) when that provider
is asked for or listed. A plugin that fails to import is reported as broken in
:func:`available` / :func:`providers_table` and raises :class:`ProviderLoadError`
from :func:`get_provider`; it never breaks the listing of the others.

Precedence for one name: :func:`register` > built-in > entry point. An entry
point cannot replace a built-in (``openai`` always means the OpenAI-compatible
provider shipped here); such an entry point is ignored unless it points at the
very same object, which is the case for the package's own declarations.

Names are case-insensitive.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Type, Union

from ..errors import OpchatError
from .base import AsyncGeneratorProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "BUILTINS",
    "SPELLINGS",
    "ProviderInfo",
    "UnknownProviderError",
    "ProviderLoadError",
    "get_provider",
    "available",
    "names",
    "name_of",
    "register",
    "unregister",
    "refresh",
    "providers_table",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "opchat_magic.providers"

# name -> "module:attribute", imported lazily.
BUILTINS: Dict[str, str] = {
    "opchatgpts": "opchat_magic.providers.opchatgpts:Opchatgpts",
    "openai": "opchat_magic.providers.openai_compat:OpenAICompatible",
    "ollama": "opchat_magic.providers.openai_compat:Ollama",
    "llamacpp": "opchat_magic.providers.openai_compat:LlamaCpp",
    "lmstudio": "opchat_magic.providers.openai_compat:LMStudio",
    "vllm": "opchat_magic.providers.openai_compat:VLLM",
}


# Other spellings people type; resolved by get_provider, not listed.
SPELLINGS: Dict[str, str] = {
    "openai-compatible": "openai",
    "openai_compatible": "openai",
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
    "llama_cpp": "llamacpp",
    "lm-studio": "lmstudio",
    "lm_studio": "lmstudio",
}


class UnknownProviderError(OpchatError, KeyError):
    """No provider has this name. The message lists the names that exist."""

    def __init__(self, name: str, known: List[str]):
        self.name = name
        self.known = list(known)
        message = f"Unknown provider {name!r}. Known providers: {', '.join(self.known) or '(none)'}."
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.message


class ProviderLoadError(OpchatError, ImportError):
    """A provider's entry point (or built-in) could not be imported or is not a provider."""

    def __init__(self, name: str, target: str, reason: str, origin: str = ""):
        self.name = name
        self.target = target
        self.reason = reason
        self.origin = origin
        where = f" (from {origin})" if origin else ""
        message = f"Provider {name!r} -> {target}{where} could not be loaded: {reason}"
        super().__init__(message)
        self.msg = message

    def __str__(self) -> str:
        return self.msg


@dataclass(frozen=True)
class ProviderInfo:
    """What :func:`available` says about one provider."""

    name: str
    cls: Optional[type]
    source: str  # "builtin", "registered", or "entry point (dist version)"
    target: str = ""  # "module:attr" it was loaded from, "" for registered classes
    working: bool = False
    supports_stream: bool = False
    supports_message_history: bool = False
    supports_gpt_35_turbo: bool = False
    url: str = ""  # the base URL it would use now (env and class default resolved)
    default_model: str = ""
    error: Optional[str] = None  # why it could not be loaded; cls is None then

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def broken(self) -> bool:
        return self.error is not None


@dataclass
class _Entry:
    name: str
    target: str  # "module:attr" ("" for register()ed classes)
    source: str
    cls: Optional[type] = None
    error: Optional[str] = None
    entry_point: Optional[importlib.metadata.EntryPoint] = None


_lock = threading.RLock()
_registered: Dict[str, _Entry] = {}
_builtins: Dict[str, _Entry] = {name: _Entry(name, target, "builtin") for name, target in BUILTINS.items()}
_entry_points: Optional[Dict[str, _Entry]] = None  # None until scanned


def _norm(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"provider name must be a str, not {type(name).__name__}")
    return name.strip().lower()


def _scan_entry_points() -> Dict[str, _Entry]:
    found: Dict[str, _Entry] = {}
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a corrupt installed METADATA must not break the magic
        log.warning("could not read %s entry points: %s", ENTRY_POINT_GROUP, exc)
        return found
    for ep in eps:
        name = _norm(ep.name)
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
        if name in BUILTINS:
            if ep.value.replace(" ", "") != BUILTINS[name]:
                log.warning(
                    "entry point %r = %r from %s ignored: %r is a built-in provider name",
                    ep.name, ep.value, origin, name,
                )
            continue
        if name in found:
            log.warning("entry point %r from %s ignored: the name is already declared by %s",
                        ep.name, origin, found[name].source)
            continue
        found[name] = _Entry(name, ep.value, f"entry point ({origin})", entry_point=ep)
    return found


def _entries() -> Dict[str, _Entry]:
    """Every known name -> entry, in precedence order (registered > builtin > entry point)."""
    global _entry_points
    with _lock:
        if _entry_points is None:
            _entry_points = _scan_entry_points()
        merged: Dict[str, _Entry] = dict(_entry_points)
        merged.update(_builtins)
        merged.update(_registered)
        return merged


def _load(entry: _Entry) -> type:
    """Import ``entry``'s class once; remember the failure so listing stays cheap."""
    with _lock:
        if entry.cls is not None:
            return entry.cls
        if entry.error is not None:
            raise ProviderLoadError(entry.name, entry.target, entry.error, entry.source)
        try:
            if entry.entry_point is not None:
                obj = entry.entry_point.load()
            else:
                module, _, attr = entry.target.partition(":")
                obj = importlib.import_module(module)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
        except BaseException as exc:  # SystemExit in a plugin's import must not kill the kernel
            if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                raise
            entry.error = f"{type(exc).__name__}: {exc}"
            raise ProviderLoadError(entry.name, entry.target, entry.error, entry.source) from exc
        if not (isinstance(obj, type) and issubclass(obj, AsyncGeneratorProvider)):
            entry.error = (
                f"{obj!r} is not a subclass of opchat_magic.providers.AsyncGeneratorProvider"
            )
            raise ProviderLoadError(entry.name, entry.target, entry.error, entry.source)
        entry.cls = obj
        return obj


def names() -> List[str]:
    """Every provider name, sorted (broken entry points included)."""
    return sorted(_entries())


def get_provider(name: Union[str, type]) -> Type[AsyncGeneratorProvider]:
    """The provider class called ``name`` (a provider class is returned as is).

    Raises :class:`UnknownProviderError` (a ``KeyError``) listing the known names,
    or :class:`ProviderLoadError` (an ``ImportError``) for a broken plugin.
    """
    if isinstance(name, type) and issubclass(name, AsyncGeneratorProvider):
        return name
    key = _norm(name)
    entries = _entries()
    entry = entries.get(key)
    if entry is None and key in SPELLINGS:
        entry = entries.get(SPELLINGS[key])
    if entry is None:
        raise UnknownProviderError(name, names())
    return _load(entry)


def name_of(provider: Union[str, type]) -> str:
    """The registered name of a provider class (or class name, as ``Reply.provider`` holds it).

    Registered and built-in names first; "" when no name maps to it. Nothing is imported.
    """
    qualname = provider.__qualname__ if isinstance(provider, type) else str(provider)
    for entry in sorted(_entries().values(), key=lambda e: (e.source != "registered", e.source != "builtin", e.name)):
        if isinstance(provider, type) and entry.cls is provider:
            return entry.name
        if entry.target.rpartition(":")[2] == qualname or (entry.cls is not None and entry.cls.__qualname__ == qualname):
            return entry.name
    return ""


def register(name: str, cls: Type[AsyncGeneratorProvider], *, replace: bool = True) -> None:
    """Make ``cls`` available as ``name`` (wins over built-ins and entry points)."""
    if not (isinstance(cls, type) and issubclass(cls, AsyncGeneratorProvider)):
        raise TypeError(f"{cls!r} is not a subclass of AsyncGeneratorProvider")
    key = _norm(name)
    if not key:
        raise ValueError("provider name must not be empty")
    with _lock:
        if not replace and key in _entries():
            raise ValueError(f"a provider called {key!r} already exists")
        _registered[key] = _Entry(key, f"{cls.__module__}:{cls.__qualname__}", "registered", cls=cls)


def unregister(name: str) -> None:
    """Forget a :func:`register`-ed name (built-ins and entry points come back)."""
    with _lock:
        _registered.pop(_norm(name), None)


def refresh() -> None:
    """Re-read entry points (after ``pip install`` of a plugin) and retry failed imports."""
    global _entry_points
    with _lock:
        _entry_points = None
        for entry in _builtins.values():
            if entry.error is not None:
                entry.error = None


def _class_url(cls: type) -> str:
    resolve = getattr(cls, "resolve_base_url", None)
    if callable(resolve):
        try:
            return str(resolve())
        except Exception:
            pass
    url = getattr(cls, "url", "") or ""
    return str(url)


def _info(entry: _Entry) -> ProviderInfo:
    try:
        cls = _load(entry)
    except ProviderLoadError as exc:
        return ProviderInfo(entry.name, None, entry.source, entry.target, error=exc.reason)
    try:
        default_model = str(cls.default_model or "")
    except Exception:
        default_model = ""
    return ProviderInfo(
        name=entry.name,
        cls=cls,
        source=entry.source,
        target=entry.target,
        working=bool(getattr(cls, "working", False)),
        supports_stream=bool(getattr(cls, "supports_stream", False)),
        supports_message_history=bool(getattr(cls, "supports_message_history", False)),
        supports_gpt_35_turbo=bool(getattr(cls, "supports_gpt_35_turbo", False)),
        url=_class_url(cls),
        default_model=default_model,
    )


def available() -> List[ProviderInfo]:
    """Every provider, sorted by name; broken ones have ``cls=None`` and ``error`` set."""
    entries = _entries()
    return [_info(entries[name]) for name in sorted(entries)]


def _cell(value: object) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


def providers_table() -> str:
    """A Markdown table of :func:`available`, for ``%opchat providers``."""
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    rows = [
        "| name | class | working | stream | history | gpt-3.5 | default model | base URL | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    broken = []
    for info in available():
        if info.broken:
            rows.append(
                f"| {_cell(info.name)} | `{_cell(info.target)}` | **broken** | | | | | | {_cell(info.source)} |"
            )
            broken.append(f"- **{_cell(info.name)}**: {_cell(info.error)}")
            continue
        rows.append(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} |".format(
                _cell(info.name),
                _cell(f"{info.cls.__module__}.{info.cls.__qualname__}"),
                yes(info.working),
                yes(info.supports_stream),
                yes(info.supports_message_history),
                yes(info.supports_gpt_35_turbo),
                _cell(info.default_model)
                or ("first of GET /models" if getattr(info.cls, "discover_model", False) else ""),
                _cell(info.url),
                _cell(info.source),
            )
        )
    text = "\n".join(rows)
    if broken:
        text += "\n\nBroken providers (not usable until fixed):\n\n" + "\n".join(broken)
    return text + "\n"
