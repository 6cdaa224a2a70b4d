"""open_image: validation of uploaded bytes and conversion of every Pillow mode to upright RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.embedding import InvalidImageError, open_image

MAX_PIXELS = 40_000_000
EXIF_ORIENTATION_TAG = 0x0112


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring_size(width: int, height: int) -> bytes:
    """Build a small PNG whose IHDR declares width x height 8-bit grey pixels but whose data contains one row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    one_row = zlib.compress(b"\x00" * (width + 1))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", one_row)
        + png_chunk(b"IEND", b"")
    )


def first_jpeg(labeled_images: Path) -> bytes:
    return sorted((labeled_images / "polyp").glob("*.jpg"))[0].read_bytes()


def test_open_image_rejects_empty_bytes():
    with pytest.raises(InvalidImageError) as error:
        open_image(b"", max_pixels=MAX_PIXELS)
    assert "empty" in error.value.reason


def test_open_image_rejects_html():
    html = b"<!DOCTYPE html><html><body><p>Not an image</p></body></html>"
    with pytest.raises(InvalidImageError) as error:
        open_image(html, max_pixels=MAX_PIXELS)
    assert "not a supported image" in error.value.reason


def test_open_image_rejects_truncated_jpeg(labeled_images):
    data = first_jpeg(labeled_images)
    with pytest.raises(InvalidImageError) as error:
        open_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)
    assert "truncated" in error.value.reason


def test_open_image_rejects_truncated_jpeg_with_draft(labeled_images):
    data = first_jpeg(labeled_images)
    with pytest.raises(InvalidImageError) as error:
        open_image(data[: len(data) // 2], max_pixels=MAX_PIXELS, draft_size=224)
    assert "truncated" in error.value.reason


def test_open_image_rejects_declared_90_megapixels_before_decoding():
    data = png_declaring_size(10_000, 9_000)
    assert len(data) < 1_000

    with pytest.raises(InvalidImageError) as error:
        open_image(data, max_pixels=MAX_PIXELS)
    assert "10000 x 9000" in error.value.reason
    assert str(MAX_PIXELS) in error.value.reason


def test_open_image_accepts_size_at_max_pixels():
    image = open_image(encode(Image.new("RGB", (8, 4)), "PNG"), max_pixels=32)
    assert image.size == (8, 4)


def test_open_image_keeps_16_bit_grey_midtone():
    mid_grey = np.full((16, 16), 128 * 257, dtype=np.uint16)
    data = encode(Image.fromarray(mid_grey), "PNG")
    image = open_image(data, max_pixels=MAX_PIXELS)
    pixels = np.asarray(image, dtype=np.float64)
    assert image.mode == "RGB"
    assert abs(pixels.mean() - 128) <= 1


def test_open_image_scales_32_bit_integer_tiff():
    grey = Image.fromarray(np.full((8, 8), 40_000, dtype=np.int32), mode="I")
    pixels = np.asarray(open_image(encode(grey, "TIFF"), max_pixels=MAX_PIXELS), dtype=np.float64)
    assert abs(pixels.mean() - 40_000 * 255 / 65_535) <= 1


def test_open_image_converts_cmyk_jpeg_to_rgb():
    red_cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    image = open_image(encode(red_cmyk, "JPEG", quality=95), max_pixels=MAX_PIXELS)
    red, green, blue = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert image.mode == "RGB"
    assert red > 230
    assert green < 25
    assert blue < 25


def test_open_image_composites_palette_transparency_on_black():
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([255, 255, 255, 0, 200, 0] + [0, 0, 0] * 254)
    palette_image.paste(1, (2, 0, 4, 2))
    data = encode(palette_image, "PNG", transparency=0)

    image = open_image(data, max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((3, 1)) == (0, 200, 0)


def test_open_image_composites_rgba_on_black():
    rgba = Image.new("RGBA", (2, 1), (200, 100, 50, 0))
    rgba.putpixel((1, 0), (200, 100, 50, 255))
    image = open_image(encode(rgba, "PNG"), max_pixels=MAX_PIXELS)
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 0)) == (200, 100, 50)


def test_open_image_applies_exif_rotation():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    data = encode(Image.new("RGB", (40, 20), (10, 20, 30)), "JPEG", exif=exif.tobytes())

    image = open_image(data, max_pixels=MAX_PIXELS)
    assert image.size == (20, 40)
    assert EXIF_ORIENTATION_TAG not in image.getexif()


def test_open_image_accepts_1x1_image():
    image = open_image(encode(Image.new("L", (1, 1), 77), "PNG"), max_pixels=MAX_PIXELS)
    assert image.size == (1, 1)
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_open_image_decodes_real_jpeg_fully(labeled_images):
    data = first_jpeg(labeled_images)
    image = open_image(data, max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.size == Image.open(io.BytesIO(data)).size


def test_open_image_draft_keeps_at_least_draft_size(labeled_images):
    data = first_jpeg(labeled_images)
    full_width, full_height = Image.open(io.BytesIO(data)).size

    image = open_image(data, max_pixels=MAX_PIXELS, draft_size=224)
    assert min(image.size) >= 224
    assert image.size[0] < full_width
    assert image.size[1] < full_height
