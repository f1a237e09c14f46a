import io

import numpy as np
import pytest
from PIL import Image

from mlrpl_data.images import BadImageError, decode_rgb, probe, reencode, resize_shorter_side


def jpeg(mode="RGB", size=(40, 30), exif_orientation=None) -> bytes:
    im = Image.new(mode, size, 128 if mode in ("L",) else (10, 20, 30, 40)[: len(mode)] if mode == "CMYK" else (200, 10, 10))
    buf = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(buf, "JPEG", exif=exif.tobytes())
    else:
        im.save(buf, "JPEG")
    return buf.getvalue()


def png(mode="RGB", size=(40, 30)) -> bytes:
    if mode == "I;16":
        im = Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16))
    else:
        im = Image.new(mode, size, (1, 2, 3) if mode == "RGB" else 7)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_probe_reads_real_format_and_size():
    assert probe(jpeg(), "a.jpg") == ("JPEG", 40, 30)
    assert probe(png(), "png-named.jpg") == ("PNG", 40, 30)  # a PNG named .jpg: format recorded


def test_truncated_and_garbage_refused_with_file_named():
    data = jpeg()
    with pytest.raises(BadImageError, match="x.jpg: truncated JPEG"):
        probe(data[: len(data) // 2], "x.jpg")
    with pytest.raises(BadImageError, match="y.jpg: not an image"):
        probe(b"<html>404</html>", "y.jpg")
    with pytest.raises(BadImageError, match="truncated PNG"):
        probe(png()[:-20], "z.png")


def test_pixel_limit():
    with pytest.raises(BadImageError, match="exceeds the limit"):
        probe(jpeg(size=(200, 200)), "big.jpg", max_pixels=1000)
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_rgb(jpeg(size=(200, 200)), "big.jpg", max_pixels=1000)


@pytest.mark.parametrize("data", [jpeg("CMYK"), jpeg("L"), png("I;16"), png("RGB"), png("P")],
                         ids=["cmyk", "gray", "png16", "png", "palette"])
def test_everything_normalises_to_rgb(data):
    im = decode_rgb(data, "w")
    assert im.mode == "RGB" and im.size == (40, 30)


def test_sixteen_bit_keeps_top_bits():
    im = decode_rgb(png("I;16"), "w")
    assert np.asarray(im)[0, 0, 0] == 40000 >> 8


@pytest.mark.fuzzclass("image metadata")
def test_sixteen_bit_dark_image_stays_dark():
    im = Image.fromarray(np.full((3, 4), 200, dtype=np.uint16))  # every value <= 255: still 16-bit
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert np.asarray(decode_rgb(buf.getvalue(), "dark"))[0, 0, 0] == 0  # 200 / 256, not 200


@pytest.mark.fuzzclass("image metadata")
def test_exif_orientation_not_applied():
    im = decode_rgb(jpeg(size=(40, 30), exif_orientation=6), "r")  # pixels as stored, as the authors' loader
    assert im.size == (40, 30)


def test_reencode_resizes_shorter_side_only_down():
    data, w, h, fmt = reencode(jpeg(size=(400, 300)), "a", 150)
    assert fmt == "JPEG"
    assert (w, h) == (200, 150) and probe(data, "a")[0] == "JPEG"
    assert resize_shorter_side(Image.new("RGB", (100, 80)), 150).size == (100, 80)


def with_thumbnail(data: bytes) -> bytes:
    """An APP1 segment holding a thumbnail's own SOS and EOI markers, right after SOI."""
    payload = b"Exif\x00\x00" + b"\xff\xd8\xff\xda\x00\x02xx\xff\xd9"
    return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


@pytest.mark.parametrize("data, name", [(jpeg(), "a.jpg"), (with_thumbnail(jpeg()), "thumb.jpg"), (png(), "b.png")])
@pytest.mark.fuzzclass("image metadata")
def test_truncated_is_one_line_on_every_path(data, name):
    kind = "JPEG" if name.endswith(".jpg") else "PNG"
    assert probe(data + b"TRAILER" * 20, name)[0] == kind  # bytes after the end (camera trailers): accepted
    assert decode_rgb(data + b"\x00" * 30, name).size == (40, 30)  # zero padding: accepted
    cut = data[: len(data) - 40]
    for read in (probe, decode_rgb, lambda d, w: reencode(d, w, 10)):  # write-shards, training/predict, --resize
        with pytest.raises(BadImageError, match=rf"^{name}: truncated {kind} \(no .*\): copy or download it again$"):
            read(cut, name)


@pytest.mark.fuzzclass("image metadata")
def test_not_an_image_is_the_same_line_on_every_path(tmp_path):
    from mlrpl_data.images import header_size

    page = b"<html>404 Not Found</html>"
    (tmp_path / "p.jpg").write_bytes(page)
    want = r"^p.jpg: not an image \(unknown format, first bytes 3c68746d6c3e3430\); mlrpl reads JPEG, PNG, GIF, BMP, WebP and TIFF$"
    for read in (probe, decode_rgb, lambda d, w: header_size(tmp_path / "p.jpg", w)):  # shards, decode, build
        with pytest.raises(BadImageError, match=want):
            read(page, "p.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buf, "TIFF")  # a format every path reads, write-shards included
    assert probe(buf.getvalue(), "t.tif") == ("TIFF", 40, 30) and decode_rgb(buf.getvalue(), "t.tif").size == (40, 30)
