import pytest

from codec.presets import load_latent_codec, load_preset, WEIGHTS_DIR


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown preset"):
        load_preset("nope")


def test_preset_is_cached_and_identified(preset):
    assert load_preset("taef2") is preset
    assert len(preset.model_id) == 8 and preset.num_levels >= 6 * 8


def test_shipped_weights_are_small_and_frozen():
    path = WEIGHTS_DIR / "latent_codec_taef2.safetensors"
    assert path.stat().st_size < 16 * 2**20
    model = load_latent_codec(path)
    assert model._fixed is not None  # coding tables come from the file, not recomputed


def test_missing_latent_codec_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="latent codec weights not found"):
        load_preset("taef2", latent_codec_path=str(tmp_path / "x.safetensors"))
