"""The faces in a real kernel: what crosses iopub, and what a saved notebook keeps."""
from __future__ import annotations

import json

import pytest

from opchat_magic.render import sanitize_markdown
from opchat_magic.testing.kernel import Kernel, message_bytes
from test_render_renderer import expected_blocks as _blocks_raw  # the splitter's blocks, unsanitised
from test_render_renderer import realistic_reply

pytestmark = pytest.mark.kernel

DRIVE = """
from opchat_magic.render import Renderer, {face}
from IPython.display import display
reply = {reply!r}
t = [0.0]
face = {face}({face_args})
{show}
r = Renderer(face, clock=lambda: t[0])
for i in range(0, len(reply), 5):
    r.feed(reply[i:i + 5])
    t[0] += 0.005
    if i % 50 == 0:
        r.tick()
r.finish("⏱ 1 token · 0.1 s")
"""


def expected_blocks(text):
    """The Markdown of each block, as the renderer sends it."""
    return [sanitize_markdown(b) for b in _blocks_raw(text)]


def display_code(reply):
    return DRIVE.format(face="DisplayFace", face_args="", show="", reply=reply)


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    yield k
    k.shutdown()


# -- DisplayFace ------------------------------------------------------------------------
def test_display_face_sends_each_output_once_final_and_updates_only_tails(kernel):
    reply = realistic_reply(20_000, seed=4)
    ex = kernel.run(display_code(reply), timeout=120)
    shown = ex.of_type("display_data", "update_display_data")
    # nothing but displays (no stream, no error; execute_input is the cell's echo)
    assert shown and len(shown) == len(ex.messages) - len(ex.of_type("execute_input"))
    blocks = expected_blocks(reply)
    assert blocks == _blocks_raw(reply)  # a safe reply goes out unchanged

    tail_ids = set()
    finals = {}
    for m in shown:
        data = m["content"]["data"]
        display_id = m["content"].get("transient", {}).get("display_id")
        if m["msg_type"] == "display_data" and display_id:
            tail_ids.add(display_id)  # a new tail handle
            assert set(data) == {"text/markdown"}
        elif m["msg_type"] == "update_display_data":
            assert display_id in tail_ids  # updates only ever go to tail handles
        if "text/plain" in data:  # a final state: a group of blocks (or the footer)
            md = data["text/markdown"]
            assert data["text/plain"] == md or md.startswith("*⏱")
            finals[md] = finals.get(md, 0) + 1
    # every output's final state (several whole blocks) is sent with text/plain exactly once
    assert all(count == 1 for count in finals.values()), finals
    # and the frontend ends up holding the whole reply as static Markdown, in order, in a few outputs
    outputs = [o["data"]["text/markdown"] for o in ex.final_outputs()]
    assert "".join(outputs[:-1]) == "".join(blocks) and outputs[-1] == "*⏱ 1 token · 0\\.1 s*"
    assert 3 <= len(outputs) <= 10 < len(blocks)


def test_display_face_bytes_are_linear_in_the_reply(kernel):
    sizes = {}
    for n in (10_000, 50_000):
        reply = realistic_reply(n, seed=5)
        ex = kernel.run(display_code(reply), timeout=180)
        shown = ex.of_type("display_data", "update_display_data")
        markdown = sum(len(json.dumps(m["content"]["data"])) for m in shown)
        sizes[n] = (sum(message_bytes(m) for m in shown), markdown, len(shown))
    (b1, _md1, _n1), (b5, md5, n5) = sizes[10_000], sizes[50_000]
    growth = b5 / b1
    assert 4 <= growth <= 6.5, sizes  # 5x the reply: ~5x the bytes on iopub, not ~25x
    # the payload per reply char at 1,000 chars/s: the open output's re-sends (budget 1.5x,
    # plus max-lag re-sends within lag_rate) + each output once as text/markdown and
    # text/plain (2x), JSON-escaped; measured 7.3. Few messages (154 for 50 K), so the
    # bytes on iopub, headers included, stay near 9 per char (12.5 with one output per block).
    assert md5 / 50_000 <= 9.5, sizes
    assert b5 / 50_000 <= 12, sizes
    print("\nDisplayFace, 50k chars: %d display msgs, %d bytes on iopub (%.1f per char), payload %.2f per char"
          % (n5, b5, b5 / 50_000, md5 / 50_000))


