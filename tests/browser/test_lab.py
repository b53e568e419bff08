"""The core flows in JupyterLab, read back from headless Chromium.

One JupyterLab server and one notebook for the module; the tests run its cells
in order (each on its own thread, so they do not depend on one another's
history). Every wait is bounded.
"""
from __future__ import annotations

import time

import pytest

from opchat_magic.server import reply_text

pytestmark = pytest.mark.browser

APP = "lab"  # the conftest's ``nb`` fixture opens CELLS in it
STREAM = "Tell me about streams [[chunks:300]] [[delay:0.01]]"  # 1,500 characters over ~3 s
CELLS = [
    f"%%opchat -t stream\n{STREAM}",                                      # 1
    "%%opchat -t hist\nfirst question",                                    # 2
    "%%opchat -t hist\nsecond question",                                   # 3
    "%opchat_reset hist",                                                  # 4
    "%%opchat -t hist\nafter the reset",                                   # 5
    "panel = ChatPanel(thread='panel')\ndisplay(panel)",                   # 6
    "%%opchat -t hostile\nshow me [[html]]",                               # 7
    "hostile_panel = ChatPanel(thread='hostile-panel')\ndisplay(hostile_panel)",  # 8
    "%%opchat -t slow\nslow to start [[fault:slow_first_byte]]",          # 9: 3 s before any byte
]


def _user(text):
    return [{"role": "user", "content": text}]


def test_cell_streams_then_renders_markdown_with_footer(nb, chat_server, check_cell_streams):
    expected = reply_text(_user(STREAM), chunk_size=chat_server.config.chunk_size)
    assert expected.index("\n- ") > len(expected) // 2  # the list arrives in the second half
    out = check_cell_streams(nb, 1, STREAM)
    assert out.locator(".jp-RenderedMarkdown").count() >= 1
    assert "# " not in out.inner_text().split("\n")[0]  # the heading is rendered, not raw Markdown


def test_second_cell_sends_the_history(nb):
    from playwright.sync_api import expect

    nb.run(2, timeout=30)
    expect(nb.output(2)).to_contain_text("This conversation has 1 message.", timeout=10_000)
    nb.run(3, timeout=30)
    expect(nb.output(3)).to_contain_text("Echo: second question", timeout=10_000)
    expect(nb.output(3)).to_contain_text("This conversation has 3 messages.", timeout=10_000)


def test_reset_restarts_the_count(nb):
    from playwright.sync_api import expect

    nb.run(4, timeout=30)
    expect(nb.output(4)).to_contain_text("cleared", timeout=10_000)
    nb.run(5, timeout=30)
    expect(nb.output(5)).to_contain_text("Echo: after the reset", timeout=10_000)
    expect(nb.output(5)).to_contain_text("This conversation has 1 message.", timeout=10_000)


def test_panel_enter_sends_streams_stops_and_sends_again(nb, chat_server, screenshot):
    from playwright.sync_api import expect

    page = nb.page
    nb.run(6, timeout=30)
    panel = nb.output(6).locator(".opchat-panel")
    expect(panel).to_be_visible(timeout=15_000)
    area = panel.locator(".opchat-panel-input textarea")
    status = panel.locator(".opchat-status")
    transcript = panel.locator(".opchat-transcript")
    send, stop = panel.locator("button.opchat-panel-send"), panel.locator("button.opchat-panel-stop")

    # Shift+Enter is a newline; Enter sends.
    submits = chat_server.stats.requests.get("submit", 0)
    area.click()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two [[chunks:400]] [[delay:0.02]]")  # ~8 s if nobody stops it
    assert "line one\nline two" in area.input_value()
    time.sleep(0.3)
    assert chat_server.stats.requests.get("submit", 0) == submits, "Shift+Enter must not send"
    page.keyboard.press("Enter")
    chat_server.wait_for(lambda st: st.requests.get("submit", 0) == submits + 1, timeout=10)
    expect(area).to_have_value("", timeout=5_000)
    expect(send).to_be_disabled(timeout=5_000)
    expect(stop).to_be_enabled(timeout=5_000)

    # The reply streams into the transcript.
    expect(status).to_contain_text("Streaming", timeout=10_000)
    expect(transcript).to_contain_text("line two", timeout=10_000)
    first = _assistant_text(transcript)
    deadline = time.monotonic() + 10
    while len(_assistant_text(transcript)) <= len(first) + 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    grown = _assistant_text(transcript)
    assert len(grown) > len(first) + 20, "the panel's reply did not grow while streaming"
    while len(_assistant_text(transcript)) < 400 and time.monotonic() < deadline:
        time.sleep(0.1)  # a paragraph or two for the picture
    page.mouse.move(0, 0)  # no hover decorations (heading anchors) in the picture
    panel.scroll_into_view_if_needed()
    expect(status).to_contain_text("Streaming")
    screenshot(panel, "panel-streaming.png")
    grown = _assistant_text(transcript)

    # Stop: the connection closes, the partial reply stays, marked stopped.
    disconnects = chat_server.stats.disconnects
    stop.click()
    expect(status).to_contain_text("Stopped", timeout=10_000)
    stats = chat_server.wait_for(lambda st: st.disconnects > disconnects, timeout=5)
    assert stats.disconnects == disconnects + 1
    assert grown[:30] in _assistant_text(transcript)
    expect(transcript).to_contain_text("stopped", ignore_case=True, timeout=5_000)
    expect(panel.locator("button.opchat-panel-retry")).to_be_visible()
    expect(send).to_be_enabled()

    # Send again with the button: the stopped turn is not part of the history.
    area.fill("after the stop")
    send.click()
    expect(transcript).to_contain_text("Echo: after the stop", timeout=15_000)
    expect(transcript).to_contain_text("This conversation has 1 message.", timeout=15_000)
    expect(status).to_contain_text("✓", timeout=15_000)

    # A Markdown-rich answer for the conversation screenshot.
    rich = "Explain it with some structure [[words:200]]"
    ending = reply_text(_user(rich)).rstrip().splitlines()[-1][-25:]
    area.fill(rich)
    area.press("End")
    area.press("Enter")
    expect(transcript).to_contain_text(ending, timeout=20_000)
    expect(status).to_contain_text("✓", timeout=10_000)
    expect(transcript.locator("h1").first).to_be_visible(timeout=10_000)
    assert transcript.locator("li").count() >= 1
    assert transcript.locator("pre").count() >= 1
    # The whole conversation in one picture: lift the transcript's max-height for the shot.
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": 2400})
    style = page.add_style_tag(content=".opchat-transcript { max-height: none !important; }")
    try:
        panel.scroll_into_view_if_needed()
        page.mouse.move(0, 0)  # no hover decorations (heading anchors) in the picture
        time.sleep(0.3)
        screenshot(panel, "conversation.png")
    finally:
        style.evaluate("node => node.remove()")
        page.set_viewport_size(size)


