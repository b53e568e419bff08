"""Images for vision models: loading, checks, content parts, history references, and the wire.

The wire tests use the real LocalServer on 127.0.0.1 and assert what it received.
"""
from __future__ import annotations

import base64
import hashlib
import struct
import zlib

import pytest

from opchat_magic.errors import ImagesNotSupportedError, OpchatError
from opchat_magic.images import (
    MAX_IMAGE_BYTES, Image, ImageError, content_images, content_text, count_images, expand_refs,
    image_from_bytes, load_image, message_content, sniff, to_refs,
)
from opchat_magic.providers.opchatgpts import Opchatgpts
from opchat_magic.providers.openai_compat import OpenAICompatible
from opchat_magic.server import LocalServer, reply_text

pytestmark = pytest.mark.timeout(60)


def png(width: int = 2, height: int = 2) -> bytes:
    """A real, valid PNG (grey pixels), built by hand so the test needs no imaging library."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 20
WEBP = b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"\x00" * 20


@pytest.mark.parametrize("data,mime", [(png(), "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"),
                                       (WEBP, "image/webp"), (b"GIF87a....", "image/gif")])
def test_sniff_by_magic_bytes(data, mime):
    assert sniff(data) == mime


@pytest.mark.parametrize("data", [b"", b"hello", b"%PDF-1.7", b"RIFF\x00\x00\x00\x00WAVE", b"<svg></svg>"])
def test_sniff_refuses_other_bytes(data):
    assert sniff(data) is None


def test_load_image_reads_and_checks(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(png())
    image = load_image(str(path))
    assert image.mime == "image/png" and image.data == png() and image.source == "plot.png"
    assert image.sha256 == hashlib.sha256(png()).hexdigest()
    # Quotes around a path (as typed in a magic line) are tolerated.
    assert load_image(f"'{path}'").data == png()


def test_load_image_errors_are_typed_and_clear(tmp_path):
    with pytest.raises(ImageError, match=r"--image .*nope\.png: no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not a PNG, JPEG, GIF or WebP"):
        load_image(text)
    big = tmp_path / "big.png"
    big.write_bytes(png() + b"\x00" * 5000)
    with pytest.raises(ImageError, match=r"images are limited to 4 KB"):
        load_image(big, max_bytes=4096)
    assert issubclass(ImageError, OpchatError) and issubclass(ImageError, ValueError)


def test_size_checked_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.write(JPEG)
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no 20 MB written
    import builtins
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(ImageError, match="20.0 MB"):
        load_image(big)
    assert not opened


def test_image_from_bytes_refuses_empty_and_non_bytes():
    with pytest.raises(ImageError, match="empty"):
        image_from_bytes(b"", "Out[3]")
    with pytest.raises(ImageError, match="Out\\[3\\] is str"):
        image_from_bytes("abc", "Out[3]")


def test_message_content_and_parts():
    image = Image(png(), "image/png", "plot.png")
    assert message_content("hi") == "hi"
    content = message_content("look", [image])
    assert content[0] == {"type": "text", "text": "look"}
    url = content[1]["image_url"]["url"]
    assert content[1]["type"] == "image_url"
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == png()
    assert content_text(content) == "look" and content_text("x") == "x"
    assert len(content_images(content)) == 1
    assert count_images([{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]) == 1


def test_history_keeps_references_and_resent_turn_gets_bytes_back():
    image = Image(png(), "image/png", "Out[3]")
    content = message_content("what is this plot?", [image])
    stored, blobs = to_refs(content, [image])
    # The stored content holds no bytes, only the hash (the blob table holds them once).
    assert stored[1] == {"type": "image", "sha256": image.sha256, "mime": "image/png", "source": "Out[3]",
                         "size": len(png())}
    assert "base64" not in repr(stored)
    assert blobs == {image.sha256: image}
    table = {sha: img.data for sha, img in blobs.items()}
    assert expand_refs(stored, table.get) == content
    # Bytes gone from the table: the turn still sends, with a note instead of the image.
    gone = expand_refs(stored, lambda sha: None)
    assert gone[1] == {"type": "text", "text": "[image Out[3] no longer stored]"}
    # A data URL not built from a known Image is recognised too.
    assert to_refs(content, [])[0][1]["sha256"] == image.sha256
    assert expand_refs("plain", table.get) == "plain"


# -- the wire -------------------------------------------------------------------------------------

@pytest.fixture
async def server():
    async with LocalServer(delay=0, chunk_size=5) as srv:
        yield srv


async def test_openai_compatible_sends_image_parts(server):
    image = Image(png(), "image/png", "plot.png")
    messages = [{"role": "user", "content": message_content("What does this plot show?", [image])}]
    stream = OpenAICompatible.create_async_generator("opchat-local", messages, base_url=server.openai_base_url)
    text = "".join([chunk async for chunk in stream])
    assert text == reply_text(messages) and stream.reply.complete
    assert text.endswith("The last message carries 1 image: image/png.")
    body = server.stats.last_body
    sent = body["messages"][-1]["content"]
    assert sent[0] == {"type": "text", "text": "What does this plot show?"}
    assert sent[1]["type"] == "image_url"
    assert base64.b64decode(sent[1]["image_url"]["url"].split(",", 1)[1]) == png()
    assert OpenAICompatible.supports_images and not Opchatgpts.supports_images


async def test_opchatgpts_refuses_images_before_sending(server):
    image = Image(png(), "image/png", "plot.png")
    messages = [{"role": "user", "content": message_content("What does this plot show?", [image])}]
    with pytest.raises(ImagesNotSupportedError, match="AI Engine's chat endpoint .* takes text only") as info:
        Opchatgpts.create_async_generator("", messages, url=server.url)
    assert "nothing was sent" in str(info.value)
    assert server.stats.requests == {}
