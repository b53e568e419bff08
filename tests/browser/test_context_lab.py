"""The panel sees the notebook, in JupyterLab driven from headless Chromium: {fields} typed in
its input are filled in from the kernel, a bad one is refused in the status line, and
"Explain last error" sends the failing cell and its traceback. Every wait is bounded."""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser

APP = "lab"
CELLS = [
    "word = 'bread'",                                                    # 1
    "'abc'.upper()",                                                     # 2
    "def ratio(a, b):\n    return a / b\nratio(1, 0)",                   # 3: raises
    "ctx_panel = ChatPanel(thread='context')\ndisplay(ctx_panel)",      # 4
]


def _prompt_number(nb, index: int) -> int:
    return int(re.search(r"\[(\d+)\]", nb.cell(index).locator(".jp-InputPrompt").inner_text()).group(1))


def test_panel_fields_and_explain_last_error(nb, chat_server, screenshot):
    from playwright.sync_api import expect

    for index in (1, 2):
        nb.run(index, timeout=30)
    nb.run(3, timeout=30)
    expect(nb.output(3)).to_contain_text("ZeroDivisionError", timeout=10_000)
    out, failing = _prompt_number(nb, 2), _prompt_number(nb, 3)
    nb.run(4, timeout=30)
    panel = nb.output(4).locator(".opchat-panel")
    expect(panel).to_be_visible(timeout=15_000)
    area = panel.locator(".opchat-panel-input textarea")
    status, transcript = panel.locator(".opchat-status"), panel.locator(".opchat-transcript")

    # Fields typed in the panel are filled in from the kernel before sending.
    area.fill(f"Why is {{word}} {{Out[{out}]}}?")
    area.press("Enter")
    expect(status).to_contain_text("✓", timeout=20_000)
    expect(transcript).to_contain_text("Echo: Why is bread ABC?", timeout=10_000)
    assert chat_server.stats.last_body["newMessage"] == "Why is bread ABC?"

    # A field that is neither a name nor a reference: said in the status line, nothing sent, text kept.
    before = chat_server.stats.requests.get("submit", 0)
    area.fill("{word.upper()}")
    area.press("Enter")
    expect(status).to_contain_text("neither a variable name nor a cell reference", timeout=10_000)
    assert chat_server.stats.requests.get("submit", 0) == before
    assert area.input_value() == "{word.upper()}"

    # "Explain last error": the failing cell's source and its error, streamed into the transcript.
    explain = panel.locator("button.opchat-panel-explain")
    expect(explain).to_be_enabled(timeout=10_000)
    explain.click()
    expect(status).to_contain_text("✓", timeout=20_000)
    sent = chat_server.stats.last_body["newMessage"]
    assert f"Cell In[{failing}]:" in sent and "ratio(1, 0)" in sent
    assert "Error: ZeroDivisionError: division by zero" in sent and "\x1b[" not in sent
    expect(transcript).to_contain_text("Error: ZeroDivisionError: division by zero", timeout=10_000)
    screenshot(panel, "panel-explain.png")
