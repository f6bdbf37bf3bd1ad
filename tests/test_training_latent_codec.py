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


def test_gains_at_reads_the_table_in_log_lambda_and_extends_its_end_lines():
    import math

    import pytest

    from training.latent_codec import gains_at

    lam = [1e-6, 1e-5, 1e-4]  # a decade apart
    g = torch.tensor([[0.0, 1.0], [1.0, 1.5], [3.0, 2.5]])
    assert torch.allclose(gains_at(g, lam, lam), g)
    out = gains_at(g, lam, [1e-7, math.sqrt(1e-6 * 1e-5), 1e-3])
    assert torch.allclose(out, torch.tensor([[-1.0, 0.5], [0.5, 1.25], [5.0, 3.5]]))
    with pytest.raises(ValueError, match="increasing"):
        gains_at(g, lam, [1e-5, 1e-6])


def test_a_codec_moved_to_new_lambdas_keeps_its_transforms():
    from codec.latent_codec import LatentCodec
    from training.perceptual_codec import with_lambdas

    cfg = LatentCodecConfig(transform="conv", hidden=16, y_channels=32, z_channels=8, slices=[16, 16],
                            param_hidden=16, num_rate_points=3, lambdas=[1e-6, 1e-5, 1e-4])  # fmt: skip
    codec = LatentCodec(cfg)
    moved = with_lambdas(codec, [1e-7, 1e-6, 1e-5, 1e-4])
    assert moved.config.lambdas == [1e-7, 1e-6, 1e-5, 1e-4] and moved.config.num_rate_points == 4
    assert torch.allclose(moved.log_gain[1:], codec.log_gain, atol=1e-6)
    assert torch.allclose(moved.log_gain[0], 2 * codec.log_gain[0] - codec.log_gain[1], atol=1e-6)
    own = dict(codec.named_parameters())
    assert all(torch.equal(v, own[k]) for k, v in moved.named_parameters() if k != "log_gain")


def test_exporting_leaves_the_model_being_trained_as_it_was(tmp_path):
    """The export fits quantiles and rounds to float16 on a copy: a run's weights do not depend on
    --save-every, and a resumed run goes on from what the uninterrupted one holds."""
    from codec.latent_codec import LatentCodec
    from training.latent_codec import save_weights

    cfg = LatentCodecConfig(transform="conv", hidden=16, y_channels=32, z_channels=8, slices=[16, 16],
                            param_hidden=16, num_rate_points=3, lambdas=[1e-6, 1e-5, 1e-4])  # fmt: skip
    model = LatentCodec(cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_weights(model, tmp_path / "lc.safetensors", {"step": "1"})
    after = model.state_dict()
    assert model.training and all(torch.equal(before[k], after[k]) for k in before)
    assert load_latent_codec(tmp_path / "lc.safetensors").config.lambdas == cfg.lambdas
    assert [p.name for p in tmp_path.iterdir()] == ["lc.safetensors"]  # written whole, no temporary left
