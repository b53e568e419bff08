"""First cell with nothing reachable: one message that fits, and the local servers already running.

The probe is tested against real servers on 127.0.0.1 (the port list is
injected: free ports, never the usual fixed ones); the advice against the
real errors our provider raises.
"""
from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time

import pytest

from opchat_magic.errors import EndpointUnreachableError, StreamTimeoutError
from opchat_magic.probe import CANDIDATES, Candidate, Found, probe, probe_sync
from opchat_magic.providers.opchatgpts import Opchatgpts
from opchat_magic.server import LocalServer
from opchat_magic.testing import free_port
from opchat_magic.unreachable import advise, is_unreachable


@pytest.fixture
def echo_server():
    with LocalServer(delay=0) as server:
        yield server


@pytest.fixture
def web_page():
    """A web server that is not a model server: 404 HTML on /v1/models."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>not here</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def black_hole():
    """A port that accepts connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1].strip("/"))


def test_probe_offers_only_real_model_servers_within_the_time_bound(echo_server, web_page, black_hole):
    candidates = [
        Candidate("Ollama", free_port(), "ollama"),                     # nothing listening
        Candidate("llama.cpp", web_page, "llamacpp"),                   # a web page, not a model list
        Candidate("LM Studio", black_hole, "lmstudio"),                 # accepts, never answers
        Candidate("vLLM", _port(echo_server), "vllm"),                  # a real OpenAI-compatible server
    ]
    start = time.monotonic()
    found = probe_sync(candidates, timeout=0.3)
    elapsed = time.monotonic() - start
    assert [f.candidate.label for f in found] == ["vLLM"]
    assert found[0].models == ["opchat-local"]
    assert found[0].config_lines == [
        "%config OpchatMagics.provider = 'vllm'",
        f"%config OpchatMagics.url = 'http://127.0.0.1:{_port(echo_server)}/v1'",
        "%config OpchatMagics.model = 'opchat-local'",
    ]
    assert elapsed < 1.0, elapsed  # the 0.3 s bound (plus thread hops), with the black hole holding on


def test_probe_is_concurrent(black_hole):
    """Five silent ports cost one timeout, not five."""
    candidates = [Candidate(f"c{i}", black_hole, "openai") for i in range(5)]
    start = time.monotonic()
    assert probe_sync(candidates, timeout=0.3) == []
    assert time.monotonic() - start < 1.0


def test_probe_skips_the_port_that_failed(echo_server):
    port = _port(echo_server)
    candidates = [Candidate("ours", port, "opchatgpts", f"http://127.0.0.1:{port}")]
    assert probe_sync(candidates, skip_ports=[port]) == []
    assert [f.candidate.label for f in probe_sync(candidates)] == ["ours"]


def test_usual_ports_are_the_documented_ones():
    assert {c.port: c.provider for c in CANDIDATES} == {
        8765: "opchatgpts", 11434: "ollama", 8080: "llamacpp", 1234: "lmstudio", 8000: "vllm"}


# -- the message ------------------------------------------------------------------------

async def _real_error(url: str) -> BaseException:
    stream = Opchatgpts.create_async_generator("", [{"role": "user", "content": "hi"}], url=url, connect_timeout=2)
    with pytest.raises(Exception) as info:
        async with stream:
            async for _ in stream:
                pass
    return info.value


def _html(markdown: str) -> str:
    import mistune

    return mistune.create_markdown(escape=True)(markdown)


async def test_refused_on_the_local_url_says_start_the_local_server():
    port = free_port()
    error = await _real_error(f"http://127.0.0.1:{port}")
    assert isinstance(error, EndpointUnreachableError) and is_unreachable(error)
    advice = advise(error, found=[])
    assert advice.kind == "refused_local"
    assert f"opchat-magic serve --port {port}" in advice.text
    assert advice.text.count("Nothing is listening") == 1
    # it does not advise setting the URL it already has
    assert f"OpchatMagics.url = 'http://127.0.0.1:{port}'" not in advice.text


def test_refused_on_the_default_local_port():
    advice = advise(EndpointUnreachableError("http://127.0.0.1:8765/wp-json/mwai-ui/v1/chats/submit",
                                             "connection refused"))
    assert "Start the local server in a terminal: opchat-magic serve " in advice.text
    assert "`opchat-magic serve`" in advice.markdown


def test_refused_on_ollamas_port_says_start_ollama():
    advice = advise(EndpointUnreachableError("http://127.0.0.1:11434/v1/chat/completions", "connection refused"))
    assert "ollama serve" in advice.text


def test_opchatgpts_net_is_gone_well_formatted_markdown():
    error = EndpointUnreachableError("https://opchatgpts.net/wp-json/mwai-ui/v1/chats/submit",
                                     "DNS lookup failed for 'opchatgpts.net'")
    advice = advise(error)
    assert advice.kind == "gone"
    assert advice.title.startswith("opchatgpts.net is gone")
    html = _html(advice.markdown)
    # real bullets, real code spans; no escaped wall of text
    assert html.count("<li>") == 4
    assert "<code>opchat-magic serve</code>" in html
    assert "\\" not in advice.markdown and "\\" not in advice.text
    assert "`" not in advice.text


def test_dns_failure_names_the_host():
    advice = advise(EndpointUnreachableError("https://my-wp.example/wp-json/x", "DNS lookup failed for 'my-wp.example'"))
    assert advice.kind == "dns"
    assert "Cannot find the host my-wp.example" in advice.text


def test_connect_timeout_counts_as_unreachable():
    assert is_unreachable(StreamTimeoutError("could not connect to http://10.0.0.1 within connect_timeout=10 s"))
    assert not is_unreachable(StreamTimeoutError("x accepted the connection but sent no response for read_timeout=5 s"))


def test_found_servers_are_offered_with_exact_lines_and_hostile_ids_stay_inert():
    found = [Found(Candidate("Ollama", 11434, "ollama"), ["llama3.2:latest", "<img src=x onerror=alert(1)>`"])]
    advice = advise(EndpointUnreachableError("https://opchatgpts.net/x", "connection refused"), found=found)
    assert "%config OpchatMagics.provider = 'ollama'" in advice.text
    assert "%config OpchatMagics.url = 'http://127.0.0.1:11434/v1'" in advice.text
    assert "%config OpchatMagics.model = 'llama3.2:latest'" in advice.text
    html = _html(advice.markdown)
    assert "<img" not in html  # the id stays text inside a code span
    assert "nothing switches on its own" in advice.text


async def test_probe_directly_in_a_loop(echo_server):
    port = _port(echo_server)
    found = await probe([Candidate("ours", port, "opchatgpts", f"http://127.0.0.1:{port}")], timeout=0.3)
    assert found and found[0].config_lines[:2] == [
        "%config OpchatMagics.provider = 'opchatgpts'", f"%config OpchatMagics.url = 'http://127.0.0.1:{port}'"]
    await asyncio.sleep(0)
