"""The decoder fine-tune runs, resumes, and writes a decoder that the preset loads and that fits
decoded latents better than TAEF2's own decoder does."""

import pytest
import torch

from codec.train_cdm import decoded_latent
from codec.train_decoder import main

pytestmark = pytest.mark.timeout(600)


def test_a_few_steps_fit_decoded_latents_better_then_resume(tmp_path, preset):
    from tests.conftest import photo

    photos = tmp_path / "photos"
    photos.mkdir()
    photo(256, 256, "kodim03.png").save(photos / "a.png")  # a test fixture crop, not training data
    run = tmp_path / "run"
    args = ["--data", f"{photos}:1.0", "--cache", str(tmp_path / "cache"), "--out", str(run), "--steps", "8",
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


def test_blend_table_takes_each_levels_best_and_interpolates():
    from codec.train_decoder import blend_table

    psnr = [[15.0, 15.4, 15.3], [22.0, 21.9, 21.5]]  # level 0: 0.5 is best; level 4: 0
    assert blend_table([0, 4], [0.0, 0.5, 1.0], psnr, 5) == [0.5, 0.375, 0.25, 0.125, 0.0]


def test_calibration_writes_a_blend_the_preset_uses(tmp_path, monkeypatch, preset):
    from safetensors.torch import load_file, save_file

    from codec.presets import DECODER_ENV, decoder_blend, load_preset
    from codec.train_decoder import calibrate_main
    from tests.conftest import photo

    photos = tmp_path / "held"
    photos.mkdir()
    photo(256, 128, "kodim05.png").save(photos / "b.png")
    state = {k: v.clone() for k, v in preset.autoencoder.decoder.state_dict().items()}
    state["1.bias"] += 0.3  # a "fine-tune" that only hurts: the calibration must keep TAEF2's decoder
    save_file(state, str(tmp_path / "d.safetensors"), metadata={"step": "1"})
    out = tmp_path / "cal.safetensors"
    calibrate_main([str(tmp_path / "d.safetensors"), str(out), "--data", f"{photos}:1.0", "--cache", str(tmp_path / "c"),
                    "--crop", "16", "16", "--every", "100", "--grid", "0", "1"])  # fmt: skip
    blend = decoder_blend(out)
    assert blend == (0.0,) * preset.num_levels
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(out)).values(), load_file(str(tmp_path / "d.safetensors")).values()))
    monkeypatch.setenv(DECODER_ENV, str(out))
    p = load_preset("taef2")
    assert p.decoder_blend == blend and p.plain(3) is p.autoencoder  # blend 0: TAEF2's own decoder
