"""Time to first pixel: a streamed reply's first text, from the server to the screen.

One LocalServer in this process, one JupyterLab (or Notebook 7) and one headless
Chromium (:mod:`opchat_magic.testing.browser`). The notebook's first cell loads
the extension and points it at the server; then N ``%%opchat`` cells, each
``hello [[chunks:50]]`` on its own thread (so every request is the same), run
one after the other. Per run, two figures:

* request -> pixel: the server's request arrival (``stats.recent[-1]["wall"]``,
  ``time.time()``) to the first reply text painted in the cell. The server
  sends the headers and the first chunk right after it records the request,
  with no pause, so this is an upper bound on first byte -> first pixel.
* Shift+Enter -> pixel: both ends in the browser (the keydown event's time).

"Painted": a MutationObserver notes when the cell's output first contains the
reply's first text, then waits two ``requestAnimationFrame`` (the frame that
shows it has been produced). Python's ``time.time()`` and the page's
``Date.now()`` / ``performance.timeOrigin + performance.now()`` read the same
wall clock of this machine.

    python benchmarks/first_pixel.py [--runs 10] [--delay 0.02] [--app lab|notebook]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

from opchat_magic.server import LocalServer, split_chunks
from opchat_magic.server.replies import compose
from opchat_magic.testing.browser import chromium, missing, open_notebook

MESSAGE = "hello [[chunks:50]]"

# Installed on a cell before it runs: records the Shift+Enter keydown, the first
# mutation after which the cell's output contains `probe`, and two frames later.
PROBE_JS = """
(cell, [key, probe]) => {
  const rec = (window.__firstPixel = window.__firstPixel || {});
  const r = (rec[key] = {});
  const hr = () => performance.timeOrigin + performance.now();
  const onKey = (e) => {
    if (e.key === "Enter" && e.shiftKey && r.keyHr === undefined) {
      r.keyHr = performance.timeOrigin + e.timeStamp;
      r.keyWall = Date.now();
    }
  };
  window.addEventListener("keydown", onKey, true);
  const output = () => cell.querySelector(".jp-OutputArea");
  let observer = null;
  const check = () => {
    const out = output();
    if (r.domWall !== undefined || !out || !out.textContent.includes(probe)) return;
    r.domWall = Date.now();
    r.domHr = hr();
    observer.disconnect();
    window.removeEventListener("keydown", onKey, true);
    requestAnimationFrame(() => requestAnimationFrame(() => {
      r.paintWall = Date.now();
      r.paintHr = hr();
    }));
  };
  observer = new MutationObserver(check);
  observer.observe(cell, {childList: true, subtree: true, characterData: true});
  check();
}
"""


def first_text(chunk_size: int) -> str:
    """What the first chunk shows once rendered: its text without Markdown heading marks."""
    text, directives = compose([{"role": "user", "content": MESSAGE}], None, chunk_size=chunk_size)
    first = split_chunks(text, directives.chunk or chunk_size)[0]
    probe = first.lstrip("#").strip()
    if not probe:
        raise SystemExit(f"the first chunk {first!r} shows no text to wait for")
    return probe


def summary(values):
    p90 = statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]
    return statistics.median(values), p90, max(values)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--delay", type=float, default=0.02, help="server seconds between chunks")
    ap.add_argument("--app", choices=["lab", "notebook"], default="lab")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per cell")
    args = ap.parse_args(argv)
    reason = missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    import jupyterlab

    cells = [f"%%opchat -t fp{i}\n{MESSAGE}" for i in range(1, args.runs + 1)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="opchat-fp-") as tmp, LocalServer(delay=args.delay) as server:
        root, cfg = Path(tmp, "root"), Path(tmp, "cfg")
        root.mkdir()
        cfg.mkdir()
        probe = first_text(server.config.chunk_size)
        with chromium(Path(tmp, "chrome"), Path(tmp, "home")) as ctx, contextlib.ExitStack() as stack:
            nb = open_notebook(stack, ctx, args.app, root, cfg, server.url, cells)
            agent = nb.page.evaluate("navigator.userAgent")
            for i in range(1, args.runs + 1):
                key = f"run{i}"
                before = server.stats.requests.get("submit", 0)
                nb.cell(i).evaluate(PROBE_JS, [key, probe])
                nb.run(i, wait=False)
                nb.page.wait_for_function(f"() => window.__firstPixel[{key!r}].paintHr !== undefined",
                                          timeout=args.timeout * 1000)
                nb.wait_done(i, timeout=args.timeout)
                stats = server.stats
                last = stats.recent[-1]
                if stats.requests.get("submit", 0) != before + 1 or last["endpoint"] != "submit":
                    raise RuntimeError(f"run {i}: expected exactly one submit request, saw {stats.requests}")
                r = nb.page.evaluate(f"window.__firstPixel[{key!r}]")
                arrived = last["wall"] * 1000
                rows.append({
                    "dom": r["domHr"] - arrived,
                    "pixel": r["paintHr"] - arrived,
                    "pixel_ms_clock": r["paintWall"] - arrived,
                    "key": r["paintHr"] - r["keyHr"],
                    "key_to_request": arrived - r["keyHr"],
                    "clock_gap": abs(r["paintHr"] - r["paintWall"]),
                })
            nb.close()

    flavour = f"JupyterLab {jupyterlab.__version__}" if args.app == "lab" else "Notebook 7"
    chrome = next((w for w in agent.split() if "Chrome/" in w), agent)
    print(f"First pixel: {args.runs} x `%%opchat` `{MESSAGE}` (server delay {args.delay} s, "
          f"chunk {server.config.chunk_size} chars), {flavour}, {chrome}; waiting for {probe!r}")
    print("request -> pixel: the server records the request's arrival (stats.recent[-1]['wall']), then at once\n"
          "  sends the headers and the first chunk (no pause before it), so this is an upper bound on\n"
          "  first byte -> first pixel. pixel = the first mutation showing reply text + 2 animation frames.")
    print("Clocks: Python time.time() and the page's Date.now() / performance.timeOrigin+now() read the same "
          "wall clock.\n")
    cols = [("dom", "request->DOM"), ("pixel", "request->pixel"), ("key", "Shift+Enter->pixel"),
            ("key_to_request", "Shift+Enter->request")]
    print(f"{'run':>6}  " + "  ".join(f"{title:>20}" for _, title in cols) + "   (ms)")
    for n, row in enumerate(rows, 1):
        print(f"{n:>6}  " + "  ".join(f"{row[k]:>20.1f}" for k, _ in cols))
    stats_rows = {k: summary([row[k] for row in rows]) for k, _ in cols}
    for j, label in enumerate(("median", "p90", "max")):
        print(f"{label:>6}  " + "  ".join(f"{stats_rows[k][j]:>20.1f}" for k, _ in cols))
    gap = max(row["clock_gap"] for row in rows)
    ms_clock = summary([row["pixel_ms_clock"] for row in rows])
    print(f"\nrequest->pixel with Date.now() (1 ms steps) instead: median {ms_clock[0]:.1f}, p90 {ms_clock[1]:.1f}, "
          f"max {ms_clock[2]:.1f} ms; performance vs Date.now() differ by <= {gap:.1f} ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
