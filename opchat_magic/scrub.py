"""Text that leaves the package clean: no credentials in URLs, no terminal control sequences.

Two small functions every layer may use (this module imports nothing of the package):

* :func:`redact_userinfo` replaces the ``user:password`` of every URL in a text
  with ``***`` (``https://***@host/``): error messages, history rows, exports and
  logs are built from URLs the user configured, and a URL's userinfo is a
  credential.
* :func:`show_controls` makes control characters visible (``\\x1b``, ``\\x9b``,
  ``\\u202e``) instead of letting them reach a terminal: a server's error body or
  a model's reply may carry OSC 52 (clipboard writes), OSC 8 (disguised links),
  screen clears or cursor moves. Newline and tab pass; CR LF becomes LF.
"""
from __future__ import annotations

import re

__all__ = ["redact_userinfo", "show_controls"]

# scheme://userinfo@ — the userinfo runs to the last "@" before the path, as the
# WHATWG parser reads it (a raw "@" in a password is common).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#\s@]*(?:@[^/?#\s@]*)*)@(?=[^/?#\s@]*(?:[/?#\s]|$))")

# C0 except tab and newline, DEL, C1; and the bidi overrides/isolates a terminal
# would honour (they reorder what the reader sees).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def redact_userinfo(text: str) -> str:
    """``text`` with the userinfo of every ``scheme://user:password@host`` URL shown as ``***``."""
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(lambda m: m.group(1) + "***@", text)


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group(0))
    return "\\x%02x" % code if code <= 0xFF else "\\u%04x" % code


def show_controls(text: str) -> str:
    """``text`` with every control character (but ``\\n`` and ``\\t``) as a visible escape."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return _CONTROLS.sub(_escape, text)
