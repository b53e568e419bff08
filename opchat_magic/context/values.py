"""A notebook value as prompt content: bounded text, a DataFrame summary, or an image.

``{df}`` with a million-row DataFrame, or ``{Out[3]}`` holding a 50 MB string,
must not become a 50 MB request that the server refuses or silently cuts: text
longer than the cap is cut with a visible marker saying how much was left out,
and the cut is reported (:class:`Cut`) so the front door can tell the user.
A pandas DataFrame (or Series) becomes a compact summary: its shape, every
column's name and dtype (up to a bound), the first rows. pandas stays
optional: it is only looked at when the value's class comes from it.

A matplotlib figure (or an Axes, an artist, the list ``plt.plot`` returns), an
``IPython.display.Image`` or a PIL image becomes an :class:`~opchat_magic.images.Image`.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Any, Optional

from ..images import MAX_IMAGE_BYTES, Image, image_from_bytes

__all__ = ["DEFAULT_CAP", "Cut", "clip", "value_text", "value_content", "as_image", "summarize_pandas"]

DEFAULT_CAP = 100_000
# A DataFrame summary lists at most this many columns, and shows this many rows.
MAX_COLUMNS = 100
HEAD_ROWS = 5
# Of a cut text, this share is kept from the start; the rest from the end
# (the end of a log or a traceback is often what matters).
HEAD_SHARE = 0.8


@dataclass(frozen=True)
class Cut:
    """One value that was cut: what it was, how long, how much of it was sent."""

    what: str
    total: int
    kept: int

    @property
    def left_out(self) -> int:
        return self.total - self.kept

    def describe(self) -> str:
        return f"{self.left_out:,} of {self.total:,} characters of {self.what} left out"


def clip(text: str, cap: int, what: str = "value") -> "tuple[str, Optional[Cut]]":
    """``text`` cut to ``cap`` characters (0: no limit) around a marker saying how much was left out."""
    if cap <= 0 or len(text) <= cap:
        return text, None
    head = int(cap * HEAD_SHARE)
    tail = cap - head
    left_out = len(text) - cap
    marker = f"\n[... {left_out:,} of {len(text):,} characters of {what} left out here ...]\n"
    return text[:head] + marker + (text[-tail:] if tail else ""), Cut(what, len(text), cap)


def _pandas_kind(value: Any) -> Optional[str]:
    pandas = sys.modules.get("pandas")
    if pandas is None or not type(value).__module__.startswith("pandas"):
        return None
    if isinstance(value, pandas.DataFrame):
        return "DataFrame"
    if isinstance(value, pandas.Series):
        return "Series"
    return None


def summarize_pandas(value: Any, max_columns: int = MAX_COLUMNS, rows: int = HEAD_ROWS) -> Optional[str]:
    """A compact text summary of a DataFrame or Series, or None for anything else."""
    kind = _pandas_kind(value)
    if kind == "DataFrame":
        n_rows, n_cols = value.shape
        lines = [f"pandas DataFrame: {n_rows:,} rows × {n_cols:,} columns",
                 "Columns (name: dtype):"]
        for name, dtype in list(value.dtypes.items())[:max_columns]:
            lines.append(f"- {name}: {dtype}")
        if n_cols > max_columns:
            lines.append(f"- ... and {n_cols - max_columns:,} more columns")
        if n_rows:
            shown = min(rows, n_rows)
            lines.append(f"First {shown} rows:" if shown > 1 else "First row:")
            lines.append(value.head(shown).to_string(max_cols=min(max_columns, 20), max_colwidth=60))
        return "\n".join(lines)
    if kind == "Series":
        name = f" {value.name!r}" if value.name is not None else ""
        lines = [f"pandas Series{name}: {len(value):,} values, dtype {value.dtype}"]
        if len(value):
            shown = min(rows * 2, len(value))
            lines.append(f"First {shown} values:" if shown > 1 else "First value:")
            lines.append(value.head(shown).to_string(max_rows=shown))
        return "\n".join(lines)
    return None


def value_text(value: Any, cap: int = DEFAULT_CAP, what: str = "value") -> "tuple[str, Optional[Cut]]":
    """The text a value puts in a prompt: a pandas summary or ``str(value)``, bounded by ``cap``."""
    summary = summarize_pandas(value)
    text = summary if summary is not None else (value if isinstance(value, str) else str(value))
    return clip(text, cap, what)


# -- images ------------------------------------------------------------------

def _figure_of(value: Any):
    """The matplotlib Figure behind a Figure, an Axes, an artist, or a list of artists, else None."""
    if "matplotlib" not in sys.modules:
        return None
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure, SubFigure

    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Artist) for v in value):
        value = value[0]
    if isinstance(value, SubFigure):
        return value.figure
    if isinstance(value, Figure):
        return value
    if isinstance(value, Artist):
        return value.figure
    return None


def as_image(value: Any, source: str = "", max_bytes: int = MAX_IMAGE_BYTES) -> Optional[Image]:
    """The image ``value`` shows as (PNG or JPEG bytes), or None when it is not an image.

    Only kinds that are pictures are taken (so a sympy expression, which can
    also render a PNG of its formula, stays text).
    """
    figure = _figure_of(value)
    if figure is not None:
        buffer = io.BytesIO()
        # As the inline backend draws it in the notebook.
        figure.savefig(buffer, format="png", bbox_inches="tight")
        return image_from_bytes(buffer.getvalue(), source, max_bytes)
    cls = type(value)
    if cls.__module__.startswith("IPython.") and cls.__name__ == "Image":
        data = getattr(value, "data", None)
        if isinstance(data, (bytes, bytearray)):
            return image_from_bytes(data, source, max_bytes)
        return None  # a linked (url=..., embed=False) image: its text is the URL
    if cls.__module__.startswith("PIL.") and hasattr(value, "_repr_png_"):
        data = value._repr_png_()
        if isinstance(data, (bytes, bytearray)):
            return image_from_bytes(data, source, max_bytes)
    return None


def value_content(value: Any, cap: int = DEFAULT_CAP, what: str = "value",
                  max_image_bytes: int = MAX_IMAGE_BYTES) -> "tuple[str | Image, Optional[Cut]]":
    """An image if the value is a picture, else its bounded text (and the cut, if any)."""
    image = as_image(value, what, max_image_bytes)
    if image is not None:
        return image, None
    return value_text(value, cap, what)
