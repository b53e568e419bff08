"""The aiohttp application: routes, request checks, and which turn to play.

Routes (all JSON unless streamed):

* ``POST /wp-json/mwai-ui/v1/chats/submit``  AI Engine chat (PROTOCOL.md)
* ``POST /wp-json/mwai/v1/start_session``    ``{success, sessionId, restNonce}``
* ``GET  /wp-json/``                         the REST index (name, url, namespaces)
* ``/?rest_route=/...``, ``/index.php?rest_route=/...``  the same routes, spelt as on a
  plain-permalink WordPress site; every AI Engine-side response carries the
  ``Link: <{url}/wp-json/>; rel="https://api.w.org/"`` header WordPress sends.
  With ``plain_permalinks`` the server is such a site: ``/wp-json/...`` answers
  its home page (HTML, 200) and the Link header names ``{url}/index.php?rest_route=/``
* ``POST /v1/chat/completions``              OpenAI-compatible chat (``max_tokens`` /
  ``max_completion_tokens`` cut the reply with ``finish_reason: "length"``;
  ``n`` other than 1 is refused with a 400)
* ``GET  /v1/models``                        the served models (``opchat-local`` and
  ``ServerConfig.extra_models``)
* ``GET  /v1/models/{id}``                   one model, or a 404 ``model_not_found``
* any other ``/v1/...``                      404 in OpenAI's error shape (``Invalid URL``)

Every ``/v1`` answer carries an ``x-request-id`` header, as OpenAI's do, and
every ``/v1`` error is OpenAI's JSON ``{"error": {message, type, param, code}}``.
* ``GET  /_opchat/stats``                    counters; Authorization/nonce headers masked
* ``POST /_opchat/fault``                    ``{"fault": NAME|null, "count": N|null, <knobs>}``
* ``POST /_opchat/reset``                    zero the stats
* ``POST /_opchat/expire_nonces``            make every issued nonce stale
* ``POST /_opchat/age_nonces``               make issued nonces old: valid, answered with ``new_token``

Checks happen in the plugin's order: the nonce (WordPress checks it before the
plugin sees the request; with ``require_nonce`` none is 401 ``rest_forbidden``, a
stale or wrong one 403 ``rest_cookie_invalid_nonce``), then the body (no botId
nor customId, or an empty message: 403 rejected), then the chatbot (an unknown
botId falls back to ``default``; a message over ``input_limit`` characters is
rejected *inside* the stream: HTTP 200, ``application/json``, one ``error``
event); a fault applies only to requests that passed them. As the plugin does,
the server appends ``newMessage`` to ``messages`` as the last user turn.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any, Optional

from aiohttp import web

from . import faults as faults_mod
from .replies import compose, count_tokens, prompt_tokens, split_chunks
from .state import FAULT_TUNING, ServerState
from .streaming import EventStream, Turn, answer
from .wire import (NONCE_INVALID, NONCE_MISSING, OPENAI_BAD_KEY, REJECTED, REJECTED_TEXT, AIEngineWire,
                   OpenAIWire, dumps, sse)

__all__ = ["build_app", "STATE", "REST_LINK"]

STATE = web.AppKey("opchat_state", ServerState)
TASKS = web.AppKey("opchat_tasks", set)
REST_LINK = '<{}>; rel="https://api.w.org/"'  # what every WordPress page sends: its REST root
HOME_PAGE = ("<!DOCTYPE html><html><head><title>opchat-magic local server</title></head>"
             "<body>opchat-magic local server</body></html>")


def _site(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _rest_root(request: web.Request) -> str:
    plain = request.app[STATE].config.plain_permalinks
    return _site(request) + ("/index.php?rest_route=/" if plain else "/wp-json/")


def _home_page() -> web.Response:
    return web.Response(text=HOME_PAGE, content_type="text/html")


def _pretty_path_on_a_plain_site(request: web.Request) -> bool:
    """A plain-permalink site answers ``/wp-json/...`` with its home page (HTML, 200)."""
    return request.app[STATE].config.plain_permalinks and request.path.startswith("/wp-json")
_COUNTED = {"submit", "start_session", "chat_completions", "models", "rest_route", "rest_route_index"}
_WORDPRESS_ROUTES = {"submit", "start_session", "rest_index", "rest_route", "rest_route_index"}


def _json(obj: Any, status: int = 200, **kw) -> web.Response:
    return web.json_response(obj, status=status, dumps=dumps, **kw)


async def _read_json(request: web.Request, wire) -> "tuple[Any, Optional[web.Response]]":
    """(parsed body or None, an error response or None). Over max_body -> 413."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        msg = f"Request body larger than {request.app[STATE].config.max_body} bytes."
        body = wire.error_body(413, msg)
        # Close: the rest of the oversized body is still on its way.
        return None, _json(body, 413, headers={"Connection": "close"})
    try:
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError):
        if isinstance(wire, AIEngineWire):
            body = {"code": "rest_invalid_json", "message": "Invalid JSON body passed.", "data": {"status": 400}}
        else:
            body = wire.error_body(400, "We could not parse the JSON body of your request.")
        return None, _json(body, 400)


