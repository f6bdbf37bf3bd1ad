"""Detail transfer (codec.cdm.detail): the pinned blur, the split formula, and its use with the
real TAEF2 decoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

from codec.autoencoder import LAST_STAGE, TAEF2
from codec.cdm.detail import choose_gains, decode_restored, gain_of, gaussian_blur, gaussian_kernel, split_images
from codec.images import to_tensor
from codec.texture import hf_energy_tensor
from tests.conftest import photo


@pytest.mark.parametrize("sigma", [0.5, 1.5, 2.0])
def test_kernel_is_normalised_symmetric_and_as_long_as_the_spec_says(sigma):
    g = gaussian_kernel(sigma)
    assert len(g) == 2 * math.ceil(3 * sigma) + 1
    assert torch.allclose(g.sum(), torch.tensor(1.0)) and torch.equal(g, g.flip(0))


def test_blur_matches_torchvision_and_keeps_constants():
    """The pinned blur equals torchvision's Gaussian blur today (same taps, reflect padding)."""
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    k = len(gaussian_kernel(1.5))
    assert torch.allclose(gaussian_blur(x, 1.5), tv_gaussian_blur(x, [k, k], [1.5, 1.5]), atol=1e-6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)


def test_gain_codes():
    assert gain_of(0) == 0 and gain_of(64) == 1 and gain_of(80) == 2 and gain_of(96) == 4 and gain_of(48) == 0.5
    assert all(gain_of(k + 1) / gain_of(k) == pytest.approx(2 ** (1 / 16)) for k in range(1, 127))


