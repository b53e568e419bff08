"""BlockSplitter: incremental Markdown block splitting."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from opchat_magic.render import BlockSplitter

BIG = 10**9  # caps off


def split(text, sizes=None, **kw):
    """Feed ``text`` in chunks of ``sizes`` (cycled); return (blocks, splitter)."""
    sp = BlockSplitter(**kw)
    blocks = []
    pos, k = 0, 0
    sizes = sizes or [len(text) or 1]
    while pos < len(text):
        n = max(1, sizes[k % len(sizes)])
        sp.feed(text[pos : pos + n])
        blocks += sp.take_completed()
        pos += n
        k += 1
    return blocks, sp


def blocks_of(text, sizes=None, **kw):
    blocks, sp = split(text, sizes, **kw)
    return blocks + sp.close()


# -- unit behaviour -------------------------------------------------------------
def test_paragraphs_complete_at_blank_lines_each_returned_once():
    sp = BlockSplitter()
    sp.feed("First para")
    assert sp.take_completed() == [] and sp.tail == "First para"
    sp.feed(" goes on.\n\nSecond")
    assert sp.take_completed() == ["First para goes on.\n\n"]
    assert sp.take_completed() == []
    assert sp.tail == "Second"
    assert sp.close() == ["Second"]


def test_heading_is_a_block_once_its_line_ends():
    sp = BlockSplitter()
    sp.feed("# Title")
    assert sp.take_completed() == []
    sp.feed("\nText")
    assert sp.take_completed() == ["# Title\n"]
    assert sp.tail == "Text"


def test_fence_with_blank_lines_is_one_block_until_matching_close():
    doc = "```python\ndef f():\n\n    return 1\n\n```\nafter\n"
    assert blocks_of(doc) == ["```python\ndef f():\n\n    return 1\n\n```\n", "after\n"]
    sp = BlockSplitter()
    sp.feed("~~~\na\n\n```\nb\n")
    assert sp.take_completed() == []  # ``` does not close ~~~
    sp.feed("~~~\n")
    assert sp.take_completed() == ["~~~\na\n\n```\nb\n~~~\n"]


# (the whole document, the blocks it splits into)
SPLITS = {
    "heading interrupts a paragraph": ("para\n## Head\nmore\n", ["para\n", "## Head\n", "more\n"]),
    "nested-looking fences close only with a long enough fence": (
        "````md\n```python\nx = 1\n```\n````\ntext\n",
        ["````md\n```python\nx = 1\n```\n````\n", "text\n"],
    ),
    "backtick line with backtick info is not a fence": ("``` a ` b\n\nnext\n", ["``` a ` b\n\n", "next\n"]),
    "ordered list with blank lines stays one block until a paragraph": (
        "1. one\n\n2. two\n   more\n\n3. three\n\nAfter the list.\n",
        ["1. one\n\n2. two\n   more\n\n3. three\n\n", "After the list.\n"],
    ),
    "list with a fence inside an item stays together": (
        "- step:\n\n  ```bash\n  echo hi\n\n  ```\n- next\n\nend\n",
        ["- step:\n\n  ```bash\n  echo hi\n\n  ```\n- next\n\n", "end\n"],
    ),
    "unindented fence ends a list": (
        "1. Run:\n```bash\nls\n```\n2. Then\n",
        ["1. Run:\n", "```bash\nls\n```\n", "2. Then\n"],
    ),
    "paragraph then list are separate blocks": ("Steps:\n- a\n- b\n", ["Steps:\n", "- a\n- b\n"]),
    # "2." cannot interrupt a paragraph (CommonMark): stays paragraph text
    "2. does not interrupt a paragraph": ("Costs\n2. not a list\n", ["Costs\n2. not a list\n"]),
    "setext heading": ("Title\n=====\ntext\n", ["Title\n=====\n", "text\n"]),
    "thematic break": ("a\n\n---\nb\n", ["a\n\n", "---\n", "b\n"]),
    "table is one block": (
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nafter\n",
        ["| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n", "after\n"],
    ),
    "indented code keeps blank lines": ("    a\n\n    b\nc\n", ["    a\n\n    b\n", "c\n"]),
}


@pytest.mark.parametrize("doc, expected", list(SPLITS.values()), ids=list(SPLITS))
def test_block_boundaries(doc, expected):
    assert blocks_of(doc) == expected


# -- caps ------------------------------------------------------------------------
def test_long_paragraph_is_cut_at_a_line_starting_with_a_letter():
    lines = ["Line %03d %s\n" % (i, "x" * 30) for i in range(200)]
    doc = "".join(lines)
    blocks = blocks_of(doc, max_chars=500)
    assert "".join(blocks) == doc
    assert all(len(b) <= 500 + 45 for b in blocks)
    assert len(blocks) > 10
    assert all(b.startswith("Line ") for b in blocks)  # each cut falls before a whole line


def test_long_fence_is_cut_into_closed_code_blocks_with_the_same_info():
    body = "".join("print(%d)\n" % i for i in range(100))
    doc = "```python\n" + body + "```\n"
    blocks = blocks_of(doc, max_fence_lines=40)
    assert len(blocks) == 3
    for b in blocks:
        assert b.startswith("```python\n") and b.endswith("```\n")
    content = "".join(b[len("```python\n") : -len("```\n")] for b in blocks)
    assert content == body


def test_long_list_is_cut_before_an_item_keeping_its_number():
    doc = "".join("%d. item %s\n" % (i, "y" * 40) for i in range(1, 101))
    blocks = blocks_of(doc, max_chars=400)
    assert "".join(blocks) == doc
    assert len(blocks) > 5
    for b in blocks:
        assert re.match(r"\d+\. item", b)  # each piece starts at an item, with its own number


def test_long_table_repeats_its_header():
    header = "| k | v |\n|---|---|\n"
    doc = header + "".join("| %d | %s |\n" % (i, "z" * 30) for i in range(100))
    blocks = blocks_of(doc, max_chars=400)
    assert len(blocks) > 3
    assert all(b.startswith(header) for b in blocks)
    # every row once, in order: only the header is repeated
    assert "".join(b[len(header) :] for b in blocks) == doc[len(header) :]


def test_long_single_line_is_cut_after_a_space():
    doc = ("word " * 2000) + "\n"
    blocks = blocks_of(doc, max_chars=1000)
    assert "".join(blocks) == doc
    assert all(len(b) <= 1001 for b in blocks)
    assert all(b.startswith("word") for b in blocks)


def test_long_fence_inside_a_list_item_is_cut_into_code_blocks():
    body = "".join("   print(%d)\n" % i for i in range(100))
    doc = "1. Intro\n2. Create the file:\n   ```python\n" + body + "   ```\n3. Run it\n"
    blocks = blocks_of(doc, max_fence_lines=40)
    assert blocks[0].startswith("1. Intro\n2. Create the file:\n   ```python\n")
    assert blocks[-1] == "3. Run it\n"
    for b in blocks[:-1]:
        assert _fence_state(b) is None
        assert b.rstrip("\n").endswith("```")
    for b in blocks[1:-1]:
        assert b.startswith("   ```python\n")
    code = [l.strip() for b in blocks for l in b.splitlines() if "print(" in l]
    assert code == ["print(%d)" % i for i in range(100)]


def test_minified_code_line_in_a_fence_is_cut_into_closed_code_blocks():
    line = "var a=function(b){return b.map(function(c){return c*2})};" * 200  # one 11,600-char line
    doc = "Before:\n\n```js\n" + line + "\n```\nAfter.\n"
    for sizes in ([len(doc)], [1], [7, 300]):
        blocks = blocks_of(doc, sizes, max_chars=2000)
        assert blocks == blocks_of(doc, max_chars=2000)
        code = [b for b in blocks if b.startswith("```js\n")]
        assert len(code) >= 6 and all(_fence_state(b) is None for b in code)
        assert "".join(b[len("```js\n") : -len("\n```\n")] for b in code).replace("\n", "") == line
        assert all(len(b) < 2100 for b in blocks)


def test_tail_stays_bounded_even_for_unclosed_inner_fences():
    sp = BlockSplitter(max_chars=500)
    sp.feed("- item\n  ```\n")
    blocks = []
    for i in range(2000):
        sp.feed("  code line %d\n" % i)
        blocks += sp.take_completed()
        assert sp.tail_len <= 4 * 500 + 60
    blocks += sp.close()
    assert len(blocks) > 10
    # nothing lost: every code line once, in order, and every cut piece a closed code block
    code = [l.strip() for b in blocks for l in b.splitlines() if "code line" in l]
    assert code == ["code line %d" % i for i in range(2000)]
    assert all(_fence_state(b) is None for b in blocks[:-1])


# -- properties ----------------------------------------------------------------
PIECES = [
    "Hello *world*, a paragraph.\n",
    "Another line of the same paragraph with `code <b>`.\n",
    "\n",
    "\n\n",
    "# Heading\n",
    "## Sub heading",
    "- item one\n",
    "- item two\n  continued\n",
    "1. first\n",
    "2. second\n",
    "10) tenth\n",
    "   ```\n",
    "```\n",
    "```python\n",
    "````\n",
    "~~~ info string\n",
    "~~~\n",
    "    indented code\n",
    "> quote line\n",
    "| a | b |\n",
    "|---|---|\n",
    "---\n",
    "text without newline",
    "x" * 120,
    "word " * 30,
]
doc_strategy = st.lists(
    st.one_of(st.sampled_from(PIECES), st.text(alphabet="ab `~#-1.>|\n\t", max_size=25)),
    max_size=40,
).map("".join)
chunks_strategy = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20)
settings_ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(doc=doc_strategy, sizes=chunks_strategy)
def test_blocks_plus_tail_reproduce_the_document_at_every_step(doc, sizes):
    sp = BlockSplitter(max_chars=BIG, max_fence_lines=BIG)
    done = []
    pos, k = 0, 0
    while pos < len(doc):
        n = sizes[k % len(sizes)]
        sp.feed(doc[pos : pos + n])
        pos += n
        k += 1
        done += sp.take_completed()
        assert "".join(done) + sp.tail == doc[:pos]
    done += sp.close()
    assert "".join(done) == doc
    assert done == blocks_of(doc, max_chars=BIG, max_fence_lines=BIG)  # chunking-independent


def _is_subsequence(small, big):
    it = iter(big)
    return all(ch in it for ch in small)


@settings_
@given(doc=doc_strategy, sizes=chunks_strategy)
def test_with_caps_blocks_are_chunking_independent_and_only_add_text(doc, sizes):
    kw = dict(max_chars=60, max_fence_lines=3)
    whole = blocks_of(doc, **kw)
    assert blocks_of(doc, sizes, **kw) == whole
    joined = "".join(whole)
    assert _is_subsequence(doc, joined)  # caps only insert (fence close/reopen, headers)
    blocks, sp = split(doc, **kw)
    blocks += sp.close()
    if sp.synthetic == 0:
        assert joined == doc
    # a piece never leaves a top-level fence open (claimed for lines within the
    # cap: a line over it is cut where it can, see the long-line tests)
    if all(len(line) <= 60 for line in doc.split("\n")):
        for b in whole[:-1]:
            assert _fence_state(b) is None, b


def _fence_state(block):
    """The top-level fence still open at the end of ``block`` (CommonMark-ish), or None."""
    fence = None
    for line in block.split("\n"):
        m = re.match(r"( {0,3})(`{3,}|~{3,})(.*)$", line)
        if fence is None:
            if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
                fence = m.group(2)
        elif m and m.group(2)[0] == fence[0] and len(m.group(2)) >= len(fence) and not m.group(3).strip():
            fence = None
    return fence


@settings_
@given(doc=doc_strategy, sizes=chunks_strategy)
def test_tail_is_bounded(doc, sizes):
    sp = BlockSplitter(max_chars=60, max_fence_lines=3)
    pos, k = 0, 0
    while pos < len(doc):
        n = sizes[k % len(sizes)]
        sp.feed(doc[pos : pos + n])
        pos += n
        k += 1
        sp.take_completed()
        assert sp.tail_len <= 4 * 60 + 60 + 40  # hard cap + one line + one chunk


@pytest.mark.timeout(60)  # a guard, not a measurement: linear work takes ~1 s, quadratic hours
def test_work_is_linear():
    """Feeding 200k chars one at a time finishes, and loses or repeats nothing."""
    text = ("Some words in a line of text.\n\n" * (200_000 // 31 + 1))[:200_000]
    sp = BlockSplitter()
    blocks = []
    for ch in text:
        sp.feed(ch)
        blocks += sp.take_completed()
    assert len(blocks) > 1000
    assert "".join(blocks) + sp.tail == text


@pytest.mark.parametrize("sizes", [[1], [3], [7, 1, 13]])
def test_code_fence_pieces_render_as_code_whatever_the_chunking(sizes):
    body = "".join("line %d <tag>\n\n" % i for i in range(30))
    doc = "~~~~html\n" + body + "~~~~\n"
    blocks = blocks_of(doc, sizes, max_fence_lines=10)
    assert blocks == blocks_of(doc, max_fence_lines=10)
    for b in blocks:
        assert b.startswith("~~~~html\n") and b.endswith("~~~~\n")


# -- code_blocks: what `-f code` takes is what CommonMark reads as code ----------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from opchat_magic.render import code_blocks  # noqa: E402

CODE_LINES = ["```", "````", "```py", "~~~", "~~~~", " ```", "  ```", "   ```", "    ```", "```` ",
              "``` x`y", "~~~ py", "prose", "more prose", "", "    indented", "\tindent tab", "# head",
              "---", "x ```", "  prose", "print('<b>')", "   ~~~~~", "```\t", "~~~`"]


def _commonmark_code(doc: str) -> list:
    markdown_it = pytest.importorskip("markdown_it")
    return [t.content for t in markdown_it.MarkdownIt("commonmark").parse(doc) if t.type in ("fence", "code_block")]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(CODE_LINES), max_size=14))
def test_code_blocks_are_commonmarks(lines):
    """The oracle is markdown-it-py, CommonMark's reference reading in Python."""
    doc = "\n".join(lines)
    assert code_blocks(doc) == _commonmark_code(doc), doc


@pytest.mark.parametrize("doc", [
    # finding 4: a longer closing run, or one indented 1-3 spaces, closes the fence
    "```python\nx = 1\n````\nThis is prose, not code.\n",
    "```python\nx = 1\n   ```\nThis is prose, not code.\n```\n",
    "~~~\na\n~~~~~  \nprose\n",
    "- item\n  ```py\n  x = 1\n  ```\n- next\n",
    "1. Install:\n   ```bash\n   pip install x\n   ```\n2. Run `x`.\n",
    "- ```\n  a\n  ```\nprose\n",
    "text\n\n    indented code\n\nafter\n",
    "```\nunclosed to the end",
])
def test_code_blocks_examples(doc):
    assert code_blocks(doc) == _commonmark_code(doc)


def test_extract_code_takes_no_prose():
    from opchat_magic.ipython.magics import extract_code

    reply = "Here:\n\n```python\nx = 1\n````\nNow run it and see.\n\n```\ny = 2\n  ```\nDone.\n"
    assert extract_code(reply) == "x = 1\n\ny = 2"
