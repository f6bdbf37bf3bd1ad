import numpy as np
import pytest
import torch
from PIL import Image

import codec
from codec.bitstream import Bitstream
from codec.images import to_tensor
from tests.conftest import photo, png_bytes, psnr_arrays, torch_threads


def _kinds() -> dict[str, bytes]:
    base = photo(70, 45)
    arr16 = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 8
    return {
        "rgb": png_bytes(base), "gray": png_bytes(base.convert("L")), "rgba": png_bytes(base.convert("RGBA")),
        "palette": png_bytes(base.convert("P")), "cmyk": png_bytes(base.convert("CMYK"), format="JPEG"),
        "16bit": png_bytes(Image.fromarray(arr16)), "exif": png_bytes(base, format="JPEG", exif=exif.tobytes()),
        "1x1": png_bytes(photo(1, 1)), "odd": png_bytes(photo(67, 3)), "tall": png_bytes(photo(5, 131)),
    }  # fmt: skip


@pytest.mark.parametrize("kind", list(_kinds()))
def test_every_input_kind_roundtrips_at_its_size(preset, kind):
    data = _kinds()[kind]
    original = codec.images.load_image(data)
    stream = codec.encode(data, rate=7, preset=preset)
    out = codec.decode(stream, preset=preset)
    assert out.mode == "RGB" and out.size == original.size
    meta = codec.info(stream)
    assert (meta["width"], meta["height"]) == original.size


def test_quality_rises_with_rate(preset):
    img = photo(192, 128)
    results = []
    for rate in (0, 7):
        stream = codec.encode(img, rate=rate, preset=preset)
        results.append((len(stream), psnr_arrays(img, codec.decode(stream, preset=preset))))
    (small, low_q), (big, high_q) = results
    assert small < big and low_q < high_q and high_q > 18


def test_target_bpp_picks_the_highest_rate_that_fits(preset):
    img = photo(128, 128)
    low, high = codec.encode(img, rate=0, preset=preset), codec.encode(img, rate=7, preset=preset)
    bpp = lambda s: len(s) * 8 / (128 * 128)  # noqa: E731
    target = (bpp(low) + bpp(high)) / 2
    got = codec.encode(img, target_bpp=target, preset=preset)
    assert bpp(got) <= target
    assert codec.info(got)["rate_level"] > 0
    # an unreachable target gives the lowest rate rather than failing
    assert codec.info(codec.encode(img, target_bpp=1e-6, preset=preset))["rate_level"] == 0


def test_rate_out_of_range_and_both_rate_kinds():
    with pytest.raises(ValueError, match="outside"):
        codec.encode(photo(8, 8), rate=99)
    with pytest.raises(ValueError, match="either"):
        codec.encode(photo(8, 8), rate=1, target_bpp=0.1)


def _restamp(stream: bytes, **changes) -> bytes:
    s = Bitstream.from_bytes(stream)
    for k, v in changes.items():
        setattr(s.header, k, v)
    return s.to_bytes()


def test_foreign_and_damaged_streams_are_refused(preset):
    stream = codec.encode(photo(64, 64), rate=3, preset=preset)
    with pytest.raises(codec.BitstreamError, match="weights"):
        codec.decode(_restamp(stream, model_id=b"\0" * 8), preset=preset)
    with pytest.raises(codec.BitstreamError, match="does not have"):
        codec.decode(_restamp(stream, preset="sd21-future"))
    with pytest.raises(codec.BitstreamError, match="truncated"):
        codec.decode(stream[:-3], preset=preset)
    bad = bytearray(stream)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(codec.BitstreamError, match="corrupted"):
        codec.decode(bytes(bad), preset=preset)


def _symbols(preset, streams: list[bytes]) -> torch.Tensor:
    parsed = [Bitstream.from_bytes(s) for s in streams]
    h = parsed[0].header
    return preset.latent_codec.decompress_symbols(
        [p.latent for p in parsed], [p.hyper_latent for p in parsed], preset.z_shape(h.width, h.height),
        h.rate_level,
    )


def test_decoding_is_exact_across_threads_and_batches(preset):
    images = [photo(128, 64, f"kodim0{i}.png") for i in (1, 2, 3, 4)]
    streams = codec.encode_batch(images, rate=4, preset=preset)
    with torch_threads(1):
        one_thread = _symbols(preset, streams)
    with torch_threads(2):
        two_threads = _symbols(preset, streams)
    singles = torch.cat([_symbols(preset, [s]) for s in streams])
    reordered = _symbols(preset, streams[::-1]).flip(0)
    assert torch.equal(one_thread, two_threads)
    assert torch.equal(one_thread, singles)
    assert torch.equal(one_thread, reordered)
    # streams encoded one by one decode as well as those encoded in a batch
    for img, batched in zip(images, streams):
        alone = codec.encode(img, rate=4, preset=preset)
        assert abs(len(alone) - len(batched)) <= 2
        assert codec.decode(alone, preset=preset).size == img.size


