"""Where a WordPress site's REST API lives, and the REST nonce it wants: per site, cached.

AI Engine's endpoints hang off the site's REST root, which has two spellings
(PROTOCOL.md):

* pretty permalinks: ``{site}/wp-json/`` (``{site}/wp-json/mwai-ui/v1/chats/submit``)
* plain permalinks:  ``{site}/?rest_route=/`` (``{site}/?rest_route=/mwai-ui/v1/chats/submit``);
  such a site answers ``/wp-json/...`` with its home page (HTML, 200)

A user may give the site URL, its REST root, or a full endpoint URL
(:func:`parse`). From a bare site URL the root is a guess (``/wp-json/``) until
the site answers; when the answer is a web page (or a 404), the page's
``Link: <...>; rel="https://api.w.org/"`` header (every WordPress page sends
it) names the real root, else ``?rest_route=/`` is used: at most one extra
request per site. What was learnt is kept in :class:`SiteCache` for the
process (the REST root per site URL, the nonce per REST root; WordPress nonces
live 12-24 h and a guest's nonce is the same for every guest).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["Endpoint", "SiteCache", "parse", "link_root", "SUBMIT_ROUTE", "SESSION_ROUTE", "REST_LINK_REL"]

SUBMIT_ROUTE = "mwai-ui/v1/chats/submit"
SESSION_ROUTE = "mwai/v1/start_session"
REST_LINK_REL = "https://api.w.org/"

_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)')


@dataclass(frozen=True)
class Endpoint:
    """A site and its REST root. ``guessed``: the root is a guess from a bare site URL."""

    site: str  # the site URL, no trailing slash (Origin / Referer, the cache key)
    root: str  # ".../wp-json/" or ".../?rest_route=/" (always ends in "/")
    guessed: bool = False

    def route(self, route: str) -> str:
        """The URL of a REST route (``"mwai-ui/v1/chats/submit"``) on this site."""
        return self.root + route.lstrip("/")

    @property
    def submit_url(self) -> str:
        return self.route(SUBMIT_ROUTE)

    @property
    def session_url(self) -> str:
        return self.route(SESSION_ROUTE)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.site)
        return f"{parts.scheme}://{parts.netloc}"

    def moved(self, root: Optional[str]) -> "Endpoint":
        """This site at REST root ``root`` (or, when None, at the plain-permalink root)."""
        return Endpoint(self.site, root or _plain_root(self.site), guessed=False)

    def confirmed(self) -> "Endpoint":
        return Endpoint(self.site, self.root, guessed=False) if self.guessed else self


def _plain_root(site: str) -> str:
    return site + "/?rest_route=/"


def parse(url: str) -> Endpoint:
    """The endpoint a user's URL names: a site URL, a REST root, or a full route URL.

    ``http://h/blog``, ``http://h/blog/wp-json/``, ``http://h/blog/wp-json/mwai-ui/v1/chats/submit``,
    ``http://h/blog/?rest_route=/`` and ``http://h/blog/?rest_route=/mwai-ui/v1/chats/submit``
    all name the site ``http://h/blog``; only the first leaves its root to be found out.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the URL must start with http:// or https:// and name a host, got {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "rest_route" for key, _ in query):
        path = parts.path or "/"
        others = urlencode([(k, v) for k, v in query if k != "rest_route"])
        base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        root = base + "?" + (others + "&" if others else "") + "rest_route=/"
        site_path = path[: -len("index.php")] if path.endswith("index.php") else path
        site = urlunsplit((parts.scheme, parts.netloc, site_path.rstrip("/"), "", ""))
        return Endpoint(site, root)
    path = parts.path
    at = path.find("/wp-json")
    if at >= 0 and path[at + len("/wp-json"): at + len("/wp-json") + 1] in ("", "/"):
        site = urlunsplit((parts.scheme, parts.netloc, path[:at], "", ""))
        return Endpoint(site, site + "/wp-json/")
    site = urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))
    return Endpoint(site, site + "/wp-json/", guessed=True)


def link_root(headers, site: str) -> Optional[str]:
    """The REST root a response's ``Link: <...>; rel="https://api.w.org/"`` header names.

    Only a root on the site's own origin is taken (a page must not send our
    nonce elsewhere); None when there is none.
    """
    getall = getattr(headers, "getall", None)
    values = getall("Link", []) if getall else [headers.get("Link")] if headers.get("Link") else []
    origin = urlsplit(site)
    for value in values:
        for match in _LINK.finditer(value):
            target, params = match.group(1).strip(), match.group(2)
            rels = re.findall(r'rel\s*=\s*"?([^";]+)"?', params)
            if not any(REST_LINK_REL in rel.split() for rel in rels):
                continue
            parts = urlsplit(target)
            if (parts.scheme, parts.netloc) != (origin.scheme, origin.netloc):
                continue
            if "rest_route=" in parts.query:
                return parse(target).root
            return target if target.endswith("/") else target + "/"
    return None


class SiteCache:
    """What the process learnt about sites: REST roots and nonces. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: dict = {}
        self._nonces: dict = {}

    def endpoint(self, url: str) -> Endpoint:
        """The endpoint for ``url``, using a REST root learnt earlier for a bare site URL."""
        endpoint = parse(url)
        if endpoint.guessed:
            with self._lock:
                root = self._roots.get(endpoint.site)
            if root is not None:
                return Endpoint(endpoint.site, root)
        return endpoint

    def learn_root(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._roots[endpoint.site] = endpoint.root

    def nonce(self, endpoint: Endpoint) -> Optional[str]:
        with self._lock:
            return self._nonces.get(endpoint.root)

    def set_nonce(self, endpoint: Endpoint, nonce: Optional[str]) -> None:
        with self._lock:
            if nonce:
                self._nonces[endpoint.root] = nonce
            else:
                self._nonces.pop(endpoint.root, None)

    def forget(self, url: Optional[str] = None) -> None:
        """Forget one site (by any of its URLs), or everything."""
        with self._lock:
            if url is None:
                self._roots.clear()
                self._nonces.clear()
                return
            endpoint = parse(url)
            root = self._roots.pop(endpoint.site, None)
            for key in {endpoint.root, root}:
                self._nonces.pop(key, None)
