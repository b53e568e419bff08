"""Make hostile Markdown (model output) safe to render as a live output.

JupyterLab renders the ``text/markdown`` of live outputs as trusted HTML: raw
HTML in a reply runs (``<img src=x onerror=...>``), links may be
``javascript:``. :func:`sanitize_markdown` returns Markdown in which

* every ``<`` that could open a tag, comment, CDATA or processing instruction
  (``<`` followed by a letter, ``/``, ``!`` or ``?``) is ``&lt;``, except in
  code that every parser agrees is code, and in ``<http(s)://...>`` /
  ``<mailto:...>`` / e-mail autolinks; ``\\<`` becomes ``&lt;`` too (marked's
  bare-URL rule can swallow the backslash);
* link and image destinations after ``](`` and ``]:`` pass an **allowlist**:
  read as a browser reads the ``href`` marked writes (entities and backslash
  escapes resolved, tabs and newlines dropped, every leading character that
  JavaScript's ``trim`` or the WHATWG URL parser drops, and more, skipped), a
  destination survives only if it has no scheme (relative, ``#fragment``,
  ``//host``) or its scheme is ``http``, ``https`` or ``mailto``, or it is
  ``data:image/png|gif|jpeg|webp``; any other gets ``#blocked-`` put in front
  (a harmless fragment link); autolinks other than http(s)/mailto/e-mail are
  escaped;
* no image makes the page fetch anything: every ``![`` becomes ``&#33;[``
  (the image shows as a visible link to where it would have loaded from),
  except plain ``data:image/png|gif|jpeg|webp`` images and what the
  ``remote_images`` option (:class:`ImagePolicy`) lets through;
* ``mermaid`` fences become ``mermaid-source`` (shown as code: JupyterLab's
  mermaid renderer loads the images a diagram's labels name);
* ``"`` in image alt text is ``&quot;`` (marked 16, shipped by JupyterLab
  releases before 4.6, pastes alt text into ``alt="..."`` unescaped);
* fence info strings keep only ``[A-Za-z0-9_+#.-]`` and spaces (JupyterLab's
  highlighter pastes the info string into ``class="language-..."``);
* JupyterLab's math pass (``removeMath`` lifts ``$...$``, ``\\(...\\)``,
  ``\\begin..\\end`` out before marked runs and pastes it back, with only
  ``& < >`` escaped, wherever its ``@@n@@`` placeholder landed) can neither
  carry a ``"`` into an attribute nor turn code into text: the regions are
  computed exactly as JupyterLab does, offending delimiters are escaped
  (``\\$`` renders as ``$``), the text left after lifting is sanitised again
  and its edits made here, and ``\\@`` (which could forge a placeholder)
  becomes ``&#64;``.

``&`` is left alone: an entity in text only ever renders as a character, and
entities are resolved before the scheme check of a destination.

Code is left verbatim only where the reading is unambiguous, because a wrong
guess ("this is code" when a parser says "this is text") would leave live
HTML. When unsure, the sanitiser escapes: the worst outcome is a visible
``&lt;`` inside a code sample, never a live tag. In particular:

* fenced code is code from an opening fence (indent 0-3, no list or quote
  marker on the line) to its closing fence. The rest of the text is
  "tainted" (all text from then on) after a line that could close the fence
  for one parser and not another (marked accepts ``\u0060\u0060\u0060~``,
  CommonMark a trailing tab), a less indented line in an indented fence, a
  fence-looking line behind a list/quote marker or indented 4+, or a fence
  opened while a ``[`` is unclosed or after a ``]:`` (marked reads link
  definitions, labels and titles included, across fence lines);
* indented code is code only at the very start of the document;
* an inline code span keeps a raw ``<`` only if the way it pairs up is
  certain: it sits on one line and holds no ``|`` (table cells are split
  first); no ``~`` right before it (marked reads ``~\u0060`` as one run); no
  URL in the word before it (a bare URL eats backticks); its opening is not
  within reach of a link destination or title, nor does it hold ``]`` while a
  ``[`` is open; it holds no ``*``/``_``/``~`` after one appeared in the
  paragraph unless marked surely masks it from emphasis; and no earlier span
  in the paragraph failed these tests (its ends would shift all later
  pairings).

Tested against JupyterLab's own bundled marked versions and math pass (run
under node when both are installed), by a battery and by fuzzing.
"""
from __future__ import annotations

