"""Soak: a notebook left chatting all day. Does the kernel leak?

One real kernel, one local server (delay 0): N sequential ``%%opchat`` turns
(default 1,000) with ``max_history = 20`` so requests stay small, and history
kept in a temporary SQLite file. Every ``--every`` turns the kernel process is
sampled from /proc: open file descriptors, how many of them are sockets,
threads, and RSS. Printed: a table of the samples and the slope of each per
100 turns (least squares, after the first sample: warm-up is not a leak).

Then concurrency, the chat panel's way: ``--concurrent`` (default 50)
``ChatTurn``s on as many threads of the notebook's one Conversation, started
together on the private loop inside the kernel, twice (so the second request
carries history). Each thread must hold exactly its own two turns, each reply
echoing its own message and counting its own history: no cross-talk.

    python benchmarks/soak.py [--turns 1000] [--every 100] [--concurrent 50]

``tests/kernel/test_soak.py`` runs the same functions at a small scale.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from opchat_magic.server import LocalServer
from opchat_magic.testing.kernel import Kernel


# --------------------------------------------------------------------------- sampling


def kernel_pid(kernel: Kernel) -> int:
    pid = getattr(getattr(kernel.km, "provisioner", None), "pid", None)
    return pid if pid else kernel.value("__import__('os').getpid()")


def sample(pid: int) -> dict:
    """Open fds, sockets among them, threads and RSS (KiB) of process ``pid``."""
    fd_dir = Path(f"/proc/{pid}/fd")
    fds = sockets = 0
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        fds += 1
        sockets += target.startswith("socket:")
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        status[name] = value.strip()
    return {
        "fds": fds,
        "sockets": sockets,
        "threads": int(status["Threads"]),
        "rss_kib": int(status["VmRSS"].split()[0]),
    }


def slope(xs, ys) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


# --------------------------------------------------------------------------- the two runs


def start_kernel(server: LocalServer, history_db: str, max_history: int = 20) -> Kernel:
    kernel = Kernel(env={"OPCHAT_HISTORY_DB": history_db})
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}\n"
               f"%config OpchatMagics.max_history = {max_history}")
    return kernel


def sequential(kernel: Kernel, turns: int, every: int, progress=None) -> dict:
    """``turns`` sequential %%opchat cells; a sample after the first turn and every ``every``."""
    pid = kernel_pid(kernel)
    samples = []
    started = time.perf_counter()
    for i in range(1, turns + 1):
        ex = kernel.run(f"%%opchat\nsoak turn {i}", timeout=60)
        if f"soak turn {i}" not in ex.markdown():
            raise AssertionError(f"turn {i}: the reply did not echo the message: {ex.markdown()[:200]!r}")
        if i == 1 or i % every == 0:
            samples.append({"turn": i, "elapsed": time.perf_counter() - started, **sample(pid)})
            if progress:
                progress(samples[-1])
    kept = kernel.value("len(get_ipython().magics_manager.registry['OpchatMagics'].conversation.thread().messages)")
    steady = samples[1:] if len(samples) > 2 else samples
    xs = [s["turn"] for s in steady]
    return {
        "pid": pid,
        "turns": turns,
        "seconds": time.perf_counter() - started,
        "samples": samples,
        "messages_kept": kept,
        "slope_per_100": {k: 100 * slope(xs, [s[k] for s in steady]) for k in ("fds", "sockets", "threads", "rss_kib")},
    }


# Runs inside the kernel: N panel-style turns at once on N threads of the notebook's
# conversation, twice; returns what each thread holds and how far the streams overlapped.
CONCURRENT = r"""
import concurrent.futures as _cf, json as _json
from opchat_magic.turn import ChatTurn as _ChatTurn
from opchat_magic.server import reply_text as _reply_text

