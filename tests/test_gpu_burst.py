"""infra/gpu_burst: what a staged burst sends, holds out and brings back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "infra" / "gpu_burst"))

import stage  # noqa: E402

SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "datasets" / "photos-train"
RELEASES = json.loads((ROOT / "codec/weights/releases.json").read_text())["taef2"]
NEWEST = RELEASES[-1]


def test_offload_keeps_exactly_what_the_release_reads_and_fits_the_limit():
    tracked = stage.git_lines("ls-files")
    moved = set(stage.offload_plan(tracked, RELEASES, NEWEST["model_id"]))
    weights = {p.removeprefix("codec/weights/") for p in tracked if p.startswith("codec/weights/")}
    for f in stage.release_files(NEWEST):  # the fine-tuned release's own files stay
        assert any(w == f or w.startswith(f + "/") for w in weights)
        assert not any(m == "codec/weights/" + f for m in moved)
    assert "codec/weights/latent_codec_taef2.safetensors" in moved  # an older release's
    assert "codec/weights/cdm_taef2_v2/model.safetensors" in moved  # a folder an older release names
    assert "codec/weights/releases.json" not in moved and not any(m.endswith(".py") for m in moved)
    left = sum((ROOT / p).stat().st_size for p in tracked if p not in moved)
    assert left < stage.LIMIT - 24 * 2**20  # room for the wheels, TAEF2, LPIPS and photos


def test_offload_refuses_an_unknown_release():
    with pytest.raises(SystemExit, match="no release"):
        stage.offload_plan([], RELEASES, "0" * 16)


def test_photos_hold_out_the_scored_ones_and_stop_at_the_budget(tmp_path):
    photos = stage.training_photos([PHOTOS], held_out=5)
    every = stage.list_images(PHOTOS)
    assert photos == every[:-5]
    count, used = stage.stage_photos(photos, tmp_path, long_side=128, budget=40_000)
    files = sorted(tmp_path.iterdir())
    assert 0 < count == len(files) < len(photos)  # the budget ended it
    assert used == sum(f.stat().st_size for f in files) <= 40_000
    from PIL import Image

    assert max(Image.open(files[0]).size) == 128


def test_collect_rebuilds_parts_and_refuses_a_corrupt_one(tmp_path):
    src = tmp_path / "out"
    src.mkdir()
    blob, dec = os.urandom(3000), os.urandom(500)
    (src / "latent_codec.safetensors.part-00").write_bytes(blob[:2000])
    (src / "latent_codec.safetensors.part-01").write_bytes(blob[2000:])
    (src / "decoder.safetensors").write_bytes(dec)
    sums = [f"{hashlib.sha256(b).hexdigest()}  {n}" for b, n in ((blob, "latent_codec.safetensors"), (dec, "decoder.safetensors"))]
    (src / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    stage.main(["collect", str(src), str(tmp_path / "a")])
    assert (tmp_path / "a/latent_codec.safetensors").read_bytes() == blob
    (src / "latent_codec.safetensors.part-01").write_bytes(blob[2000:-1] + b"x")
    with pytest.raises(SystemExit, match="SHA-256 mismatch"):
        stage.main(["collect", str(src), str(tmp_path / "b")])


@pytest.mark.slow  # a few CPU training steps from the release (about 40 s on 2 cores)
def test_collect_keeps_a_cdm_folder(tmp_path):
    src = tmp_path / "out"
    (src / "cdm").mkdir(parents=True)
    files = {"cdm/config.json": b"{}", "cdm/model.safetensors": os.urandom(700), "args.json": b"{}"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    (src / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files.items()))
    stage.main(["collect", str(src), str(tmp_path / "a")])
    assert all((tmp_path / "a" / n).read_bytes() == b for n, b in files.items())
    assert not (tmp_path / "a/latent_codec.safetensors").exists()


def run_burst(tmp_path: Path, metric_weights: str, photos: int, **env: str) -> None:
    """burst.sh in a checkout of symlinks with a staged .gpu/ of ``photos`` photos, on the CPU."""
    for pkg in ("codec", "training", "evaluation", "pipelines", "infra"):
        (tmp_path / pkg).symlink_to(ROOT / pkg)
    gpu = tmp_path / ".gpu"
    stage.stage_photos(stage.training_photos([PHOTOS], held_out=0)[:photos], gpu / "photos", 384, 10**8)
    shutil.copytree(SHARED / "weights/taef2", gpu / "taef2")
    (gpu / "metrics").mkdir()
    shutil.copy2(Path(metric_weights) / "lpips_alex.safetensors", gpu / "metrics")
    (gpu / "STAGED.json").write_text(json.dumps({"model_id": NEWEST["model_id"], "photos": photos, "long_side": 384}))
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "BATCH": "1", "LOG_EVERY": "1",
           "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), **env}  # fmt: skip
    res = subprocess.run(["bash", "infra/gpu_burst/burst.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.mark.slow  # the whole codec burst on the CPU: about 90 s on 2 cores (collect is tested by default)
def test_burst_runs_on_cpu_and_its_export_loads(tmp_path, metric_weights):
    run_burst(tmp_path, metric_weights, 4, MINUTES="0.02")
    out = tmp_path / "out"
    assert len(list(out.glob("latent_codec.safetensors.part-*"))) == 2  # 27 MB in parts of 15 MiB
    assert len(list(out.iterdir())) <= 8  # what the device tool returns
    stage.main(["collect", str(out), str(tmp_path / "export")])
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decoder_compare import with_model

    from codec.presets import load_preset

    model = with_model(load_preset("taef2"), str(tmp_path / "export"))
    assert model.latent_codec.num_levels == load_preset("taef2").latent_codec.num_levels
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["step"] == 1


@pytest.mark.slow  # a CDM training step through the release's decoder (about 20 s on 2 cores)
def test_a_cdm_burst_runs_on_cpu_and_its_export_loads(tmp_path, metric_weights):
    run_burst(tmp_path, metric_weights, 2, MINUTES="0.01", TRAINER="cdm",
              EXTRA='--config {"block_out_channels":[32,32],"norm_num_groups":8}')
    stage.main(["collect", str(tmp_path / "out"), str(tmp_path / "export")])
    from codec.cdm.model import CDMDenoiser

    cdm = CDMDenoiser.from_pretrained(tmp_path / "export" / "cdm")
    assert cdm.config.decoder == "plain" and cdm.config.block_out_channels == (32, 32)
    assert json.loads((tmp_path / "export" / "args.json").read_text())["model"] == NEWEST["model_id"]


def test_stage_then_restore_on_a_clone(tmp_path, metric_weights):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(clone)], check=True)
    (clone / "infra/gpu_burst").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "infra/gpu_burst/stage.py", clone / "infra/gpu_burst/stage.py")  # this checkout's version
    shutil.copy2(ROOT / ".gitignore", clone / ".gitignore")
    script = [sys.executable, "infra/gpu_burst/stage.py"]

    def git_status() -> str:
        return subprocess.run(["git", "status", "--short"], cwd=clone, capture_output=True, text=True).stdout

    before = git_status()
    res = subprocess.run([*script, "stage", "--no-wheels", "--data", str(PHOTOS), "--held-out", "3", "--long-side", "128",
                          "--taef2", str(SHARED / "weights/taef2"), "--metric-weights", str(metric_weights)],
                         cwd=clone, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "staged 36 of 36 photos" in res.stdout  # 39 less the 3 held out, all within the room left
    staged = json.loads((clone / ".gpu/STAGED.json").read_text())
    assert staged == {"model_id": NEWEST["model_id"], "photos": 36, "long_side": 128}
    assert not (clone / "codec/weights/latent_codec_taef2.safetensors").exists()
    files = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True).stdout.split()
    travels = sum((clone / f).stat().st_size for f in files if (clone / f).exists())
    travels += sum(p.stat().st_size for p in (clone / ".gpu").rglob("*") if p.is_file())
    assert travels <= stage.LIMIT
    assert ".gpu" not in git_status() and ".offload" not in git_status()  # both ignored
    again = subprocess.run([*script, "stage", "--no-wheels"], cwd=clone, capture_output=True, text=True)
    assert again.returncode != 0 and "restore" in again.stderr  # never a second offload over the first
    res = subprocess.run([*script, "restore"], cwd=clone, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert git_status() == before and not (clone / ".offload").exists()