def _record(request: web.Request, endpoint: str, body: Any) -> None:
    request.app[STATE].stats.request(endpoint, request.method, request.path, request.headers, body)


def _choose_fault(state: ServerState, directive: Optional[str], dialect: str, stream: bool) -> Optional[str]:
    # A directive names the fault for this request only; the server-wide one
    # is left untouched for the next request.
    if directive is not None:
        return directive
    return state.fault.take(lambda name: faults_mod.applies(name, dialect, stream))


async def _reply(request: web.Request, endpoint: str, wire, messages: list, new_message: Optional[str], stream: bool,
                 max_tokens: Optional[int] = None) -> web.StreamResponse:
    """Decide the turn for a checked chat request, pick its fault (if any), and play it."""
    state = request.app[STATE]
    cfg = state.config
    text, directives = compose(messages, new_message, chunk_size=cfg.chunk_size)
    if max_tokens is not None and count_tokens(text) > max_tokens:
        # Tokens are ceil(characters / 4) here: max_tokens * 4 characters is the longest reply that fits.
        text = text[: max_tokens * 4]
        wire.finish_reason = "length"
    if directives.fault is not None and directives.fault not in faults_mod.FAULTS:
        msg = f"Unknown fault {directives.fault!r}. Known faults: {', '.join(faults_mod.fault_names())}."
        return _json(wire.error_body(400, msg), 400)
    turn = Turn(
        endpoint=endpoint,
        wire=wire,
        chunks=split_chunks(text, directives.chunk or cfg.chunk_size),
        delay=cfg.delay if directives.delay is None else directives.delay,
        prompt_tokens=prompt_tokens(messages),
        stream=stream,
        config=cfg,
        directives=directives,
    )
    fault_name = _choose_fault(state, directives.fault, wire.name, stream)
    if fault_name is None:
        play = answer
    else:
        state.stats.fault(fault_name)
        play = faults_mod.FAULTS[fault_name].run
    return await EventStream(request, turn, state).run(lambda s: play(request, turn, s))


# -- AI Engine ------------------------------------------------------------------


def _rejected_in_stream(stream: bool) -> web.Response:
    """The plugin's answer to a request its chatbot refuses (message too long, no chatbot).

    chat_submit() throws before the stream headers go out, so a streamed request
    gets one error event in a body still labelled application/json (the REST
    server's default), HTTP 200; a non-streamed one a 500.
    """
    if stream:
        return web.Response(status=200, body=sse({"type": "error", "data": REJECTED_TEXT}),
                            headers={"Content-Type": "application/json; charset=UTF-8"})
    return _json(REJECTED, 500)


async def submit(request: web.Request) -> web.StreamResponse:
    if _pretty_path_on_a_plain_site(request):
        return _home_page()
    state = request.app[STATE]
    cfg = state.config
    body, error = await _read_json(request, AIEngineWire())
    _record(request, "submit", body)
    if error is not None:
        return error
    nonce = request.headers.get("X-WP-Nonce")
    if cfg.require_nonce:
        if not nonce:
            return _json(NONCE_MISSING, 401)
        if not state.nonces.valid(nonce):
            return _json(NONCE_INVALID, 403)
    if not isinstance(body, dict):
        return _json(REJECTED, 403)
    new_message = body.get("newMessage")
    new_message = new_message.strip() if isinstance(new_message, str) else ""
    if not new_message or not (body.get("botId") or body.get("customId")):
        return _json(REJECTED, 403)
    stream = bool(body.get("stream", False))
    bot = body.get("customId") or body.get("botId")
    if bot not in cfg.bot_ids and "default" not in cfg.bot_ids:  # no chatbot to fall back on
        return _rejected_in_stream(stream)
    if cfg.input_limit and len(new_message) > cfg.input_limit:
        return _rejected_in_stream(stream)
    history = body.get("messages") if isinstance(body.get("messages"), list) else []
    messages = history + [{"role": "user", "content": new_message}]
    extra = {"new_token": state.nonces.issue()} if cfg.require_nonce and state.nonces.is_old(nonce) else None
    # No responseId: the plugin sends one only when its engine reported an id.
    wire = AIEngineWire(extra=extra)
    return await _reply(request, "submit", wire, messages, new_message, stream)


