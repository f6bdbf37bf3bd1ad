"""Both sd21 trainers with Ray Train on the local Ray: tiny components and a few training photos
(in a folder, and on S3), a few steps each; the loss on a fixed batch falls, checkpoints (in a
folder, and on S3) hold what the preset loads, and a rerun with more steps resumes where the
last one stopped."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import codec
from codec.presets import load_preset
from codec.sd21.preset import CONTROLNET_ENV, SD_MODEL_ENV
from conftest import ROOT, photo
from tests.tiny_sd21 import make_tiny_sd21
from training import sd21_codec, sd21_controlnet

pytestmark = pytest.mark.timeout(900)
TINY_CODEC = '{"hidden": 16, "y_channels": 16, "z_channels": 8, "slices": [8, 8]}'


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("sd21train")
    photos = root / "photos"
    photos.mkdir()
    for i, f in enumerate(sorted((ROOT.parent / "shared" / "datasets" / "photos-train").glob("*.png"))[:4]):
        im = Image.open(f).convert("RGB")
        im.thumbnail((160, 160))
        im.save(photos / f"p{i}.png")
    (root / "captions.json").write_text(json.dumps({"p0.png": "a red door", "p1.png": "blue sky"}))
    return root, photos, make_tiny_sd21(root / "tiny")


def _common(root, photos, parts, steps: int) -> list[str]:
    return ["--sd-model", str(parts["sd"]), "--data", str(photos), "--storage-path", str(root / "runs"),
            "--device", "cpu", "--steps", str(steps), "--save-every", str(steps // 2 if steps > 2 else 1),
            "--batch", "2", "--crop", "128", "--lr", "1e-3"]  # fmt: skip


def test_codec_trains_on_object_storage_checkpoints_and_resumes(setup, s3_server, capsys, monkeypatch):
    """Ray Data reads the photos from S3 and Ray Train writes its checkpoints there (a real S3 API
    server on loopback); the rerun resumes from the checkpoint in the bucket."""
    import uuid

    import s3fs

    from training.ray_train import local_copy

    root, photos, parts = setup
    fs = s3fs.S3FileSystem()
    bucket = f"train-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    for p in photos.glob("*.png"):
        fs.put(str(p), f"{bucket}/photos/{p.name}")
    args = ["--sd-model", str(parts["sd"]), "--data", f"s3://{bucket}/photos", "--storage-path", f"s3://{bucket}/runs",
            "--device", "cpu", "--save-every", "4", "--batch", "2", "--crop", "128", "--lr", "1e-3",
            "--codec-config", TINY_CODEC]  # fmt: skip
    sd21_codec.main(args + ["--steps", "8"])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    assert first["step"] == 8 and first["started_at"] == 0
    assert first["probe_loss"] < first["probe_loss_at_start"]  # it learns
    sd21_codec.main(args + ["--steps", "10"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["metrics"]["started_at"] == 8 and again["metrics"]["step"] == 10  # resumed, not restarted
    checkpoint = again["checkpoint"]
    assert checkpoint.startswith(f"{bucket}/runs/sd21-codec/checkpoint_")
    assert len(fs.glob(f"{bucket}/runs/sd21-codec/checkpoint_2*")) == 2  # the newest two kept
    # the exported file is what the preset takes
    monkeypatch.setenv(SD_MODEL_ENV, str(parts["sd"]))
    monkeypatch.setenv(CONTROLNET_ENV, str(parts["controlnet"]))
    monkeypatch.setenv("RESULIC_LATENT_CODEC", str(local_copy(f"s3://{checkpoint}/latent_codec.safetensors")))
    p = load_preset("sd21")
    assert codec.decode(codec.encode(photo(64, 64), rate=2, preset=p)).size == (64, 64)


@pytest.mark.slow  # about 30 s; the sd21 trainer's default check: test_codec_trains_on_object_storage_checkpoints_and_resumes
def test_controlnet_trains_checkpoints_and_resumes(setup, capsys, monkeypatch):
    root, photos, parts = setup
    args = _common(root, photos, parts, 6) + ["--latent-codec", str(parts["latent_codec"]), "--size-ratio", "0.25",
                                              "--captions", str(root / "captions.json")]  # fmt: skip
    sd21_controlnet.main(args)
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    assert first["step"] == 6 and first["probe_loss"] < first["probe_loss_at_start"]
    sd21_controlnet.main([a if a != "6" else "8" for a in args])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["metrics"]["started_at"] == 6 and again["metrics"]["step"] == 8
    monkeypatch.setenv(SD_MODEL_ENV, str(parts["sd"]))
    monkeypatch.setenv(CONTROLNET_ENV, f"{again['checkpoint']}/controlnet")  # a diffusers adapter folder
    monkeypatch.setenv("RESULIC_LATENT_CODEC", str(parts["latent_codec"]))
    p = load_preset("sd21")
    assert codec.decode(codec.encode(photo(64, 64), rate=2, preset=p, text="a red door")).size == (64, 64)

