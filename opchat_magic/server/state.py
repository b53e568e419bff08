"""The server's settings and its small pieces of shared mutable state.

Settings are read by handlers on the server thread and changed by tests on
theirs (``set_fault`` can retune the fault knobs), so the mutable parts sit
behind a lock.
"""
from __future__ import annotations

import itertools
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from .stats import StatsRecorder

__all__ = ["ServerConfig", "FaultSlot", "Nonces", "ServerState", "FAULT_TUNING"]

# The settings a fault reads; set_fault() and POST /_opchat/fault may change them.
FAULT_TUNING = ("fault_delay", "huge_size", "trickle_interval", "keepalive_interval", "max_hang")


@dataclass
class ServerConfig:
    delay: float = 0.02
    chunk_size: int = 5
    bot_ids: frozenset = frozenset({"default"})
    require_nonce: bool = False
    input_limit: int = 512  # the chatbot's textInputMaxLength (characters); 0: no limit
    plain_permalinks: bool = False  # a WordPress site without pretty permalinks: only ?rest_route= works
    api_key: Optional[str] = field(default=None, repr=False)  # never in a repr or a log
    max_body: int = 1 << 20
    fault_delay: float = 3.0
    huge_size: int = 1 << 20
    trickle_interval: float = 0.1
    keepalive_interval: float = 0.5
    max_hang: float = 60.0
    model: str = "opchat-local"
    history: int = 50
    extra_models: tuple = ()  # more ids /v1/models lists
    strict_models: bool = False  # True: a chat request for a model not listed gets OpenAI's 404

    def served_models(self) -> "tuple[str, ...]":
        return (self.model,) + tuple(m for m in self.extra_models if m != self.model)

    def __post_init__(self) -> None:
        self.bot_ids = frozenset(self.bot_ids)
        self.extra_models = (self.extra_models,) if isinstance(self.extra_models, str) else tuple(self.extra_models)
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if self.delay < 0 or self.fault_delay < 0:
            raise ValueError("delays must be >= 0")
        if self.input_limit < 0:
            raise ValueError("input_limit must be >= 0 (0: no limit)")
        if self.max_body < 1:
            raise ValueError("max_body must be >= 1")

    def tune(self, **options) -> None:
        for name, value in options.items():
            if name not in FAULT_TUNING:
                raise TypeError(f"unknown fault option {name!r}; known: {', '.join(FAULT_TUNING)}")
            if value is None:
                continue
            value = int(value) if name == "huge_size" else float(value)
            if value < 0 or (name == "huge_size" and value < 1):
                raise ValueError(f"{name} must be positive")
            setattr(self, name, value)


class FaultSlot:
    """The server-wide fault: a name and how many more requests get it (None = all)."""

    def __init__(self, name: Optional[str] = None, count: Optional[int] = None):
        self._lock = threading.Lock()
        self.set(name, count)

    def set(self, name: Optional[str], count: Optional[int] = 1) -> None:
        if count is not None and count < 0:
            raise ValueError("count must be >= 0 or None")
        with self._lock:
            self._name = name
            self._left = count

    def clear(self) -> None:
        self.set(None, None)

    def peek(self) -> "tuple[Optional[str], Optional[int]]":
        with self._lock:
            return self._name, self._left

    def take(self, applies: Callable[[str], bool]) -> Optional[str]:
        """The fault for this request, if any applies to it; uses up one count."""
        with self._lock:
            name = self._name
            if name is None or (self._left is not None and self._left <= 0) or not applies(name):
                return None
            if self._left is not None:
                self._left -= 1
                if self._left == 0:
                    self._name, self._left = None, None
            return name


class Nonces:
    """Issued REST nonces, like WordPress's: valid until :meth:`expire`.

    :meth:`age` makes the issued ones *old* (WordPress: 12-24 h, the previous
    tick): still valid, but the plugin then sends a fresh one as ``new_token``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._valid: deque = deque(maxlen=10_000)
        self._old: deque = deque(maxlen=10_000)

    def issue(self) -> str:
        nonce = secrets.token_hex(5)  # WordPress nonces are 10 hex chars
        with self._lock:
            self._valid.append(nonce)
        return nonce

    def valid(self, nonce: Optional[str]) -> bool:
        with self._lock:
            return bool(nonce) and (nonce in self._valid or nonce in self._old)

    def is_old(self, nonce: Optional[str]) -> bool:
        with self._lock:
            return bool(nonce) and nonce in self._old and nonce not in self._valid

    def age(self) -> None:
        with self._lock:
            self._old.extend(self._valid)
            self._valid.clear()

    def expire(self) -> None:
        with self._lock:
            self._valid.clear()
            self._old.clear()


class ServerState:
    """Everything the handlers share: settings, fault, nonces, stats, ids."""

    def __init__(self, config: ServerConfig, fault: Optional[str] = None):
        self.config = config
        # A fault given at construction applies to every request until cleared.
        self.fault = FaultSlot(fault, None)
        self.nonces = Nonces()
        self.stats = StatsRecorder(config.history)
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        # Set while shutting down: cancelled handlers then are not client disconnects.
        self.stopping = False

    def next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)