import bisect
import html
import re
import unicodedata
from typing import List, Optional, Tuple

# one reading of CommonMark fences and indentation for both modules
from .commonmark import FENCE as _FENCE
from .commonmark import closes_run as _closes_run
from .commonmark import fence_closes as _fence_closes
from .commonmark import indent as _indent
from .commonmark import span_not_fence as _span_not_fence

__all__ = ["sanitize_markdown", "escape_text", "ImagePolicy"]

_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_TAGLIKE = re.compile(r"<(?=[A-Za-z/!?])")
_SAFE_AUTOLINK = re.compile(
    r"<(?:(?:https?|mailto):[A-Za-z0-9\-._~:/?#\[\]@!&()*+,;=%]*"
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)>",
    re.I,
)
# A line that some parser may read as a fence: container markers or any
# indentation, then a run of 3+ backticks or tildes.
_FENCEISH = re.compile(r"((?:[ \t]*(?:[-+*]|\d{1,9}[.)])(?=[ \t])|[ \t]*>)*[ \t]*)(`{3,}|~{3,})(.*)")
_INFO_BAD = re.compile(r"[^A-Za-z0-9_+#.\- ]")
_FIRST_WORD = re.compile(r"( *)([^ ]*)")
_LINK_DEST = re.compile(r"\]\(|\]:")
_ENTITY = re.compile(r"&(?:#[0-9]{1,8};?|#[xX][0-9a-fA-F]{1,8};?|[A-Za-z][A-Za-z0-9]{1,31};?)")
_SAFE_DATA = re.compile(r"data:image/(?:png|gif|jpeg|webp)[;,]")
_BLOCKED = "#blocked-"


def escape_text(text: str) -> str:
    """Plain text as inert Markdown: ASCII punctuation escaped (``@``, ``<``
    and ``"`` as entities, see :func:`_inline`), on one line."""
    text = " ".join(text.split())
    out = []
    for c in text:
        if c == "@":
            out.append("&#64;")
        elif c == "<":
            out.append("&lt;")
        elif c == '"':
            out.append("&quot;")
        elif c in _PUNCT:
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def _blank(line: str) -> bool:
    return not line.strip(" \t")


