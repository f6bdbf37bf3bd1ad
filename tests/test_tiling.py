from itertools import pairwise

import numpy as np
import pytest
import torch

import codec
from codec.autoencoder import TAEF2
from codec.cdm.detail import DetailSplit, plain_low, restored_detail, split_detail
from codec.images import to_tensor
from codec.tiling import HALO, TILE_ENV, _cuts, tile_side, tiled
from tests.conftest import photo

# 320 x 256 pixels: 40 x 32 latents, so tiles of 24 latents cut it in 2 x 2 with halos.
SMALL_TILE = "24"


@pytest.fixture(scope="module")
def ae() -> TAEF2:
    return TAEF2.from_pretrained()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return to_tensor(photo(320, 256))


@pytest.fixture(scope="module")
def small() -> torch.Tensor:
    """208 x 200 pixels: 26 x 25 latents, still 2 x 2 tiles of 24 (for the costlier gradient tests)."""
    return to_tensor(photo(208, 200))


def test_cuts_cover_the_length_in_near_equal_spans():
    assert _cuts(10, 24) == [(0, 10)]
    assert _cuts(50, 24) == [(0, 17), (17, 33), (33, 50)]
    spans = _cuts(130, 128)
    assert spans[0][0] == 0 and spans[-1][1] == 130 and all(a[1] == b[0] for a, b in pairwise(spans))
    assert min(b - a for a, b in spans) == 65  # no thin last tile


def test_tile_side_setting(monkeypatch):
    assert tile_side() == 128
    monkeypatch.setenv(TILE_ENV, "200")
    assert tile_side() == 200
    for bad in ("0", "10", "big", str(2 * HALO - 1)):
        monkeypatch.setenv(TILE_ENV, bad)
        with pytest.raises(ValueError, match=TILE_ENV):
            tile_side()


def test_an_image_within_one_tile_runs_whole(ae, image):
    calls = []

    def fn(x):
        calls.append(x.shape)
        return (x * 2,)

    z = ae.encode(image)
    assert torch.equal(tiled(fn, [z], scale_in=1, scale_out=1, tile=40)[0], z * 2) and calls == [z.shape]


def test_tiled_autoencoder_is_the_whole_one(ae, image, monkeypatch):
    with torch.no_grad():
        z, x = ae.encode(image), ae.decode(ae.encode(image))
        monkeypatch.setenv(TILE_ENV, SMALL_TILE)
        z_tiled, x_tiled = ae.encode(image), ae.decode(z)
    assert (z_tiled - z).abs().max() < 1e-5
    assert (x_tiled - x).abs().max() < 1e-5


def test_too_small_a_halo_shows(ae, image):
    """The halo is what makes tiles exact: with a third of it, the tiles' edges differ."""
    with torch.no_grad():
        head = ae.decode_head(ae.encode(image))
        tail = lambda h: (ae.decode_from_features(ae.decode_features(h)),)
        whole = tail(head)[0]
        exact = tiled(tail, [head], scale_in=1, scale_out=8, tile=24)[0]
        short = tiled(tail, [head], scale_in=1, scale_out=8, tile=24, halo=HALO // 3)[0]
    assert (exact - whole).abs().max() < 1e-5
    assert (short - whole).abs().max() > 1e-3


def test_tiled_detail_transfer_is_the_whole_one(ae, image, monkeypatch):
    with torch.no_grad():
        z = ae.encode(image)
        other = ae.encode(to_tensor(photo(320, 256, "kodim05.png")))
        whole = split_detail(ae, ae, z, other, 1.5, with_plain=True)
        monkeypatch.setenv(TILE_ENV, SMALL_TILE)
        tiles = split_detail(ae, ae, z, other, 1.5, with_plain=True)
        wide_blur = restored_detail(ae, other, 6.0)  # a σ whose blur outgrows the decoder's halo
        monkeypatch.delenv(TILE_ENV)
        assert (restored_detail(ae, other, 6.0) - wide_blur).abs().max() < 1e-5
    for name in ("low", "detail", "plain"):
        assert (getattr(tiles, name) - getattr(whole, name)).abs().max() < 1e-5, name
    assert torch.equal(whole.plain, ae.decode(z))


def test_tiled_decoding_is_differentiable(ae, small, monkeypatch):
    """Latent refinement and prompt optimisation run gradients through these decodes."""
    image = small
    z = ae.encode(image).detach()

    def grad() -> torch.Tensor:
        zz = z.clone().requires_grad_(True)
        low, _ = plain_low(ae, zz, 1.5)
        (DetailSplit(low, restored_detail(ae, zz, 1.5)).compose() - image).pow(2).mean().backward()
        return zz.grad

    whole = grad()
    monkeypatch.setenv(TILE_ENV, SMALL_TILE)
    tiles = grad()
    assert whole.abs().max() > 0 and (tiles - whole).abs().max() < 1e-4 * whole.abs().max()


def test_a_tiled_stream_decodes_as_an_untiled_one(monkeypatch, cdm_preset):
    """The codec end to end with a CDM and its detail transfer: the gain search (which decodes
    each image as a CDM decoder will) picks the same gain, so the stream is the same; the CDM
    and plain decodes' 8-bit pixels agree but for float rounding at a rare pixel."""
    img = photo(320, 256)
    assert cdm_preset.cdm.config.detail_sigma is not None
    whole_stream = codec.encode(img, rate=3, preset=cdm_preset)
    whole = [
        np.asarray(codec.decode(whole_stream, preset=cdm_preset, decoder=d), dtype=np.int16) for d in ("cdm", "plain")
    ]
    monkeypatch.setenv(TILE_ENV, SMALL_TILE)
    stream = codec.encode(img, rate=3, preset=cdm_preset)
    tiles = [np.asarray(codec.decode(stream, preset=cdm_preset, decoder=d), dtype=np.int16) for d in ("cdm", "plain")]
    assert stream == whole_stream
    for t, w in zip(tiles, whole):
        assert np.abs(t - w).max() <= 1 and (t != w).mean() < 1e-3


def test_inputs_must_be_whole_units(ae):
    """The untiled network rounds a side up, tiles would drop the remainder: refused instead."""
    with pytest.raises(ValueError, match="whole units of 8 pixels"):
        tiled(lambda x: (x,), [torch.zeros(1, 3, 260, 256)], scale_in=8, scale_out=1, tile=24)


def test_with_gradients_each_tile_is_recomputed_not_kept(ae, small):
    """Checkpointed tiles: the forward pass keeps no tile's activations (each is run again in
    the backward pass), so memory stays a tile's with gradients on too."""
    calls = []

    def tail(h):
        calls.append(h.shape)
        return (ae.decode_from_features(ae.decode_features(h)),)

    head = ae.decode_head(ae.encode(small).detach().requires_grad_(True))
    out = tiled(tail, [head], scale_in=1, scale_out=8, tile=24)[0]
    assert len(calls) == 4
    out.mean().backward()
    assert len(calls) == 8
    calls.clear()  # a decoder being trained: its weights need gradients, its input does not
    ae.decoder.requires_grad_(True)
    try:
        tiled(tail, [head.detach()], scale_in=1, scale_out=8, tile=24)[0].mean().backward()
        assert len(calls) == 8 and ae.decoder[-1].weight.grad is not None
    finally:
        ae.decoder.requires_grad_(False)
        ae.decoder.zero_grad(set_to_none=True)
