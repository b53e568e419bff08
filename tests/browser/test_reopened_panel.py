"""A reopened notebook shows the chat panel's transcript as static Markdown in place of the dead widget.

Live: the panel (a widget) and, right after it, a static copy of its transcript
kept up to date by display id; the widget hides the copy. The notebook is saved
in JupyterLab (so signed: trusted), the server and kernel stop, a new JupyterLab
opens the file: no widget model exists any more, and the copy is what shows.
"""
from __future__ import annotations

import contextlib

import pytest

from opchat_magic.server import reply_text
from opchat_magic.testing.browser import NotebookPage, jupyter, open_notebook

pytestmark = pytest.mark.browser

ASK = "Hello panel, remember me"


def test_reopened_notebook_shows_the_panel_transcript_as_static_markdown(browser, chat_server, tmp_path):
    from playwright.sync_api import expect

    expected = reply_text([{"role": "user", "content": ASK}], chunk_size=chat_server.config.chunk_size)
    first_line = expected.splitlines()[0]
    root, cfg = tmp_path / "root", tmp_path / "cfg"
    root.mkdir()
    cells = ["%opchat_panel -t reopen",
             f"from opchat_magic.panel import last_panel\nlast_panel().send({ASK!r})"]
    with contextlib.ExitStack() as stack:
        nb = open_notebook(stack, browser, "lab", root, cfg, chat_server.url, cells)
        nb.run(1)
        panel = nb.output(1).locator(".opchat-panel")
        expect(panel).to_be_visible(timeout=15_000)
        nb.run(2)
        expect(panel.locator(".opchat-transcript")).to_contain_text(first_line, timeout=20_000)
        expect(panel.locator(".opchat-status")).to_contain_text("Reply complete", timeout=20_000)
        copy = nb.output(1).locator(".opchat-panel-copy")
        # The copy is there, up to date, and hidden while the widget lives (no transcript twice).
        nb.page.wait_for_function(
            "(t) => [...document.querySelectorAll('.jp-OutputArea-child')].some("
            "c => c.querySelector('.opchat-panel-copy') && c.textContent.includes(t))", arg=first_line,
            timeout=20_000)
        assert copy.count() == 1 and not copy.is_visible()
        assert nb.output(1).first.inner_text().count(first_line) == 1
        nb.page.keyboard.press("Control+s")
        nb.page.wait_for_timeout(1500)
        nb.close()  # the page, the Jupyter server and its kernel: every widget model is gone

    # Saved by JupyterLab, so signed: reopened, it is trusted and JupyterLab picks the widget renderer.
    import nbformat
    from nbformat.sign import NotebookNotary

    saved = nbformat.read(root / nb.notebook, as_version=4)
    assert NotebookNotary(data_dir=str(cfg / "data")).check_signature(saved)
    kinds = [set(o.get("data", {})) for o in saved.cells[1].outputs]
    assert "application/vnd.jupyter.widget-view+json" in kinds[0] and "text/markdown" in kinds[1]

    with contextlib.ExitStack() as stack:
        base = stack.enter_context(jupyter("lab", root, cfg))
        page = browser.new_page()
        stack.callback(page.close)
        again = NotebookPage(page, base, "lab", root, cfg / "server.log")
        page.goto(base + again.path)
        again.cells.first.wait_for(timeout=60_000)
        out = again.output(1).first
        expect(out).to_contain_text(first_line, timeout=20_000)
        expect(out).to_contain_text("a copy of its transcript")
        page.wait_for_timeout(2000)  # the widget manager gives up on the missing model
        assert "Error displaying widget" not in out.inner_text()
        assert "live while its kernel runs" not in out.inner_text()  # the widget renderer ran (trusted)
        assert out.locator(".opchat-panel-copy").count() == 1
