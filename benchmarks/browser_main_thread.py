"""Browser main-thread time for a streamed reply: opchat-magic vs chatlas, in one JupyterLab.

One LocalServer, one JupyterLab, one headless Chromium. The same reply
(``[[chunks:N]]``, 5 characters a chunk, ``--delay`` s apart) streams into a
cell three ways, one after the other, each on a fresh thread:

* ``%%opchat`` (the display face: few outputs, throttled re-renders);
* chatlas's ``ChatOpenAICompletions(...).chat(...)`` against the local
  server's OpenAI endpoint (skipped, and said so, when chatlas is not
  importable in the kernel: run this script with a Python that has it);
* the naive loop that re-renders the whole text per chunk
  (``handle.update(Markdown(full))``), for scale.

Main-thread time is Chromium's own account (DevTools ``Performance.getMetrics``:
``TaskDuration``, and its script / layout / style parts) between Shift+Enter
and the cell's end. Also: the cell's outputs, and whether the reply's last
words are on screen.

    python benchmarks/browser_main_thread.py [--chunks 3000] [--delay 0.002] [--rounds 2]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opchat_magic.server import LocalServer, reply_text
from opchat_magic.testing.browser import chromium, missing, open_notebook

NAIVE = """from IPython.display import Markdown, display
from opchat_magic.providers.opchatgpts import Opchatgpts
_h = display(Markdown(""), display_id=True)
_full = ""
async for _t in Opchatgpts.create_async_generator("", [{{"role": "user", "content": {msg!r}}}], url={url!r}):
    _full += _t
    _h.update(Markdown(_full))"""

METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def metrics(cdp) -> dict:
    got = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {name: got.get(name, 0.0) for name in METRICS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=3000)
    ap.add_argument("--delay", type=float, default=0.002)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args(argv)
    reason = missing()
    if reason:
        print(f"browser benchmark skipped: {reason}")
        return 0

    have_chatlas = importlib.util.find_spec("chatlas") is not None
    if have_chatlas:  # the Jupyter server's kernel must import it too (a venv's site-packages, say)
        where = os.path.dirname(os.path.dirname(importlib.util.find_spec("chatlas").origin))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), where) if p)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="opchat-mt-") as tmp, LocalServer(delay=args.delay) as server:
        root, cfg = Path(tmp, "root"), Path(tmp, "cfg")
        root.mkdir()
        cells, plan = [], []
        for r in range(args.rounds):
            msg = f"round {r} [[chunks:{args.chunks}]]"
            cells.append(f"%%opchat -t bench-{r}\n{msg}")
            plan.append(("opchat-magic (%%opchat)", msg))
            if have_chatlas:
                cells.append("from chatlas import ChatOpenAICompletions\n"
                             f"_chat = ChatOpenAICompletions(base_url={server.openai_base_url!r}, api_key='x', "
                             f"model='opchat-local')\n_chat.chat({msg!r})")
                plan.append(("chatlas (ChatOpenAICompletions)", msg))
            cells.append(NAIVE.format(msg=msg, url=server.url))
            plan.append(("naive re-render per chunk", msg))
        with chromium(Path(tmp, "chrome"), Path(tmp, "home")) as ctx, contextlib.ExitStack() as stack:
            nb = open_notebook(stack, ctx, "lab", root, cfg, server.url, cells)
            cdp = nb.page.context.new_cdp_session(nb.page)
            cdp.send("Performance.enable")
            for i, (name, msg) in enumerate(plan, start=1):
                expected = reply_text([{"role": "user", "content": msg}], chunk_size=server.config.chunk_size)
                last_words = " ".join(expected.split()[-4:]).strip("`*")
                time.sleep(1.0)  # let the page settle
                before, t0 = metrics(cdp), time.monotonic()
                nb.run(i, wait=True, timeout=args.timeout)
                wall = time.monotonic() - t0
                after = metrics(cdp)
                out = nb.output(i)
                shown = " ".join(out.inner_text().split())
                row = {k: after[k] - before[k] for k in METRICS}
                if out.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']").count():
                    print(f"{name}: the cell failed: {out.inner_text()[-500:]}", file=sys.stderr)
                row.update(wall=wall, outputs=out.locator(".jp-OutputArea-child").count(),
                           trimmed=out.locator(".jp-TrimmedOutputs").count(), tail=last_words in shown)
                results.setdefault(name, []).append(row)
            nb.close()

    print(f"\nBrowser main thread for a {args.chunks:,}-chunk reply ({args.chunks * 5:,} characters, "
          f"{args.delay * 1000:.0f} ms apart), JupyterLab + headless Chromium, median of {args.rounds}\n")
    print("| renderer | main thread (TaskDuration) | script | layout | style | cell wall time | outputs | "
          "tail shown |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in METRICS + ("wall",)}
        print(f"| {name} | {med['TaskDuration']:.2f} s | {med['ScriptDuration']:.2f} s | "
              f"{med['LayoutDuration']:.2f} s | {med['RecalcStyleDuration']:.2f} s | {med['wall']:.1f} s | "
              f"{max(r['outputs'] for r in rows)} | {'yes' if all(r['tail'] and not r['trimmed'] for r in rows) else 'NO'} |")
    if not have_chatlas:
        print("| chatlas | not importable here (pip install chatlas) | | | | | | |")
    ours = results.get("opchat-magic (%%opchat)")
    theirs = results.get("chatlas (ChatOpenAICompletions)")
    if ours and theirs:
        ratio = statistics.median(r["TaskDuration"] for r in theirs) / statistics.median(r["TaskDuration"] for r in ours)
        print(f"\nchatlas / opchat-magic main-thread time: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
