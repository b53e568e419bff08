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
    const req = JSON.parse(line), parts = removeMath(req.md);
    out = req.op === 'math' ? parts : {html: markeds.map(mk => replaceMath(mk.parse(parts.text), parts.math))};
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

    def _ask(self, op: str, md: str) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "md": md}) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def html(self, md: str) -> str:
        """The HTML of every bundled marked version, concatenated."""
        return "\n".join(self._ask("html", md)["html"])

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
    assert sanitize_markdown("![a](data:image/svg+xml,x)") == "![a](#blocked-data:image/svg+xml,x)"
    assert sanitize_markdown('```py" onclick="x\nc\n```') == "```py onclickx\nc\n```"
    assert sanitize_markdown('![$" onerror="x$](y)') == "![$&quot; onerror=&quot;x$](y)"
    assert sanitize_markdown('[$" onerror="x$](y)') == '[\\$" onerror="x$](y)'


# -- normal Markdown is left exactly as it is -------------------------------------
NORMAL = [
    "# Heading\n\nSome *emphasis*, **strong**, ~~gone~~ and `inline <div>` code.\n",
    "- one\n- two\n  - nested\n\n1. first\n2. second\n",
    "[a link](https://example.com/path?q=1&r=2 \"title\") and <https://example.com> and <me@example.com>\n",
    "![img](https://example.com/a.png) ![tiny](data:image/png;base64,iVBORw0KGgo=)\n",
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