# -- WidgetFace ---------------------------------------------------------------------------
def test_widget_face_comm_traffic_carries_only_the_tail(kernel):
    reply = realistic_reply(15_000, seed=6)
    code = DRIVE.format(face="WidgetFace", face_args="page_size=4", show="display(face.widget)", reply=reply)
    ex = kernel.run(code, timeout=120)
    opens = {m["content"]["comm_id"]: m["content"]["data"]["state"] for m in ex.of_type("comm_open")}
    models = {cid: st.get("_model_name") for cid, st in opens.items()}
    outputs_in_order = [cid for cid in opens if models[cid] == "OutputModel"]
    assert len(outputs_in_order) >= 4
    root = next(cid for cid in opens if models[cid] == "VBoxModel")
    assert sum(1 for name in models.values() if name == "LayoutModel") == 3  # shared layouts
    state = {cid: dict(st) for cid, st in opens.items()}
    newest_output = None
    update_bytes = children_bytes = 0
    for m in ex.messages:
        if m["msg_type"] == "comm_open" and models[m["content"]["comm_id"]] == "OutputModel":
            newest_output = m["content"]["comm_id"]
        elif m["msg_type"] == "comm_msg":
            data = m["content"]["data"]
            assert data["method"] == "update"
            cid = m["content"]["comm_id"]
            keys = set(data["state"]) - {"buffer_paths"}
            if models[cid] == "OutputModel":
                assert keys == {"outputs"}
                assert cid == newest_output  # only the current tail Output is ever touched
                update_bytes += message_bytes(m)
            else:
                assert models[cid] == "VBoxModel" and keys == {"children"}
                # the tree keeps children lists short: 4 per page and chapter, root += 1 per 16 blocks
                limit = 4 if cid != root else len(outputs_in_order) // 16 + 1
                assert len(data["state"]["children"]) <= limit
                children_bytes += message_bytes(m)
            state[cid].update(data["state"])
    finals = [state[cid]["outputs"][0]["data"]["text/markdown"] for cid in outputs_in_order]
    assert "".join(finals[:-1]) == "".join(expected_blocks(reply))
    assert finals[-1].startswith("*⏱")
    render_bytes = sum(message_bytes(m) for m in ex.messages if m["msg_type"] != "execute_input")
    print("\nWidgetFace, 15k chars: %d Outputs; iopub %d bytes (%.1f per char): tail updates %d,"
          " children lists %d, widget creation %d"
          % (len(outputs_in_order), render_bytes, render_bytes / len(reply), update_bytes, children_bytes,
             render_bytes - update_bytes - children_bytes))
    assert children_bytes < render_bytes / 4


# -- a saved notebook ---------------------------------------------------------------------
def test_executed_notebook_keeps_the_whole_reply_as_static_markdown(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    reply = realistic_reply(6_000, seed=8) + "\n\nThe end <img src=x onerror=alert(1)>"
    widget_code = DRIVE.format(face="WidgetFace", face_args="", show="display(face.widget)", reply="widget " + reply)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(display_code(reply)),
        nbformat.v4.new_code_cell(widget_code),
    ])
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, str(path))
    saved = nbformat.read(str(path), as_version=4)
    outputs = saved.cells[0].outputs
    assert outputs and all(o.output_type == "display_data" for o in outputs)
    md = [o.data["text/markdown"] for o in outputs]
    assert all("text/plain" in o.data for o in outputs)
    assert "".join(md[:-1]) == "".join(expected_blocks(reply)) and len(md) <= 4
    assert "".join(md[:-1]).replace("&lt;img", "<img") == "".join(_blocks_raw(reply))
    assert "<img" not in "".join(md)
    # the widget cell: a widget view, with the state of its Outputs saved in the metadata
    assert saved.cells[1].outputs[0].data.get("application/vnd.jupyter.widget-view+json")
    state = saved.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    saved_md = [m["state"]["outputs"][0]["data"]["text/markdown"] for m in state.values()
                if m["model_name"] == "OutputModel" and m["state"].get("outputs")]
    widget_blocks = expected_blocks("widget " + reply)
    saved_text = "\n".join(saved_md)
    assert len(widget_blocks) > 10 and all(block in saved_text for block in widget_blocks)
