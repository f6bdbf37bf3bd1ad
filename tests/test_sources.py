"""Sources without Ray: parsing, streamed listing (local and a real S3 server), manifests and
their fingerprints, WebDataset shards through the webdataset library, fetch, retries."""

from __future__ import annotations

import errno

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import photo, png_bytes, write_shard
from operators import sources
from operators.sources import (
    DUPLICATE,
    LISTING_SCHEMA,
    MISSING,
    Source,
    expand_shards,
    fetch,
    list_tasks,
    read_manifest,
    stat_sources,
)
from schemas.archive import STATUS_FAILED, STATUS_SHARD


def _listing(source: Source) -> pa.Table:
    return pa.concat_tables([t for fn in list_tasks(source) for t in fn()])


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    for rel in ["a.png", "sub/b.png", "sub/deep/c.jpg", "z/d.webp", "notes.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * 10)
    return root


def test_parse_kinds():
    assert Source.parse("/data/photos").kind == "files"
    assert Source.parse("s3://bucket/photos/*.jpg").kind == "files"
    assert Source.parse("s3://b/shards/train-{000..009}.tar").kind == "webdataset"
    assert Source.parse("/x/shard-0.tar").kind == "webdataset"
    assert Source.parse("/x/list.parquet").kind == "manifest"
    assert Source.parse("gs://b/list.CSV").kind == "manifest"


def test_folder_listing_is_complete(folder):
    src = Source.parse(str(folder))
    table = _listing(src)
    assert sorted(table.column("key").to_pylist()) == ["a.png", "sub/b.png", "sub/deep/c.jpg", "z/d.webp"]
    assert all(u.startswith("file://") for u in table.column("source_uri").to_pylist())
    assert all(f.startswith("10:") for f in table.column("source_fingerprint").to_pylist())
    assert table.schema == LISTING_SCHEMA


def test_symlinked_folders_are_listed_once_and_loops_end(folder, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "e.png").write_bytes(b"y" * 10)
    (folder / "linked").symlink_to(other)
    (folder / "sub" / "up").symlink_to(folder)  # a loop back to the root
    (folder / "sub" / "self").symlink_to(folder / "sub" / "self")  # a link to itself
    (folder / "a-link").symlink_to(folder / "sub")  # a folder of the tree: listed under its own path
    (folder / "z").joinpath("again").symlink_to(other)  # a second way to a linked folder: the first wins
    keys = sorted(_listing(Source.parse(str(folder))).column("key").to_pylist())
    assert keys == ["a.png", "linked/e.png", "sub/b.png", "sub/deep/c.jpg", "z/d.webp"]
    assert _listing(Source.parse(str(folder / "*" / "*.png"))).column("key").to_pylist() == ["sub/b.png", "linked/e.png"]


def test_listing_blocks_are_bounded(folder, monkeypatch):
    monkeypatch.setattr(sources, "LIST_BLOCK_ROWS", 2)
    blocks = [t for fn in list_tasks(Source.parse(str(folder))) for t in fn()]
    assert [b.num_rows for b in blocks] == [2, 2]


def test_glob_and_single_file(folder):
    table = _listing(Source.parse(str(folder / "sub" / "*.png")))
    assert table.column("key").to_pylist() == ["b.png"]
    table = _listing(Source.parse(str(folder / "a.png")))
    assert table.column("key").to_pylist() == ["a.png"]


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="source not found"):
        list_tasks(Source.parse(str(tmp_path / "nope")))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("not an image")
    for pattern in ("nope/*.png", "x/*", "x/*.jpg"):  # a typo, or nothing that is an image
        with pytest.raises(FileNotFoundError, match="no image matches"):
            Source.parse(str(tmp_path / pattern)).check()
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        Source.parse(str(tmp_path / "x" / "*.tar")).check()


def test_a_folder_whose_name_has_wildcard_characters_is_a_folder(tmp_path):
    root = tmp_path / "photos [2024]"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    src = Source.parse(str(root))
    src.check()
    assert _listing(src).column("key").to_pylist() == ["a.png"]


def test_fingerprint_changes_with_content(folder):
    before = _listing(Source.parse(str(folder))).to_pylist()
    (folder / "a.png").write_bytes(b"y" * 11)
    after = _listing(Source.parse(str(folder))).to_pylist()
    fp = lambda rows, k: next(r["source_fingerprint"] for r in rows if r["key"] == k)  # noqa: E731
    assert fp(before, "a.png") != fp(after, "a.png")
    assert fp(before, "sub/b.png") == fp(after, "sub/b.png")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest(tmp_path, fmt):
    table = pa.table({"uri": [f"file://{tmp_path}/x/a.png", "s3://bucket/p/b.jpg"], "caption": ["a dog", None]})
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        from pyarrow import csv

        csv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    rows = _listing(Source.parse(str(path))).to_pylist()
    assert [r["key"] for r in rows] == [f"{str(tmp_path).lstrip('/')}/x/a.png", "bucket/p/b.jpg"]
    assert rows[0]["caption"] == "a dog" and rows[1]["caption"] is None
    assert [r["caption_source"] for r in rows] == ["manifest", None]


