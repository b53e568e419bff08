"""Images a turn sends to a vision model: loaded, checked, hashed, made into content parts.

A user message with images is sent the way OpenAI's chat API takes it: a list
of content parts, the text first, then one ``image_url`` part per image, each a
``data:`` URL (base64). Nothing here knows about IPython or HTTP: the front
doors turn files and notebook values into :class:`Image`, providers read the
parts.

History keeps a *reference* to an image, not its bytes, in the message rows:
``{"type": "image", "sha256": ..., "mime": ..., "source": ..., "size": ...}``
(see :meth:`Image.ref`). The bytes live once per content hash in a blob table
beside the messages; a resent turn swaps each reference back for its bytes by
that hash (:func:`expand_refs`).
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from .errors import ImagesNotSupportedError, OpchatError

__all__ = [
    "Image", "ImageError", "MAX_IMAGE_BYTES", "IMAGE_TYPES", "sniff", "load_image", "image_from_bytes",
    "message_content", "not_supported", "content_text", "content_images", "has_images", "count_images", "to_refs", "expand_refs",
]

# OpenAI takes images up to 20 MB; a bigger one is refused before it is read.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


class ImageError(OpchatError, ValueError):
    """An image that cannot be sent: missing, unreadable, too large, or not PNG/JPEG/GIF/WebP."""


def sniff(data: bytes) -> Optional[str]:
    """The image type from the file's first bytes (its magic number), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class Image:
    """One image's bytes, what they are, and where they came from (a path, ``Out[3]``, a variable)."""

    data: bytes = field(repr=False)
    mime: str
    source: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def data_url(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")

    def content_part(self) -> dict:
        """The OpenAI content part that carries this image."""
        return {"type": "image_url", "image_url": {"url": self.data_url()}}

    def ref(self) -> dict:
        """What history keeps in place of the bytes (the bytes go in the blob table, by hash)."""
        return {"type": "image", "sha256": self.sha256, "mime": self.mime, "source": self.source, "size": self.size}

    def describe(self) -> str:
        return f"{self.source or 'image'} ({self.mime}, {_size(self.size)})"


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(1, round(n / 1024))} KB"


def image_from_bytes(data: bytes, source: str = "", max_bytes: int = MAX_IMAGE_BYTES) -> Image:
    """Check ``data`` (type by magic bytes, size) and wrap it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{source or 'The image'} is {type(data).__name__}, not image bytes.")
    data = bytes(data)
    if not data:
        raise ImageError(f"{source or 'The image'} is empty.")
    if len(data) > max_bytes:
        raise ImageError(f"{source or 'The image'} is {_size(len(data))}; images are limited to "
                         f"{_size(max_bytes)}. Make it smaller (fewer pixels, or JPEG) and try again.")
    mime = sniff(data)
    if mime is None:
        raise ImageError(f"{source or 'The image'} is not a PNG, JPEG, GIF or WebP image "
                         f"(its first bytes are {data[:8]!r}).")
    return Image(data, mime, source)


def load_image(path: "str | os.PathLike", max_bytes: int = MAX_IMAGE_BYTES) -> Image:
    """Read an image file for ``--image PATH``: size checked before reading, type by magic bytes."""
    raw = os.fspath(path)
    expanded = os.path.expanduser(raw.strip().strip("'\""))
    if not os.path.exists(expanded):
        raise ImageError(f"--image {raw}: no such file.")
    if not os.path.isfile(expanded):
        raise ImageError(f"--image {raw}: not a file.")
    size = os.path.getsize(expanded)
    if size > max_bytes:
        raise ImageError(f"--image {raw} is {_size(size)}; images are limited to {_size(max_bytes)}. "
                         "Make it smaller (fewer pixels, or JPEG) and try again.")
    try:
        with open(expanded, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"--image {raw}: cannot read it ({exc.strerror or exc}).") from None
    return image_from_bytes(data, source=os.path.basename(expanded), max_bytes=max_bytes)


def not_supported(endpoint: str, count: int) -> ImagesNotSupportedError:
    """The error for images sent where only text goes: it names the endpoint and says nothing was sent."""
    return ImagesNotSupportedError(
        f"{endpoint} takes text only, and this message carries {count} image{'s' if count != 1 else ''}: "
        "nothing was sent. Send images to an OpenAI-compatible vision model (-p openai, with "
        "OPENAI_BASE_URL pointing at it), or leave the images out.")


# -- message content ---------------------------------------------------------

def message_content(text: str, images: Iterable[Image] = ()) -> "str | list":
    """A user message's ``content``: the text alone, or text and image parts when there are images."""
    images = list(images)
    if not images:
        return text
    return [{"type": "text", "text": text}] + [image.content_part() for image in images]


def content_text(content: Any) -> str:
    """The text of a message's content (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def content_images(content: Any) -> list:
    """The image parts (``image_url`` or stored ``image`` references) of a message's content."""
    if not isinstance(content, (list, tuple)):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "image")]


def count_images(messages: Any) -> int:
    try:
        return sum(len(content_images(m.get("content"))) for m in messages if isinstance(m, dict))
    except TypeError:
        return 0


def has_images(messages: Any) -> bool:
    return count_images(messages) > 0


def to_refs(content: Any, images: Iterable[Image]) -> "tuple[Any, dict]":
    """(content with each image part replaced by its reference, {sha256: Image}) for storing."""
    by_url = {image.data_url(): image for image in images}
    if not isinstance(content, list):
        return content, {}
    stored, blobs = [], {}
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            image = by_url.get(url) or _decode_data_url(url)
            if image is not None:
                blobs[image.sha256] = image
                stored.append(image.ref())
                continue
        stored.append(part)
    return stored, blobs


def expand_refs(content: Any, fetch: Callable[[str], Optional[bytes]]) -> Any:
    """Content with every stored image reference swapped back for its ``image_url`` part.

    ``fetch(sha256)`` returns the bytes from the blob table, or None when they
    are gone: the image then becomes a text note, so the turn still sends.
    """
    if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") == "image" for p in content):
        return content
    out = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image":
            data = fetch(part.get("sha256", ""))
            if data is None:
                out.append({"type": "text", "text": f"[image {part.get('source') or ''} no longer stored]"})
            else:
                out.append(Image(data, part.get("mime") or sniff(data) or "image/png", part.get("source", "")).content_part())
        else:
            out.append(part)
    return out


def _decode_data_url(url: str) -> Optional[Image]:
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        return None
    mime = sniff(data)
    return Image(data, mime) if mime else None
