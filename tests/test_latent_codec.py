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
    assert lik["y"].shape == (2, 32, 4, 4) and lik["z"].shape == (2, 16, 1, 1)
    assert ((lik["y"] > 0) & (lik["y"] <= 1)).all()
    (out["latent_hat"].mean() - lik["y"].log().mean()).backward()
    assert model.log_gain.grad is not None


def test_gains_interpolate_between_points():
    model = _small()
    g = model.gains(torch.tensor([2.0, 2.5, 3.0]))[:, :, 0, 0]
    assert torch.allclose(g[1], (g[0] * g[2]).sqrt(), rtol=1e-5)


def test_compress_decompress_gives_encoder_symbols_at_every_level():
    model = _small()
    latent = torch.randn(2, 8, 16, 16)
    for level in (0, 13, model.num_levels - 1):
        analysed = model.analyse(latent)
        strings, y_hat_enc = model.code_latent(analysed, level)
        y_hat = model.decompress_symbols(strings, analysed["z_strings"], analysed["z_shape"], level)
        assert torch.equal(y_hat, y_hat_enc)  # what verify-after-encode relies on
        assert torch.equal(model.quantise(analysed, level)[1], y_hat)  # a trainer's ẑ without coding: the same
        # the decoded y_hat is within half a quantisation step (in the scaled domain) of y
        gain = model.coding.gain[level].float()[None, :, None, None] / 2**12
        err = (y_hat.float() / 2**ACT_BITS - analysed["y"]) * gain
        assert err.abs().max() <= 0.5 + 1e-3
        assert model.decompress(strings, analysed["z_strings"], analysed["z_shape"], level).shape == latent.shape


def test_higher_level_spends_more_bits():
    model = _small()
    latent = torch.randn(1, 8, 16, 16) * 2
    analysed = model.analyse(latent)
    sizes = [len(model.code_latent(analysed, lv)[0][0]) for lv in (0, model.num_levels - 1)]
    assert sizes[0] < sizes[1]


def test_klt_init_makes_the_transform_pair_the_best_projection():
    model = _small()
    # latents with strong structure across channels: rank-4 patches plus a little noise
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 8, 1, 1, generator=gen)
    lats = [(torch.randn(1, 4, 32, 32, generator=gen)[:, :, None] * basis[None]).sum(1)[0] + 0.01 * torch.randn(8, 32, 32, generator=gen) + 3.0
            for _ in range(4)]
    model.init_transforms(lats)
    x = torch.stack(lats[:2])
    with torch.no_grad():
        rec = model.g_s(model.g_a(x))
    # y has 32 channels per 4x4 patch of 8 channels (128 dims); rank-4-per-pixel structure
    # needs 64 of them, so the projection keeps most but not all of the energy
    assert (rec - x).pow(2).mean() < 0.25 * (x - x.mean()).pow(2).mean()
    w = model.g_a[0].weight.reshape(model.config.y_channels, -1).double()
    assert torch.allclose(w @ w.T, torch.eye(w.shape[0], dtype=torch.float64), atol=1e-4)


def test_conv_transform_codes_and_has_no_block_grid():
    torch.manual_seed(0)
    cfg = LatentCodecConfig(latent_channels=8, transform="conv", hidden=32, y_channels=32, z_channels=16,
                            slices=[8, 24], param_hidden=32)  # fmt: skip
    model = LatentCodec(cfg)
    model.load_frozen(model.freeze())
    model.eval()
    latent = torch.randn(1, 8, 32, 32)
    analysed = model.analyse(latent)
    assert analysed["y"].shape == (1, 32, 8, 8)
    strings, y_hat_enc = model.code_latent(analysed, 20)
    y_hat = model.decompress_symbols(strings, analysed["z_strings"], analysed["z_shape"], 20)
    assert torch.equal(y_hat, y_hat_enc)
    # One y element reaches latents beyond its own 4×4 patch: the synthesis overlaps patches.
    y = torch.zeros(1, 32, 8, 8, requires_grad=True)
    model.g_s(y)[0, :, 13, 13].sum().backward()  # latent (13, 13) lies in patch (3, 3)
    reached = y.grad.abs().sum(1)[0] > 0
    assert reached[3, 3] and reached[2:5, 2:5].sum() == 9


def test_unknown_transform_is_refused():
    import pytest

    with pytest.raises(ValueError, match="unknown transform"):
        LatentCodec(LatentCodecConfig(transform="wavelet"))


def test_decoded_slices_condition_the_next_ones_as_clamped_activations():
    """Spec section 4.1: ŷ enters param_k clamped to ±2**20 like every activation, so that a
    crafted stream's huge ŷ cannot push a sum past 2**53 (where float64 stops being exact)."""
    from codec.fixed_point import ACT_LIMIT

    model = _small()
    analysed = model.analyse(torch.randn(1, 8, 16, 16))
    hyper = analysed["hyper_fx"]
    done = torch.full((1, 8, 4, 4), 2.0**30)
    huge = model._fixed_params(5, 1, hyper, [done])
    at_limit = model._fixed_params(5, 1, hyper, [done.clamp(-ACT_LIMIT, ACT_LIMIT)])
    assert all(torch.equal(a, b) for a, b in zip(huge, at_limit))
