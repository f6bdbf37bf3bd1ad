
import numpy as np
import pytest
from PIL import Image

from codec.images import ImageError, load_image, pad, to_image, to_tensor
from tests.conftest import photo, png_bytes


def test_modes_normalise_to_rgb():
    base = photo(33, 21)
    cases = {
        "L": base.convert("L"), "RGBA": base.convert("RGBA"), "P": base.convert("P"),
        "CMYK": base.convert("CMYK"), "1": base.convert("1"), "LA": base.convert("LA"),
    }  # fmt: skip
    for mode, img in cases.items():
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        out = load_image(png_bytes(img, format=fmt))
        assert out.mode == "RGB" and out.size == (33, 21), mode


def test_sixteen_bit_scales_down():
    arr = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(load_image(png_bytes(img)))
    assert out.shape == (30, 40, 3)
    assert out.max() == 255 and out.min() == 0 and 120 < out.mean() < 135


def test_transparent_palette_and_alpha_composite_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(png_bytes(rgba))).min() == 255


def test_exif_orientation_is_applied():
    img = photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = png_bytes(img, format="JPEG", exif=exif.tobytes())
    assert load_image(data).size == (20, 40)


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "empty file"), (b"hello, not an image", "not an image"), (png_bytes(photo(64, 64))[:200], "truncated")],
)
def test_bad_inputs_get_one_line_reason(data, reason):
    with pytest.raises(ImageError) as e:
        load_image(data, name="in.png")
    msg = str(e.value)
    assert msg.startswith("in.png: ") and reason in msg and "\n" not in msg


def test_hostile_exif_is_the_file_s_failure():
    """An EXIF entry retagged as a float tag: PIL raises struct.error when it rewrites the EXIF
    for the orientation. That is this file's failure, not the job's."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010E] = 6, "a description"
    data = png_bytes(photo(64, 48), format="JPEG", exif=exif.tobytes())
    at = data.index(b"\x01\x0e\x00\x02")  # the ImageDescription entry (big-endian, ASCII)
    data = data[:at] + b"\x01\x54" + data[at + 2 :]  # now SMinSampleValue, a float tag
    with pytest.raises(ImageError, match=r"^x.jpg: unreadable image \(error: ") as e:
        load_image(data, name="x.jpg")
    assert "\n" not in str(e.value)


def test_the_pixel_cap_is_ours_and_named():
    """Over the cap, the reason names the cap (not PIL's bomb threshold of twice it)."""
    data = png_bytes(photo(400, 100))
    for cap in (30_000, 15_000):  # over the cap, and over twice it
        with pytest.raises(ImageError, match=rf"too large \(400x100 exceeds {cap} pixels\)"):
            load_image(data, name="w.png", max_pixels=cap)
    assert load_image(data, max_pixels=40_000).size == (400, 100)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused():
    data = png_bytes(Image.new("L", (2000, 2000)))
    with pytest.raises(ImageError, match="too large"):
        load_image(data, name="bomb.png", max_pixels=1_000_000)


def test_tensor_roundtrip_and_padding():
    img = photo(37, 5)
    x = to_tensor(img)
    assert to_image(x).tobytes() == img.tobytes()
    assert pad(x, 128).shape[-2:] == (128, 128)
    assert pad(x, 8).shape[-2:] == (8, 40)
