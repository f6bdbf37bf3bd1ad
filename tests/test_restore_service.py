"""The restore service over real HTTP on 127.0.0.1: ``resulic serve`` started as a subprocess
(its own local Ray and Ray Serve), on an archive of real streams."""

from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import codec
from codec.bitstream import Bitstream
from conftest import ROOT, free_port, photo, torch_threads
from operators.archive import Archive
from operators.sink import finalise_rows

pytestmark = pytest.mark.timeout(600)

TOKEN = "t0k3n-for-the-restore-service-tests"
MAX_PIXELS = 20_000  # the service's limit: 64x64 restores (16,384 pixels padded), 160x128 is over it


def _commit(a: Archive, name: str, rows: dict[str, tuple[bytes | None, str | None]]) -> None:
    """Data file ``name`` with key -> (stream, error): a row with an error is a failed one."""
    keys = list(rows)
    table = pa.table({
        "key": keys, "source_uri": [f"file:///src/{k}" for k in keys],
        "bitstream": pa.array([rows[k][0] for k in keys], pa.large_binary()),
        "width": pa.array([64] * len(keys), pa.int32()), "height": pa.array([64] * len(keys), pa.int32()),
        "status": pa.array(["failed" if rows[k][1] else None for k in keys], pa.string()),
        "error": pa.array([rows[k][1] for k in keys], pa.string()),
        "bpp": pa.array([None if rows[k][0] is None else len(rows[k][0]) * 8 / 64**2 for k in keys], pa.float64()),
    })  # fmt: skip
    a.write_data_file(finalise_rows(table, name, dt.datetime.now(dt.timezone.utc)), name, {})


def _out_of_range(stream: bytes) -> bytes:
    """A stream whose container is intact (valid CRCs) but whose head names a rate level the
    model does not have: only the decoder can tell."""
    s = Bitstream.from_bytes(stream)
    s.header.rate_level = 99
    return s.to_bytes()


class Service:
    def __init__(self, port: int, archive: Path, proc: subprocess.Popen, output: Path) -> None:
        self.port, self.archive, self.proc, self.output = port, archive, proc, output

    def request(self, path: str, method: str = "GET", token: str | None = TOKEN, headers: dict | None = None):
        """(status, headers, body); ``path`` is sent as it is (no client-side normalising)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=hdrs)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    a = Archive(str(root / "arc"))
    a.create({"preset": "taef2"})
    small = codec.encode(photo(64, 64), rate=2)
    wide = codec.encode(photo(160, 128), rate=2)
    damaged = bytearray(small)
    damaged[len(damaged) // 2] ^= 0xFF  # a CRC fails: the container says so
    _commit(a, "j1-0", {"a.png": (small, None), "sub/wide.png": (wide, None), "bad.png": (None, "not an image"),
                        "damaged.png": (bytes(damaged), None), "crafted.png": (_out_of_range(small), None),
                        "x y/ü.png": (small, None)})  # fmt: skip
    (root / "x").write_bytes(b"outside the archive")  # what a traversal would find, if keys were paths
    svc = _start(root, "--refresh-seconds", "3600")  # no background refresh: the tests see what a request does
    svc.streams = {"a.png": small}
    yield svc
    _stop(svc)


def _start(root: Path, *args: str) -> Service:
    """``resulic serve`` on the archive ``root/arc``, once its health check answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RESULIC_SERVE_TOKEN": TOKEN, "RESULIC_MAX_PIXELS": str(MAX_PIXELS), "RESULIC_LOG_DIR": str(root / "logs")})
    output = root / "serve.out"
    with open(output, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", str(root / "arc"), "--port", str(port), *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    svc = Service(port, root / "arc", proc, output)
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, output.read_text()
        try:
            if svc.request("/healthz", token=None)[0] == 200:
                return svc
        except OSError:
            pass
        time.sleep(1)
    proc.kill()
    pytest.fail("the service did not start: " + output.read_text())


def _stop(svc: Service) -> None:
    svc.proc.terminate()
    assert svc.proc.wait(120) == 0, svc.output.read_text()


def test_restores_a_key_as_the_codec_does(service):
    status, headers, body = service.request("/v1/assets/a.png")
    assert status == 200 and headers["content-type"] == "image/png", body
    with torch_threads(1):  # the decoder replica's thread count (one CPU per replica)
        want = np.asarray(codec.decode(codec.encode(photo(64, 64), rate=2)))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), want)
    assert headers["etag"].startswith('"') and headers["cache-control"] == "private, no-cache"
    assert int(headers["content-length"]) == len(body)


