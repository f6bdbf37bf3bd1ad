"""A real (tiny) training run: cache, two steps, checkpoint, resume, export, load."""

import torch
from PIL import Image

from codec.latent_codec import LEVELS_PER_POINT, LatentCodecConfig
from codec.presets import load_latent_codec
from training.latent_codec import main


def test_train_resume_and_export(tmp_path, train_photos):
    data = train_photos
    out = tmp_path / "run"
    args = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--out", str(out), "--batch", "2",
            "--crop", "16", "--image-window", "8", "--image-loss-from", "1", "--save-every", "2", "--threads", "2"]  # fmt: skip
    main([*args, "--steps", "2"])
    assert (out / "checkpoint.pt").exists()
    main([*args, "--steps", "3"])  # resumes at step 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3  # resumed, not restarted
    model = load_latent_codec(out / "latent_codec.safetensors")
    assert model.num_levels == (LatentCodecConfig().num_rate_points - 1) * LEVELS_PER_POINT + 1
    assert Image.open(data / "a.png").size == (256, 192)


def test_extend_gains_continues_the_top_step():
    import torch

    from training.latent_codec import extend_gains

    g = torch.tensor([[0.0, 1.0], [0.5, 1.2], [1.0, 1.6]])
    out = extend_gains(g, 5)
    assert torch.equal(out[:3], g)
    assert torch.allclose(out[3:], torch.tensor([[1.5, 2.0], [2.0, 2.4]]))
    assert extend_gains(g, 3) is g
