"""The decoder calibration's rule (each level's best blend, interpolated) and a real run whose
blend the preset then uses."""

import torch

from training.decoder_calibrate import blend_table, main


def test_blend_table_takes_each_levels_best_and_interpolates():
    psnr = [[15.0, 15.4, 15.3], [22.0, 21.9, 21.5]]  # level 0: 0.5 is best; level 4: 0
    assert blend_table([0, 4], [0.0, 0.5, 1.0], psnr, 5) == [0.5, 0.375, 0.25, 0.125, 0.0]


def test_calibration_writes_a_blend_the_preset_uses(tmp_path, monkeypatch, preset):
    from safetensors.torch import load_file, save_file

    from codec.presets import DECODER_ENV, decoder_blend, load_preset
    from tests.conftest import photo

    photos = tmp_path / "held"
    photos.mkdir()
    photo(256, 128, "kodim05.png").save(photos / "b.png")
    state = {k: v.clone() for k, v in preset.autoencoder.decoder.state_dict().items()}
    state["1.bias"] += 0.3  # a "fine-tune" that only hurts: the calibration must keep TAEF2's decoder
    save_file(state, str(tmp_path / "d.safetensors"), metadata={"step": "1"})
    out = tmp_path / "cal.safetensors"
    main([str(tmp_path / "d.safetensors"), str(out), "--data", f"{photos}:1.0", "--cache", str(tmp_path / "c"),
          "--crop", "16", "16", "--every", "100", "--grid", "0", "1"])  # fmt: skip
    blend = decoder_blend(out)
    assert blend == (0.0,) * preset.num_levels
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(out)).values(), load_file(str(tmp_path / "d.safetensors")).values()))
    monkeypatch.setenv(DECODER_ENV, str(out))
    p = load_preset("taef2")
    assert p.decoder_blend == blend and p.plain(3) is p.autoencoder  # blend 0: TAEF2's own decoder
