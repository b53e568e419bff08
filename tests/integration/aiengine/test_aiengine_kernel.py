"""The magic end to end in a real kernel, against the real AI Engine plugin."""
from __future__ import annotations

import types

import pytest

from opchat_magic.server import reply_text
from opchat_magic.testing.aiengine import BOTS

pytestmark = [pytest.mark.aiengine, pytest.mark.kernel, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def kernel(aiengine, kernel_on):
    site, _ = aiengine
    # The magic pointed at the WordPress site by its bare URL, nothing else configured:
    # the REST root and the nonce are found out by the provider.
    return kernel_on(types.SimpleNamespace(url=site.url), "aiengine.ipynb")


def test_magic_talks_to_the_real_plugin(kernel, upstream):
    system = {"role": "system", "content": BOTS["default"]["instructions"]}  # the chatbot's, first
    first = kernel.run("%%opchat\nHello from the notebook", timeout=120)
    assert first.error is None
    expected1 = reply_text([system, {"role": "user", "content": "Hello from the notebook"}])
    assert first.shows(expected1), first.markdown()
    second = kernel.run("%%opchat\nAnd a second question", timeout=120)
    expected2 = reply_text([system, {"role": "user", "content": "Hello from the notebook"},
                            {"role": "assistant", "content": expected1},
                            {"role": "user", "content": "And a second question"}])
    assert second.shows(expected2), second.markdown()
    # What the model got on the second turn: the bot's instructions, then the thread once.
    bodies = [r["body"] for r in upstream.stats.recent if r["endpoint"] == "chat_completions"]
    assert len(bodies) == 2
    # (The plugin trims newMessage; the thread keeps the cell's text as it was, newline and all.)
    seen = [{**m, "content": m["content"].strip()} for m in bodies[-1]["messages"]]
    assert seen == [
        system,
        {"role": "user", "content": "Hello from the notebook"},
        {"role": "assistant", "content": expected1},
        {"role": "user", "content": "And a second question"},
    ]


def test_one_discussion_per_thread_across_a_restart(aiengine, kernel, upstream):
    site, _ = aiengine
    before = site.discussions()
    kernel.run("%%opchat -t disc\none", timeout=120)
    kernel.run("%%opchat -t disc\ntwo", timeout=120)
    kernel.restart()
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {site.url!r}")
    kernel.run("%%opchat -t disc\nthree, after a kernel restart", timeout=120)
    new = site.discussions()[len(before):]
    assert len(new) == 1, new  # one thread, one discussion, restart or not
    users = [m["content"].strip() for m in new[0]["messages"] if m["role"] == "user"]
    assert users == ["one", "two", "three, after a kernel restart"]
    kernel.run("%opchat_reset disc")
    kernel.run("%%opchat -t disc\na fresh start", timeout=120)
    newer = site.discussions()[len(before):]
    assert len(newer) == 2 and newer[1]["chatId"] != newer[0]["chatId"]
    assert [m["content"].strip() for m in newer[1]["messages"] if m["role"] == "user"] == ["a fresh start"]