def test_manifest_rows_without_uri_or_with_a_key_twice(tmp_path):
    table = pa.table({"uri": ["s3://b/1.png", None, "s3://b/2.png", "s3://b/1.png", "s3://b/3.png"],
                      "key": ["one.png", None, "one.png", "one.png", None]})  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    rows = _listing(Source.parse(str(tmp_path / "m.parquet"))).to_pylist()
    got = [(r["key"], r["source_uri"], r["source_fingerprint"], r["status"], r["error"]) for r in rows]
    assert got == [
        ("one.png", "s3://b/1.png", None, None, None),
        ("manifest row 1", "", MISSING, STATUS_FAILED, "no uri in the manifest row"),
        ("one.png", "s3://b/2.png", DUPLICATE, STATUS_FAILED, "duplicate key: 'one.png' is listed for s3://b/1.png first"),
        ("b/3.png", "s3://b/3.png", None, None, None),  # the same key and uri again is one asset, listed once
    ]


def test_manifest_without_uri_column(tmp_path):
    pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="needs a 'uri' column"):
        list(read_manifest(Source.parse(str(tmp_path / "m.parquet"))))


def test_webdataset_shards(tmp_path):
    img = png_bytes(photo(32, 32))
    write_shard(tmp_path / "s-000.tar", {"0001.png": img, "0001.json": b"{}", "0002.png": img})
    write_shard(tmp_path / "s-001.tar", {"0003.png": img})
    full = (tmp_path / "s-001.tar").read_bytes()
    (tmp_path / "s-002.tar").write_bytes(full[:700])  # cut inside the member
    src = Source.parse(str(tmp_path / "s-{000..003}.tar"))
    listing = _listing(src)
    assert listing.column("key").to_pylist() == ["s-000/", "s-001/", "s-002/", "s-003/"]
    assert listing.column("error").to_pylist()[3].startswith("shard not found")
    rows = [r for t in expand_shards(listing, {}) for r in t.to_pylist()]
    ok = [r for r in rows if r["status"] is None]
    assert [r["key"] for r in ok] == ["s-000/0001.png", "s-000/0002.png", "s-001/0003.png"]
    assert ok[0]["source_uri"].endswith("s-000.tar#0001.png") and ok[0]["data"] == img
    assert ok[0]["source_sha256"] and ok[0]["source_size"] == len(img)
    # a shard read to its end leaves a marker; one cut short or missing, a failed row of its own
    assert [r["key"] for r in rows if r["status"] == STATUS_SHARD] == ["s-000/", "s-001/"]
    bad = {r["key"]: r["error"] for r in rows if r["status"] == STATUS_FAILED}
    assert bad["s-002/"].startswith("truncated or damaged shard")
    assert set(bad) == {"s-002/", "s-003/"}


def test_shards_in_different_folders_have_different_keys(tmp_path):
    img = png_bytes(photo(16, 16))
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        write_shard(tmp_path / split / "shard-0.tar", {"0001.png": img, "0002.png": img, "0001.jpg": img, "0001.png.x": b""})
    for pattern in ("{train,val}/shard-0.tar", "*/shard-0.tar"):
        listing = _listing(Source.parse(str(tmp_path / pattern)))
        assert listing.column("key").to_pylist() == ["train/shard-0/", "val/shard-0/"], pattern
    listing = _listing(Source.parse(str(tmp_path / "val" / "shard-{0..1}.tar")))
    assert listing.column("key").to_pylist() == ["shard-0/", "shard-1/"]  # a flat layout keeps its keys
    whole = _listing(Source.parse("{" + f"{tmp_path}/train,{tmp_path}/val" + "}/shard-0.tar"))  # whole paths
    rel = str(tmp_path).lstrip("/")
    assert whole.column("key").to_pylist() == [f"{rel}/train/shard-0/", f"{rel}/val/shard-0/"]  # the same from anywhere
    assert listing.column("source_fingerprint").to_pylist()[1] == MISSING


