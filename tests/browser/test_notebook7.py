"""The core flow in Notebook 7 (``/notebooks/<path>``): a cell streams, the next uses the history."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

APP = "notebook"  # the conftest's ``nb`` fixture opens CELLS in it
STREAM = "Stream for Notebook 7 [[chunks:300]] [[delay:0.01]]"  # ~3 s
CELLS = [
    f"%%opchat -t nb7\n{STREAM}",                              # 1
    "%%opchat -t nb7\nand a follow-up",                         # 2
    "panel = ChatPanel(thread='nb7-panel')\ndisplay(panel)",    # 3
]


def test_notebook7_cell_streams_and_keeps_history(nb, check_cell_streams):
    from playwright.sync_api import expect

    assert nb.path.startswith("/notebooks/")
    check_cell_streams(nb, 1, STREAM)
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
