"""The compress pipeline end to end on real Ray, real Parquet files and a real S3 server on loopback."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import codec
from codec.settings import EncodeSettings
from conftest import photo, photo_folder, png_bytes, write_shard
from operators.archive import Archive
from pipelines.catalog import archive_info, list_assets
from pipelines.compress import compress, format_table
from pipelines.restore import restore
from schemas.archive import ASSET_SCHEMA, ROW_GROUP_ROWS

pytestmark = pytest.mark.timeout(420)

SIZES = {"a.png": (64, 64), "b.jpg": (96, 64), "sub/c.png": (64, 96), "sub/deep/d.png": (128, 64)}


def _archived(url: str, **so) -> dict[str, dict]:
    """Every asset the archive's index points at, read back from the data files."""
    arc = Archive(url, so)
    out = {}
    for entry in arc.refresh_index(write=False).to_pylist():
        out[entry["key"]] = arc.read_asset(entry)
    return out


def _check_written(rows: dict[str, dict], keys: list[str]) -> None:
    for k in keys:
        r = rows[k]
        assert r["status"] == "written" and r["error"] is None
        img = codec.decode(r["bitstream"])  # every archived stream decodes, at its source's size
        assert img.size == (r["width"], r["height"])
        assert r["bpp"] == pytest.approx(8 * len(r["bitstream"]) / (r["width"] * r["height"]))
        assert r["bits_header"] + r["bits_hyper"] + r["bits_latent"] + r["bits_text"] == 8 * len(r["bitstream"])
        assert len(r["source_sha256"]) == 64 and r["source_size"] > 0 and r["model_id"] and r["preset"] == "taef2"


def test_folder_bad_inputs_rerun_and_changes(ray_local, tmp_path):
    src = photo_folder(tmp_path / "src", SIZES)
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_bytes(b"this is not a photo")
    jpeg = (src / "b.jpg").read_bytes()
    (src / "sub" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    photo_folder(src, {"huge.png": (400, 300)})
    (src / "notes.txt").write_text("not listed: no image suffix")
    arc = str(tmp_path / "arc")

    s = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, rows_per_file=3, max_pixels=200 * 200)
    assert (s["written"], s["unchanged"], s["failed"]) == (4, 0, 4)
    reasons = {f["source"].rsplit("/", 1)[-1]: f["reason"] for f in s["failures"]}
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.jpg"] == "not an image (unrecognised format)"
    assert reasons["cut.jpg"].startswith("truncated image")
    assert reasons["huge.png"].startswith("too large")
    assert s["bytes_in"] == sum((src / k).stat().st_size for k in SIZES)
    assert s["bytes_out"] > 0 and 0 < s["mean_bpp"] < 0.2 and s["wall_seconds"] > 0
    table = format_table(s).splitlines()
    assert table[0].split() == ["written", "4"] and sum(line.startswith("FAILED ") for line in table) == 4

    rows = _archived(arc)
    assert sorted(rows) == sorted([*SIZES, "empty.png", "text.jpg", "sub/cut.jpg", "huge.png"])
    _check_written(rows, list(SIZES))
    assert rows["text.jpg"]["status"] == "failed" and rows["text.jpg"]["bitstream"] is None

    # the data files: the schema of schemas/, sorted keys, small row groups, no pickle
    a = Archive(arc)
    files = a.data_files()
    assert len(files) >= 2  # rows_per_file=3 over 8 rows
    for rel in files:
        pf = pq.ParquetFile(Path(arc) / rel)
        assert pf.schema_arrow.remove_metadata() == ASSET_SCHEMA
        assert pf.schema_arrow.field("bitstream").type == "large_binary"
        keys = pf.read(columns=["key"]).column("key").to_pylist()
        assert keys == sorted(keys)
        assert all(pf.metadata.row_group(i).num_rows <= ROW_GROUP_ROWS for i in range(pf.num_row_groups))
        assert not any(b"pickle" in k.lower() for k in (pf.schema_arrow.metadata or {}))
    assert (Path(arc) / "_jobs" / f"{s['job_id']}.json").exists()

    # the same job again writes nothing: failed sources that did not change are not retried,
    # and no row is committed again (an archive does not grow by its broken files every night)
    s2 = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, rows_per_file=3, max_pixels=200 * 200)
    assert (s2["written"], s2["unchanged"], s2["still_failed"], s2["failed"]) == (0, 4, 4, 0)
    assert s2["bytes_in"] == 0 and s2["files"] == [] and a.data_files() == files
    assert "still failed  4" in format_table(s2)

    # one file changed, one added: only those are written
    photo_folder(src, {"a.png": (80, 64), "new/e.png": (64, 64)})
    s3 = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, rows_per_file=3, max_pixels=200 * 200)
    assert (s3["written"], s3["unchanged"], s3["still_failed"], s3["failed"]) == (2, 3, 4, 0)
    # a repaired source is retried because it changed; --retry-failed retries the rest
    (src / "empty.png").write_bytes((src / "a.png").read_bytes())
    s4 = compress(str(src), arc, settings=EncodeSettings(rate=2), batch_size=2, rows_per_file=3, max_pixels=200 * 200,
                  retry_failed=True)  # fmt: skip
    assert (s4["written"], s4["unchanged"], s4["still_failed"], s4["failed"]) == (1, 5, 0, 3)
    rows = _archived(arc)
    assert rows["a.png"]["width"] == 80 and "new/e.png" in rows

    listing = list_assets(arc)
    assert [r["key"] for r in listing] == sorted(rows)
    assert {"key", "source_uri", "status", "bpp"} <= set(listing[0])
    info = archive_info(arc)
    assert info["written"] == 6 and info["failed"] == 3 and info["preset"] == "taef2" and info["jobs"] == 4


