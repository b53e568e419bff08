"""Run the quickstart notebook headless and show what the model replied.

``python -m opchat_magic.quickstart [NOTEBOOK] [--output OUT]`` executes the
notebook in a real kernel (nbclient), saves the executed copy with its replies,
and prints each cell's output as plain text. Without NOTEBOOK it runs the
notebook shipped inside the package (``opchat_magic/notebooks/quickstart.ipynb``),
so it works from any directory; the executed copy goes to the current
directory. It exits non-zero if any cell fails.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

PACKAGED = "notebooks/quickstart.ipynb"
INSTALL_HINT = "pip install 'opchat-magic[quickstart]'  (from a clone: pip install -e '.[quickstart]')"


def packaged_notebook() -> Path:
    """The quickstart notebook inside the installed package."""
    return Path(__file__).resolve().parent / PACKAGED


def output_text(output: dict) -> Optional[str]:
    """One cell output as a terminal shows it: plain text, never escaped Markdown."""
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", "").rstrip("\n")
    if kind == "error":
        return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
    data = output.get("data", {})
    plain = data.get("text/plain")
    if plain is not None and not (plain.startswith("<") and plain.endswith(" object>")):
        return plain.rstrip("\n")
    if "text/markdown" in data:  # an object without a useful plain repr
        return data["text/markdown"].rstrip("\n")
    return None


def cell_report(nb) -> Iterator[str]:
    """``>>> source`` then the outputs of every code cell, as plain text."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        yield ">>> " + cell.source.strip().replace("\n", "\n... ")
        for out in cell.get("outputs", []):
            text = output_text(out)
            if text:
                yield text
        yield ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opchat_magic.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", help=f"the notebook to run (default: the packaged {PACKAGED})")
    parser.add_argument("--output", help="where to save the executed notebook "
                                         "(default: NAME.out.ipynb in the current directory)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds a cell may run")
    args = parser.parse_args(argv)

    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:
        print(f"The quickstart needs nbclient and nbformat ({exc.name} is missing): {INSTALL_HINT}", file=sys.stderr)
        return 2

    source = Path(args.notebook).expanduser() if args.notebook else packaged_notebook()
    if not source.is_file():
        print(f"opchat-magic quickstart: no notebook at {source}", file=sys.stderr)
        return 2
    output = Path(args.output).expanduser() if args.output else Path.cwd() / (source.stem + ".out.ipynb")
    if not output.parent.is_dir():
        print(f"opchat-magic quickstart: cannot save to {output}: {output.parent} is not a directory", file=sys.stderr)
        return 2
    try:
        nb = nbformat.read(source, as_version=4)
    except Exception as exc:  # not JSON, not a notebook
        print(f"opchat-magic quickstart: {source} is not a readable notebook: {exc}", file=sys.stderr)
        return 2

    failed = None
    # The kernel works in a scratch directory: a packaged notebook's folder may be read-only.
    with tempfile.TemporaryDirectory(prefix="opchat-quickstart-") as workdir:
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": workdir}}, store_widget_state=True)
        try:
            client.execute()
        except CellExecutionError as exc:
            failed = exc
    nbformat.write(nb, output)

    for line in cell_report(nb):
        print(line)
    print(f"Executed notebook saved to {output}")
    if failed is not None:
        print(f"A cell failed:\n{failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
