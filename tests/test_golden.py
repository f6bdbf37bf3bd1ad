"""Archival check: a stream written by an earlier build still decodes to the same symbols.

The symbols (and so the decoded latent) are exact by design; the pixels may differ in their
last bits on other hardware, so they are held to the recorded PSNR within 0.05 dB.
"""

import json
import subprocess
import sys
from pathlib import Path

import codec
from codec.metrics import psnr
from tests.conftest import photo
from tests.make_golden import DATA, symbols_digest

ROOT = Path(__file__).resolve().parent.parent


def test_golden_stream_decodes_to_recorded_symbols_and_quality():
    meta = json.loads((DATA / "golden_taef2_v1.json").read_text())
    stream = (DATA / "golden_taef2_v1.rsl").read_bytes()
    assert symbols_digest(stream) == meta["symbols_sha256"]
    assert codec.read_text(stream) == meta["text"]
    out = codec.decode(stream)
    assert abs(psnr(photo(200, 136, "kodim07.png"), out) - meta["psnr_db"]) < 0.05


def test_golden_symbols_in_a_fresh_single_thread_process():
    code = (
        "import torch; torch.set_num_threads(1);"
        "from tests.make_golden import DATA, symbols_digest;"
        "print(symbols_digest((DATA / 'golden_taef2_v1.rsl').read_bytes()))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    meta = json.loads((DATA / "golden_taef2_v1.json").read_text())
    assert res.stdout.strip() == meta["symbols_sha256"], res.stderr

