"""Download the TAEF2 weights from their public source, checked against pinned SHA-256 digests."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

from codec.autoencoder import DECODER_FILE, ENCODER_FILE, file_sha256

DEFAULT_BASE_URL = "https://github.com/madebyollin/taesd/raw/main/"
SHA256 = {
    ENCODER_FILE: "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    DECODER_FILE: "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
LICENSE_NOTE = "TAEF2 by Ollin Boer Bohan (madebyollin/taesd), MIT licence.\n"


class FetchError(RuntimeError):
    pass


def download(url: str, target: Path, check: Callable[[Path], str | None], timeout: float = 60) -> None:
    """``url`` to ``target`` through a temporary file beside it, kept only when ``check`` finds no fault."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        fault = check(Path(tmp))
        if fault:
            raise FetchError(f"{url}: {fault}")
        os.replace(tmp, target)
    except OSError as e:
        raise FetchError(f"{url}: download failed ({e})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_weights(dest: str | os.PathLike, base_url: str = DEFAULT_BASE_URL, force: bool = False, timeout: float = 60) -> list[Path]:
    """Fetch each file to ``dest`` (skipping those already present and intact); return their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    written = []
    for name, digest in SHA256.items():
        target = dest / name
        if target.exists() and not force and file_sha256(target) == digest:
            written.append(target)
            continue
        download(base + name, target, lambda path, d=digest: None if file_sha256(path) == d else
                 f"SHA-256 {file_sha256(path)} does not match the pinned {d}", timeout)  # fmt: skip
        written.append(target)
    (dest / "NOTICE").write_text(LICENSE_NOTE)
    return written