def _soak_concurrent(n, delay):
    magics = get_ipython().magics_manager.registry['OpchatMagics']
    conv = magics.conversation
    options = magics.session.options()
    intervals, errors = [], []
    for round_ in (1, 2):
        turns = [_ChatTurn(conv.thread(f"panel-{i}"), f"panel {i} says hello, round {round_} [[delay:{delay}]]", options)
                 for i in range(n)]
        for t in turns:
            t.start()
        done, pending = _cf.wait([t.future for t in turns], timeout=120)
        errors += [f"{t.thread.name}: still running" for t in turns if t.future in pending]
        for t in turns:
            if t.future in done and t.future.exception() is not None:
                errors.append(f"{t.thread.name}: {t.future.exception()!r}")
            elif t.future in done:
                r = t.future.result()
                intervals.append((r.started_at, r.finished_at))
    # peak overlap of the streams
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    crosstalk = []
    for i in range(n):
        thread = conv.thread(f"panel-{i}")
        got = [m.to_dict() for m in thread.messages]
        want = []
        for round_ in (1, 2):
            want.append({"role": "user", "content": f"panel {i} says hello, round {round_} [[delay:{delay}]]"})
            want.append({"role": "assistant", "content": _reply_text(want)})
        if got != want:
            crosstalk.append({"thread": thread.name, "got": got})
    return {"errors": errors, "crosstalk": crosstalk[:3], "crosstalk_threads": len(crosstalk),
            "peak_overlap": peak, "threads": n}
"""


def concurrent(kernel: Kernel, n: int, delay: float = 0.01) -> dict:
    kernel.run(CONCURRENT)
    started = time.perf_counter()
    ex = kernel.run(f"print(_json.dumps(_soak_concurrent({n}, {delay})))", timeout=300)
    result = json.loads(ex.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- report


def table(samples: list) -> str:
    rows = [f"{'turn':>6} {'seconds':>8} {'fds':>5} {'sockets':>8} {'threads':>8} {'RSS MiB':>8}"]
    for s in samples:
        rows.append(f"{s['turn']:>6} {s['elapsed']:>8.1f} {s['fds']:>5} {s['sockets']:>8} {s['threads']:>8} "
                    f"{s['rss_kib'] / 1024:>8.1f}")
    return "\n".join(rows)


def run(turns: int = 1000, every: int = 100, n_concurrent: int = 50, out=sys.stdout,
        history_db: Optional[str] = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="opchat-soak-") as tmp, LocalServer(delay=0) as server:
        kernel = start_kernel(server, history_db or os.path.join(tmp, "history.sqlite3"))
        try:
            print(f"kernel pid {kernel_pid(kernel)}; {turns} sequential turns, a sample every {every}", file=out)
            seq = sequential(kernel, turns, every,
                             progress=lambda s: print(f"  ... turn {s['turn']}", file=out, flush=True))
            print(table(seq["samples"]), file=out)
            print("slope per 100 turns (after the first sample): "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in seq["slope_per_100"].items()), file=out)
            print(f"{turns} turns in {seq['seconds']:.1f} s ({turns / seq['seconds']:.1f} turns/s); "
                  f"the thread holds {seq['messages_kept']} messages", file=out)
            conc = concurrent(kernel, n_concurrent) if n_concurrent else None
            if conc is not None:
                after = sample(seq["pid"])
                conc["after"] = after
                print(f"\n{n_concurrent} concurrent panel turns x 2 rounds in {conc['seconds']:.1f} s: "
                      f"peak overlap {conc['peak_overlap']} streams, errors {len(conc['errors'])}, "
                      f"threads with cross-talk {conc['crosstalk_threads']}", file=out)
                print(f"after: fds {after['fds']}, sockets {after['sockets']}, threads {after['threads']}, "
                      f"RSS {after['rss_kib'] / 1024:.1f} MiB", file=out)
                for e in conc["errors"][:5]:
                    print("  error:", e, file=out)
            return {"sequential": seq, "concurrent": conc, "server": server.stats.to_json()["statuses"]}
        finally:
            kernel.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    result = run(args.turns, args.every, args.concurrent)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    conc = result["concurrent"]
    return 1 if conc and (conc["errors"] or conc["crosstalk_threads"]) else 0


if __name__ == "__main__":
    sys.exit(main())