def _assistant_text(transcript) -> str:
    """The last assistant message's text (without the ¶ anchors JupyterLab shows on hover)."""
    texts = transcript.locator(".opchat-msg-assistant").all_inner_texts()
    return texts[-1].replace("¶", "") if texts else ""


def test_hostile_reply_executes_nothing(nb):
    from playwright.sync_api import expect

    nb.console.clear()
    nb.dialogs.clear()
    nb.run(7, timeout=30)
    out = nb.output(7)
    expect(out.locator("h1", has_text="Hostile reply")).to_be_visible(timeout=10_000)
    expect(out.locator("li").first).to_be_visible()
    # Through the panel as well.
    nb.run(8, timeout=30)
    panel = nb.output(8).locator(".opchat-panel")
    expect(panel).to_be_visible(timeout=15_000)
    panel.locator(".opchat-panel-input textarea").fill("show me [[html]]")
    panel.locator("button.opchat-panel-send").click()
    transcript = panel.locator(".opchat-transcript")
    expect(transcript.locator("h1", has_text="Hostile reply")).to_be_visible(timeout=15_000)
    expect(panel.locator(".opchat-status")).to_contain_text("✓", timeout=15_000)
    # Give an onerror handler time to fire.
    time.sleep(0.5)
    assert nb.pwned() is None, f"window.__pwned = {nb.pwned()!r}: the reply ran code"
    assert nb.dialogs == [], nb.dialogs
    assert not [m for m in nb.console if "pwned" in m], nb.console
    assert not [e for e in nb.errors if "pwned" in e], nb.errors
    # Click the neutralised javascript: links; JupyterLab may only log the harmless fragment.
    for area in (out, transcript):
        link = area.get_by_role("link", name="click")
        assert link.count() >= 1
        assert not (link.first.get_attribute("href") or "").lower().startswith("javascript:")
        link.first.click()
    time.sleep(0.3)
    assert nb.pwned() is None, f"window.__pwned = {nb.pwned()!r}: a link ran code"
    assert nb.dialogs == [], nb.dialogs
    harmless = "Unknown target type for URI fragment #blocked-"
    assert not [m for m in nb.console if "pwned" in m and harmless not in m], nb.console


def test_cell_says_how_long_it_has_waited_for_the_first_chunk(nb):
    # A server that thinks before its first byte (AI Engine waits up to 300 s for its model,
    # silently): the cell shows the wait, then the reply replaces it.
    from playwright.sync_api import expect

    nb.run(9, wait=False)
    out = nb.output(9)
    expect(out).to_contain_text("waiting for the first chunk… 1 s", timeout=10_000)
    expect(out).to_contain_text("waiting for the first chunk… 2 s", timeout=10_000)
    expect(out).to_contain_text("Echo: slow to start", timeout=20_000)
    nb.wait_done(9, timeout=20)
    expect(out).not_to_contain_text("waiting for the first chunk")