def _smooth_and_checkerboard() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u = torch.arange(32.0)
    wave = torch.cos(2 * math.pi * u / 64)  # smooth half-size base: one half-period across
    preview = torch.stack([0.5 + 0.2 * wave[:, None] * wave[None, :] * c for c in (1.0, 0.5, -1.0)])[None]
    base = F.interpolate(preview, scale_factor=2, mode="bilinear", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    detail = 0.05 * ((yy + xx) % 2 * 2 - 1).float().expand(1, 3, 64, 64)  # nothing below the blur's cut
    return preview, base, detail


def test_split_keeps_detail_and_takes_the_base_low_frequencies():
    preview, base, detail = _smooth_and_checkerboard()
    restored = base + detail  # the base's low frequencies + fine detail: kept as it is
    assert torch.allclose(split_images(restored, preview, 1.5).compose(), restored, atol=2e-3)
    # restored drifted by a constant: the drift goes, the detail stays; the gain scales the detail
    split = split_images(restored + 0.2, preview, 1.5)
    assert torch.allclose(split.compose(), restored, atol=2e-3)
    assert torch.allclose(split.compose(torch.tensor([0.5])), base + 0.5 * detail, atol=4e-3)


def test_chosen_gain_restores_the_originals_detail_amount():
    """The restoration's detail is the original's at half strength: gain 2 (code 80) brings it
    back (79 where the 8-bit rounding puts 80 a hair above the original's texture)."""
    preview, base, detail = _smooth_and_checkerboard()
    original = base + detail
    split = split_images(base + 0.5 * detail, preview, 1.5)
    plain = base
    assert choose_gains(split, original, plain, budget_db=0.9, max_texture=1.0, max_code=96)[0] in (79, 80)
    # the texture cap holds: at most the original's
    assert choose_gains(split, original, plain, budget_db=0.9, max_texture=0.5, max_code=96)[0] < 79


def test_chosen_gain_keeps_within_the_psnr_budget():
    """Detail unrelated to the original (here: of the wrong phase) costs PSNR: the budget binds."""
    preview, base, detail = _smooth_and_checkerboard()
    original = base + detail
    split = split_images(base - 0.5 * detail, preview, 1.5)  # the wrong sign
    plain = base
    (g,) = choose_gains(split, original, plain, budget_db=0.9, max_texture=1.0, max_code=96)
    q = lambda x: (x * 255).round() / 255  # noqa: E731
    mse = lambda x: float((q(x) - original).pow(2).mean())  # noqa: E731
    cost = lambda k: 10 * math.log10(mse(split.compose(torch.tensor([gain_of(k)]))) / mse(plain))  # noqa: E731
    assert 0 < g < 79 and cost(g) <= 0.9 < cost(g + 1)


@pytest.fixture(scope="module")
def ae() -> TAEF2:
    return TAEF2.from_pretrained()


def test_decoder_split_is_the_decoder(ae):
    assert isinstance(ae.decoder[LAST_STAGE], torch.nn.Upsample)
    z = ae.encode(to_tensor(photo(64, 64)))
    with torch.no_grad():
        f = ae.decode_features(ae.decode_head(z))
        assert f.shape[-1] == 32  # half the image's side
        assert torch.equal(ae.decode_from_features(f).clamp(0, 1), ae.decode(z))
        assert ae.decode_preview(f).shape == (1, 3, 32, 32)


def test_decode_restored(ae):
    x = to_tensor(photo(128, 128))
    with torch.no_grad():
        z = ae.encode(x)
        plain = ae.decode(z)
        assert torch.equal(decode_restored(ae, ae, z, z, None), plain)
        # nothing restored: the preview's low frequencies stand in for the plain decode's
        same = decode_restored(ae, ae, z, z, 1.5)
        assert float(-10 * torch.log10((same - plain).pow(2).mean())) > 35
        # a latent that drifts (here: another image's) brings its detail, not its colours
        other = ae.encode(to_tensor(photo(128, 128, "kodim05.png")))
        mixed = decode_restored(ae, ae, z, other, 1.5)
        other_img = ae.decode(other)
        low = lambda t: gaussian_blur(t, 4.0)  # noqa: E731
        assert (low(mixed) - low(plain)).pow(2).mean() < 0.2 * (low(other_img) - low(plain)).pow(2).mean()
        hf = hf_energy_tensor(mixed)
        assert hf > 0.5 * hf_energy_tensor(other_img)


def test_the_api_decodes_with_the_configs_detail_transfer(tmp_path, monkeypatch):
    import numpy as np

    import codec
    from codec.api import parse
    from codec.cdm.model import CDMConfig, CDMDenoiser
    from codec.cdm.sampler import cdm_decode_latent
    from codec.images import to_image
    from codec.presets import CDM_ENV

    torch.manual_seed(0)
    model = CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8, detail_sigma=1.5))
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    model.save_pretrained(tmp_path)
    monkeypatch.setenv(CDM_ENV, str(tmp_path))
    stream = codec.encode(photo(64, 48), rate=1)
    s, p = parse(stream)
    assert p.cdm.config.detail_sigma == 1.5
    h = s.header
    with torch.no_grad():
        z_hat = p.latent_codec.decompress([s.latent], [s.hyper_latent], p.z_shape(h.width, h.height), h.rate_level)
        restored = cdm_decode_latent(p.cdm, z_hat, h.rate_level, h.diffusion_start_step, [h.diffusion_seed])
        assert h.detail_gain is not None and 0 <= h.detail_gain <= 96  # the encoder chose it
        assert codec.info(stream)["diffusion"]["detail_gain"] == gain_of(h.detail_gain)
        gain = torch.tensor([gain_of(h.detail_gain)])
        want = to_image(decode_restored(p.autoencoder, p.plain(h.rate_level), z_hat, restored, 1.5, gain)[:, :, : h.height, : h.width])
        whole = to_image(p.autoencoder.decode(restored)[:, :, : h.height, : h.width])
    got = np.asarray(codec.decode(stream))
    assert np.array_equal(got, np.asarray(want)) and not np.array_equal(got, np.asarray(whole))


def test_the_shipped_model_keeps_each_images_budget(cdm_preset):
    """The shipped CDM (detail transfer) on Kodak crops with the encoder's search (the default):
    its choice holds as decoded, within the PSNR budget of the plain decode and at most the
    original's texture, at full size and coded smaller (where the search measures after the
    upsampling). At full size it brings most of the texture the plain decode lacks; a stream
    coded at a quarter of the size gets little within the budget (its detail is upsampled with
    it: on this crop 0.02 of the original's texture, against 0.002 plain)."""
    import codec
    from codec.gain_choice import DETAIL_BUDGET_DB
    from evaluation.metrics import hf_energy_ratio, psnr

    p = cdm_preset
    assert p.cdm is not None and p.cdm.config.detail_sigma is not None
    for name, rate, scale, least in (("kodim05.png", 0, 1, 0.5), ("kodim23.png", 6, 1, 0.5), ("kodim05.png", 0, 4, 0.01)):
        img = photo(256, 192, name)
        stream = codec.encode(img, rate=rate, scale=scale, preset=p)
        plain, cdm = codec.decode(stream, decoder="plain"), codec.decode(stream)
        assert psnr(img, plain) - psnr(img, cdm) <= DETAIL_BUDGET_DB + 0.01
        assert hf_energy_ratio(img, plain) + least < hf_energy_ratio(img, cdm) <= 1.0 + 1e-3
