"""What recording cell errors costs (for {Err[N]} and %opchat_explain), in a real kernel.

One kernel; the same cells run before and after ``%load_ext opchat_magic``,
alternating rounds: a failing cell (a short traceback through a function), a
deep recursion (about 3,000 frames) and a plain assignment. Each cell is timed
from execute request to idle. Reported: medians per cell and the ratio with /
without the recorder, measured in this one run.

    python benchmarks/error_recorder.py [--rounds 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

from opchat_magic.testing.kernel import Kernel

CELLS = {
    "failing cell": "f(0)",
    "deep recursion": "r(0)",
    "plain cell": "x = 1",
}
SETUP = "def f(v):\n    return 1 / v\ndef r(n):\n    return r(n + 1)"


def timed(kernel: Kernel, code: str) -> float:
    start = time.perf_counter()
    kernel.run(code, check=False, timeout=120)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with Kernel() as kernel:
        kernel.run(SETUP)
        # Without: the extension is loaded and unloaded, so both sides pay the same imports.
        kernel.run("%load_ext opchat_magic\n%config OpchatMagics.persist = False\n%unload_ext opchat_magic")
        results = {name: ([], []) for name in CELLS}
        for round_ in range(args.rounds):
            for loaded in ((False, True) if round_ % 2 else (True, False)):  # alternate which goes first
                kernel.run("%load_ext opchat_magic" if loaded else "%unload_ext opchat_magic", check=False)
                for name, code in CELLS.items():
                    results[name][loaded].append(timed(kernel, code))
        assert kernel.value("len(get_ipython().magics_manager.registry['OpchatMagics'].session.errors)") > 0
    print(f"{'cell':<16} {'without ms':>11} {'with ms':>9} {'ratio':>6}")
    for name, (without, with_) in results.items():
        a, b = statistics.median(without) * 1000, statistics.median(with_) * 1000
        print(f"{name:<16} {a:>11.1f} {b:>9.1f} {b / a:>6.2f}")


if __name__ == "__main__":
    main()
