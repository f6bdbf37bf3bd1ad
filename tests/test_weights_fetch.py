import functools
import http.server
import shutil
import threading

import pytest

from codec.autoencoder import DEFAULT_WEIGHTS_DIR, TAEF2
from codec.weights_fetch import FetchError, fetch_weights


@pytest.fixture
def server(tmp_path):
    src = tmp_path / "srv"
    src.mkdir()
    for f in DEFAULT_WEIGHTS_DIR.glob("*.pth"):
        shutil.copy(f, src / f.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield src, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_fetch_over_http_then_load(server, tmp_path):
    _, url = server
    dest = tmp_path / "weights"
    paths = fetch_weights(dest, url)
    assert [p.name for p in paths] == ["taef2_encoder.pth", "taef2_decoder.pth"]
    TAEF2.from_pretrained(dest)


def test_fetch_from_file_url_and_skip_intact(server, tmp_path):
    src, _ = server
    dest = tmp_path / "w"
    fetch_weights(dest, src.as_uri())
    mtime = (dest / "taef2_encoder.pth").stat().st_mtime_ns
    fetch_weights(dest, "http://127.0.0.1:9/never-contacted/")  # intact files: nothing to download
    assert (dest / "taef2_encoder.pth").stat().st_mtime_ns == mtime


def test_corrupted_download_is_refused_and_not_left(server, tmp_path):
    src, url = server
    (src / "taef2_decoder.pth").write_bytes(b"not the weights")
    dest = tmp_path / "w"
    with pytest.raises(FetchError, match="does not match"):
        fetch_weights(dest, url)
    assert not (dest / "taef2_decoder.pth").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_unreachable_source_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="download failed"):
        fetch_weights(tmp_path, "http://127.0.0.1:9/", timeout=2)
