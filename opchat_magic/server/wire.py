"""How each endpoint spells things on the wire: events, final answers, errors.

Two dialects with one interface, so the streaming code and the faults are
written once: :class:`AIEngineWire` (the WordPress plugin, see PROTOCOL.md) and
:class:`OpenAIWire` (``/v1/chat/completions``). A wire object is made per
request because OpenAI chunks carry the request's id and model, and only the
first one carries the assistant role.
"""
from __future__ import annotations

import json
import time
from json.encoder import encode_basestring
from typing import Any, Optional

__all__ = ["sse", "dumps", "AIEngineWire", "OpenAIWire", "REJECTED", "REJECTED_TEXT", "NONCE_MISSING",
           "NONCE_INVALID", "OPENAI_BAD_KEY"]


# Compact like the examples in PROTOCOL.md; non-ASCII sent as UTF-8, and
# control characters (NUL included) escaped as JSON requires. One encoder for
# the process: json.dumps() with options builds a new JSONEncoder per call.
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json_string(text: str) -> bytes:
    """``text`` as a JSON string literal, exactly as :func:`dumps` writes it."""
    return encode_basestring(text).encode("utf-8")


def sse(obj: Any) -> bytes:
    """One server-sent event: a ``data:`` line holding ``obj`` as JSON, then a blank line."""
    return b"data: " + dumps(obj).encode("utf-8") + b"\n\n"


# The plugin's own bodies, word for word.
REJECTED_TEXT = "Sorry, your query has been rejected."
REJECTED = {"success": False, "message": REJECTED_TEXT}
NONCE_MISSING = {"code": "rest_forbidden", "message": "Sorry, you are not allowed to do that.", "data": {"status": 401}}
NONCE_INVALID = {"code": "rest_cookie_invalid_nonce", "message": "Cookie check failed", "data": {"status": 403}}
OPENAI_BAD_KEY = {
    "error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}
}


_AIENGINE_LIVE = b'data: {"type":"live","data":'


class AIEngineWire:
    """AI Engine 3.6.2's spelling. ``extra`` goes into the end payload (``new_token``)."""

    name = "aiengine"

    def __init__(self, response_id: str = "", extra: Optional[dict] = None):
        self.response_id = response_id
        self.extra = extra or {}

    def live(self, chunk: str) -> bytes:
        # Once per streamed chunk: the bytes of sse({"type": "live", "data": chunk})
        # without building and encoding a dict each time.
        return _AIENGINE_LIVE + _json_string(chunk) + b"}\n\n"

    def end_payload(self, reply: str, usage: dict) -> dict:
        # Field for field what the plugin's build_final_res() sends; usage as it reports it.
        payload = {"success": True, "reply": reply, "images": None, "actions": [], "shortcuts": [], "blocks": [],
                   "usage": {**usage, "price": None, "queries": 1, "accuracy": "estimated"}}
        if self.response_id:
            payload["responseId"] = self.response_id
        payload.update(self.extra)
        return payload

    def finish(self, reply: str, usage: dict) -> bytes:
        # The end event's data is a JSON *string* holding the final answer.
        return sse({"type": "end", "data": dumps(self.end_payload(reply, usage))})

    def error_event(self, message: str) -> bytes:
        return sse({"type": "error", "data": message})

    def reasoning(self, chunk: str, key: str = "") -> bytes:
        """A ``thinking`` event, as the plugin sends it (``Meow_MWAI_Event::thinking``)."""
        return sse({"type": "live", "data": chunk, "timestamp": round(time.time(), 4),
                    "subtype": "thinking", "visibility": "collapsed"})

    def answer(self, reply: str, usage: dict) -> dict:
        """The non-streamed answer (``stream: false``)."""
        return self.end_payload(reply, usage)

    def error_body(self, status: int, message: str) -> dict:
        if status == 401:
            return dict(NONCE_MISSING)
        if status == 403:
            return dict(REJECTED)
        return {"success": False, "message": message}


_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


_OPENAI_LIVE_TAIL = b'},"finish_reason":null}]}\n\n'


class OpenAIWire:
    name = "openai"

    def __init__(self, completion_id: str, model: str, include_usage: bool = False):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.finish_reason = "stop"  # "length" when max_tokens cut the reply
        self._first = True
        self._live_head: Optional[bytes] = None  # built at the second chunk: id and model are fixed by then

    def _chunk(self, delta: dict, finish_reason=None) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def live(self, chunk: str) -> bytes:
        if self._first:
            # Only the first chunk names the role, as OpenAI does.
            self._first = False
            return sse(self._chunk({"role": "assistant", "content": chunk}))
        # Every later chunk is the same JSON around the content string: encode
        # that frame once, then splice each chunk's JSON string into it.
        if self._live_head is None:
            frame = sse(self._chunk({"content": ""}))
            assert frame.endswith(b'""' + _OPENAI_LIVE_TAIL)
            self._live_head = frame[: -len(_OPENAI_LIVE_TAIL) - 2]
        return self._live_head + _json_string(chunk) + _OPENAI_LIVE_TAIL

    def reasoning(self, chunk: str, key: str = "reasoning_content") -> bytes:
        """A reasoning delta: ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (Ollama, gpt-oss)."""
        delta = {key: chunk}
        if self._first:
            self._first = False
            delta = {"role": "assistant", "content": None, key: chunk}
        return sse(self._chunk(delta))

    def finish(self, reply: str, usage: dict) -> bytes:
        out = sse(self._chunk({}, self.finish_reason))
        if self.include_usage:
            out += sse({**self._chunk({}), "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def error_event(self, message: str) -> bytes:
        return sse({"error": {"message": message, "type": "server_error", "code": None}})

    def answer(self, reply: str, usage: dict) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": self.finish_reason}
            ],
            "usage": usage,
        }

    def error_body(self, status: int, message: str, *, param: Optional[str] = None, code: Any = ...) -> dict:
        if status == 401:
            return OPENAI_BAD_KEY
        kind, default_code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
        return {"error": {"message": message, "type": kind, "param": param,
                          "code": default_code if code is ... else code}}
