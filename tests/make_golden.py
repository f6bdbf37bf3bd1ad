"""Write the golden stream that test_golden.py decodes: ``python -m tests.make_golden``.

Run it once per released model (a new entry in ``codec/weights/releases.json``): it writes
``golden_taef2_<model id>.rsl`` and ``.json`` for the newest model and leaves the older ones,
which must keep decoding; never run it to make a failing test pass. ``--scaled`` writes
``golden_scaled_taef2_<model id>.*`` instead: a stream coded at half size (the head's scale
field and the pinned upsampler), made once, when that field came in.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import codec
from codec.api import parse
from evaluation.metrics import psnr
from tests.conftest import photo

DATA = Path(__file__).resolve().parent / "data"
TEXT = "Red and pink flowers below a window with weathered white shutters."


def symbols_digest(stream: bytes) -> str:
    s, p = parse(stream)  # the stream's own model's weights
    h = s.header
    y_hat = p.latent_codec.decompress_symbols([s.latent], [s.hyper_latent], p.z_shape(*h.coded_size), h.rate_level)
    return hashlib.sha256(y_hat.long().numpy().tobytes()).hexdigest()


def main() -> None:
    scaled = "--scaled" in sys.argv[1:]
    img = photo(200, 136, "kodim07.png")
    stream = codec.encode(img, rate=5, text=TEXT, scale=2 if scaled else 1)
    name = f"golden_{'scaled_' if scaled else ''}taef2_{parse(stream)[0].header.model_id.hex()}"
    (DATA / f"{name}.rsl").write_bytes(stream)
    out = codec.decode(stream, decoder="plain")
    meta = {
        "source": "kodim07.png crop (200, 150)-(400, 286) via tests.conftest.photo", "rate": 5, "text": TEXT,
        "scale": 2 if scaled else 1,
        "symbols_sha256": symbols_digest(stream), "psnr_db": round(psnr(img, out), 3),
        "stream_sha256": hashlib.sha256(stream).hexdigest(),
    }  # fmt: skip
    if parse(stream)[1].cdm is not None:  # a model with a CDM: its restoration is held to its PSNR too
        meta["cdm_psnr_db"] = round(psnr(img, codec.decode(stream, decoder="cdm")), 3)
    (DATA / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(meta)


if __name__ == "__main__":
    main()
