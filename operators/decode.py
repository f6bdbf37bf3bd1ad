"""Decode: source bytes -> normalised 8-bit RGB pixels, or a failed row with its reason.

Stateless and CPU-only (a Ray task). Pixels travel as raw bytes with their width and height
rather than as a tensor column, so failed rows (no pixels) keep one stable schema. A caption the
file carries (XMP dc:description, EXIF ImageDescription) is picked up here, where the bytes are,
unless the listing gave one (a manifest's column, a WebDataset sample's text member).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from codec.images import MAX_PIXELS, ImageError, load_image
from codec.semantic.embedded import embedded_caption
from operators.sources import _with, forget_sources
from schemas.archive import STATUS_FAILED


def decode_images(batch: pa.Table, max_pixels: int = MAX_PIXELS) -> pa.Table:
    pixels, widths, heights, seconds, status, error, captions, sources = [], [], [], [], [], [], [], []
    listed = [c for c in ("caption", "caption_source") if c in batch.column_names]
    forget: set[int] = set()  # failed for a reason not the source's own (operators.sources.forget_sources)
    for i, row in enumerate(batch.select(["key", "status", "error", "data", *listed]).to_pylist()):
        st, err, px, w, h, t = row["status"], row["error"], None, None, None, None
        caption = row.get("caption")
        source = (row.get("caption_source") or "manifest") if caption else None
        if st is None:
            t0 = time.perf_counter()
            try:
                img = load_image(row["data"], name=row["key"], max_pixels=max_pixels)
                w, h = img.size
                px = np.asarray(img, dtype=np.uint8).tobytes()
                if not caption:
                    caption, source = embedded_caption(row["data"])
            except ImageError as e:
                st, err = STATUS_FAILED, e.reason  # the row already names its source
            except MemoryError:  # this worker ran short, maybe for another task: failed now, read again next time
                st, err = STATUS_FAILED, "out of memory while decoding the image"
                forget.add(i)
            t = time.perf_counter() - t0
        pixels.append(px)
        widths.append(w)
        heights.append(h)
        seconds.append(t)
        status.append(st)
        error.append(err)
        captions.append(caption)
        sources.append(source)
    out = batch.drop_columns(["data"])
    out = forget_sources(out, forget)
    return _with(out, status=status, error=error, caption=captions, caption_source=sources,
                 pixels=pa.array(pixels, pa.large_binary()),
                 width=pa.array(widths, pa.int32()), height=pa.array(heights, pa.int32()),
                 seconds_decode=pa.array(seconds, pa.float64()))  # fmt: skip


def pixels_to_array(data: bytes, width: int, height: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
