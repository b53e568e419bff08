"""Reaching an AI Engine site: where its REST root is and which nonce it wants.

Before any reply text a turn may take up to two more requests, each at most
once: a guessed REST root that turns out to be a web page (plain permalinks)
moves to the root the page's ``Link`` header names, and a refused nonce (401
``rest_forbidden`` / 403 ``rest_cookie_invalid_nonce``) is replaced by a fresh
one from ``start_session``. What is learnt goes into the provider's
:class:`~.wordpress.SiteCache`, so later turns take one request.
"""
from __future__ import annotations

from typing import Optional

from ..errors import ServerError, redact
from .aiengine_answer import AUTO, NO_NONCE, is_nonce_refusal, status_hint
from .wordpress import Endpoint, SiteCache, link_root

__all__ = ["open_submit", "post_submit", "fetch_nonce"]



async def post_submit(session, req, proxy, headers, secrets, stack):
    """POST the turn: ``(response, first)`` once the headers are in, or the :class:`Endpoint` to try instead.

    ``first`` is None for a body labelled ``text/event-stream``, else its
    first bytes (read to tell a web page from an answer). The response is
    entered on ``stack`` only when kept; a web page (or 404) at a guessed
    REST root is closed, and the endpoint its ``Link`` header names (else
    the plain-permalink root) returned instead.
    """
    from contextlib import AsyncExitStack

    from ..errors import HTTPStatusError
    from .http import is_event_stream, open_post, read_first, sniff

    url = req.url
    attempt = AsyncExitStack()
    try:
        response = await attempt.enter_async_context(
            open_post(session, url, json=req.payload, headers=headers,
                      proxy=proxy, timeouts=req.timeouts, secrets=secrets))
    except HTTPStatusError as exc:
        if exc.status == 404 and req.endpoint.guessed:
            return req.endpoint.moved(None)
        raise
    try:
        first = None  # an event stream: nothing read yet
        if not is_event_stream(response):
            first = await read_first(response, url, req.timeouts)
            if req.endpoint.guessed and sniff(first) == "html":
                # A web page, not the REST API: the site has plain permalinks (or its
                # REST root is elsewhere); the page's Link header says where. A page
                # naming this very root is something else (a proxy's or captcha page).
                root = link_root(response.headers, req.endpoint.site)
                if root != req.endpoint.root:
                    await attempt.aclose()
                    return req.endpoint.moved(root)
    except BaseException:
        await attempt.aclose()
        raise
    await stack.enter_async_context(attempt)
    return response, first

async def fetch_nonce(sites: SiteCache, session, req, proxy: Optional[str]) -> str:
    """A fresh REST nonce from ``start_session`` (cached for the site)."""
    from .http import post_json

    url = req.endpoint.session_url
    answer = await post_json(session, url, json={}, headers=req.headers, proxy=proxy,
                             timeouts=req.timeouts, secrets=req.secrets)
    nonce = answer.get("restNonce") if isinstance(answer, dict) else None
    if not isinstance(nonce, str) or not nonce:
        message = answer.get("message") if isinstance(answer, dict) else None
        raise ServerError(
            f"{url} gave no restNonce"
            + (f": {redact(str(message), req.secrets)}" if message else "")
            + ". Sites on AI Engine < 2.4.4 have no start_session: pass the page's restNonce as nonce=..."
        )
    sites.set_nonce(req.endpoint, nonce)
    return nonce

async def open_submit(sites: SiteCache, session, req, proxy, stack):
    """Open the submit stream: (response, first bytes, secrets), retrying at most twice.

    Once when a guessed REST root turns out wrong (plain permalinks), once
    when the site refuses the nonce (none, stale or wrong): a fresh one from
    ``start_session`` (auto mode only). Both happen before any reply text.
    """
    from ..errors import HTTPStatusError

    guessed, refreshed = req.endpoint.guessed, False
    while True:
        nonce = req.nonce if req.nonce not in (AUTO, NO_NONCE) else (
            sites.nonce(req.endpoint) if req.nonce == AUTO else None)
        headers = {**req.headers, "X-WP-Nonce": nonce} if nonce else req.headers
        secrets = tuple(sorted({*req.secrets, *([nonce] if nonce else [])}, key=len, reverse=True))
        try:
            answer = await post_submit(session, req, proxy, headers, secrets, stack)
        except HTTPStatusError as exc:
            if req.endpoint.guessed:  # a REST error: the guessed root is the right one
                req.endpoint = req.endpoint.confirmed()
                sites.learn_root(req.endpoint)
            if req.nonce == AUTO and not refreshed and is_nonce_refusal(exc):
                refreshed = True
                sites.set_nonce(req.endpoint, None)
                await fetch_nonce(sites, session, req, proxy)
                continue
            raise status_hint(exc, req, refreshed) from None
        if isinstance(answer, Endpoint):  # moved (once: the new endpoint is not a guess)
            req.endpoint = answer
            continue
        response, first = answer
        if guessed:
            req.endpoint = req.endpoint.confirmed()
            sites.learn_root(req.endpoint)
        return response, first, secrets
