"""Image decoding policy: sniff the real format, refuse corrupt files and decompression bombs,
normalise what the wild holds (CMYK, grayscale, palette, alpha, 16-bit, PNG named .jpg) to RGB.

EXIF orientation is NOT applied, on every path (manifest sizes, shard JSON, --resize, training,
predict): pixels are used as stored, as the authors' loader (PIL `Image.open(...).convert('RGB')`)
did for the published numbers. Sizes are the stored ones, read from the header.

Works with Pillow and pillow-simd alike (only the common API is used).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .errors import BadInputError

MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (about 0.25 GB of RGBA)

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class BadImageError(BadInputError):
    """An image that cannot be used: corrupt, truncated, unknown format or too large."""


def not_an_image(data: bytes, where: str) -> BadImageError:
    """The one line for bytes of no format mlrpl reads (an HTML error page saved as .jpg, ...)."""
    return BadImageError(f"{where}: not an image (unknown format, first bytes {data[:8].hex()}); "
                         f"mlrpl reads JPEG, PNG, GIF, BMP, WebP and TIFF")


def sniff_format(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width, height from the first SOFn marker (no PIL: this runs once per image in write-shards)."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + seg
    return None


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    if fmt == "JPEG":
        return _jpeg_size(data)
    if fmt == "PNG" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _jpeg_scan(data: bytes) -> int:
    """Where the first scan (SOS) starts, walking the segments (an EXIF thumbnail's own SOS and EOI
    sit inside APP1 and are skipped); -1 if none."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return -1
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0xDA:
            return i
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return -1


def _png_ends(data: bytes) -> bool:
    """An IEND chunk, walking the chunks (bytes after it, as some tools append, are allowed)."""
    i, n = 8, len(data)
    while i + 8 <= n:
        if data[i + 4:i + 8] == b"IEND":
            return True
        i += 12 + int.from_bytes(data[i:i + 4], "big")
    return False


def check_complete(data: bytes, fmt: str | None, where: str) -> None:
    """Refuse a truncated JPEG or PNG (the common damage of an interrupted copy) with the same line on
    every path (write-shards, training, predict). Zero padding and bytes after the end (camera
    trailers) are accepted, as decoders do."""
    if fmt == "JPEG" and data[-64:].rstrip(b"\x00")[-2:] != b"\xff\xd9":
        scan = _jpeg_scan(data)  # entropy-coded data cannot hold FF D9: one after the scan ends the image
        if scan < 0 or data.rfind(b"\xff\xd9", scan) < 0:
            raise BadImageError(f"{where}: truncated JPEG (no end-of-image marker): copy or download it again")
    if fmt == "PNG" and b"IEND" not in data[-16:] and not _png_ends(data):
        raise BadImageError(f"{where}: truncated PNG (no IEND chunk): copy or download it again")


def probe(data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> tuple[str, int, int]:
    """Cheap validity check without decoding pixels: (format, width, height) or BadImageError.

    Reads the header and checks the end marker of JPEG (EOI) and PNG (IEND), which catches
    truncated files, the common corruption of interrupted downloads.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise not_an_image(data, where)
    check_complete(data, fmt, where)
    size = _header_size(data, fmt)
    if size is None or min(size) <= 0:
        try:
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
        except Exception as e:  # PIL raises many types for broken headers
            raise BadImageError(f"{where}: unreadable {fmt} header ({e})") from None
    w, h = size
    if w * h > max_pixels:
        raise BadImageError(f"{where}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)")
    return fmt, w, h


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: always the top 8 bits, as Pillow reads 16-bit RGB (convert("L") would clip;
        # a shift chosen by the image's maximum would make a dark image bright)
        arr = np.asarray(im, dtype=np.int64)
        im = Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8), "L")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def decode_rgb(data: bytes, where: str, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """Fully decode to RGB, pixels as stored (EXIF orientation not applied); BadImageError otherwise.

    `draft` lets a JPEG decode at a reduced DCT scale when the caller only needs at least that size.
    """
    fmt = sniff_format(data)
    if fmt is None:  # the formats every path accepts are the ones write-shards accepts
        raise not_an_image(data, where)
    check_complete(data, fmt, where)
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise BadImageError(f"{where}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)")
        if draft is not None and im.format == "JPEG":
            im.draft("RGB", draft)
        im.load()
        return _to_rgb(im)
    except BadImageError:
        raise
    except Exception as e:
        raise BadImageError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None


def resize_shorter_side(im: Image.Image, size: int) -> Image.Image:
    """Shrink so the shorter side is `size` (never enlarge), bicubic."""
    w, h = im.size
    if min(w, h) <= size:
        return im
    scale = size / min(w, h)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def encode_jpeg(im: Image.Image, quality: int = 95) -> bytes:
    """Baseline JPEG without EXIF (no orientation tag: the pixels are already as every path reads them)."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def reencode(data: bytes, where: str, size: int | None, quality: int = 95) -> tuple[bytes, int, int, str]:
    """Decode, normalise to RGB, optionally resize, encode JPEG: (bytes, width, height, source format)."""
    im = decode_rgb(data, where)
    if size:
        im = resize_shorter_side(im, size)
    return encode_jpeg(im, quality), im.size[0], im.size[1], sniff_format(data) or "unknown"


def header_size(path, where: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file from its header (its first 256 KiB; PIL for anything else);
    BadImageError naming the file when it is not an image."""
    where = where or str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 18)
    except OSError as e:
        raise BadImageError(f"{where}: cannot be read ({e.strerror or e})") from None
    fmt = sniff_format(head)
    if fmt is None:
        raise not_an_image(head, where)
    size = _header_size(head, fmt)
    if size and size[0] > 0 and size[1] > 0:
        return size
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise BadImageError(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
