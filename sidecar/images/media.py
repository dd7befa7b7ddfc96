"""What kind of image some bytes are: from their signature, never assumed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageKind:
    mime: str
    extension: str


PNG = ImageKind("image/png", "png")
JPEG = ImageKind("image/jpeg", "jpg")
WEBP = ImageKind("image/webp", "webp")
SVG = ImageKind("image/svg+xml", "svg")
BY_EXTENSION = {kind.extension: kind for kind in (PNG, JPEG, WEBP, SVG)}


def detect(data: bytes) -> ImageKind | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return SVG
    return None