def test_a_name_twice_in_one_shard_fails_the_second(tmp_path):
    import tarfile

    img, other = png_bytes(photo(16, 16)), png_bytes(photo(16, 8))
    with tarfile.open(tmp_path / "s.tar", "w") as tar:  # 0001.png, 0002.png, then 0001.png again
        for name, data in (("0001.png", img), ("0002.png", img), ("0001.png", other)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
    rows = [r for t in expand_shards(_listing(Source.parse(str(tmp_path / "s.tar"))), {}) for r in t.to_pylist()]
    assert [(r["key"], r["status"]) for r in rows] == [("s/0001.png", None), ("s/0002.png", None),
                                                       ("s/0001.png", STATUS_FAILED), ("s/", STATUS_SHARD)]  # fmt: skip
    assert rows[0]["data"] == img and rows[2]["source_fingerprint"] == DUPLICATE
    assert rows[2]["error"] == "duplicate key: '0001.png' is in the shard twice; the first is kept"


def test_gzipped_shards_stream_in_bounded_blocks_with_their_captions(tmp_path, monkeypatch):
    import gzip
    import json

    img = png_bytes(photo(16, 16))
    members = {f"{i:04d}.png": img for i in range(5)}
    members["0000.txt"] = b" a red kite over the dunes \n"
    members["0001.json"] = json.dumps({"caption": "two herons"}).encode()
    members = dict(sorted(members.items()))  # a sample's members are adjacent, as WebDataset writes them
    write_shard(tmp_path / "plain.tar", members)
    (tmp_path / "g.tar.gz").write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    src = Source.parse(str(tmp_path / "g.tar.gz"))
    assert src.kind == "webdataset" and Source.parse("s3://b/x-{0..3}.tgz").kind == "webdataset"
    monkeypatch.setattr(sources, "SHARD_BLOCK_ROWS", 2)
    blocks = list(expand_shards(_listing(src), {}))
    assert [b.num_rows for b in blocks] == [2, 2, 2]  # 5 members and the marker, two at a time
    rows = {r["key"]: r for b in blocks for r in b.to_pylist()}
    assert sorted(rows) == ["g/", "g/0000.png", "g/0001.png", "g/0002.png", "g/0003.png", "g/0004.png"]
    assert (rows["g/0000.png"]["caption"], rows["g/0000.png"]["caption_source"]) == ("a red kite over the dunes", "webdataset")
    assert rows["g/0001.png"]["caption"] == "two herons" and rows["g/0002.png"]["caption"] is None
    assert rows["g/"]["status"] == STATUS_SHARD and rows["g/0004.png"]["data"] == img
    damaged = tmp_path / "cut.tar.gz"
    whole = (tmp_path / "g.tar.gz").read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])
    out = [r for b in expand_shards(_listing(Source.parse(str(damaged))), {}) for r in b.to_pylist()]
    assert out[-1]["key"] == "cut/" and out[-1]["status"] == STATUS_FAILED
    assert "truncated or damaged shard" in out[-1]["error"] and "<" not in out[-1]["error"]


def test_manifest_fingerprints_without_reading_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"a" * 7)
    table = pa.table({"uri": [f"file://{tmp_path}/a.png", f"file://{tmp_path}/b.png", f"file://{tmp_path}/c.png",
                              f"file://{tmp_path}/gone.png"],
                      "fingerprint": ["v1", None, None, None], "size": ["1", "5", None, None],
                      "etag": [None, "abc", None, None]})  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    rows = _listing(Source.parse(str(tmp_path / "m.parquet")))
    assert rows.column("source_fingerprint").to_pylist() == ["v1", "5:abc", None, None]
    (tmp_path / "c.png").write_bytes(b"c" * 3)
    statted = stat_sources(rows, {}).column("source_fingerprint").to_pylist()
    assert statted[:2] == ["v1", "5:abc"] and statted[2].startswith("3:") and statted[3] == MISSING


def test_a_manifest_row_whose_object_was_missing_is_asked_again(tmp_path):
    """The manifest names a fingerprint for an object not uploaded yet: remembered as missing
    (not as the manifest's fingerprint, which would pin the failure once the upload lands)."""
    table = pa.table({"key": ["late.png"], "uri": [f"file://{tmp_path}/late.png"], "fingerprint": ["v7"]})
    pq.write_table(table, tmp_path / "m.parquet")
    rows = _listing(Source.parse(str(tmp_path / "m.parquet")))
    (failed,) = fetch(rows, {}).to_pylist()
    assert failed["status"] == STATUS_FAILED and failed["source_fingerprint"] == MISSING
    still = stat_sources(rows, {}, missing=frozenset({"late.png"}))  # the next job, before the upload
    assert still.column("source_fingerprint").to_pylist() == [MISSING]  # the same failure: not read
    (tmp_path / "late.png").write_bytes(b"x" * 9)
    landed = stat_sources(rows, {}, missing=frozenset({"late.png"}))
    assert landed.column("source_fingerprint").to_pylist()[0].startswith("9:")  # changed: read
    assert stat_sources(rows, {}).column("source_fingerprint").to_pylist() == ["v7"]  # the manifest's otherwise