async def start_session(request: web.Request) -> web.Response:
    if _pretty_path_on_a_plain_site(request):
        return _home_page()
    state = request.app[STATE]
    # The plugin ignores the body; we keep it (if it is JSON) for the stats.
    try:
        body = json.loads(await request.read()) if request.can_read_body else None
    except (ValueError, UnicodeDecodeError, web.HTTPRequestEntityTooLarge):
        body = None
    _record(request, "start_session", body)
    return _json({"success": True, "sessionId": secrets.token_hex(7), "restNonce": state.nonces.issue()})


async def rest_index(request: web.Request) -> web.Response:
    if _pretty_path_on_a_plain_site(request):
        return _home_page()
    base = _site(request)
    return _json({"name": "opchat-magic local server", "url": base, "home": base,
                  "namespaces": ["mwai/v1", "mwai-ui/v1"]})


_REST_ROUTES = {"/mwai-ui/v1/chats/submit": ("POST", submit), "/mwai/v1/start_session": ("POST", start_session),
                "/": ("GET", rest_index), "": ("GET", rest_index)}


async def rest_route(request: web.Request) -> web.StreamResponse:
    """``/?rest_route=/...``: the REST API as a plain-permalink site spells it."""
    route = request.query.get("rest_route")
    if route is None:
        return _home_page()
    method, handler = _REST_ROUTES.get(route.rstrip("/") if route != "/" else route, (None, None))
    if handler is None or request.method != method:
        return _json({"code": "rest_no_route", "message": "No route was found matching the URL and request method.",
                      "data": {"status": 404}}, 404)
    return await handler(request)


# -- OpenAI-compatible -------------------------------------------------------------


def _bad_key(request: web.Request) -> Optional[web.Response]:
    key = request.app[STATE].config.api_key
    if key is None:
        return None
    given = request.headers.get("Authorization", "")
    if secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
        return None
    # The real API echoes a masked key; we echo nothing of it.
    return _json(OPENAI_BAD_KEY, 401)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    wire = OpenAIWire(f"chatcmpl-{state.next_id()}", state.config.model)
    body, error = await _read_json(request, wire)
    _record(request, "chat_completions", body)
    denied = _bad_key(request)  # OpenAI checks the key before anything else
    if denied is not None:
        return denied
    if error is not None:
        return error
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return _json(wire.error_body(400, "'messages' must be a non-empty array.", param="messages"), 400)
    model = body.get("model")
    if state.config.strict_models and model not in state.config.served_models():
        return _model_not_found(wire, model)
    if isinstance(model, str) and model:
        wire.model = model  # echoed back, as local servers do
    n = body.get("n", 1)
    if n is not None and n != 1:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            msg = f"Invalid 'n': expected an integer >= 1, got {json.dumps(n)}."
        else:
            msg = f"This server returns one choice per request: 'n' must be 1 (got {n})."
        return _json(wire.error_body(400, msg, param="n", code="unsupported_value"), 400)
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            msg = f"Invalid '{name}': expected an integer >= 1, got {json.dumps(value)}."
            return _json(wire.error_body(400, msg, param=name, code="invalid_value"), 400)
        max_tokens = value if max_tokens is None else min(max_tokens, value)
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    wire.include_usage = bool(options.get("include_usage"))
    return await _reply(request, "chat_completions", wire, messages, None, bool(body.get("stream", False)),
                        max_tokens=max_tokens)


def _model_entry(model: str) -> dict:
    return {"id": model, "object": "model", "created": 0, "owned_by": "opchat-magic"}


def _model_not_found(wire, model: Any) -> web.Response:
    msg = f"The model `{model}` does not exist or you do not have access to it."
    return _json(wire.error_body(404, msg, param="model", code="model_not_found"), 404)


