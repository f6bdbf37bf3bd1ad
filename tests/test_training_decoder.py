"""The decoder fine-tune runs, resumes, and writes a decoder that the preset loads and that fits
decoded latents better than TAEF2's own decoder does."""

from pathlib import Path

import pytest
import torch

from tests.conftest import photo
from training.cdm import decoded_latent
from training.decoder import main

pytestmark = pytest.mark.timeout(600)
PERCEPTUAL = Path(__file__).resolve().parents[2] / "shared" / "weights" / "perceptual"


def run_args(tmp_path: Path, side: int, source: str) -> list[str]:
    """Data (one test fixture crop, not training data), cache and output flags of a tiny run."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(side, side, source).save(photos / "a.png")
    return ["--data", f"{photos}:1.0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]


def test_a_few_steps_fit_decoded_latents_better_then_resume(tmp_path, preset):
    run = tmp_path / "run"
    args = [*run_args(tmp_path, 256, "kodim03.png"), "--steps", "8",
            "--save-every", "4", "--batch", "2", "--lr", "1e-4", "--warmup", "1"]  # fmt: skip
    main(args)
    tuned = preset.autoencoder.with_decoder(run / "decoder.safetensors")
    assert tuned.encoder is preset.autoencoder.encoder  # shared, not copied
    from safetensors.torch import load_file

    z0 = load_file(str(next((tmp_path / "cache").glob("*.safetensors"))))
    img = z0["image"].permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        for level in (0, preset.num_levels // 2):
            z_hat = decoded_latent(preset, z0["latent"][None], level)
            before = (preset.autoencoder.decode(z_hat) - img)[..., 16:-16, 16:-16].pow(2).mean()
            after = (tuned.decode(z_hat) - img)[..., 16:-16, 16:-16].pow(2).mean()
            assert after < before, (level, float(before), float(after))
    main([*args, "--steps", "9"])  # the same command with more steps resumes from step 8
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 9


def test_crop_must_fit_the_hyperprior_stride(tmp_path):
    with pytest.raises(SystemExit):
        main(["--crop", "24", "--out", str(tmp_path)])


def test_adversarial_fine_tune_of_the_release_decoder_resumes_with_its_discriminator(tmp_path, preset):
    run = tmp_path / "run"
    args = [*run_args(tmp_path, 192, "kodim05.png"), "--crop", "16",
            "--save-every", "10", "--batch", "2", "--warmup", "1", "--init", "release", "--lpips-weight", "0.01",
            "--adversarial-weight", "0.001", "--metric-weights", str(PERCEPTUAL)]  # fmt: skip
    main([*args, "--steps", "2"])
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2 and "disc" in first and "disc_opt" in first
    start = preset.decoder_finetune.decoder.state_dict()
    moved = [k for k, v in first["decoder"].items() if not torch.equal(v, start[k])]
    assert moved, "two steps from the release's decoder changed nothing"
    main([*args, "--steps", "3"])  # resumes generator and discriminator at step 2
    second = torch.load(run / "checkpoint.pt", weights_only=True)
    assert second["step"] == 3
    assert any(not torch.equal(v, first["disc"][k]) for k, v in second["disc"].items())
    preset.autoencoder.with_decoder(run / "decoder.safetensors")  # the same network, key for key


def test_init_release_needs_a_release_with_its_own_decoder(tmp_path):
    with pytest.raises(SystemExit):
        main(["--init", "release", "--model-id", "75b3a217d25759b2", "--out", str(tmp_path)])