def test_a_large_manifest_is_listed_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LIST_BLOCK_ROWS", 10)
    pq.write_table(pa.table({"uri": [f"s3://b/{i}.png" for i in range(35)]}), tmp_path / "m.parquet", row_group_size=10)
    from pyarrow import csv

    csv.write_csv(pa.table({"uri": [f"s3://b/{i}.png" for i in range(35)], "key": [str(i) for i in range(35)]}),
                  tmp_path / "m.csv")  # fmt: skip
    blocks = [t for fn in list_tasks(Source.parse(str(tmp_path / "m.parquet"))) for t in fn()]
    assert [b.num_rows for b in blocks] == [10, 10, 10, 5]
    keys = [k for fn in list_tasks(Source.parse(str(tmp_path / "m.csv"))) for t in fn() for k in t.column("key").to_pylist()]
    assert keys == [str(i) for i in range(35)]


def test_glob_patterns_stream_any_depth(folder):
    assert sorted(_listing(Source.parse(str(folder / "**" / "*.png"))).column("key").to_pylist()) == ["a.png", "sub/b.png"]
    assert _listing(Source.parse(str(folder / "*" / "*.webp"))).column("key").to_pylist() == ["z/d.webp"]
    assert _listing(Source.parse(str(folder / "*.png"))).column("key").to_pylist() == ["a.png"]


def test_a_flat_s3_prefix_streams_page_by_page(s3_server, monkeypatch):
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = f"flat-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    for i in range(25):
        fs.pipe(f"{bucket}/p/{i:03d}.png", b"x" * (i + 1))
    fs.pipe(f"{bucket}/p/deep/z.jpg", b"z")
    fs.pipe(f"{bucket}/other/no.png", b"n")
    monkeypatch.setattr(sources, "LIST_BLOCK_ROWS", 10)
    pages = []
    original = sources._take

    async def counting(p, n, after=None):
        got = await original(p, n, after)
        pages.append(len(got))
        return got

    monkeypatch.setattr(sources, "_take", counting)
    (task,) = list_tasks(Source.parse(f"s3://{bucket}/p"))
    blocks = task()
    first = next(blocks)
    assert first.num_rows == 10 and pages == [10]  # the first block after the first page, not the whole listing
    rest = list(blocks)
    keys = [k for b in [first, *rest] for k in b.column("key").to_pylist()]
    assert keys == [f"{i:03d}.png" for i in range(25)] + ["deep/z.jpg"]
    assert first.column("source_fingerprint").to_pylist()[0].startswith("1:")