def test_batch_decode_equals_single_decode(preset):
    images = [photo(64, 64, f"kodim0{i}.png") for i in (5, 6)] + [photo(40, 24)]
    streams = codec.encode_batch(images[:2], rate=2, preset=preset) + [codec.encode(images[2], rate=5, preset=preset)]
    batch = codec.decode_batch(streams, preset=preset)
    singles = [codec.decode(s, preset=preset) for s in streams]
    for a, b in zip(batch, singles):
        assert a.size == b.size
        assert psnr_arrays(a, b) > 40  # the symbols are exact; the float synthesis may differ in the last bits


def test_info_describes_the_stream(preset):
    stream = codec.encode(photo(96, 64), rate=2.5, preset=preset)
    meta = codec.info(stream)
    for key in ("width", "height", "preset", "rate", "bytes", "bpp", "sections"):
        assert key in meta
    assert meta["rate"] == 2.5 and meta["bytes"] == len(stream) and meta["preset"] == "taef2"
    assert set(meta["sections"]) >= {"head", "hyper_latent", "latent"}
    assert sum(meta["sections"].values()) == len(stream)
    assert meta["model_id"] == preset.model_id.hex()


def test_accepts_pil_images_of_any_mode(preset):
    for mode in ("L", "CMYK", "RGBA", "I;16"):
        img = photo(32, 24).convert(mode)
        assert codec.decode(codec.encode(img, preset=preset), preset=preset).size == (32, 24), mode
    assert to_tensor(codec.decode(codec.encode(photo(32, 32), preset=preset), preset=preset)).shape == (1, 3, 32, 32)


def test_same_input_same_stream(preset):
    img = photo(96, 96, "kodim09.png")
    assert codec.encode(img, rate=3, preset=preset) == codec.encode(img, rate=3, preset=preset)


def test_settings_and_keywords_are_the_same_choices(preset):
    """``settings=EncodeSettings(...)`` and the keywords of its fields encode alike; a call gives one or the other."""
    img = photo(64, 48)
    settings = codec.EncodeSettings(rate=2, detail_gain="search")
    assert codec.encode(img, settings=settings, preset=preset) == codec.encode(img, rate=2, preset=preset)
    assert codec.encode_batch([img], settings=settings, preset=preset) == codec.encode_batch([img], rate=2, preset=preset)
    with pytest.raises(ValueError, match="not both"):
        codec.encode(img, settings=settings, rate=3, preset=preset)
    with pytest.raises(ValueError, match="one image"):
        codec.encode_batch([img], settings=codec.EncodeSettings(rate=2, pfo_steps=2), preset=preset)


def test_detail_gain_modes(cdm_preset, monkeypatch):
    """search (the default) decodes; the table takes the release's code (no decode at encode);
    a number is fixed. The modes change nothing but the head's detail gain."""
    import codec.gain_choice as gain_choice
    from codec.cdm.detail import gain_of

    img = photo(96, 64)
    level = 2 * 8
    table = codec.encode(img, rate=2, preset=cdm_preset, detail_gain="table")
    head = Bitstream.from_bytes(table).header
    assert head.detail_gain == cdm_preset.detail_gains[head.scale][level]
    fixed = codec.encode(img, rate=2, preset=cdm_preset, detail_gain=gain_of(head.detail_gain))
    assert fixed == table
    searched = Bitstream.from_bytes(codec.encode(img, rate=2, preset=cdm_preset))
    assert codec.encode(img, rate=2, preset=cdm_preset, detail_gain="search") == searched.to_bytes()
    t = Bitstream.from_bytes(table)
    assert (searched.latent, searched.hyper_latent, searched.text) == (t.latent, t.hyper_latent, t.text)
    assert 0 <= searched.header.detail_gain <= gain_choice.DETAIL_MAX_CODE
    # the table mode never runs the denoiser; the search does
    calls = []
    real = gain_choice.cdm_decode_latent
    monkeypatch.setattr(gain_choice, "cdm_decode_latent", lambda *a, **k: calls.append(1) or real(*a, **k))
    codec.encode(img, rate=2, preset=cdm_preset, detail_gain="table")
    assert calls == []
    codec.encode(img, rate=2, preset=cdm_preset, detail_gain="search")
    assert calls == [1]
    with pytest.raises(ValueError, match="unknown detail gain"):
        codec.encode(img, rate=2, preset=cdm_preset, detail_gain="more")


