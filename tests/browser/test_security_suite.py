"""The browser security suite (issue 12): 185 hostile replies in a real JupyterLab + Chromium.

Each reply (tests/browser/hostile_replies.py: script, event handlers, script
schemes behind every Unicode space, remote and reference images, ``//host``
images, mermaid diagrams, math-pass tricks, -f code traps, terminal escapes)
goes through every front door of one notebook: a ``%%opchat`` cell, ``-f text``
cells, ``-f code`` cells, the chat panel's transcript and its live stream; then
the notebook is saved and reopened, trusted and untrusted, in parallel pages.

Proved for every page: no request to the attacker's host (Playwright intercepts
them at the browser context, and a real attacker server on 127.0.0.1 counts
hits), no script side effect (``window.__pwned``, dialogs), and in the DOM no
``href`` with a scheme but http/https/mailto, no image but an allowed
``data:`` one, no mermaid diagram.
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hostile_replies import ATTACKER, hostile_replies
from opchat_magic.server.replies import say_encode
from opchat_magic.testing import free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

DOM_CHECK = r"""() => {
  const bad = [];
  const md = '.jp-OutputArea .jp-RenderedMarkdown, .jp-OutputArea .jp-RenderedText, .opchat-panel .jp-RenderedMarkdown';
  for (const a of document.querySelectorAll(md.split(',').map(s => s + ' a[href]').join(','))) {
    const u = new URL(a.getAttribute('href'), document.baseURI);
    // JupyterLab itself linkifies ftp: and data: URLs in plain-text (stream) output: inert links
    // (Chromium navigates to neither), and not our markup; Markdown gets the strict allowlist.
    const ok = a.closest('.jp-RenderedText') ? ['http:', 'https:', 'mailto:', 'ftp:', 'data:'] : ['http:', 'https:', 'mailto:'];
    if (!ok.includes(u.protocol)) bad.push('href ' + a.getAttribute('href').slice(0, 120));
  }
  for (const el of document.querySelectorAll(md.split(',').map(s => s + ' [src], ' + s + ' [srcset], ' + s + ' [poster]').join(','))) {
    const v = el.getAttribute('src') || el.getAttribute('srcset') || el.getAttribute('poster') || '';
    if (!/^data:image\/(png|gif|jpeg|webp)[;,]/i.test(v)) bad.push(el.tagName + ' ' + v.slice(0, 120));
  }
  for (const el of document.querySelectorAll('.jp-OutputArea .jp-RenderedMermaid, .jp-OutputArea .jp-RenderedMarkdown svg, .opchat-panel svg'))
    bad.push('diagram ' + el.outerHTML.slice(0, 120));
  for (const el of document.querySelectorAll('.jp-OutputArea .jp-RenderedMarkdown *, .opchat-panel .jp-RenderedMarkdown *'))
    for (const at of el.getAttributeNames()) if (at.startsWith('on')) bad.push(el.tagName + ' ' + at);
  return bad;
}"""


class Attacker:
    """A real server on 127.0.0.1 that only counts who asks it for anything."""

    def __init__(self):
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def say(text: str) -> str:
    # the exact reply, in one chunk, at once
    return f"[[say:{say_encode(text)}]] [[delay:0]] [[chunk:1000000]]"


def _loop_cell(replies, flags: str) -> str:
    """One cell sending each reply through the magic in turn (its outputs all in this cell)."""
    blob = base64.b64encode(json.dumps([text for _name, text in replies]).encode()).decode()
    return ("import base64, json\nfrom opchat_magic.server.replies import say_encode\n"
            f"for _t in json.loads(base64.b64decode('{blob}')):\n"
            "    try:\n"
            f"        get_ipython().run_cell_magic('opchat', {flags!r}, "
            "f'[[say:{say_encode(_t)}]] [[delay:0]] [[chunk:1000000]]')\n"
            "    except Exception as _e:\n"
            "        print('failed:', type(_e).__name__)\n")


def _watch(page, log):
    page.on("dialog", lambda d: (log.append(f"dialog {d.message}"), d.dismiss()))


def _wait_all_run(nb, timeout: float = 600) -> None:
    """Run All is done: no cell queued or running ("[*]") for two seconds in a row."""
    deadline = time.monotonic() + timeout
    prompts = nb.page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt")
    quiet_since = None
    while time.monotonic() < deadline and not any("*" in t for t in prompts.all_inner_texts()):
        nb.page.wait_for_timeout(100)  # Run All has begun
    while time.monotonic() < deadline:
        busy = any("*" in t for t in prompts.all_inner_texts())
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 2:
            return
        nb.page.wait_for_timeout(300)  # (lets Playwright handle routes and dialogs meanwhile)
    raise TimeoutError("the notebook did not finish running")


def test_hostile_replies_fetch_nothing_and_run_nothing(browser, start_notebook, chat_server, tmp_path_factory):
    from playwright.sync_api import expect

    attacker = Attacker()
    replies = hostile_replies(attacker.port)
    assert len(replies) >= 150
    intercepted = []

    def block(route):
        intercepted.append(route.request.url)
        route.abort()

    attacker_hosts = (ATTACKER, f"127.0.0.1:{attacker.port}")
    # a pattern, not a callable: a callable would hold every request until Python looks at it
    browser.route(re.compile("|".join(re.escape(h) for h in attacker_hosts)), block)
    started = time.monotonic()

    # A notebook carrying many replies: loop cells (at most 40 replies, 40 outputs each:
    # JupyterLab shows 50 per cell), real %%opchat cells, -f text, the panel, -f code.
    loops = [_loop_cell(replies[i:i + 40], "-t hostile") for i in range(0, len(replies), 40)]
    cells_proper = [f"%%opchat -t hostile-cells\n{say(text)}" for _name, text in replies[::18]]
    plain = [_loop_cell(replies[::4], "-t hostile-text -f text")]
    panel = ["hostile_panel = ChatPanel(thread='hostile-text')\ndisplay(hostile_panel)"]
    code = [f"%%opchat -t hostile-code -f code\n{say(text)}" for name, text in replies
            if name.startswith(("code-", "xss-3", "mermaid-0"))]
    cells = ["%config OpchatMagics.footer = False"] + loops + cells_proper + plain + panel + code
    panel_index = 1 + cells.index(panel[0])
    nb = start_notebook("lab", cells, timeout=120)
    try:
        page = nb.page
        log = []
        _watch(page, log)
        nb.dialogs.clear()
        # Run > Run All Cells: every front door, one kernel, one page
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        _wait_all_run(nb)
        ran = time.monotonic() - started
        assert chat_server.stats.completed >= len(replies) + len(cells_proper) + len(replies[::4]) + len(code)

        # the panel: its transcript holds the thread's replies (every 4th one); two more stream in live
        box = nb.output(panel_index).locator(".opchat-panel")
        expect(box).to_be_visible(timeout=30_000)
        transcript = box.locator(".opchat-transcript")
        expect(transcript).to_contain_text("bell", timeout=180_000)  # the last reply of the thread
        area = box.locator(".opchat-panel-input textarea")
        for _name, text in (replies[0], next(r for r in replies if r[0] == "image-0")):
            area.fill(say(text))
            box.locator("button.opchat-panel-send").click()
            expect(box.locator(".opchat-status")).to_contain_text("✓", timeout=30_000)
        # -f code put code cells in: the prose after the closed fences is not in them
        editors = " ".join(page.locator(".jp-Notebook .jp-CodeCell .cm-content").all_inner_texts())
        assert "x = 1" in editors and "y = 2" in editors
        assert "import os  # prose" not in editors and "window.__pwned = 150" not in editors
        page.wait_for_timeout(1000)  # time for any onerror/onload handler to fire
        live = _problems(page, nb.dialogs + log)

        # save, then reopen trusted and untrusted, in parallel pages of the same browser
        page.keyboard.press("Control+s")
        path = nb.root / "chat.ipynb"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            saved = json.loads(path.read_text())
            shown = sum(1 for c in saved["cells"] for o in c.get("outputs", []) if "text/markdown" in o.get("data", {}))
            if shown >= len(replies):
                break
            page.wait_for_timeout(300)
        saved["metadata"]["reopened_untrusted"] = True  # another content hash: not in the trust database
        (nb.root / "untrusted.ipynb").write_text(json.dumps(saved))
        reopened = {}
        for name in ("chat.ipynb", "untrusted.ipynb"):
            other = browser.new_page()
            other_log = []
            _watch(other, other_log)
            other.goto(f"{nb.base}/lab/tree/{name}")
            reopened[name] = (other, other_log)
        assert shown >= len(replies), shown  # the saved notebook holds every reply
        for name, (other, other_log) in reopened.items():
            counts = _settled_count(other, ".jp-Notebook .jp-RenderedMarkdown")
            assert counts >= shown, (name, counts, shown)
        reopened["chat.ipynb"][0].wait_for_timeout(1000)
        after = {name: _problems(other, other_log) for name, (other, other_log) in reopened.items()}
        for other, _log in reopened.values():
            other.close()
    finally:
        nb.close()
        attacker.close()
        browser.unroute_all() if hasattr(browser, "unroute_all") else None
    elapsed = time.monotonic() - started
    print(f"\nsecurity suite: {len(replies)} hostile replies, {len(cells)} cells, run in {ran:.1f} s, "
          f"{elapsed:.1f} s with the panel and the reopened notebooks")
    assert intercepted == [], intercepted
    assert attacker.hits == [], attacker.hits
    assert live == [], live
    assert after == {"chat.ipynb": [], "untrusted.ipynb": []}, after


def _settled_count(page, selector: str, timeout: float = 120) -> int:
    """How many elements match once the count stopped growing for 3 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = page.locator(selector).count()
        if n != last:
            last, since = n, time.monotonic()
        elif n and time.monotonic() - since > 3:
            break
        page.wait_for_timeout(300)
    return last


def _problems(page, log) -> list:
    found = list(log)
    pwned = page.evaluate("window.__pwned")
    if pwned is not None:
        found.append(f"window.__pwned = {pwned!r}")
    found += page.evaluate(DOM_CHECK)
    return found
