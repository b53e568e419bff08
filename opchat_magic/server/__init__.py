"""A local chat server: the offline default for the quickstart, and the peer of
every integration, kernel and browser test.

It speaks the AI Engine protocol (``/wp-json/mwai-ui/v1/chats/submit``, see
PROTOCOL.md) and the OpenAI chat API (``/v1/chat/completions``), answers
deterministically (:func:`reply_text`), and misbehaves on request (faults).
Only 127.0.0.1 unless told otherwise.

Modules, one idea each:

* ``replies``   the reply text and the ``[[directives]]``
* ``wire``      how each endpoint spells events, answers and errors
* ``streaming`` writing a turn; noticing a client that left
* ``faults``    the fault registry
* ``app``       routes and request checks
* ``stats``     what the server saw
* ``state``     settings, the fault slot, nonces
* ``runner``    ``LocalServer``: start/stop on a thread or on your loop

``python -m opchat_magic.server`` is ``opchat-magic serve``.
"""
from .faults import FAULTS, GOOD, fault_names
from .replies import HOSTILE_REPLY, echo_history, Directives, long_text, parse_directives, reply_text, split_chunks, text_of_length
from .runner import LocalServer, is_loopback
from .stats import Stats

__all__ = [
    "LocalServer",
    "reply_text",
    "echo_history",
    "split_chunks",
    "long_text",
    "text_of_length",
    "parse_directives",
    "Directives",
    "HOSTILE_REPLY",
    "FAULTS",
    "GOOD",
    "fault_names",
    "Stats",
    "is_loopback",
]
