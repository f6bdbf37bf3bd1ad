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
    assert model.coding is not None  # coding tables come from the file, not recomputed


def test_missing_latent_codec_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="latent codec weights not found"):
        load_preset("taef2", latent_codec_path=str(tmp_path / "x.safetensors"))


def test_every_release_still_hashes_to_its_model_id():
    from codec.presets import releases

    for entry in releases("taef2"):
        p = load_preset("taef2", model_id=entry["model_id"])
        assert p.model_id.hex() == entry["model_id"]
        assert p.autoencoder.weights_sha256 == entry["autoencoder_sha256"]
    assert load_preset("taef2").model_id.hex() == releases("taef2")[-1]["model_id"]  # the newest encodes


def test_a_stream_from_an_older_release_decodes_with_its_own_weights(tmp_path, monkeypatch):
    """A later release ships new weights; streams written before it keep decoding, bit-exactly."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import codec
    import codec.presets as presets
    from codec.bitstream import Bitstream
    from tests.conftest import photo

    old = presets.releases("taef2")[-1]
    old_stream = codec.encode(photo(64, 64), rate=2)  # written by the current (soon "old") release
    old_image = codec.decode(old_stream)
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    src = WEIGHTS_DIR / old["latent_codec"]
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(src)), str(weights / "latent_codec_taef2_v2.safetensors"), metadata={**meta, "note": "v2"})
    ae = old["autoencoder_sha256"]
    newest = codec.load_preset()  # its CDM and plain decoder, if it has them, are part of the id too
    cdm, dec = newest.cdm, newest.decoder_finetune
    new_id = presets.model_digest(ae, presets.file_sha256(weights / "latent_codec_taef2_v2.safetensors"),
                                  presets.file_sha256(weights / old["text_model"]),
                                  *([cdm.weights_sha256] if cdm else []),
                                  *([dec.weights_sha256] if dec else []))[:16]  # fmt: skip
    table = {"taef2": [old, {**old, "model_id": new_id, "latent_codec": "latent_codec_taef2_v2.safetensors"}]}
    (weights / "releases.json").write_text(json.dumps(table))
    monkeypatch.setattr(presets, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(presets, "RELEASES_FILE", weights / "releases.json")
    monkeypatch.setattr(presets, "_cache", {})
    presets._text_model.cache_clear()
    try:
        assert codec.load_preset().model_id.hex() == new_id  # new streams use the newest release
        assert Bitstream.from_bytes(codec.encode(photo(64, 64), rate=2)).header.model_id.hex() == new_id
        assert codec.decode(old_stream).tobytes() == old_image.tobytes()  # found by its model id
        s = Bitstream.from_bytes(old_stream)
        s.header.model_id = bytes(8)  # weights no release has
        with pytest.raises(codec.BitstreamError, match="no released model has that id"):
            codec.decode(s.to_bytes())
    finally:
        presets._text_model.cache_clear()


def test_every_released_file_is_package_data():
    """A wheel (not only an editable install) carries every file a released model decodes with."""
    import fnmatch
    import tomllib

    from codec.presets import releases

    patterns = tomllib.loads((WEIGHTS_DIR.parent.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["codec"]
    files = set()
    for e in releases("taef2"):
        files |= {e["latent_codec"], e["text_model"]}
        if e.get("cdm"):
            files |= {f"{e['cdm']}/config.json", f"{e['cdm']}/model.safetensors"}
        if e.get("decoder"):
            files.add(e["decoder"])
        if e.get("detail_gains"):
            files.add(e["detail_gains"])
    for f in sorted(files):
        assert (WEIGHTS_DIR / f).is_file(), f
        assert any(fnmatch.fnmatchcase(f"weights/{f}", p) and p.count("/") == f"weights/{f}".count("/") for p in patterns), f


def test_a_decoder_override_is_a_new_model_and_decodes_the_plain_path(tmp_path, monkeypatch, preset):
    """$RESULIC_DECODER swaps the plain path's decoder (for trying a fine-tune): a new model id,
    the plain decode through it, and CDM's restored latent still through TAEF2's own decoder."""
    import codec
    from codec.presets import DECODER_ENV, model_digest
    from safetensors.torch import save_file
    from tests.conftest import photo

    state = {k: v.clone() for k, v in preset.autoencoder.decoder.state_dict().items()}
    state["1.bias"] += 0.05
    save_file(state, str(tmp_path / "d.safetensors"))
    monkeypatch.setenv(DECODER_ENV, str(tmp_path / "d.safetensors"))
    p = load_preset("taef2")
    assert p is not preset and p.plain(0) is p.decoder_finetune and p.autoencoder.weights_sha256 == preset.autoencoder.weights_sha256
    assert p.model_id != preset.model_id
    assert p.detail_gains is None and p.scale_below_bpp is None  # the release's encoder rules are not its
    assert p.weights_sha256 == model_digest(*_parts_without_decoder(preset), p.decoder_finetune.weights_sha256)
    stream = codec.encode(photo(64, 64), rate=2, preset=p)
    mine = codec.decode(stream, preset=p, decoder="plain")
    from codec.api import parse

    s, _ = parse(stream, p)
    with __import__("torch").no_grad():
        z = p.latent_codec.decompress([s.latent], [s.hyper_latent], p.z_shape(64, 64), s.header.rate_level)
        from codec.images import to_image

        assert mine.tobytes() == to_image(p.decoder_finetune.decode(z)[:, :, :64, :64]).tobytes()
        assert mine.tobytes() != to_image(p.autoencoder.decode(z)[:, :, :64, :64]).tobytes()


def _parts_without_decoder(p) -> list[str]:
    from codec.autoencoder import file_sha256
    from codec.presets import WEIGHTS_DIR, release

    e = release("taef2", p.model_id.hex())
    return [p.autoencoder.weights_sha256, file_sha256(WEIGHTS_DIR / e["latent_codec"]), p.text_model.sha256,
            *([p.cdm.weights_sha256] if p.cdm else [])]  # fmt: skip


def test_the_shipped_plain_decoder_beats_taef2s_own_on_decoded_latents(cdm_preset):
    """The release's plain decoder (a fine-tune, blended per level) against TAEF2's decoder on
    the same ẑ of Kodak crops (Kodak: evaluation only, never training or calibration)."""
    import torch

    from codec.images import to_tensor
    from tests.conftest import photo
    from training.cdm import decoded_latent

    assert cdm_preset.decoder_finetune is not None and cdm_preset.decoder_blend is not None
    x = torch.cat([to_tensor(photo(256, 256, n)) for n in ("kodim05.png", "kodim21.png")])
    with torch.no_grad():
        z0 = cdm_preset.autoencoder.encode(x)
        for level in (0, 32, cdm_preset.num_levels - 1):
            z_hat = decoded_latent(cdm_preset, z0, level)
            db = lambda ae: float((-10 * (ae.decode(z_hat) - x).pow(2).mean((1, 2, 3)).log10()).mean())  # noqa: E731
            assert db(cdm_preset.plain(level)) > db(cdm_preset.autoencoder), level


def test_a_detail_gain_table_belongs_to_its_releases_own_files(cdm_preset):
    """A release's table is loaded with its own files; an override is a new model,
    measured by nobody, so it gets no table; a table of the wrong length is refused."""
    import json

    from codec.presets import detail_gain_table, release

    e = release("taef2", cdm_preset.model_id.hex())
    assert cdm_preset.detail_gains is not None and set(cdm_preset.detail_gains) == {1, 2, 4}
    for codes in cdm_preset.detail_gains.values():
        assert len(codes) == cdm_preset.num_levels and all(0 <= c <= 127 for c in codes)
    table = json.loads((WEIGHTS_DIR / e["detail_gains"]).read_text())
    assert table["model_id"] == e["model_id"] == cdm_preset.model_id.hex()
    assert detail_gain_table(e, cdm_preset.num_levels) == cdm_preset.detail_gains
    with pytest.raises(ValueError, match="levels"):
        detail_gain_table(e, cdm_preset.num_levels + 1)
