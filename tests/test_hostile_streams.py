"""Streams with valid CRCs and crafted content: refused with a BitstreamError before anything is
allocated for them, or decoded without the entropy decoder reading outside its input."""

from __future__ import annotations

import dataclasses
import resource
import time

import pytest

import codec
from codec.bitstream import Bitstream, BitstreamError
from codec.parsing import MAX_BYTES_PER_SYMBOL, MAX_TEXT_BYTES
from codec.presets import load_preset
from tests.make_golden import DATA

GOLDEN = (DATA / "golden_taef2_8147641cb2d9cfd8.rsl").read_bytes()  # the default model's, with a text section


def crafted(**changes) -> bytes:
    """The golden stream with head fields or sections replaced; CRCs recomputed, so only the
    decoder's own checks stand between the change and the payload decoders."""
    s = Bitstream.from_bytes(GOLDEN)
    head = dataclasses.replace(s.header, **{k: v for k, v in changes.items() if hasattr(s.header, k)})
    sections = {k: v for k, v in changes.items() if k in ("hyper_latent", "latent", "text")}
    return dataclasses.replace(s, header=head, **sections).to_bytes()


def test_a_terapixel_head_is_refused_before_any_allocation():
    stream = crafted(width=1 << 20, height=1 << 20)  # 1.1 terapixels, 2^20 is the spec's largest side
    assert len(stream) < 400
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(BitstreamError, match=r"1,099,511,627,776 pixels, more than this decoder's cap"):
        codec.decode(stream)
    assert time.perf_counter() - t < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: nothing sized by the head


def test_the_pixel_cap_is_the_callers():
    w, h = Bitstream.from_bytes(GOLDEN).header.width, Bitstream.from_bytes(GOLDEN).header.height
    with pytest.raises(BitstreamError, match="cap of 1,000"):
        codec.decode(GOLDEN, decoder="plain", max_pixels=1000)
    assert codec.decode(GOLDEN, decoder="plain", max_pixels=256 * 256).size == (w, h)  # padded to 256 x 256


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rate_level": 10_000}, "rate level 10000 is out of range"),
        ({"diffusion_start_step": 1000}, "diffusion start step 1000 is out of range"),
        ({"diffusion_start_step": 1 << 60}, "diffusion start step"),
        ({"diffusion_seed": 1 << 32}, "diffusion seed 4294967296 is out of range"),
        ({"latent": bytes(200_000)}, f"more than {MAX_BYTES_PER_SYMBOL} per symbol"),
        ({"hyper_latent": bytes(5_000)}, "section hyper_latent holds 5,000 bytes"),
        ({"text": bytes(MAX_TEXT_BYTES + 1)}, "text section holds 65,537 bytes"),
    ],
)
def test_head_fields_and_section_lengths_are_checked_against_the_model(changes, message):
    with pytest.raises(BitstreamError, match=message):
        codec.decode(crafted(**changes))


def test_the_largest_legal_start_step_and_seed_decode():
    head = Bitstream.from_bytes(GOLDEN).header
    img = codec.decode(crafted(diffusion_start_step=999, diffusion_seed=2**32 - 1), steps=1)
    assert img.size == (head.width, head.height)


@pytest.mark.parametrize("fill", [b"\xff", b"\x00", b"\x5a\xa5"])
@pytest.mark.parametrize("section", ["latent", "hyper_latent"])
def test_crafted_payloads_decode_inside_their_input(section, fill):
    """A payload that drives CompressAI's rANS decoder (no bounds checks) to read past its end and
    into bypass coding: the decoder reads the zeros after it, never other memory, so the same
    stream gives the same symbols every time."""
    s = Bitstream.from_bytes(GOLDEN)
    p = load_preset("taef2")
    n_z, n_y = p.latent_codec.symbol_counts(p.z_shape(*s.header.coded_size))
    size = {"latent": n_y, "hyper_latent": n_z}[section]
    payload = (fill * size)[: size * MAX_BYTES_PER_SYMBOL]
    stream = crafted(**{section: payload})
    lc = p.latent_codec
    z_shape = p.z_shape(*s.header.coded_size)
    parsed = Bitstream.from_bytes(stream)
    first = lc.decompress_symbols([parsed.latent], [parsed.hyper_latent], z_shape, s.header.rate_level)
    again = lc.decompress_symbols([parsed.latent], [parsed.hyper_latent], z_shape, s.header.rate_level)
    assert first.equal(again)
    assert codec.decode(stream, decoder="plain").size == (s.header.width, s.header.height)


def test_the_cap_holds_for_the_padded_size_the_decoder_works_at():
    stream = crafted(width=116_808, height=1)  # 0.1 Mpx, padded to 128 rows: 15 Mpx
    with pytest.raises(BitstreamError, match=r"decoded at 14,958,592 pixels \(padded\)"):
        codec.decode(stream, max_pixels=1 << 20)