def test_second_request_is_served_from_the_cache_and_revalidates(service):
    first = service.request("/v1/assets/a.png?format=webp")
    second = service.request("/v1/assets/a.png?format=webp")
    assert first[0] == second[0] == 200 and first[2] == second[2]
    assert (first[1]["x-resulic-cache"], second[1]["x-resulic-cache"]) == ("miss", "hit")
    status, headers, body = service.request("/v1/assets/a.png?format=webp", headers={"If-None-Match": first[1]["etag"]})
    assert status == 304 and body == b"" and headers["etag"] == first[1]["etag"]
    for match in ("*", f'"other", W/{first[1]["etag"]}'):  # RFC 9110: any, and weak comparison
        assert service.request("/v1/assets/a.png?format=webp", headers={"If-None-Match": match})[0] == 304, match
    assert service.request("/v1/assets/a.png?format=webp", headers={"If-None-Match": '"other"'})[0] == 200


def test_the_etag_names_the_cdm_step_count():
    from operators.restore_service import etag_of

    assert len({etag_of(b"s", "png", "auto"), etag_of(b"s", "png", "auto", 2), etag_of(b"s", "png", "auto", 4)}) == 3


def test_revalidating_an_asset_not_in_the_cache_decodes_nothing(service):
    from operators.restore_service import etag_of

    etag = etag_of(service.streams["a.png"], "webp", "plain")
    status, headers, body = service.request("/v1/assets/a.png?format=webp&decoder=plain", headers={"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["etag"] == etag and "x-resulic-cache" not in headers
    status, headers, _ = service.request("/v1/assets/a.png?format=webp&decoder=plain")
    assert status == 200 and headers["x-resulic-cache"] == "miss" and headers["etag"] == etag  # it was never decoded


def test_head_formats_and_decoders(service):
    get = service.request("/v1/assets/a.png?format=jpeg")
    head = service.request("/v1/assets/a.png?format=jpeg", method="HEAD")
    assert get[0] == head[0] == 200 and head[2] == b"" and get[1]["content-type"] == "image/jpeg"
    assert head[1]["content-length"] == str(len(get[2])) and head[1]["etag"] == get[1]["etag"]
    assert Image.open(io.BytesIO(get[2])).format == "JPEG"
    plain = service.request("/v1/assets/a.png?format=jpeg&decoder=plain")
    assert plain[0] == 200 and plain[1]["etag"] != get[1]["etag"]
    assert service.request("/v1/assets/a.png?format=gif")[0] == 400
    assert service.request("/v1/assets/a.png?decoder=magic")[0] == 400


def test_keys_are_url_decoded_and_looked_up_exactly(service):
    assert service.request("/v1/assets/x%20y/%C3%BC.png")[0] == 200
    for path in ("/v1/assets/../x", "/v1/assets/%2e%2e/x", "/v1/assets/%2E%2E%2Fx", "/v1/assets//etc/passwd",
                 "/v1/assets/" + str(service.archive.parent / "x").lstrip("/"), "/v1/assets/a.PNG", "/v1/assets/a.png/"):
        status, _, body = service.request(path)
        assert status == 404, (path, status, body)
        assert b"outside the archive" not in body


def test_error_statuses_and_the_service_keeps_answering(service):
    status, _, body = service.request("/v1/assets/bad.png")
    assert status == 409 and "not an image" in json.loads(body)["detail"]
    assert service.request("/v1/assets/damaged.png")[0] == 422  # the container's CRC
    status, _, body = service.request("/v1/assets/crafted.png")
    assert status == 422 and "rate level" in json.loads(body)["detail"]  # the decoder's head check
    status, _, body = service.request("/v1/assets/sub/wide.png")
    assert status == 413 and "limit" in json.loads(body)["detail"]
    assert service.request("/v1/assets/nope.png")[0] == 404
    assert service.request("/v1/assets?limit=100000")[0] == 413
    assert service.request("/v1/assets/a.png?format=png&decoder=plain")[0] == 200


def test_every_route_but_healthz_needs_the_token(service):
    assert service.request("/healthz", token=None)[0] == 200
    for path in ("/v1/assets", "/v1/assets/a.png", "/v1/assets/nope.png"):
        for token in (None, "wrong-token-wrong-token-wrong", TOKEN + "x", ""):
            status, headers, _ = service.request(path, token=token)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (path, token)
    assert service.request("/v1/assets", token=None, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401


def test_listing_pages(service):
    status, _, body = service.request("/v1/assets?limit=2")
    page = json.loads(body)
    assert status == 200 and [r["key"] for r in page["assets"]] == ["a.png", "bad.png"]
    assert page["assets"][1]["status"] == "failed" and page["assets"][0]["bpp"] > 0
    keys = [r["key"] for r in page["assets"]]
    while page["next_after"]:
        page = json.loads(service.request(f"/v1/assets?limit=2&after={page['next_after']}")[2])
        keys += [r["key"] for r in page["assets"]]
    assert keys == sorted(["a.png", "sub/wide.png", "bad.png", "damaged.png", "crafted.png", "x y/ü.png"])
    page = json.loads(service.request("/v1/assets?prefix=sub/")[2])
    assert [r["key"] for r in page["assets"]] == ["sub/wide.png"] and page["next_after"] is None


def test_assets_committed_later_are_found(service):
    _commit(Archive(str(service.archive)), "j2-0", {"late.png": (codec.encode(photo(64, 64), rate=1), None)})
    time.sleep(1.2)  # a missing key looks for new data files at most once a second
    assert service.request("/v1/assets/late.png")[0] == 200


def test_assets_moved_by_a_compaction_are_served_at_once(service):
    """A compaction deletes the files the service's index points at: the request that meets a
    missing file refreshes the index and reads the asset from its new file."""
    from pipelines.compact import compact

    arc = Archive(str(service.archive))
    _commit(arc, "j3-0", {"m1.png": (codec.encode(photo(64, 64), rate=1), None)})
    _commit(arc, "j3-1", {"m2.png": (codec.encode(photo(64, 48), rate=1), None)})
    time.sleep(1.2)
    assert service.request("/v1/assets/m1.png?decoder=plain")[0] == 200  # the index now holds both files
    assert compact(str(service.archive), rows_per_file=1000)["rows_copied"] > 2
    assert "data/j3-1.parquet" not in arc.data_files()
    status, _, body = service.request("/v1/assets/m2.png?decoder=plain")  # not cached, its file gone
    assert status == 200, body
    assert service.request("/v1/assets/a.png?format=jpeg")[0] == 200


def test_an_asset_whose_file_was_deleted_is_not_found(service):
    """A data file removed outside a compaction (a lifecycle rule): its keys are 404, not 500."""
    arc = Archive(str(service.archive))
    _commit(arc, "j4-0", {"gone.png": (codec.encode(photo(64, 64), rate=1), None)})
    time.sleep(1.2)
    assert service.request("/v1/assets/gone.png?decoder=plain")[0] == 200
    arc.fs.rm(arc.path("data/j4-0.parquet"))
    status, _, body = service.request("/v1/assets/gone.png?decoder=plain&format=webp")  # not cached
    assert status == 404 and b"not in the archive" in body, body


def test_the_token_never_reaches_a_log(service):
    service.request("/v1/assets/a.png", token=TOKEN)
    service.request("/v1/assets/a.png", token=TOKEN + "-wrong")
    sessions = list(Path("/tmp/ray").glob(f"session_*_{service.proc.pid}"))
    assert sessions  # the service's own Ray session: its logs, every replica's
    files = [p for s in sessions for p in s.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    files += [service.output, *(service.archive.parent / "logs").glob("*")]
    assert len(files) > 5
    for p in files:
        assert TOKEN.encode() not in p.read_bytes(), p


@pytest.mark.slow  # a second service (its own Ray): about 40 s
def test_a_slow_restore_answers_504_and_still_fills_the_cache(tmp_path):
    a = Archive(str(tmp_path / "arc"))
    a.create({"preset": "taef2"})
    _commit(a, "j1-0", {"a.png": (codec.encode(photo(64, 64), rate=2), None)})
    svc = _start(tmp_path, "--request-timeout", "0.001")  # shorter than any decode
    try:
        status, _, body = svc.request("/v1/assets/a.png")
        assert status == 504 and b"took more than 0.001 s" in body, body
        deadline = time.time() + 120
        while (r := svc.request("/v1/assets/a.png"))[0] != 200 and time.time() < deadline:
            assert r[0] == 504, r
            time.sleep(0.5)
        assert r[0] == 200 and r[1]["x-resulic-cache"] == "hit"  # the timed-out decode went on, into the cache
        assert svc.request("/healthz", token=None)[0] == 200
    finally:
        _stop(svc)


def test_a_decode_pass_holds_a_bounded_number_of_pixels():
    from operators.restore_service import pixel_chunks

    assert pixel_chunks([], 10) == []
    assert pixel_chunks([3, 3, 3, 3], 10) == [[0, 1, 2], [3]]
    assert pixel_chunks([4, 50, 4, 4, 0], 10) == [[0], [1], [2, 3, 4]]  # a big one alone; order kept


def test_a_failing_refresh_leaves_the_index_answering(tmp_path, monkeypatch):
    """Storage failing under a refresh (on a miss, or in the background) is logged; lookups go on."""
    import asyncio

    from operators.restore_service import RestoreAPI, ServiceSettings

    a = Archive(str(tmp_path / "arc"))
    a.create({"preset": "taef2"})
    _commit(a, "j1-0", {"a.png": (codec.encode(photo(64, 64), rate=1), None)})
    cls = RestoreAPI.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper (whose __init__ serves)
    api = object.__new__(cls)
    cls.__init__(api, None, ServiceSettings(archive=str(tmp_path / "arc"), max_pixels=MAX_PIXELS))

    def down():
        raise OSError("the store is unreachable")

    monkeypatch.setattr(api.index, "refresh", down)
    assert asyncio.run(api._refresh(min_age_s=0)) is False  # no exception out of the handler
    assert api.index.get("a.png") is not None and not api._refreshing
