"""A real (tiny) run of the perceptual CDM trainer on CPU against the current release: two steps,
checkpoint, resume, an export that loads as a CDM decoding through the release's own decoder."""

import json
from pathlib import Path

import pytest
import torch

from codec.cdm.model import CDMDenoiser
from training.cdm_perceptual import main

PERCEPTUAL = Path(__file__).resolve().parents[2] / "shared" / "weights" / "perceptual"


def test_train_resume_and_export(tmp_path, train_photos):
    out = tmp_path / "run"
    args = ["--data", str(train_photos), "--out", str(out), "--batch", "1", "--crop", "128", "--scales", "1",
            "--save-every", "100", "--log-every", "1", "--device", "cpu", "--metric-weights", str(PERCEPTUAL),
            "--adversarial-weight", "0.001", "--config", '{"block_out_channels": [32, 32], "norm_num_groups": 8}']  # fmt: skip
    main([*args, "--steps", "2"])
    main([*args, "--steps", "3"])  # resumes at step 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and "disc" in ckpt
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["lpips"] > 0 and r["psnr"] > 5 and r["adv"] > 0 and r["d_loss"] > 0 for r in log)
    # the UNet's last convolution starts at zero: the first step decodes exactly as the plain decoder
    assert log[0]["psnr"] == log[0]["psnr_plain"] and log[0]["lpips"] == log[0]["lpips_plain"]
    cdm = CDMDenoiser.from_pretrained(out / "cdm")
    assert cdm.config.decoder == "plain" and cdm.config.detail_sigma is None and cdm.config.block_out_channels == (32, 32)
    assert any(p.abs().sum() > 0 for p in cdm.unet.conv_out.parameters())  # trained away from zero
    assert len(cdm.config.latent_mean) == 32 and cdm.config.num_levels == 73


def test_a_model_without_its_own_decoder_is_refused(tmp_path, train_photos):
    with pytest.raises(SystemExit, match="no decoder of its own"):
        main(["--model", "74603714a764be10", "--data", str(train_photos), "--out", str(tmp_path / "run"),
              "--crop", "128", "--steps", "1", "--metric-weights", str(PERCEPTUAL)])  # fmt: skip


def test_a_resumed_run_is_the_uninterrupted_run(tmp_path, train_photos):
    """Crops, rate levels and noise come from generators whose states the checkpoint keeps: step 2
    after a resume at step 1 is step 2 of a run that never stopped (it replayed step 1's draws)."""
    args = ["--data", str(train_photos), "--batch", "1", "--crop", "128", "--scales", "1", "--save-every", "100",
            "--log-every", "1", "--device", "cpu", "--metric-weights", str(PERCEPTUAL),
            "--config", '{"block_out_channels": [32, 32], "norm_num_groups": 8}']  # fmt: skip
    main([*args, "--out", str(tmp_path / "whole"), "--steps", "2"])
    main([*args, "--out", str(tmp_path / "cut"), "--steps", "1"])
    main([*args, "--out", str(tmp_path / "cut"), "--steps", "2"])
    logs = [[json.loads(line) for line in (tmp_path / d / "train.log").read_text().splitlines()] for d in ("whole", "cut")]
    drop = lambda r: {k: v for k, v in r.items() if k != "sec"}  # noqa: E731
    assert [drop(r) for r in logs[0]] == [drop(r) for r in logs[1]]
    assert logs[0][0]["lpips"] != logs[0][1]["lpips"]  # two different steps, not one twice
