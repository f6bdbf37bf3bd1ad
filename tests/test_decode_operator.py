"""The decode operator: bytes -> pixels, or a failed row with the reason a user can act on."""

from __future__ import annotations

import pyarrow as pa

from conftest import photo, png_bytes
from operators.decode import decode_images, pixels_to_array


def _batch(items: dict[str, bytes | None], status: dict[str, str] | None = None) -> pa.Table:
    status = status or {}
    return pa.table({"key": list(items), "status": pa.array([status.get(k) for k in items], pa.string()),
                     "error": pa.array([None] * len(items), pa.string()),
                     "data": pa.array(list(items.values()), pa.large_binary())})  # fmt: skip


def test_reasons_per_row():
    good = png_bytes(photo(48, 32))
    jpeg = png_bytes(photo(48, 32), format="JPEG", quality=90)
    out = decode_images(_batch({
        "good.png": good, "empty.png": b"", "text.jpg": b"hello, not an image",
        "cut.jpg": jpeg[: len(jpeg) // 2], "big.png": png_bytes(photo(64, 64)), "skipped.png": None,
    }, status={"skipped.png": "unchanged"}), max_pixels=48 * 32).to_pylist()  # fmt: skip
    by = {r["key"]: r for r in out}
    assert by["good.png"]["status"] is None and (by["good.png"]["width"], by["good.png"]["height"]) == (48, 32)
    px = pixels_to_array(by["good.png"]["pixels"], 48, 32)
    assert px.shape == (32, 48, 3) and px.dtype.name == "uint8"
    assert by["empty.png"]["error"] == "empty file"
    assert by["text.jpg"]["error"] == "not an image (unrecognised format)"
    assert by["cut.jpg"]["error"].startswith("truncated image")
    assert by["big.png"]["error"].startswith("too large")
    assert by["skipped.png"]["status"] == "unchanged" and by["skipped.png"]["pixels"] is None
    assert all(r["status"] == "failed" for k, r in by.items() if k not in ("good.png", "skipped.png"))
    assert "data" not in out[0]  # source bytes are dropped once decoded


def test_running_out_of_memory_forgets_the_source_so_the_next_job_reads_it_again(monkeypatch):
    import operators.decode as decode

    def short_of_memory(*args, **kw):
        raise MemoryError

    monkeypatch.setattr(decode, "load_image", short_of_memory)
    batch = _batch({"big.png": png_bytes(photo(48, 32))}).append_column(
        "source_fingerprint", pa.array(["10:1"])).append_column("source_sha256", pa.array(["a" * 64]))  # fmt: skip
    (row,) = decode_images(batch).to_pylist()
    assert row["status"] == "failed" and row["error"] == "out of memory while decoding the image"
    assert row["source_fingerprint"] is None and row["source_sha256"] is None
