"""`resulic text measure` through the real CLI, on the Kodak captions."""

import json
import subprocess
import sys
from pathlib import Path

from codec.text_measure import clip_token_count, read_captions

ROOT = Path(__file__).resolve().parent.parent
KODAK_CAPTIONS = ROOT.parent / "shared" / "datasets" / "kodak" / "captions_40.json"


def test_clip_token_count_is_clip_bpe():
    assert clip_token_count("a photo of a cat") == 5
    assert clip_token_count("") == 0


def test_read_captions_accepts_json_and_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"original_caption": "a cat"}, "a dog"]))
    (tmp_path / "b.txt").write_text("a cat\n\na dog\n")
    assert read_captions(tmp_path / "a.json") == ["a cat", "a dog"]
    assert read_captions(tmp_path / "b.txt") == ["a cat", "a dog"]


def test_cli_measures_kodak_captions():
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "text", "measure", str(KODAK_CAPTIONS)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["captions"] == 24 and out["roundtrip_ok"] is True
    assert out["tokens"] > 900 and out["bits"] > 0
    assert out["bits_per_token"] < 13  # 12.03 measured; zlib spends about 27.7
    assert out["bits"] < out["zlib_bits"] / 2
