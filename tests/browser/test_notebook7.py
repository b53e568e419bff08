"""The core flow in Notebook 7 (``/notebooks/<path>``): a cell streams, the next uses the history."""
from __future__ import annotations

import pytest

from opchat_magic.server import reply_text

pytestmark = pytest.mark.browser

STREAM = "Stream for Notebook 7 [[chunks:300]] [[delay:0.01]]"  # ~3 s
CELLS = [
    f"%%opchat -t nb7\n{STREAM}",                              # 1
    "%%opchat -t nb7\nand a follow-up",                         # 2
    "panel = ChatPanel(thread='nb7-panel')\ndisplay(panel)",    # 3
]


@pytest.fixture(scope="module")
def nb(start_notebook):
    notebook = start_notebook("notebook", CELLS)
    yield notebook
    notebook.close()


def test_notebook7_cell_streams_and_keeps_history(nb, chat_server):
    from playwright.sync_api import expect

    assert nb.path.startswith("/notebooks/")
    expected = reply_text([{"role": "user", "content": STREAM}], chunk_size=chat_server.config.chunk_size)
    heading = expected.splitlines()[0].lstrip("# ").strip()
    nb.run(1, wait=False)
    out = nb.output(1)
    expect(out).to_contain_text(heading, timeout=15_000)
    assert "first chunk" not in out.inner_text()
    assert out.locator("li").count() == 0, "the whole reply arrived at once"
    expect(out).to_contain_text("first chunk", timeout=30_000)
    nb.wait_done(1, timeout=30)
    expect(out.locator("h1").first).to_be_visible()
    assert out.locator("li").count() >= 1
    nb.run(2, timeout=30)
    expect(nb.output(2)).to_contain_text("Echo: and a follow-up", timeout=10_000)
    expect(nb.output(2)).to_contain_text("This conversation has 3 messages.", timeout=10_000)


def test_notebook7_panel_enter_sends(nb):
    from playwright.sync_api import expect

    nb.run(3, timeout=30)
    panel = nb.output(3).locator(".opchat-panel")
    expect(panel).to_be_visible(timeout=15_000)
    area = panel.locator(".opchat-panel-input textarea")
    area.fill("hello from Notebook 7")
    area.press("End")
    area.press("Enter")
    transcript = panel.locator(".opchat-transcript")
    expect(transcript).to_contain_text("Echo: hello from Notebook 7", timeout=15_000)
    expect(transcript).to_contain_text("This conversation has 1 message.", timeout=15_000)
    expect(panel.locator(".opchat-status")).to_contain_text("✓", timeout=15_000)
