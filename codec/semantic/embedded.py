"""Captions a file already carries: EXIF ImageDescription and XMP dc:description.

Read from the raw bytes so it works for every container PIL reads (JPEG, PNG, WebP, TIFF) and
costs no second decode. Camera firmware writes placeholders into ImageDescription
("OLYMPUS DIGITAL CAMERA", "SONY DSC"); those are not captions and are ignored.
"""

from __future__ import annotations

import html
import io
import re

from PIL import Image

_XMP = re.compile(rb"<x:xmpmeta\b.*?</x:xmpmeta>", re.S)
_DC_DESCRIPTION = re.compile(r"<dc:description\b[^>]*>(.*?)</dc:description>", re.S)
_LI = re.compile(r"<rdf:li\b([^>]*)>(.*?)</rdf:li>", re.S)
_CAMERA_PLACEHOLDERS = re.compile(r"^(?:[A-Z0-9 ]+ (?:DIGITAL CAMERA|DSC|CAMERA)|DCIM|default|image|untitled|\W*)$", re.I)
EXIF_IMAGE_DESCRIPTION = 0x010E


def xmp_description(data: bytes) -> str | None:
    """dc:description from an XMP packet (the x-default alternative first)."""
    packet = _XMP.search(data)
    if not packet:
        return None
    m = _DC_DESCRIPTION.search(packet.group().decode("utf-8", "replace"))
    if not m:
        return None
    items = _LI.findall(m.group(1))
    items.sort(key=lambda item: "x-default" not in item[0])
    text = items[0][1] if items else m.group(1)
    text = html.unescape(re.sub(r"<[^>]+>", "", text)).strip()
    return text or None


def exif_description(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(EXIF_IMAGE_DESCRIPTION)
    except Exception:  # noqa: BLE001 - an unreadable file has no caption; decoding reports why
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = (value or "").strip("\x00 \t\r\n")
    return None if not value or _CAMERA_PLACEHOLDERS.match(value) else value


def embedded_caption(data: bytes) -> tuple[str | None, str | None]:
    """(caption, where it came from: "xmp" or "exif"), or (None, None)."""
    if text := xmp_description(data):
        return text, "xmp"
    if text := exif_description(data):
        return text, "exif"
    return None, None
