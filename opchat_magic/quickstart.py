"""Run the quickstart notebook headless and show what the model replied.

``python -m opchat_magic.quickstart [NOTEBOOK] [--output OUT]`` executes the
notebook in a real kernel (nbclient), saves the executed copy with its replies,
and prints each reply's text. It exits non-zero if any cell fails.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opchat_magic.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", default="notebooks/quickstart.ipynb")
    parser.add_argument("--output", help="where to save the executed notebook (default: NAME.out.ipynb beside it)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds a cell may run")
    args = parser.parse_args(argv)

    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError:
        print("The quickstart needs nbclient: pip install -e '.[test]'", file=sys.stderr)
        return 2

    source = Path(args.notebook)
    output = Path(args.output) if args.output else source.with_suffix(".out.ipynb")
    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}}, store_widget_state=True)
    failed = None
    try:
        client.execute()
    except CellExecutionError as exc:
        failed = exc
    nbformat.write(nb, output)

    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.lstrip().startswith("%%opchat"):
            continue
        print(f">>> {cell.source.strip()}")
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/markdown")
            if text:
                print(text.rstrip())
        print()
    print(f"Executed notebook saved to {output}")
    if failed is not None:
        print(f"A cell failed:\n{failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
