"""History keeps images by reference: the model sends them again, the store holds the bytes once per
hash, a restored or retried turn finds them, a reset drops them, a version-1 file is migrated."""
from __future__ import annotations

import base64
import json
import sqlite3

import pytest

from opchat_magic.history import Conversation, Store, Thread
from opchat_magic.images import Image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 40


def parts(content):
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in content if p["type"] == "image_url"]


def test_thread_sends_images_to_image_providers_and_text_to_others():
    thread = Thread("t")
    turn = thread.begin("look", images=[Image(PNG, "image/png", "a.png")])
    assert turn.images[0]["sha256"] and "data" not in turn.images[0]
    with_images = thread.request_messages(turn, images=True)
    assert with_images[-1]["content"][0] == {"type": "text", "text": "look"} and parts(with_images[-1]["content"]) == [PNG]
    assert thread.request_messages(turn, images=False)[-1] == {"role": "user", "content": "look"}
    thread.commit(turn, "a picture")
    nxt = thread.begin("and?")
    sent = thread.request_messages(nxt, images=True)
    assert parts(sent[0]["content"]) == [PNG] and sent[1] == {"role": "assistant", "content": "a picture"}
    assert sent[2] == {"role": "user", "content": "and?"}
    assert "*(images: a.png)*" in thread.to_markdown()
    exported = thread.to_json()["messages"]
    assert exported[0]["images"][0]["source"] == "a.png" and "images" not in exported[1]


def test_retry_sends_the_failed_turns_images():
    thread = Thread("t")
    thread.fail(thread.begin("look", images=[Image(JPEG, "image/jpeg", "b.jpg")]), "boom")
    again = thread.retry()
    assert parts(thread.request_messages(again, images=True)[-1]["content"]) == [JPEG]


def test_store_keeps_bytes_once_by_hash_and_a_restart_finds_them(tmp_path):
    path = tmp_path / "h.sqlite3"
    conv = Conversation("nb", store=Store(path))
    thread = conv.thread("t")
    for text in ("one", "two"):  # the same image twice: one blob
        turn = thread.begin(text, images=[Image(PNG, "image/png", "a.png")])
        thread.commit(turn, "ok")
    thread.fail(thread.begin("three", images=[Image(JPEG, "image/jpeg", "b.jpg")]), "boom")
    conv.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 2
        stored = [json.loads(r[0]) for r in db.execute("SELECT images FROM messages WHERE role='user'")]
        assert all(ref[0]["source"] == "a.png" for ref in stored)
        assert not db.execute("SELECT 1 FROM messages WHERE content LIKE '%base64%'").fetchall()
    again = Conversation("nb", store=Store(path))
    thread = again.thread("t")
    sent = thread.request_messages(thread.begin("more"), images=True)
    assert parts(sent[0]["content"]) == [PNG] and parts(sent[2]["content"]) == [PNG]
    thread.fail(thread.pending, "x")  # end it; the retry slot now holds "more"
    again.reset("t")
    again.flush(5)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0  # no reference left: gone
    again.close()


def test_version_1_file_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (1);
            CREATE TABLE messages (id INTEGER PRIMARY KEY, key TEXT NOT NULL, thread TEXT NOT NULL,
                seq INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, turn_id TEXT NOT NULL,
                meta TEXT, created REAL NOT NULL, UNIQUE (key, thread, seq));
            CREATE TABLE failed_turns (key TEXT NOT NULL, thread TEXT NOT NULL, turn_id TEXT NOT NULL,
                user TEXT NOT NULL, reply TEXT NOT NULL, status TEXT NOT NULL, error TEXT, meta TEXT,
                position INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (key, thread));
            INSERT INTO messages VALUES (1, 'nb', 't', 0, 'user', 'old question', 'x', NULL, 1.0);
            INSERT INTO messages VALUES (2, 'nb', 't', 1, 'assistant', 'old answer', 'x', NULL, 1.0);
        """)
    store = Store(path)
    try:
        assert store.load("nb")["t"][0].content == "old question"
        conv = Conversation("nb", store=store)
        thread = conv.thread("t")
        thread.commit(thread.begin("new", images=[Image(PNG, "image/png", "a.png")]), "ok")
        conv.flush(5)
        assert store.load_turns("nb")["t"][1]["images"][0]["source"] == "a.png"
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 2
    finally:
        store.close()