def _hostile_exif_jpeg() -> bytes:
    """A JPEG whose EXIF makes PIL raise struct.error while it applies the orientation."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112], exif[0x010E] = 6, "a description"
    data = png_bytes(photo(64, 48), format="JPEG", exif=exif.tobytes())
    at = data.index(b"\x01\x0e\x00\x02")
    return data[:at] + b"\x01\x54" + data[at + 2 :]


@pytest.mark.slow  # three jobs, about 85 s: the default run stays under 20 minutes (unit: test_incremental)
def test_a_touched_file_is_read_once_then_skipped_unread(ray_local, tmp_path):
    """A touch (or a copy) changes a file's fingerprint, not its bytes: the next job reads it,
    finds it unchanged, and commits its archived row again under the new fingerprint, so the
    job after that skips it without reading it."""
    src = photo_folder(tmp_path / "src", {"a.png": (64, 64), "b.png": (64, 48)})
    arc = str(tmp_path / "arc")
    compress(str(src), arc, settings=EncodeSettings(rate=1))
    before = _archived(arc)["a.png"]
    st = (src / "a.png").stat()
    os.utime(src / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = compress(str(src), arc, settings=EncodeSettings(rate=1))
    assert (second["written"], second["unchanged"], second["failed"]) == (0, 2, 0) and len(second["files"]) == 1
    row = _archived(arc)["a.png"]
    assert row["bitstream"] == before["bitstream"] and row["job_id"] == before["job_id"]  # the encoding job's
    assert row["written_at"] > before["written_at"]
    assert row["source_fingerprint"] != before["source_fingerprint"] and row["source_sha256"] == before["source_sha256"]
    # same size and mtime, other bytes: a job that read it would encode it again
    st = (src / "a.png").stat()
    (src / "a.png").write_bytes(b"\0" * st.st_size)
    os.utime(src / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    third = compress(str(src), arc, settings=EncodeSettings(rate=1))
    assert (third["written"], third["unchanged"], third["failed"], third["files"]) == (0, 2, 0, [])


def test_manifest_with_captions_and_missing_file(ray_local, tmp_path):
    src = photo_folder(tmp_path / "photos", {"x.png": (64, 64), "y.png": (96, 64)})
    (src / "exif.jpg").write_bytes(_hostile_exif_jpeg())
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "key", "caption"])
        w.writerow([f"file://{src}/x.png", "cats/x.png", "a red door"])
        w.writerow([str(src / "y.png"), "cats/y.png", ""])
        w.writerow([str(src / "gone.png"), "cats/gone.png", ""])
        w.writerow([str(src / "y.png"), "cats/x.png", ""])  # a key listed again, for another file
        w.writerow([f"file://{src}/x.png", "cats/x.png", "a red door"])  # the same row again: one asset
        w.writerow(["", "cats/nowhere.png", ""])
        w.writerow([str(src / "exif.jpg"), "cats/exif.jpg", ""])  # fails alone, the job goes on
    arc = str(tmp_path / "arc")
    s = compress(str(manifest), arc, settings=EncodeSettings(rate=1))
    assert (s["written"], s["failed"], s["over_target_bpp"], s["aborted"]) == (2, 4, 0, None)
    reasons = {f["source"]: f["reason"] for f in s["failures"]}
    assert reasons == {str(src / "gone.png"): "I/O error: file not found",
                       str(src / "y.png"): f"duplicate key: 'cats/x.png' is listed for file://{src}/x.png first",
                       "": "no uri in the manifest row",
                       str(src / "exif.jpg"): "unreadable image (error: required argument is not a float)"}  # fmt: skip
    rows = _archived(arc)
    _check_written(rows, ["cats/x.png", "cats/y.png"])
    assert rows["cats/x.png"]["caption"] == "a red door" and rows["cats/y.png"]["caption"] is None
    files = Archive(arc).data_files()
    again = compress(str(manifest), arc, settings=EncodeSettings(rate=1))
    # every failure is the same one again: nothing is committed (an archive does not grow nightly)
    assert (again["written"], again["unchanged"], again["still_failed"], again["failed"]) == (0, 2, 4, 0)
    assert Archive(arc).data_files() == files


def test_webdataset_shards(ray_local, tmp_path, monkeypatch):
    # a fixed detail gain needs a CDM: the shipped one over the default latent codec (a new model id)
    monkeypatch.setenv("RESULIC_CDM", str(Path(__file__).resolve().parents[1] / "codec/weights/cdm_taef2_v2"))
    img = png_bytes(photo(64, 64))
    write_shard(tmp_path / "train-000.tar", {"0001.png": img, "0001.txt": b"caption", "0002.png": png_bytes(photo(96, 64))})
    write_shard(tmp_path / "train-001.tar", {"0003.png": img, "0004.png": b"\x89PNG broken"})
    arc = str(tmp_path / "arc")
    s = compress(str(tmp_path / "train-{000..001}.tar"), arc, settings=EncodeSettings(rate=1, detail_gain=2.0))
    assert (s["written"], s["failed"], s["detail_gain"]) == (3, 1, 2.0)
    assert sum(f.endswith("-shards.parquet") for f in s["files"]) == 1  # the markers' data file is the job's too
    assert s["failures"][0]["source"].endswith("train-001.tar#0004.png")
    rows = _archived(arc)
    _check_written(rows, ["train-000/0001.png", "train-000/0002.png", "train-001/0003.png"])
    # the encoder actors wrote the job's fixed detail gain into every stream
    written = [r for r in rows.values() if r["status"] == "written"]
    assert {codec.info(r["bitstream"])["diffusion"]["detail_gain"] for r in written} == {2.0}
    r = restore(arc, str(tmp_path / "out"), keys=["train-000/0002.png"])
    assert r["restored"] == 1 and Path(r["paths"][0]).name == "0002.png"
    # the rerun reads neither shard: both were read to their end and have not changed (same size
    # and mtime; their bytes are overwritten here to show that they are not read)
    for shard in tmp_path.glob("train-*.tar"):
        st = shard.stat()
        shard.write_bytes(b"\0" * st.st_size)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = compress(str(tmp_path / "train-{000..001}.tar"), arc, settings=EncodeSettings(rate=1))
    assert (again["written"], again["unchanged"], again["still_failed"], again["failed"]) == (0, 3, 1, 0)
    assert again["bytes_in"] == 0
    # a shard that changed is read again; its unchanged members are found by content
    write_shard(tmp_path / "train-001.tar", {"0003.png": img, "0005.png": png_bytes(photo(64, 96))})
    third = compress(str(tmp_path / "train-{000..001}.tar"), arc, settings=EncodeSettings(rate=1))
    assert (third["written"], third["unchanged"], third["still_failed"], third["failed"]) == (1, 3, 0, 0)
    # unchanged since: skipped unread, each member accounted for, 0003.png too (found by content
    # above, its row is of the shard's first version); 0004.png, gone from the shard, is still
    # counted with it (archive_v1.md §5: a shard's members are the keys under its name)
    fourth = compress(str(tmp_path / "train-{000..001}.tar"), arc, settings=EncodeSettings(rate=1))
    assert (fourth["written"], fourth["unchanged"], fourth["still_failed"], fourth["failed"]) == (0, 4, 1, 0)
    assert fourth["bytes_in"] == 0


def test_s3_source_archive_and_restore(ray_local, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()  # endpoint and credentials from the environment, as users set them
    fs.mkdir("photos-bucket")
    src = photo_folder(tmp_path / "src", {"2024/a.png": (64, 64), "2024/b.jpg": (96, 64), "2025/c.png": (64, 96)})
    for p in sorted(src.rglob("*.*")):
        fs.put_file(str(p), f"photos-bucket/in/{p.relative_to(src)}")
    fs.pipe_file("photos-bucket/in/2025/bad.png", b"nope")

    s = compress("s3://photos-bucket/in", "s3://photos-bucket/archive", settings=EncodeSettings(rate=2))
    assert (s["written"], s["failed"]) == (3, 1)
    assert s["failures"][0]["source"] == "s3://photos-bucket/in/2025/bad.png"
    assert fs.exists("photos-bucket/archive/_archive.json") and fs.exists("photos-bucket/archive/_index/index.parquet")
    assert not fs.exists("photos-bucket/archive/_staging") or not fs.ls("photos-bucket/archive/_staging")
    rows = _archived("s3://photos-bucket/archive")
    _check_written(rows, ["2024/a.png", "2024/b.jpg", "2025/c.png"])
    assert rows["2024/a.png"]["source_uri"] == "s3://photos-bucket/in/2024/a.png"

    again = compress("s3://photos-bucket/in", "s3://photos-bucket/archive", settings=EncodeSettings(rate=2))
    assert (again["written"], again["unchanged"]) == (0, 3)

    # a few keys without Ray, to local files; everything with Ray, back into the bucket
    one = restore("s3://photos-bucket/archive", str(tmp_path / "out"), keys=["2024/b.jpg"])
    assert one["restored"] == 1 and (tmp_path / "out" / "2024" / "b.jpg.png").exists()
    every = restore("s3://photos-bucket/archive", "s3://photos-bucket/restored", all_keys=True, fmt="webp")
    assert (every["restored"], every["failed"], every["not_archived"]) == (3, 0, 1)  # reported apart, not restored
    assert sorted(fs.find("photos-bucket/restored")) == [
        "photos-bucket/restored/2024/a.png.webp", "photos-bucket/restored/2024/b.jpg.webp",
        "photos-bucket/restored/2025/c.png.webp"]  # fmt: skip


def test_a_damaged_committed_file_is_quarantined_and_its_assets_encoded_again(ray_local, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    src = photo_folder(tmp_path / "src", {"a.png": (64, 64), "b.png": (64, 64)})
    arc = tmp_path / "arc"
    first = compress(str(src), str(arc), rows_per_file=1)
    assert first["written"] == 2 and first["quarantined"] == []
    damaged = sorted((arc / "data").iterdir())[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # a committed file cut short (disk fault, old software)
    (arc / "_index" / "index.parquet").unlink()  # and the index lost with it
    s = compress(str(src), str(arc), rows_per_file=1)
    assert [q["file"] for q in s["quarantined"]] == [f"data/{damaged.name}"]
    assert (s["written"], s["unchanged"], s["failed"]) == (1, 1, 0)
    assert "QUARANTINED data/" in format_table(s)
    assert sorted(r["key"] for r in list_assets(str(arc))) == ["a.png", "b.png"]
    # repair: the index rebuilt from the data files alone
    (arc / "_index" / "index.parquet").write_bytes(b"not parquet")
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "repair", str(arc), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["keys"] == 2 and r["quarantined"] == []
    # compact: the one-row files of each job into one, every asset kept
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "compact", str(arc), "--rows-per-file", "10", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    c = json.loads(res.stdout)
    assert (c["files_before"], c["files_after"], c["rows_copied"]) == (2, 1, 2)
    assert sorted(r["key"] for r in list_assets(str(arc))) == ["a.png", "b.png"]
    assert compress(str(src), str(arc))["unchanged"] == 2


def test_assets_over_the_target_bpp_are_counted_and_shown(ray_local, tmp_path):
    src = photo_folder(tmp_path / "photos", {"x.png": (64, 64), "y.png": (96, 64)})
    s = compress(str(src), str(tmp_path / "arc"), settings=EncodeSettings(target_bpp=1e-4))  # below any stream
    assert (s["written"], s["over_target_bpp"]) == (2, 2)  # written at their lowest rate, and said so
    assert "OVER TARGET 2 written assets are over --target-bpp 0.0001" in format_table(s)
