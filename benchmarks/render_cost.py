"""What a streamed reply costs the frontend, measured in a real kernel.

One run, one local server, one kernel: paced replies shaped like model output
(paragraphs, a list, a fenced code block) of N chunks of ~5 characters at
~200 chunks/s, rendered (a) by ``%%opchat`` and (b) by the naive loop that
re-sends the whole text per chunk (``handle.update(Markdown(full))``). Every
iopub message of the cell counts, comm messages included, with its headers.

Also: ``%load_ext opchat_magic`` time in a fresh kernel, the delay from the
first chunk arriving in the kernel to the first output message leaving it, and
interrupt-to-disconnect latency (kernel interrupt -> the server sees the
connection close).

    python benchmarks/render_cost.py [--chunks 1000 10000] [--rate 200] [--skip-naive-over 20000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from opchat_magic.server import LocalServer
from opchat_magic.testing.kernel import Kernel, message_bytes

NAIVE = """
from IPython.display import Markdown, display
from opchat_magic.providers.opchatgpts import Opchatgpts
_h = display(Markdown(""), display_id=True)
_full = ""
async for _t in Opchatgpts.create_async_generator("", [{{"role": "user", "content": {msg!r}}}], url={url!r}):
    _full += _t
    _h.update(Markdown(_full))
"""


def measure(kernel: Kernel, code: str, timeout: float) -> dict:
    ex = kernel.run(code, timeout=timeout)
    msgs = [m for m in ex.messages if m["msg_type"] != "execute_input"]
    shown = [m for m in msgs if m["msg_type"] in ("display_data", "update_display_data", "comm_msg", "stream")]
    span = (shown[-1]["received"] - shown[0]["received"]) if len(shown) > 1 else 0.0
    return {
        "messages": len(msgs),
        "bytes": sum(message_bytes(m) for m in msgs),
        "span": span,
        "rate": len(msgs) / span if span else float("nan"),
        "first_output": shown[0]["received"] if shown else None,
        "markdown_chars": len(ex.markdown()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--rate", type=float, default=200.0, help="chunks per second the server sends")
    ap.add_argument("--skip-naive-over", type=int, default=20000,
                    help="skip the naive renderer for replies with more chunks (its cost is quadratic)")
    args = ap.parse_args(argv)

    delay = 1.0 / args.rate
    rows = []
    with LocalServer(delay=delay, chunk_size=5) as server:
        # %load_ext time, in a fresh kernel (median of 3 kernels).
        import_times = []
        for _ in range(3):
            with Kernel() as k:
                t = k.value("(lambda t0: (get_ipython().run_line_magic('load_ext', 'opchat_magic'), "
                            "__import__('time').perf_counter() - t0)[1])(__import__('time').perf_counter())")
                import_times.append(t)

        with Kernel() as kernel:
            kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}\n"
                       "%config OpchatMagics.persist = False")
            kernel.run("%%opchat\nwarm up")
            sizes = {}
            for n in args.chunks:
                msg = f"benchmark [[chunks:{n}]]"
                timeout = n * delay * 3 + 60
                kernel.run("%opchat_reset")
                ours = measure(kernel, f"%%opchat\n{msg}", timeout)
                first_chunk = kernel.value("get_ipython().magics_manager.registry['OpchatMagics']"
                                           ".last_reply.first_chunk_at")
                ours["first_output_delay"] = ours["first_output"] - first_chunk
                reply_chars = n * 5
                sizes[n] = ours["bytes"]
                rows.append(("opchat", n, reply_chars, ours))
                if n <= args.skip_naive_over:
                    naive = measure(kernel, NAIVE.format(msg=msg, url=server.url), timeout * 3)
                    rows.append(("naive", n, reply_chars, naive))

            # Interrupt-to-disconnect latency, 5 times.
            latencies = []
            for _ in range(5):
                before = server.stats.disconnects
                ex = kernel.submit("%%opchat\ninterrupt me [[chunks:2000]]")
                state = {"t": None, "seen": 0}

                def on_message(m, state=state):
                    state["seen"] += 1
                    if state["seen"] == 3 and state["t"] is None:
                        state["t"] = time.monotonic()
                        kernel.interrupt()

                kernel.collect(ex, timeout=60, on_message=on_message)
                stats = server.wait_for(lambda s: s.disconnects > before, timeout=5)
                latencies.append(stats.disconnect_events[-1]["at"] - state["t"])

    print(f"\nRender cost: {args.rate:.0f} chunks/s of ~5 chars, real kernel, every iopub message counted\n")
    print("| renderer | chunks | reply bytes | iopub msgs | msgs/s | iopub bytes | bytes per reply byte |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, chars, r in rows:
        print(f"| {name} | {n:,} | {chars:,} | {r['messages']:,} | {r['rate']:.1f} | {r['bytes']:,} | "
              f"{r['bytes'] / chars:.1f} |")
    if len(args.chunks) >= 2:
        small, large = args.chunks[0], args.chunks[-1]
        growth = sizes[large] / sizes[small]
        naive = {n: r["bytes"] for name, n, _, r in rows if name == "naive"}
        naive_growth = naive[large] / naive[small] if small in naive and large in naive else float("nan")
        print(f"\ngrowth ({large:,} / {small:,} chunks): opchat {growth:.1f}x, naive {naive_growth:.1f}x "
              f"(linear ~{large / small:.0f}x, quadratic ~{(large / small) ** 2:.0f}x)")
    firsts = [r["first_output_delay"] for name, _, _, r in rows if name == "opchat"]
    print(f"first chunk in kernel -> first output message: {statistics.median(firsts) * 1000:.1f} ms (median)")
    print(f"%load_ext opchat_magic: {statistics.median(import_times) * 1000:.0f} ms (median of 3 fresh kernels)")
    print(f"interrupt -> server sees disconnect: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms (5 runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