def test_an_s3_listing_that_breaks_mid_page_goes_on_where_it_stopped(s3_server, monkeypatch):
    """A listing that raised is closed: retried as it was, it ended there and the job saw half the bucket."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = f"broken-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    for i in range(26):
        fs.pipe(f"{bucket}/p/{i:03d}.png", b"x")
    monkeypatch.setattr(sources, "LIST_BLOCK_ROWS", 10)
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    iterdir, calls = s3fs.S3FileSystem._iterdir, []

    async def breaking(self, *args, **kw):
        calls.append(1)
        n = 0
        async for info in iterdir(self, *args, **kw):
            n += 1
            if (len(calls), n) in ((1, 15), (2, 25)):  # two read timeouts, each in a page
                raise OSError("Read timeout on endpoint URL")
            yield info

    monkeypatch.setattr(s3fs.S3FileSystem, "_iterdir", breaking)
    (task,) = list_tasks(Source.parse(f"s3://{bucket}/p"))
    keys = [k for b in task() for k in b.column("key").to_pylist()]
    assert keys == [f"{i:03d}.png" for i in range(26)] and len(calls) == 3


def test_a_folder_that_cannot_be_listed_is_a_failed_row_and_the_rest_is_listed(folder, monkeypatch, tmp_path):
    """os.walk skipped it without a word: its photos were no job's inputs and the job stayed green."""
    import os

    scandir = os.scandir

    def refusing(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    rows = {r["key"]: r for r in _listing(Source.parse(str(folder))).to_pylist()}
    assert sorted(rows) == ["a.png", "sub/", "z/d.webp"]
    assert rows["sub/"]["status"] == STATUS_FAILED and rows["sub/"]["error"] == "cannot list this folder: Permission denied"
    assert rows["sub/"]["source_fingerprint"] == "unlistable"  # the same failure next time: one row
    with pytest.raises(OSError, match=r"cannot list .*sub: Permission denied"):  # the source itself
        _listing(Source.parse(str(folder / "sub")))


def test_a_dangling_link_fails_once_not_every_night(folder):
    from operators.incremental import known_sources, mark_unchanged

    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    rows = {r["key"]: r for r in _listing(Source.parse(str(folder))).to_pylist()}
    assert rows["gone.png"]["status"] == STATUS_FAILED and rows["gone.png"]["source_fingerprint"] == MISSING
    # the next job: its failure is known with the same fingerprint, so it is still failed, not read again
    index = pa.table({"key": ["gone.png"], "status": ["failed"], "last_status": ["failed"],
                      "source_fingerprint": [MISSING], "source_sha256": [None], "last_source_fingerprint": [MISSING],
                      "last_source_sha256": [None], "file": ["data/j.parquet"], "row_group": pa.array([0], pa.int32()),
                      "row": pa.array([0], pa.int32())})  # fmt: skip
    again = _listing(Source.parse(str(folder)))
    marked = mark_unchanged(again, known_sources(index), "source_fingerprint").to_pylist()
    assert {r["key"]: r["status"] for r in marked}["gone.png"] == "still_failed"


def test_fetch_reads_hashes_and_fails_per_row(folder):
    table = _listing(Source.parse(str(folder)))
    (folder / "a.png").unlink()  # gone between listing and reading
    out = fetch(table, {}).to_pylist()
    by = {r["key"]: r for r in out}
    assert by["a.png"]["status"] == STATUS_FAILED and by["a.png"]["error"] == "I/O error: file not found"
    assert by["a.png"]["source_fingerprint"] == MISSING  # the file's own failure: remembered as such
    assert by["sub/b.png"]["data"] == b"x" * 10 and by["sub/b.png"]["source_size"] == 10
    assert by["sub/b.png"]["source_sha256"] == __import__("hashlib").sha256(b"x" * 10).hexdigest()


def test_a_read_refused_by_the_store_is_not_the_source_s_failure(folder, monkeypatch):
    table = _listing(Source.parse(str(folder)))

    def refused(uri, storage_options):
        raise PermissionError(errno.EACCES, "object in cold storage")

    monkeypatch.setattr(sources, "read_bytes", refused)
    out = fetch(table, {}).to_pylist()
    assert all(r["error"] == "I/O error: permission denied" for r in out)
    assert all(r["source_fingerprint"] is None for r in out)  # so the next job reads them again

    def bad_uri(uri, storage_options):
        raise ValueError("Protocol not known: htp")

    monkeypatch.setattr(sources, "read_bytes", bad_uri)
    assert all(r["source_fingerprint"] for r in fetch(table, {}).to_pylist())  # the source's own: remembered


def test_retry_recovers_from_transient_errors(monkeypatch):
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    assert sources._retry(flaky) == "ok" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError(errno.ENOENT, "nope")

    with pytest.raises(FileNotFoundError):
        sources._retry(missing)
    assert len(calls) == 1  # permanent errors are not retried


def test_a_listing_without_a_tag_gives_no_fingerprint():
    """A size alone would let a same-size rewrite pass for unchanged: no fingerprint, read and compared."""
    from operators.sources import fingerprint

    assert fingerprint({"size": 5}) is None and fingerprint({"size": 5, "ETag": ""}) is None
    assert fingerprint({"size": 5, "mtime": 0.0}) == "5:0.0"  # the epoch is a time
    assert fingerprint({"size": 5, "ETag": '"abc"', "mtime": 1.5}) == "5:abc"


def test_object_names_a_path_cannot_spell_apart_fail_instead_of_sharing_a_key(s3_server):
    import uuid

    import boto3

    bucket = f"names-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for key in ("p/a.png", "p//a.png", "p/./b.png", "p/c.png"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    rows = {r["key"]: r for r in _listing(Source.parse(f"s3://{bucket}/p")).to_pylist()}
    assert sorted(rows) == ["./b.png", "/a.png", "a.png", "c.png"]  # four objects, four keys
    assert rows["a.png"]["status"] is None and rows["c.png"]["status"] is None
    for odd in ("/a.png", "./b.png"):
        assert rows[odd]["status"] == STATUS_FAILED and "rename it" in rows[odd]["error"]
        assert rows[odd]["source_uri"].endswith(f"p/{odd}")
