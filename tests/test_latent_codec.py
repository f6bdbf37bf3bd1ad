import torch

from codec.fixed_point import ACT_BITS
from codec.latent_codec import LatentCodec, LatentCodecConfig


def _small() -> LatentCodec:
    torch.manual_seed(0)
    cfg = LatentCodecConfig(latent_channels=8, hidden=32, y_channels=32, z_channels=16, slices=[8, 24], param_hidden=32)
    model = LatentCodec(cfg)
    model.load_frozen(model.freeze())
    return model.eval()


def test_forward_shapes_and_likelihoods():
    model = _small().train()
    latent = torch.randn(2, 8, 16, 16)
    out = model(latent, torch.tensor([0.0, 6.5]))
    assert out["latent_hat"].shape == latent.shape
    lik = out["likelihoods"]
    assert lik["y"].shape == (2, 32, 8, 8) and lik["z"].shape == (2, 16, 2, 2)
    assert ((lik["y"] > 0) & (lik["y"] <= 1)).all()
    (out["latent_hat"].mean() - lik["y"].log().mean()).backward()
    assert model.log_gain.grad is not None


def test_transforms_start_as_the_identity():
    model = _small()
    latent = torch.randn(1, 8, 16, 16)
    assert torch.allclose(model.g_s(model.g_a(latent)), latent)


def test_gains_interpolate_between_points():
    model = _small()
    g = model.gains(torch.tensor([2.0, 2.5, 3.0]))[:, :, 0, 0]
    assert torch.allclose(g[1], (g[0] * g[2]).sqrt(), rtol=1e-5)


def test_compress_decompress_gives_encoder_symbols_at_every_level():
    model = _small()
    latent = torch.randn(2, 8, 16, 16)
    for level in (0, 13, model.num_levels - 1):
        analysed = model.analyse(latent)
        strings = model.code_latent(analysed, level)
        y_hat = model.decompress_symbols(strings, analysed["z_strings"], analysed["z_shape"], level)
        # the decoded y_hat is within half a quantisation step (in the scaled domain) of y
        gain = model._fixed["gain"][level].float()[None, :, None, None] / 2**12
        err = (y_hat.float() / 2**ACT_BITS - analysed["y"]) * gain
        assert err.abs().max() <= 0.5 + 1e-3
        assert model.decompress(strings, analysed["z_strings"], analysed["z_shape"], level).shape == latent.shape


def test_higher_level_spends_more_bits():
    model = _small()
    latent = torch.randn(1, 8, 16, 16) * 2
    analysed = model.analyse(latent)
    sizes = [len(model.code_latent(analysed, lv)[0]) for lv in (0, model.num_levels - 1)]
    assert sizes[0] < sizes[1]