def test_detail_gain_needs_a_model_that_writes_one(cdm_preset):
    """A model without a table refuses "table"; a model without detail transfer writes no gain
    and refuses a fixed one."""
    from dataclasses import replace

    from codec.presets import load_preset

    untabled = replace(cdm_preset, detail_gains=None, _plain={})
    img = photo(64, 64)
    with pytest.raises(ValueError, match="no detail gain table"):
        codec.encode(img, rate=1, preset=untabled, detail_gain="table")
    one_scale = replace(cdm_preset, detail_gains={1: cdm_preset.detail_gains[1]}, _plain={})
    with pytest.raises(ValueError, match="no detail gain table for scale 2"):
        codec.encode(img, rate=1, preset=one_scale, detail_gain="table", scale=2)
    old = load_preset("taef2", model_id="e102cc3de58bc279")  # before the CDM
    assert Bitstream.from_bytes(codec.encode(img, rate=1, preset=old)).header.detail_gain is None
    with pytest.raises(ValueError, match="no detail transfer"):
        codec.encode(img, rate=1, preset=old, detail_gain=1.0)


def test_a_stream_coded_smaller_decodes_at_full_size(cdm_preset):
    from codec.resample import shrink

    img = photo(200, 136)
    stream = codec.encode(img, rate=4, preset=cdm_preset, scale=2, detail_gain=1.0)
    meta = codec.info(stream)
    assert (meta["width"], meta["height"], meta["scale"]) == (200, 136, 2)
    plain = codec.decode(stream, decoder="plain", preset=cdm_preset)
    cdm = codec.decode(stream, preset=cdm_preset)
    assert plain.size == cdm.size == (200, 136)
    # the same symbols as coding the shrunk image, upsampled by the spec's filter
    small = codec.encode(shrink(img, 2), rate=4, preset=cdm_preset, scale=1, detail_gain=1.0)
    assert Bitstream.from_bytes(small).latent == Bitstream.from_bytes(stream).latent
    from codec.resample import upsample

    want = upsample(to_tensor(codec.decode(small, decoder="plain", preset=cdm_preset)), 200, 136).clamp(0, 1)
    assert psnr_arrays(plain, Image.fromarray((want[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))) > 45
    with pytest.raises(ValueError, match="unknown scale"):
        codec.encode(img, rate=4, preset=cdm_preset, scale=3)


def test_auto_scale_follows_the_stream_size(cdm_preset):
    """auto: a small budget codes a smaller image; a large one the full image; with a rate, the
    size of that rate at full size (the choice is per image, the same in a batch as alone)."""
    from codec.settings import scale_for_bpp

    assert cdm_preset.scale_below_bpp == {2: 0.06, 4: 0.012}
    assert [scale_for_bpp(cdm_preset, b) for b in (0.005, 0.02, 0.1)] == [4, 2, 1]
    img = photo(512, 320, "kodim05.png")
    low = codec.info(codec.encode(img, target_bpp=0.01, preset=cdm_preset, detail_gain=1.0, scale="auto"))
    high = codec.info(codec.encode(img, target_bpp=0.3, preset=cdm_preset, detail_gain=1.0, scale="auto"))
    assert (low["scale"], high["scale"]) == (4, 1) and low["bpp"] <= 0.01
    full = codec.encode(img, rate=3, preset=cdm_preset, detail_gain=1.0)  # full size: the default
    auto = codec.encode(img, rate=3, preset=cdm_preset, detail_gain=1.0, scale="auto")
    b = codec.info(full)["bpp"]
    assert codec.info(auto)["scale"] == scale_for_bpp(cdm_preset, b) != 1 and codec.info(auto)["bpp"] <= b
    pair = codec.encode_batch([img, photo(512, 320)], rate=3, preset=cdm_preset, detail_gain=1.0, scale="auto")
    assert pair[0] == auto


def test_auto_scale_of_the_perceptual_model_codes_smaller_only_to_meet_a_budget(preset):
    """v2's thresholds are 0: a smaller image never by size alone (full size won on LPIPS wherever
    both sizes reached), only when full size cannot get within a target."""
    assert preset.scale_below_bpp == {2: 0.0, 4: 0.0}
    img = photo(768, 512, "kodim05.png")
    full_min = codec.info(codec.encode(img, rate=0, preset=preset))["bpp"]
    assert codec.info(codec.encode(img, rate=0, preset=preset, scale="auto"))["scale"] == 1
    fits = codec.info(codec.encode(img, target_bpp=1.5 * full_min, preset=preset, scale="auto"))
    assert fits["scale"] == 1 and fits["bpp"] <= 1.5 * full_min
    tight = codec.info(tight_stream := codec.encode(img, target_bpp=full_min / 3, preset=preset, scale="auto"))
    assert tight["scale"] in (2, 4) and tight["bpp"] <= full_min / 3
    assert codec.encode(img, target_bpp=full_min / 3, preset=preset) == tight_stream  # auto: a target's default
    over = codec.info(codec.encode(img, target_bpp=full_min / 3, preset=preset, scale=1))  # the budget is not met
    assert over["scale"] == 1 and over["bpp"] == full_min
