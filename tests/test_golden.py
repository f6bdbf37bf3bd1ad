"""Archival check: a stream of every released model still decodes to the same symbols and text.

The symbols (and so the decoded latent) are exact by design; the pixels may differ in their
last bits on other hardware, so they are held to the recorded PSNR within 0.05 dB.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import codec
from codec.bitstream import Bitstream
from codec.presets import releases
from evaluation.metrics import psnr
from tests.conftest import photo
from tests.make_golden import DATA, symbols_digest

ROOT = Path(__file__).resolve().parent.parent


GOLDEN = sorted(p.stem for p in DATA.glob("golden_taef2_*.json"))


def test_every_released_model_has_a_golden_stream():
    assert {f"golden_taef2_{e['model_id']}" for e in releases("taef2")} == set(GOLDEN)


@pytest.mark.parametrize("name", GOLDEN + sorted(p.stem for p in DATA.glob("golden_scaled_taef2_*.json")))
def test_golden_stream_decodes_to_recorded_symbols_and_quality(name):
    meta = json.loads((DATA / f"{name}.json").read_text())
    stream = (DATA / f"{name}.rsl").read_bytes()
    head = Bitstream.from_bytes(stream).header
    assert head.model_id.hex() == name.rsplit("_", 1)[1] and head.scale == meta.get("scale", 1)
    assert symbols_digest(stream) == meta["symbols_sha256"]
    assert codec.read_text(stream) == meta["text"]
    out = codec.decode(stream, decoder="plain")
    assert abs(psnr(photo(200, 136, "kodim07.png"), out) - meta["psnr_db"]) < 0.05
    if "cdm_psnr_db" in meta:
        restored = codec.decode(stream, decoder="cdm")
        assert abs(psnr(photo(200, 136, "kodim07.png"), restored) - meta["cdm_psnr_db"]) < 0.05


def test_golden_symbols_in_a_fresh_single_thread_process():
    code = (
        "import torch; torch.set_num_threads(1);"
        "from tests.make_golden import DATA, symbols_digest;"
        f"print(symbols_digest((DATA / '{GOLDEN[0]}.rsl').read_bytes()))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    meta = json.loads((DATA / f"{GOLDEN[0]}.json").read_text())
    assert res.stdout.strip() == meta["symbols_sha256"], res.stderr

