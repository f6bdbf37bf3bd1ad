"""Captions a file already carries: XMP dc:description and EXIF ImageDescription."""

import io

from PIL import Image, PngImagePlugin

from codec.semantic.embedded import embedded_caption, exif_description, xmp_description

XMP = """<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?><x:xmpmeta xmlns:x="adobe:ns:meta/">
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">
<dc:description><rdf:Alt><rdf:li xml:lang="fr">Un phare</rdf:li><rdf:li xml:lang="x-default">A white lighthouse &amp; a red boat</rdf:li></rdf:Alt></dc:description>
</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end='w'?>"""


def jpeg_with_exif(description: str) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = description
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def png_with_xmp(xmp: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_exif_description():
    assert exif_description(jpeg_with_exif("A harbour at dusk")) == "A harbour at dusk"
    assert embedded_caption(jpeg_with_exif("A harbour at dusk")) == ("A harbour at dusk", "exif")


def test_camera_placeholders_are_not_captions():
    for placeholder in ("OLYMPUS DIGITAL CAMERA", "SONY DSC", "   "):
        assert exif_description(jpeg_with_exif(placeholder)) is None


def test_xmp_description_prefers_x_default():
    data = png_with_xmp(XMP)
    assert xmp_description(data) == "A white lighthouse & a red boat"
    assert embedded_caption(data) == ("A white lighthouse & a red boat", "xmp")


def test_no_caption_and_garbage():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    assert embedded_caption(buf.getvalue()) == (None, None)
    assert embedded_caption(b"not an image") == (None, None)
