"""The CDM trainer runs, checkpoints, resumes and writes loadable weights (a few steps, tiny model)."""

import json

import pytest

from codec.cdm.model import CDMDenoiser
from training.cdm import main

pytestmark = pytest.mark.timeout(600)


def test_a_few_steps_then_resume(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    from tests.conftest import photo

    photo(320, 256, "kodim03.png").save(photos / "a.png")  # a test fixture crop, not training data
    args = ["--data", f"{photos}:1.0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
            "--steps", "4", "--save-every", "2", "--image-loss-from", "2", "--image-window", "8", "--batch", "2",
            "--config", json.dumps({"block_out_channels": [32, 32], "norm_num_groups": 8})]  # fmt: skip
    main(args)
    model = CDMDenoiser.from_pretrained(tmp_path / "run" / "cdm")
    assert model.config.block_out_channels == (32, 32) and len(model.config.latent_mean) == 32
    photo(256, 256, "kodim05.png").save(photos / "b.png")  # the data grew: the run keeps its own normalisation
    main([*args, "--steps", "6"])  # the same command with more steps resumes from step 4
    ckpt = __import__("torch").load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6
    assert CDMDenoiser.from_pretrained(tmp_path / "run" / "cdm").config.latent_mean == model.config.latent_mean
    torch = __import__("torch")
    old = {k: v for k, v in ckpt.items() if k != "config"}  # a checkpoint from before configs were kept
    torch.save(old, tmp_path / "run" / "checkpoint.pt")
    main([*args, "--steps", "7"])  # the exported config.json stands in for it
    assert CDMDenoiser.from_pretrained(tmp_path / "run" / "cdm").config.latent_mean == model.config.latent_mean
    fine = [*args[: args.index("--out")], "--out", str(tmp_path / "fine"), "--steps", "1", "--lr", "0", "--batch", "2",
            "--image-window", "8", "--init-from", str(tmp_path / "run" / "cdm")]  # fmt: skip
    main(fine)  # a new run from released-style weights (one step at lr 0: it writes what it loaded)
    start, loaded = CDMDenoiser.from_pretrained(tmp_path / "run" / "cdm"), CDMDenoiser.from_pretrained(tmp_path / "fine" / "cdm")
    assert loaded.config.latent_mean == start.config.latent_mean
    assert all(__import__("torch").equal(a, b) for a, b in zip(start.unet.state_dict().values(), loaded.unet.state_dict().values()))


def test_energy_map_finds_where_the_detail_is():
    import torch

    from codec.texture import hf_energy_tensor
    from training.cdm import energy_map

    x = torch.full((1, 3, 34, 66), 0.5)
    x[..., 34:] = (torch.arange(32 * 34).reshape(34, 32) % 2).float()  # a fine pattern on the right half only
    e = energy_map(x, 16)[0, 0]
    assert e.shape == (2, 4) and torch.all(e[:, :2] == 0) and torch.all(e[:, 2:] > 1e4)
    assert torch.isclose(e.mean(), hf_energy_tensor(x)[0], rtol=1e-5)  # the map averages what the metric reports
