"""Proxies and custom CA bundles, with a real forward proxy and a real TLS server on 127.0.0.1.

What aiohttp does with the environment (read in aiohttp 3.14's ``client.py`` and
``helpers.py``, and CPython 3.11's ``urllib.request``):

* ``proxy=`` on the request always wins; the environment is not consulted then.
* With ``trust_env=True`` and no ``proxy=``, every request calls
  ``helpers.get_env_proxy_for_url(url)`` (in a thread, so env changes apply to
  the next request). It first asks ``urllib.request.proxy_bypass(host)``, which on
  Linux is ``proxy_bypass_environment``: only ``NO_PROXY`` / ``no_proxy`` entries
  (exact host, domain suffix, or ``*``) bypass. Loopback is NOT special-cased: with
  ``HTTP_PROXY`` set and no ``NO_PROXY``, requests to 127.0.0.1 go through the
  proxy (unlike macOS/Windows, where ``proxy_bypass`` also reads the system
  settings). So a local server behind a corporate ``HTTP_PROXY`` needs
  ``NO_PROXY=127.0.0.1,localhost``.
* Then ``proxies_from_env()`` = ``urllib.request.getproxies()`` filtered to
  http/https/ws/wss; lowercase variables win over uppercase, and uppercase
  ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD`` is set (CGI, httpoxy).
  ``https://`` proxy URLs are dropped with a warning (aiohttp cannot TLS to a proxy).
  The proxy for a URL is chosen by the *target's* scheme (``http_proxy`` for
  ``http://`` targets). Credentials in the proxy URL (or ~/.netrc) become
  ``Proxy-Authorization``.
* aiohttp's default SSL context is built once, when ``aiohttp.connector`` is
  imported, with ``ssl.create_default_context()``; OpenSSL reads ``SSL_CERT_FILE``
  / ``SSL_CERT_DIR`` at that moment only. ``OpenAICompatible`` therefore builds
  its own context from those variables on every request where they are set.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from typing import Optional
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from opchat_magic.errors import EndpointUnreachableError, HTTPStatusError
from opchat_magic.providers.http import ssl_context_from_env
from opchat_magic.providers.openai_compat import OpenAICompatible
from opchat_magic.server import LocalServer, reply_text

pytestmark = pytest.mark.timeout(60)

ENV = ("OPCHAT_BASE_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY", "OPCHAT_MODEL",
       "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
       "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUEST_METHOD")
MESSAGES = [{"role": "user", "content": "through the proxy"}]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


class ForwardProxy:
    """A minimal HTTP forward proxy: absolute-URI requests, streamed back as they arrive.

    One request per client connection (it answers ``Connection: close``). It
    counts requests and keeps their request lines and ``Proxy-Authorization``.
    An unreachable target gets a 502 with a plain-text reason.
    """

    def __init__(self):
        self.count = 0
        self.request_lines = []
        self.proxy_auth = []
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks = set()

    @property
    def url(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> "ForwardProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        upstream_writer = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [l for l in lines[1:] if l]
            self.count += 1
            self.request_lines.append(lines[0])
            auth = [h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")]
            self.proxy_auth.append(auth[0] if auth else None)
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            length = 0
            for h in headers:
                if h.lower().startswith("content-length:"):
                    length = int(h.split(":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            try:
                up_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, parts.port or 80), 5)
            except OSError as exc:
                text = f"proxy could not reach {parts.hostname}:{parts.port}: {exc.strerror or exc}".encode()
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                             b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text)
                return
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            keep = [h for h in headers if h.split(":", 1)[0].lower()
                    not in ("proxy-authorization", "proxy-connection", "connection", "keep-alive")]
            out = f"{method} {path} {version}\r\n" + "\r\n".join(keep + ["Connection: close"]) + "\r\n\r\n"
            upstream_writer.write(out.encode("latin-1") + body)
            await upstream_writer.drain()
            # Stream the response back as it arrives (the upstream closes after it: Connection: close).
            while True:
                data = await asyncio.wait_for(up_reader.read(65536), 30)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            for w in (upstream_writer, writer):
                if w is not None:
                    w.close()
            self._tasks.discard(task)


@pytest.fixture
async def proxy():
    async with ForwardProxy() as p:
        yield p


@pytest.fixture
async def server():
    async with LocalServer(delay=0) as srv:
        yield srv


async def run(stream):
    return "".join([t async for t in stream])


async def test_proxy_argument_goes_through_the_proxy(proxy, server):
    stream = OpenAICompatible.create_async_generator("m", MESSAGES, proxy=proxy.url, base_url=server.openai_base_url)
    assert await run(stream) == reply_text(MESSAGES)
    assert stream.reply.complete
    assert proxy.count == 1
    assert proxy.request_lines == [f"POST {server.openai_base_url}/chat/completions HTTP/1.1"]
    assert server.stats.requests["chat_completions"] == 1
    assert server.stats.last_body["messages"] == MESSAGES


async def test_http_proxy_env_is_honoured(proxy, server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    stream = OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url)
    assert await run(stream) == reply_text(MESSAGES)
    assert proxy.count == 1 and server.stats.requests["chat_completions"] == 1
    # a second request: env read again per request, still proxied
    await run(OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url))
    assert proxy.count == 2 and server.stats.requests["chat_completions"] == 2


async def test_lowercase_http_proxy_env_is_honoured(proxy, server, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    await run(OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url))
    assert proxy.count == 1


async def test_https_proxy_env_does_not_apply_to_http_targets(proxy, server, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    await run(OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url))
    assert proxy.count == 0 and server.stats.requests["chat_completions"] == 1


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
async def test_no_proxy_bypasses_the_proxy(proxy, server, monkeypatch, no_proxy):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    stream = OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url)
    assert await run(stream) == reply_text(MESSAGES)
    assert proxy.count == 0
    assert server.stats.requests["chat_completions"] == 1


async def test_proxy_argument_wins_over_no_proxy(proxy, server, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "*")
    await run(OpenAICompatible.create_async_generator("m", MESSAGES, proxy=proxy.url, base_url=server.openai_base_url))
    assert proxy.count == 1


async def test_proxy_credentials_are_sent_and_never_shown(proxy, monkeypatch):
    password = "pr0xy-pa55word-xyz"
    authed = proxy.url.replace("http://", f"http://alice:{password}@")
    async with LocalServer(delay=0) as srv:
        dead = srv.openai_base_url  # closed after this block
    with pytest.raises(HTTPStatusError) as err:
        await run(OpenAICompatible.create_async_generator("m", MESSAGES, proxy=authed, base_url=dead,
                                                          api_key="sk-proxy-test-key-123"))
    assert err.value.status == 502 and "proxy could not reach" in str(err.value)
    import base64

    assert proxy.proxy_auth == ["Basic " + base64.b64encode(f"alice:{password}".encode()).decode()]
    text = str(err.value) + repr(err.value)
    assert password not in text and "sk-proxy-test-key-123" not in text


async def test_dead_proxy_is_endpoint_unreachable(server):
    async with ForwardProxy() as gone:
        url = gone.url
    with pytest.raises(EndpointUnreachableError) as err:
        await run(OpenAICompatible.create_async_generator("m", MESSAGES, proxy=url, base_url=server.openai_base_url,
                                                          connect_timeout=5))
    assert "proxy" in str(err.value)
    assert server.stats.requests.get("chat_completions", 0) == 0


# ---------------------------------------------------------------- custom CA bundle (SSL_CERT_FILE)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
async def tls_server(self_signed):
    """An HTTPS OpenAI-style endpoint on 127.0.0.1 with a self-signed certificate."""
    cert, key = self_signed

    async def chat(request):
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ("secure ", "hello"):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        assert body["stream"] is True
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/v1", cert
    finally:
        await runner.cleanup()


async def test_untrusted_certificate_is_a_tls_error(tls_server):
    base, _ = tls_server
    with pytest.raises(EndpointUnreachableError) as err:
        await run(OpenAICompatible.create_async_generator("m", MESSAGES, base_url=base))
    assert "TLS" in str(err.value) or "certificate" in str(err.value).lower()


async def test_ssl_cert_file_set_after_import_is_used(tls_server, monkeypatch):
    base, cert = tls_server
    import aiohttp.connector  # noqa: F401  (imported long before the variable is set)

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    stream = OpenAICompatible.create_async_generator("m", MESSAGES, base_url=base)
    assert await run(stream) == "secure hello"
    assert stream.reply.complete
    assert ssl_context_from_env() is ssl_context_from_env()  # cached while the file is unchanged


async def test_ssl_cert_file_missing_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nope.pem"))
    with pytest.raises(OSError, match="SSL_CERT_FILE"):
        ssl_context_from_env()


async def test_given_session_is_used_as_is(proxy, server, monkeypatch):
    # With session=, the caller's session settings apply (trust_env is theirs to choose).
    async with aiohttp.ClientSession(trust_env=False) as session:
        stream = OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url,
                                                         proxy=proxy.url, session=session)
        assert await run(stream) == reply_text(MESSAGES)
        # HTTP_PROXY would apply to a session of the provider's own (trust_env=True), not to this one.
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        stream = OpenAICompatible.create_async_generator("m", MESSAGES, base_url=server.openai_base_url,
                                                         session=session)
        assert await run(stream) == reply_text(MESSAGES)
    assert proxy.count == 1
    assert server.stats.requests["chat_completions"] == 2
