import pytest
import torch

import codec
from codec.bitstream import Bitstream
from codec.encoder import encode_with_symbols
from codec.fixed_point import from_fixed
from codec.images import pad, to_tensor
from codec.latent_refine import MARGIN, refine_y, window_mask
from codec.settings import EncodeSettings, rate_to_level
from tests.conftest import photo


def test_window_mask_drops_cut_edges_and_padding_only():
    # a window inside a 10x10 latent: a margin on every side
    m = window_mask(2, 3, (80, 80), (4, 4), (10, 10))[0, 0]
    assert m.shape == (32, 32)
    assert m[:MARGIN].sum() == 0 and m[-MARGIN:].sum() == 0 and m[:, :MARGIN].sum() == 0 and m[:, -MARGIN:].sum() == 0
    assert m[MARGIN:-MARGIN, MARGIN:-MARGIN].all()
    # at the latent's top and right edges nothing is cut; the image's padding (columns 75..) is left out
    m = window_mask(0, 6, (75, 80), (4, 4), (10, 10))[0, 0]
    assert m[0, MARGIN] == 1 and m[-MARGIN - 1, MARGIN] == 1 and m[-MARGIN:].sum() == 0
    assert m[:, :MARGIN].sum() == 0 and m[:-MARGIN, 75 - 48 - 1].all() and m[:, 75 - 48 :].sum() == 0


def _cost(preset, image, y, level):
    """The true rate-distortion cost of coding ``y``: stream bits per pixel + λ·255²·MSE."""
    lc = preset.latent_codec
    a = lc.analyse_y(y)
    strings, y_hat = lc.code_latent(a, level)
    bits = 8 * (len(strings[0]) + len(a["z_strings"][0]))
    w, h = image.size
    with torch.no_grad():
        out = preset.plain(level).decode(lc.g_s(from_fixed(y_hat))).clamp(0, 1)[:, :, :h, :w]
    mse = float(((out * 255).round() / 255 - to_tensor(image)).pow(2).mean())
    lam = float(lc.lambdas(torch.tensor([level / 8.0])))
    return bits / (w * h) + lam * 255**2 * mse


def test_refinement_lowers_the_real_rate_distortion_cost(cdm_preset):
    image = photo(128, 128)
    x = pad(to_tensor(image), cdm_preset.pad_multiple)
    with torch.no_grad():
        latent = cdm_preset.autoencoder.encode(x)
        y0 = cdm_preset.latent_codec.g_a(latent)
    level = rate_to_level(cdm_preset, 4)
    assert torch.equal(refine_y(cdm_preset.latent_codec, cdm_preset.plain(level), y0, x, image.size, level, 0), y0)
    y = refine_y(cdm_preset.latent_codec, cdm_preset.plain(level), y0, x, image.size, level, 15)
    again = refine_y(cdm_preset.latent_codec, cdm_preset.plain(level), y0, x, image.size, level, 15)
    assert torch.equal(y, again)  # seeded windows: the same inputs, the same y
    before, after = _cost(cdm_preset, image, y0, level), _cost(cdm_preset, image, y, level)
    assert after < 0.97 * before, (before, after)
    assert all(p.grad is None for p in cdm_preset.latent_codec.parameters())  # the model is left as it was


def test_refined_streams_are_ordinary_streams(cdm_preset):
    image = photo(96, 64)
    plain = codec.encode(image, rate=5, preset=cdm_preset, detail_gain="table")
    (stream, y_hat), = encode_with_symbols([image], EncodeSettings(rate=5, detail_gain="table", refine_steps=4), preset=cdm_preset)
    codec.api.verify(stream, y_hat, cdm_preset)
    a, b = Bitstream.from_bytes(plain).header, Bitstream.from_bytes(stream).header
    assert (b.model_id, b.rate_level, b.width, b.height) == (a.model_id, a.rate_level, a.width, a.height)
    assert stream != plain
    out = codec.decode(stream, preset=cdm_preset, decoder="plain")
    assert out.size == image.size


def test_refinement_within_a_target_bpp_stays_within_it(cdm_preset):
    image = photo(128, 96)
    bpp = lambda s: 8 * len(s) / (128 * 96)  # noqa: E731
    low, high = (codec.encode(image, rate=r, preset=cdm_preset, detail_gain="table") for r in (0, 7))
    target = (bpp(low) + bpp(high)) / 2
    stream = codec.encode(image, target_bpp=target, preset=cdm_preset, detail_gain="table", refine_steps=3)
    assert bpp(stream) <= target and codec.info(stream)["rate_level"] > 0


def test_auto_scale_with_a_rate_refines_a_full_size_stream_as_full_size_does(cdm_preset):
    """A rate whose stream is too large for a smaller coded size: --scale auto --rate R --refine
    gives exactly the full-size refined stream (the full-size analysis is made once and refined)."""
    image = photo(96, 64)
    kw = {"rate": 9, "preset": cdm_preset, "detail_gain": "table", "refine_steps": 2}
    auto = codec.encode(image, scale="auto", **kw)
    assert codec.info(auto)["scale"] == 1
    assert auto == codec.encode(image, scale=1, **kw)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_bad_refine_steps_are_refused_before_any_work(bad):
    with pytest.raises(ValueError, match="refine_steps"):
        codec.encode(photo(8, 8), rate=1, refine_steps=bad)



def test_the_perceptual_model_refuses_refinement(preset):
    """The default (v2) model: MSE-only refinement made its streams worse, so it is refused."""
    assert preset.latent_codec.config.transform == "conv"
    with pytest.raises(ValueError, match="--refine is not available"):
        codec.encode(photo(64, 64), rate=2, preset=preset, refine_steps=2)
