"""Reasoning in JupyterLab, read back from headless Chromium: a collapsed "Thought" part before
the reply, in the cell and in the panel; hostile reasoning runs nothing."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.browser

APP = "lab"
HOSTILE = 'Please <img src=x onerror="window.__pwned=7"> [[fault:reasoning]] [[delay:0.02]]'
CELLS = [
    f"%%opchat -t think\n{HOSTILE}",                                  # 1
    "think_panel = ChatPanel(thread='think-panel')\ndisplay(think_panel)",  # 2
]


def _check_thought(area):
    from playwright.sync_api import expect

    details = area.locator("details").first
    expect(details.locator("summary")).to_contain_text("Thought · ", timeout=15_000)
    assert details.get_attribute("open") is None, "the thinking part should end collapsed"
    expect(area).to_contain_text("Echo: Please", timeout=15_000)  # the answer, outside the fold
    # the fold opens on a click and shows the reasoning as text
    details.locator("summary").click()
    expect(details).to_contain_text("The user wants an echo", timeout=5_000)
    box = details.bounding_box()
    answer = area.get_by_text("This conversation has").last.bounding_box()
    assert box["y"] < answer["y"], "the thinking part comes before the answer"


def test_cell_reasoning_is_a_collapsed_part_before_the_reply(nb):
    nb.console.clear()
    nb.run(1, timeout=30)
    out = nb.output(1)
    _check_thought(out)
    time.sleep(0.3)
    assert nb.pwned() is None, f"window.__pwned = {nb.pwned()!r}: reasoning ran code"


def test_panel_reasoning_is_a_collapsed_part_before_the_reply(nb):
    from playwright.sync_api import expect

    nb.run(2, timeout=30)
    panel = nb.output(2).locator(".opchat-panel")
    expect(panel).to_be_visible(timeout=15_000)
    panel.locator(".opchat-panel-input textarea").fill(HOSTILE)
    panel.locator("button.opchat-panel-send").click()
    expect(panel.locator(".opchat-status")).to_contain_text("✓", timeout=20_000)
    _check_thought(panel.locator(".opchat-transcript"))
    time.sleep(0.3)
    assert nb.pwned() is None, f"window.__pwned = {nb.pwned()!r}: reasoning ran code"