# ---------------------------------------------------------------------------
# destinations: an allowlist of schemes
_ALLOWED_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
# What String.prototype.trim removes (marked trims destinations), besides ASCII.
_JS_TRIM = frozenset("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                     "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\u180e")


def _leading_junk(ch: str) -> bool:
    """May a browser or marked drop ``ch`` in front of a URL (so the scheme follows it)?

    A superset, on purpose: ASCII controls and space (the WHATWG URL parser
    strips them), what JavaScript's ``trim`` removes (marked trims), every
    other separator, control and format character (U+180E, U+200B, bidi
    marks...), and ``<`` (a pointy-bracket destination). Dropping too much only
    ever blocks more.
    """
    if ord(ch) <= 0x20 or ch in _JS_TRIM or ch == "<":
        return True
    return unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cn")


def _decoded_at(s: str, i: int, n: int) -> "tuple[str, int]":
    """What a browser reads at ``s[i]`` of a URL (text ends at ``n``): a backslash
    escape or entity resolved, else the character; and the index after it."""
    c = s[i]
    if c == "\\" and i + 1 < n and s[i + 1] in _PUNCT:
        return s[i + 1], i + 2
    if c == "&":
        m = _ENTITY.match(s, i)
        if m:
            dec = html.unescape(m.group(0))
            if dec != m.group(0):
                return dec, m.end()
    return c, i + 1


def _blocked_url(s: str, i: int, n: int) -> bool:
    """Does the destination starting at ``s[i]`` (text ends at ``n``) fall outside the allowlist?

    Read the way a browser reads the ``href``/``src`` marked writes: entities
    and backslash escapes resolved, tabs and newlines dropped anywhere,
    leading junk (:func:`_leading_junk`) dropped. What is left is allowed when
    it has no scheme (relative, fragment, ``//host``) or its scheme is http,
    https or mailto, or it is ``data:image/png|gif|jpeg|webp``. A scheme is what
    the WHATWG parser takes for one: an ASCII letter, then letters, digits,
    ``+ . -``, then ``:``. Anything else (another scheme, a scheme hidden by
    more than 4,096 junk characters) is blocked.
    """
    scheme: List[str] = []
    junk = 0
    started = False
    while i < n:
        chars, i = _decoded_at(s, i, n)
        for ch in chars:
            if ch in "\t\n\r":
                continue  # browsers drop these anywhere in a URL
            if not started:
                if _leading_junk(ch):
                    junk += 1
                    if junk > 4096:
                        return True
                    continue
                started = True
                if not (ch.isascii() and ch.isalpha()):
                    return False  # no scheme: relative, a fragment or //host
                scheme.append(ch.lower())
                continue
            if ch == ":":
                name = "".join(scheme)
                if name in _ALLOWED_SCHEMES:
                    return False
                if name == "data":
                    return not _SAFE_DATA.match("data:" + _decoded_prefix(s, i, n, 24))
                return True
            if ch in _SCHEME_CHARS:
                scheme.append(ch.lower())
                if len(scheme) > 64:
                    return True  # no scheme we allow is that long
                continue
            return False  # not a scheme: a relative path
    return False  # ended inside what might have become a scheme: plain text, relative


def _decoded_prefix(s: str, i: int, n: int, size: int) -> str:
    """Up to ``size`` characters from ``s[i]``, entities and escapes resolved, tabs and newlines dropped."""
    out: List[str] = []
    while i < n and len(out) < size:
        chars, i = _decoded_at(s, i, n)
        out.extend(ch.lower() for ch in chars if ch not in "\t\n\r")
    return "".join(out)


# ---------------------------------------------------------------------------
# images: no fetch unless the user opted in
_PLAIN_IMAGE_ALT = re.compile(r"[^\[\]`\\<\n&]*\]\([ \t]*<?")
_PLAIN_REMOTE = re.compile(r"https?://([A-Za-z0-9.-]+)(?::[0-9]{1,5})?[/?#]", re.I)
_PLAIN_DATA = re.compile(r"data:image/(?:png|gif|jpeg|webp)[;,]", re.I)


class ImagePolicy:
    """Which images may show inline (every other image becomes a link).

    ``remote_images``: ``False`` (default) shows only ``data:image/png|gif|jpeg|webp``
    images; ``True`` shows every image (http/https, reference style, relative);
    a collection of host names shows plain inline images from those hosts too
    (``![alt](https://host/...)``, nothing fancier: a form the sanitiser can read
    with certainty).
    """

    __slots__ = ("all", "hosts")

    def __init__(self, remote_images=False):
        if isinstance(remote_images, ImagePolicy):
            self.all, self.hosts = remote_images.all, remote_images.hosts
        elif isinstance(remote_images, bool) or remote_images is None:
            self.all, self.hosts = bool(remote_images), frozenset()
        elif isinstance(remote_images, str):
            raise TypeError("remote_images takes True/False or a collection of host names, not a str")
        else:
            self.all = False
            self.hosts = frozenset(h.strip().lower().rstrip(".") for h in remote_images if h and h.strip())

    def keeps(self, s: str, i: int, b: int) -> bool:
        """May the image opened by the ``![`` at ``s[i]`` show inline?"""
        if self.all:
            return True
        m = _PLAIN_IMAGE_ALT.match(s, i + 2, b)
        if not m:
            return False
        p = m.end()
        if _PLAIN_DATA.match(s, p, b):
            return True
        r = _PLAIN_REMOTE.match(s, p, b)
        return bool(r and self.hosts and r.group(1).lower().rstrip(".") in self.hosts)


_NO_REMOTE_IMAGES = ImagePolicy(False)
_BARE_FTP = re.compile(r"ftp://", re.I)
_BANG = "&#33;"  # "!" that opens no image, in text and in any reading (even after a backslash)


# ---------------------------------------------------------------------------
# the plan: what to edit, and where the code is
class _Plan:
    __slots__ = ("edits", "code", "fences")

    def __init__(self) -> None:
        self.edits: List[Tuple[int, int, str]] = []  # (pos, length removed, inserted)
        self.code: List[Tuple[int, int]] = []  # literal code (fences, spans, indented)
        self.fences: List[Tuple[int, int, str]] = []  # fenced content + language


def _inside(ranges: List[Tuple[int, int]], pos: int) -> bool:
    k = bisect.bisect_right(ranges, (pos, float("inf"))) - 1
    return k >= 0 and ranges[k][0] <= pos < ranges[k][1]


def _lines(text: str):
    pos = 0
    n = len(text)
    while pos <= n:
        nl = text.find("\n", pos)
        if nl == -1:
            yield pos, n
            return
        yield pos, nl
        pos = nl + 1


def _loose_close(line: str, opener: str) -> bool:
    """marked: `` {0,3}<opener>[~`]* *$``.

    Deliberately not CommonMark's rule (``blocks._fence_closes``): marked
    accepts mixed ``~``/backtick tails and no trailing tab; where the two
    disagree the rest of the text is tainted.
    """
    body = line.lstrip(" ")
    if len(line) - len(body) > 3 or not body.startswith(opener):
        return False
    rest = body[len(opener) :].lstrip("~`")
    return not rest.strip(" ")


def _closeish(line: str, ch: str, n: int, opener: str) -> bool:
    """Could this line close the fence in some container, at any indentation?"""
    body = line.lstrip(" \t")
    if _closes_run(body, ch, n):
        return True
    return body.startswith(opener) and not body[len(opener) :].lstrip("~`").strip(" ")


def _plan(text: str, images: ImagePolicy = _NO_REMOTE_IMAGES) -> _Plan:
    plan = _Plan()
    mode = "text"  # text | fence | indent
    tainted = False
    refdef = False
    bracket = False  # an unescaped '[' not yet closed by ']'
    leading = True
    fence = None  # (indent, char, length, run, lang, content_start)
    chunk_start: Optional[int] = None
    chunk_end = 0

    def flush() -> None:
        nonlocal chunk_start
        if chunk_start is not None:
            _inline(text, chunk_start, chunk_end, plan, images)
            chunk_start = None

    def add_text(a: int, b: int) -> None:
        nonlocal chunk_start, chunk_end
        if chunk_start is None:
            chunk_start = a
        chunk_end = b

    for a, b in _lines(text):
        line = text[a:b]
        if mode == "indent":
            if _blank(line) or _indent(line) >= 4:
                plan.code.append((a, b))
                continue
            mode = "text"
        if mode == "fence":
            k, ch, n, run, lang, cstart = fence
            done = False
            if _blank(line):
                continue
            strict = _fence_closes(line, ch, n)
            loose = _loose_close(line, run)
            spaces = len(line) - len(line.lstrip(" "))
            if strict and loose and spaces >= k:
                done = True
            elif strict or loose:
                tainted = True
            elif k >= 1 and (_indent(line) < k or _closeish(line, ch, n, run)):
                tainted = True
            if done or tainted:
                if cstart < a:
                    plan.code.append((cstart, a))
                    plan.fences.append((cstart, a, lang))
                mode = "text"
                if done:
                    continue
            else:
                continue
        # text mode
        if leading:
            if _blank(line):
                continue
            leading = False
            if _indent(line) >= 4 and not _FENCEISH.match(line):
                mode = "indent"
                plan.code.append((a, b))
                continue
        if _blank(line):
            flush()
            continue
        if not tainted:
            m = _FENCE.match(line)
            if m and not _span_not_fence(m):
                if refdef or bracket:
                    # marked reads link definitions on the raw text: a label
                    # or title opened above may run through this fence line
                    tainted = True
                else:
                    flush()
                    run = m.group(2)
                    lang = (m.group(3).split() or [""])[0].lower()
                    fence = (len(m.group(1)), run[0], len(run), run, lang, b + 1)
                    mode = "fence"
                    continue
            else:
                f = _FENCEISH.match(line)
                if f and not _span_not_fence(f):
                    tainted = True
            if "]:" in line:
                refdef = True
            if "[" in line or "]" in line:
                bracket = _bracket_open(line, bracket)
        add_text(a, b)
    if mode == "fence":
        cstart = fence[5]
        if cstart < len(text):
            plan.code.append((cstart, len(text)))
            plan.fences.append((cstart, len(text), fence[4]))
    flush()
    plan.code.sort()
    plan.edits.sort(key=lambda e: (e[0], e[1]))
    return plan


def _bracket_open(line: str, pending: bool) -> bool:
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            pending = True
        elif c == "]":
            pending = False
        i += 1
    return pending


def _inline(s: str, a: int, b: int, plan: _Plan, images: ImagePolicy = _NO_REMOTE_IMAGES) -> None:
    """Plan the edits of one run of text lines ``s[a:b]`` (no blank line inside)."""
    # maximal backtick runs, by length, for finding closers
    runs: dict = {}
    for m in re.finditer(r"`+", s[a:b]):
        runs.setdefault(len(m.group(0)), []).append(m.start() + a)
    reaches = _link_reaches(s, a, b)
    emph = [p for p in (s.find(c, a, b) for c in "*_~") if p != -1]
    first_emph = min(emph) if emph else b
    edits = plan.edits
    unsure = False
    bracket_open = False  # an unescaped '[' with no ']' after it yet
    # marked hides code spans from emphasis by masking `...` pairs (and
    # [..](..) links) found by a simpler scan; it agrees with ours while no
    # odd backtick came first: no unmatched run, no run of 2+, no backtick
    # inside a span, no escaped backtick, no backtick inside a link
    aligned = True
    ticked_links = [r0 for r0, _r, r1 in reaches if s.find("`", r0, r1) != -1]
    first_ticked_link = min(ticked_links) if ticked_links else b
    i = a
    while i < b:
        c = s[i]
        if c == "[":
            bracket_open = True
        elif c == "]":
            bracket_open = False
        if c == "\\" and i + 1 < b and s[i + 1] in _PUNCT:
            if s[i + 1] == "`":
                aligned = False
            elif s[i + 1] == "@":
                # "\@" renders "@": it could forge JupyterLab's "@@0@@" math
                # placeholders (pasted back verbatim, even into attributes)
                edits.append((i, 2, "&#64;"))
            elif s[i + 1] == "<":
                # not a safe escape: marked's bare-URL rule swallows the "\"
                edits.append((i, 2, "&lt;"))
            i += 2
            continue
        if c == "`":
            j = i
            while j < b and s[j] == "`":
                j += 1
            n = j - i
            # the closer: the next maximal run of the same length (backslashes
            # are literal inside a code span, so raw runs are right here)
            starts = runs.get(n, [])
            k = bisect.bisect_left(starts, j)
            close = starts[k] if k < len(starts) else None
            if close is None:
                i = j
                aligned = False
                continue
            content = s[j:close]
            single = "\n" not in content and "|" not in content
            # (marked masks "\\`" as an escape first: a span ending in a
            # backslash is not masked, and the masking after it is off)
            masked = (aligned and first_ticked_link > i and n == 1
                      and "`" not in content and not content.endswith("\\"))
            sure = (
                single
                and not (bracket_open and "]" in content)
                and not any(r0 < i < r1 for _l, r0, r1 in reaches)
                and _span_ok(s, a, i, content, first_emph, masked)
            )
            if n > 1 or "`" in content or content.endswith("\\"):
                aligned = False
            raw_ok = sure and not unsure
            if not sure:
                # its ends may be read differently (eaten by a URL, a link, a
                # table cell...), shifting how every later backtick pairs up
                unsure = True
            plan.code.append((j, close))
            if not raw_ok:
                for m in _TAGLIKE.finditer(content):
                    edits.append((j + m.start(), 1, "&lt;"))
                for m in _BARE_FTP.finditer(content):
                    edits.append((j + m.start() + 3, 1, "&#58;"))
                if not images.all:  # it may be text: no image may open in it
                    k = content.find("![")
                    while k != -1:
                        edits.append((j + k, 1, _BANG))
                        k = content.find("![", k + 2)
            i = close + n
            continue
        if c in "fF" and s[i : i + 6].lower() == "ftp://":
            edits.append((i + 3, 1, "&#58;"))  # marked autolinks bare ftp:// URLs: not a scheme we allow
            i += 6
            continue
        if c == "!" and i + 1 < b and s[i + 1] == "[" and not images.keeps(s, i, b):
            edits.append((i, 1, _BANG))  # the image shows as the link it would have fetched
            i += 1
            continue
        if c == "<":
            m = _SAFE_AUTOLINK.match(s, i, b)
            if m:
                i = m.end()
                continue
            if i + 1 < b and (s[i + 1].isascii() and s[i + 1].isalpha() or s[i + 1] in "/!?"):
                edits.append((i, 1, "&lt;"))
        i += 1
    # image alt text: marked 16 pastes it into alt="..." unescaped; from the
    # first "![" to the last "]" every '"' becomes &quot; (renders the same)
    img = s.find("![", a, b)
    last = s.rfind("]", img, b) if img != -1 else -1
    if last != -1:
        k = s.find('"', img, last)
        while k != -1:
            if k > a and s[k - 1] == "\\" and not _escaped(s, a, k - 1):
                edits.append((k - 1, 2, "&quot;"))
            else:
                edits.append((k, 1, "&quot;"))
            k = s.find('"', k + 1, last)
    # destinations: after every "](" and "]:", wherever it is (even in code spans)
    for m in _LINK_DEST.finditer(s, a, b):
        p = m.end()
        while p < b and s[p] in " \t\n":
            p += 1
        q = p + 1 if p < b and s[p] == "<" else p
        if q < b and _blocked_url(s, q, b):
            edits.append((p, 0, _BLOCKED))


_MAX_LINKS = 200  # per paragraph; beyond this every code span in it is "unsure"


def _next_unescaped(s: str, ch: str, k: int, b: int) -> int:
    """First ``ch`` at or after ``k`` (before ``b``) not escaped by a backslash, or ``b``."""
    while True:
        k = s.find(ch, k, b)
        if k == -1:
            return b
        if not _escaped(s, 0, k):
            return k
        k += 1


def _link_reaches(s: str, a: int, b: int) -> List[Tuple[int, int, int]]:
    """How far each ``](`` / ``][`` in ``s[a:b]`` may extend, for any parser.

    After ``](``: the destination (``<...>`` or a run without whitespace, which
    a parser may end anywhere) and any title that may start inside it or right
    after the whitespace behind it, up to its closing quote or paren (of the
    possible starts of one kind, the last reaches farthest). After ``][``: up
    to the next ``]``. Returns (the ``[`` before, the ``]``, the end of the
    reach). A code span whose opening backticks fall between the ``]`` and
    the end may be cut in two by a link.
    """
    found = list(re.finditer(r"\]\(|\]\[", s[a:b]))
    if len(found) > _MAX_LINKS:
        return [(a, a, b)]
    out: List[Tuple[int, int, int]] = []
    for m in found:
        at = m.start() + a
        label = s.rfind("[", a, at)
        label = at if label == -1 else label
        p = at + 2
        if m.group(0) == "][":
            out.append((label, at, _next_unescaped(s, "]", p, b) + 1))
            continue
        q = p
        while q < b and s[q] in " \t\n":
            q += 1
        end = q
        while end < b and not s[end].isspace():
            end += 1
        reach = end
        if q < b and s[q] == "<":  # "<dest>", unless its '<' gets escaped: both readings
            reach = max(reach, _next_unescaped(s, ">", q, b) + 1)
        w = end
        while w < b and s[w] in " \t\n":
            w += 1
        starts = [s.rfind(c, q, end) for c in "\"'("]
        if w < b and s[w] in "\"'(":
            starts.append(w)
        for k in starts:
            if k != -1:
                close = ")" if s[k] == "(" else s[k]
                reach = max(reach, min(_next_unescaped(s, close, k + 1, b) + 1, b))
        out.append((label, at, reach))
    return out


def _escaped(s: str, a: int, k: int) -> bool:
    """Is ``s[k]`` itself escaped (an odd run of backslashes before it, from ``a``)?"""
    n = 0
    while k - 1 - n >= a and s[k - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def _span_ok(s: str, a: int, start: int, content: str, first_emph: int, masked: bool) -> bool:
    if start > a and s[start - 1] == "~":
        return False  # marked reads "~`" as one run of text
    if first_emph < start and not masked and any(c in content for c in "*_~"):
        return False  # emphasis opened before may close inside
    if first_emph < start and "~" in content:
        return False  # "~~" strikethrough is not masked at all
    # the word before the span: a bare URL there would swallow the backticks
    w = max(s.rfind(" ", a, start), s.rfind("\t", a, start), s.rfind("\n", a, start)) + 1
    word = s[max(w, a):start].lower()
    return "://" not in word and "www." not in word


def _apply(text: str, edits: List[Tuple[int, int, str]]) -> str:
    if not edits:
        return text
    out = []
    pos = 0
    for p, n, ins in edits:
        if p < pos:  # overlapping edit (same char escaped twice): skip
            continue
        out.append(text[pos:p])
        out.append(ins)
        pos = p + n
    out.append(text[pos:])
    return "".join(out)


def _clean_info(text: str) -> str:
    """Fence info strings: keep ``[A-Za-z0-9_+#.-]`` and spaces, on every fence-like line."""
    if "```" not in text and "~~~" not in text:
        return text
    out = []
    for a, b in _lines(text):
        line = text[a:b]
        m = _FENCEISH.match(line)
        if m and m.group(3):
            if _span_not_fence(m):
                # not a fence (inline code), unless JupyterLab's math pass
                # removes those backticks: then no '"' may reach class="..."
                line = line[: m.end(2)] + m.group(3).replace('"', "")
            else:
                info = _INFO_BAD.sub("", m.group(3))
                word = _FIRST_WORD.match(info)
                if word.group(2).lower() == "mermaid":
                    # JupyterLab renders ```mermaid as a diagram, and mermaid
                    # fetches what its labels name: show the source as code
                    info = word.group(1) + "mermaid-source" + info[word.end():]
                line = line[: m.end(2)] + info
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# JupyterLab's math pass (rendermime latex.ts removeMath), reproduced exactly
_JS_S = "\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_MATHSPLIT = re.compile(
    r"(\$\$?|\\(?:begin|end)\{[a-z]*\*?\}|\\[{}$]|[{}]|(?:\n[" + _JS_S + r"]*)+|@@\d+@@|\\\\[()[\]])",
    re.I,
)
_JS_TWO_LINES = re.compile(r"\n[^\n\r\u2028\u2029]*\n")
_JL_FENCE = re.compile(r"^(?P<fence>`{3,}|(~T){3,})[^`\n]*\n([\s\S]*?)^(?P=fence)`*$", re.M)
_JL_SPAN = re.compile(r"(^|[^\\])(`+)([^\n]*?[^`\n])\2(?!`)", re.M)


def _jl_math_regions(text: str) -> List[Tuple[int, int, str, str]]:
    """Spans JupyterLab lifts out as math: (start, end, open token, close token)."""
    t = text
    tilde = "`" in t or "~~~" in t
    if tilde:
        t = t.replace("~", "~T")
        t = _JL_FENCE.sub(lambda m: m.group(0).replace("$", "~D"), t)
        t = _JL_SPAN.sub(lambda m: m.group(0).replace("$", "~D"), t)
    t = t.replace("\r\n", "\n").replace("\r", "\n")
    blocks = _MATHSPLIT.split(t)
    offs = [0]
    for blk in blocks:
        offs.append(offs[-1] + len(blk) - (blk.count("~") if tilde else 0))
    regions: List[Tuple[int, int, str, str]] = []

    def process(i0: int, i1: int) -> None:
        regions.append((offs[i0], offs[i1 + 1], blocks[i0], blocks[i1]))

    start = end = last = None
    braces = 0
    i = 1
    nb = len(blocks)
    while i < nb:
        blk = blocks[i]
        if blk[:1] == "@":
            pass
        elif start is not None:
            if blk == end:
                if braces:
                    last = i
                else:
                    process(start, i)
                    start = end = last = None
            elif _JS_TWO_LINES.search(blk):
                if last is not None:
                    i = last
                    process(start, i)
                start = end = last = None
                braces = 0
            elif blk == "{":
                braces += 1
            elif blk == "}" and braces:
                braces -= 1
        elif blk in ("$", "$$"):
            start, end, braces = i, blk, 0
        elif blk in ("\\\\(", "\\\\["):
            start, braces = i, 0
            end = "\\\\)" if blk[-1] == "(" else "\\\\]"
        elif blk[1:6] == "begin":
            start, braces = i, 0
            end = "\\end" + blk[6:]
        i += 2
    if start is not None and last is not None:
        process(start, last)
    return regions


def _neutralise(token: str) -> str:
    if token[0] == "$":
        return "\\$" * len(token)
    if token.startswith("\\\\"):
        return "\\\\&#%d;" % ord(token[2])
    return "&#92;" + token[1:]


def _lift_math(s: str, regions) -> Tuple[str, List[Tuple[int, int, int]], List[int]]:
    """JupyterLab's text after ``removeMath``: each region becomes ``@@n@@``.

    Returns the text, the kept pieces as (s_start, s_end, p_start) and the
    position of each placeholder in the new text.
    """
    pieces: List[str] = []
    kept: List[Tuple[int, int, int]] = []
    marks: List[int] = []
    pos = ppos = 0
    for idx, (r0, r1, _t0, _t1) in enumerate(regions):
        pieces.append(s[pos:r0])
        kept.append((pos, r0, ppos))
        ppos += r0 - pos
        ph = "@@%d@@" % idx
        pieces.append(ph)
        marks.append(ppos)
        ppos += len(ph)
        pos = r1
    pieces.append(s[pos:])
    kept.append((pos, len(s), ppos))
    return "".join(pieces), kept, marks


def _to_s(kept: List[Tuple[int, int, int]], q: int) -> Optional[int]:
    """Position in the sanitised text of position ``q`` of the lifted text."""
    k = bisect.bisect_right([p0 for _s0, _s1, p0 in kept], q) - 1
    if k < 0:
        return None
    s0, s1, p0 = kept[k]
    return s0 + q - p0 if q - p0 < s1 - s0 else None


def _in_fence(fences, a: int, b: int) -> bool:
    return any(f0 <= a and b <= f1 and lang != "mermaid" for f0, f1, lang in fences)


def _math_guard(s: str, images: ImagePolicy = _NO_REMOTE_IMAGES) -> str:
    """Keep JupyterLab's math pass from re-opening what the sanitiser closed.

    JupyterLab lifts math out (``removeMath``), renders the rest with marked
    and pastes the math back with only ``& < >`` escaped, wherever its
    placeholder landed, attributes included. So: no math region may hold a
    ``"`` (unless it sits in a code block, before and after lifting), and the
    lifted text must be as safe as ``s``: the edits its own plan asks for (a
    raw ``<`` that stopped being code, a link that stopped being code...) are
    made in ``s``, and no ``"`` may sit in what becomes a fence info string.
    Every edit only escapes, so the loop settles; a fallback escapes
    everything if it does not.
    """
    for _round in range(12):
        if "$" not in s and "\\" not in s:
            return s
        regions = _jl_math_regions(s)
        if not regions:
            return s
        plan = _plan(s, images)
        p, kept, marks = _lift_math(s, regions)
        pplan = _plan(p, images)
        edits: List[Tuple[int, int, str]] = []
        for (r0, r1, t0, t1), mark in zip(regions, marks):
            if '"' not in s[r0:r1]:
                continue
            if _in_fence(plan.fences, r0, r1) and _in_fence(pplan.fences, mark, mark + 4):
                continue  # plain text inside a code block
            if _round < 8 and not _inside(plan.code, r0):
                edits.append((r0, len(t0), _neutralise(t0)))
            elif _round < 8 and not _inside(plan.code, r1 - len(t1)):
                edits.append((r1 - len(t1), len(t1), _neutralise(t1)))
            else:
                edits.extend((r0 + k, 1, "&quot;") for k, ch in enumerate(s[r0:r1]) if ch == '"')
        if not edits:
            # the lifted text must need no edit either: every edit its plan
            # wants (a '<' that stopped being code, a link that stopped being
            # code...) is made in s, where the same text is
            for q, n, ins in pplan.edits:
                at = _to_s(kept, q)
                if at is not None and (n == 0 or _to_s(kept, q + n - 1) == at + n - 1):
                    edits.append((at, n, ins))
            # '"' in what becomes a fence info string (lines joined by math)
            for a, b in _lines(p):
                f = _FENCEISH.match(p, a, b)
                if f and '"' in f.group(3) and not _inside(pplan.code, a):
                    for k in range(f.start(3), f.end(3)):
                        if p[k] == '"':
                            at = _to_s(kept, k)
                            if at is not None:
                                edits.append((at, 1, "&quot;"))
        if not edits:
            return s
        edits.sort(key=lambda e: (e[0], e[1]))
        s = _apply(s, edits)
    # did not settle: escape every tag opener and every quote inside math
    edits = [(m.start(), 1, "&lt;") for m in _TAGLIKE.finditer(s)]
    for r0, r1, _t0, _t1 in _jl_math_regions(s):
        edits.extend((r0 + k, 1, "&quot;") for k, ch in enumerate(s[r0:r1]) if ch == '"')
    edits.sort(key=lambda e: (e[0], e[1]))
    return _apply(s, edits)


def sanitize_markdown(block: str, remote_images=False) -> str:
    """Return ``block`` made safe to render as one Markdown output (see module doc).

    ``remote_images``: which images may show inline (see :class:`ImagePolicy`);
    by default only ``data:image/png|gif|jpeg|webp`` ones: any other image
    would make the page fetch a URL the model chose.
    """
    images = remote_images if isinstance(remote_images, ImagePolicy) else ImagePolicy(remote_images)
    if not block:
        return block
    text = block
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    text = _clean_info(text)
    plan = _plan(text, images)
    out = _apply(text, plan.edits)
    return _math_guard(out, images)