async def models(request: web.Request) -> web.Response:
    _record(request, "models", None)
    denied = _bad_key(request)
    if denied is not None:
        return denied
    served = request.app[STATE].config.served_models()
    return _json({"object": "list", "data": [_model_entry(m) for m in served]})


async def model(request: web.Request) -> web.Response:
    _record(request, "models", None)
    denied = _bad_key(request)
    if denied is not None:
        return denied
    ident = request.match_info["model"]
    if ident not in request.app[STATE].config.served_models():
        return _model_not_found(OpenAIWire("", ""), ident)
    return _json(_model_entry(ident))


async def openai_not_found(request: web.Request) -> web.Response:
    """What OpenAI answers for a path or method it does not serve."""
    msg = f"Invalid URL ({request.method} {request.path})"
    return _json(OpenAIWire("", "").error_body(404, msg, code=None), 404)


# -- admin (tests) ------------------------------------------------------------------


def fault_status(state: ServerState) -> dict:
    name, left = state.fault.peek()
    return {"fault": name, "count": left}


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({**state.stats.snapshot().to_json(mask=True), **fault_status(state)})


async def set_fault(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return _json({"error": "body must be JSON"}, 400)
    if not isinstance(body, dict) or "fault" not in body:
        return _json({"error": 'expected {"fault": NAME or null, "count": N or null}'}, 400)
    name = body["fault"]
    try:
        state.config.tune(**{k: body[k] for k in FAULT_TUNING if k in body})
        if name is None:
            state.fault.clear()
        else:
            faults_mod.check_fault_name(name)
            count = body.get("count", 1)
            if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                raise ValueError("count must be an integer or null")
            state.fault.set(name, count)
    except (TypeError, ValueError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(fault_status(state))


async def reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].stats.reset()
    return _json({"ok": True})


async def expire_nonces(request: web.Request) -> web.Response:
    request.app[STATE].nonces.expire()
    return _json({"ok": True})


async def age_nonces(request: web.Request) -> web.Response:
    request.app[STATE].nonces.age()
    return _json({"ok": True})


# -- plumbing ---------------------------------------------------------------------


@web.middleware
async def track_tasks(request: web.Request, handler):
    # Remembered so that stopping the server cancels open streams at once
    # instead of waiting for a 60 s keepalive_only fault to end.
    tasks = request.app[TASKS]
    task = asyncio.current_task()
    tasks.add(task)
    try:
        return await handler(request)
    finally:
        tasks.discard(task)


async def _count_status(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v1/"):
        response.headers.setdefault("x-request-id", "req_" + secrets.token_hex(16))
    route = request.match_info.route.name
    if route in _WORDPRESS_ROUTES:
        response.headers.setdefault("Link", REST_LINK.format(_rest_root(request)))
    transport = request.transport
    # A connection we (or the client) already closed sends no status at all.
    if route in _COUNTED and transport is not None and not transport.is_closing():
        request.app[STATE].stats.status(response.status)


def build_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=state.config.max_body, middlewares=[track_tasks])
    app[STATE] = state
    app[TASKS] = set()
    app.on_response_prepare.append(_count_status)
    r = app.router
    r.add_post("/wp-json/mwai-ui/v1/chats/submit", submit, name="submit")
    r.add_post("/wp-json/mwai/v1/start_session", start_session, name="start_session")
    r.add_get("/wp-json/", rest_index, name="rest_index")
    r.add_route("*", "/", rest_route, name="rest_route")
    r.add_route("*", "/index.php", rest_route, name="rest_route_index")
    r.add_post("/v1/chat/completions", chat_completions, name="chat_completions")
    r.add_get("/v1/models", models, name="models")
    r.add_get("/v1/models/{model:.+}", model, name="model")
    r.add_get("/_opchat/stats", stats, name="admin_stats")
    r.add_post("/_opchat/fault", set_fault, name="admin_fault")
    r.add_post("/_opchat/reset", reset_stats, name="admin_reset")
    r.add_post("/_opchat/expire_nonces", expire_nonces, name="admin_expire_nonces")
    r.add_route("*", "/v1/{tail:.*}", openai_not_found, name="openai_not_found")
    r.add_post("/_opchat/age_nonces", age_nonces, name="admin_age_nonces")
    return app


async def cancel_open_requests(app: web.Application) -> None:
    tasks = [t for t in app[TASKS] if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2)
