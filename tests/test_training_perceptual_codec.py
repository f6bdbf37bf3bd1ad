"""A real (tiny) run of the perceptual codec trainer on CPU: two steps, checkpoint, resume,
exports that load as a latent codec and a TAEF2 decoder."""

import json
from pathlib import Path

import torch

from codec.autoencoder import TAEF2
from codec.presets import load_latent_codec
from training.perceptual_codec import main

PERCEPTUAL = Path(__file__).resolve().parents[2] / "shared" / "weights" / "perceptual"


def test_train_resume_and_export(tmp_path, train_photos):
    data = train_photos
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--batch", "2", "--crop", "128", "--scales", "1",
            "--save-every", "100", "--log-every", "1", "--device", "cpu", "--metric-weights", str(PERCEPTUAL)]  # fmt: skip
    main([*args, "--steps", "2"])
    main([*args, "--steps", "3"])  # resumes at step 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["lpips"] > 0 and r["bpp"] > 0 and r["psnr"] > 5 for r in log)
    codec = load_latent_codec(out / "latent_codec.safetensors")
    assert codec.config.transform == "conv"
    TAEF2.from_pretrained().with_decoder(out / "decoder.safetensors")  # the same network, key for key
