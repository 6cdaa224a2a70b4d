"""A corpus of bad and unusual image files, built in memory, each with the outcome endodoc must produce.

Nothing here is stored in the repository: every file is made with Pillow and numpy from one
real endoscopy JPEG (`source`) or from nothing at all.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise for display.
ROTATE_CLOCKWISE = 6
BOMB_WIDTH, BOMB_HEIGHT = 10_000, 9_000
GRADIENT_WIDTH, GRADIENT_HEIGHT = 256, 64
PALETTE_OPAQUE_COLOUR = (0, 200, 0)

Outcome = Literal["rejected", "accepted"]


@dataclass(frozen=True)
class Case:
    """One bad or unusual file and the outcome endodoc must produce for it.

    A `rejected` file fails its checks: uploaded alone it gets 422, beside a good image it
    becomes a `failed` image whose error contains every string of `problem` and `fix`.
    `decode_problem` and `decode_fix` are what the decoder itself reports, which is the error
    of an image whose stored file turns into these bytes after it was accepted. An `accepted`
    file is stored, embedded and labeled like any other image.
    """

    id: str
    filename: str
    content_type: str
    make: Callable[[bytes], bytes]
    outcome: Outcome
    problem: tuple[str, ...] = ()
    fix: str = ""
    decode_problem: tuple[str, ...] = ()
    decode_fix: str = ""

    def data(self, source: bytes) -> bytes:
        """Build the file's bytes from the real JPEG `source`."""
        return self.make(source)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    output = io.BytesIO()
    image.save(output, image_format, **options)
    return output.getvalue()


def decode_rgb(source: bytes) -> Image.Image:
    with Image.open(io.BytesIO(source)) as image:
        return image.convert("RGB")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def decompression_bomb_png(width: int = BOMB_WIDTH, height: int = BOMB_HEIGHT) -> bytes:
    """Build a PNG of a few kilobytes whose header declares width x height 8-bit grey pixels.

    Only the first two rows are present, so a decoder that trusts the header allocates the
    whole image before it notices the missing data.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    two_rows = zlib.compress(b"\x00" * (2 * (width + 1)), 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", two_rows) + png_chunk(b"IEND", b"")


def gradient_16_bit() -> np.ndarray:
    """Return a horizontal 16-bit grey ramp from 0 to 65535, GRADIENT_WIDTH columns wide."""
    row = np.linspace(0, 65_535, GRADIENT_WIDTH).round().astype(np.uint16)
    return np.tile(row, (GRADIENT_HEIGHT, 1))


def gradient_16_bit_png(_source: bytes = b"") -> bytes:
    return encode(Image.fromarray(gradient_16_bit()), "PNG")


def gradient_8_bit_png() -> bytes:
    """Return the 16-bit ramp scaled to 8 bits, the pixels a correct decoder produces from it."""
    ramp = np.rint(gradient_16_bit() * (255 / 65_535)).astype(np.uint8)
    return encode(Image.fromarray(ramp, mode="L"), "PNG")


def cmyk_jpeg(source: bytes) -> bytes:
    return encode(decode_rgb(source).convert("CMYK"), "JPEG", quality=95)


def palette_png_with_transparency(_source: bytes = b"") -> bytes:
    """Return a 64 x 32 palette PNG: left half fully transparent (index 0), right half opaque green."""
    image = Image.new("P", (64, 32), 0)
    image.putpalette([255, 255, 255, *PALETTE_OPAQUE_COLOUR] + [0, 0, 0] * 254)
    image.paste(1, (32, 0, 64, 32))
    return encode(image, "PNG", transparency=0)


def exif_rotated_jpeg(source: bytes) -> bytes:
    """Return the source pixels with EXIF orientation 6, so viewers show them turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_CLOCKWISE
    return encode(decode_rgb(source), "JPEG", quality=95, exif=exif.tobytes())


def physically_rotated_jpeg(source: bytes) -> bytes:
    """Return the source pixels turned 90 degrees clockwise, without EXIF: what the EXIF-rotated file shows."""
    return encode(decode_rgb(source).transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)


def unrotated_jpeg(source: bytes) -> bytes:
    return encode(decode_rgb(source), "JPEG", quality=95)


def one_pixel_png(_source: bytes = b"") -> bytes:
    return encode(Image.new("RGB", (1, 1), (180, 90, 70)), "PNG")


def truncated_jpeg(source: bytes) -> bytes:
    return source[: len(source) // 2]


HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>\n"
TEXT_FILE = b"This is a plain text file with a .jpg name.\n"

REJECTED = (
    Case(
        "zero-byte", "empty.jpg", "image/jpeg", lambda _: b"", "rejected",
        ("empty", "0 bytes"), "send the file's content",
        ("empty", "0 bytes"), "send the file's content",
    ),
    Case(
        "text-as-jpeg", "notes.jpg", "image/jpeg", lambda _: TEXT_FILE, "rejected",
        ("not a JPEG, PNG or TIFF", "content is text"), "export the image as JPEG, PNG or TIFF",
        ("not a supported image",), "accepted formats are JPEG, PNG, TIFF",
    ),
    Case(
        "html-as-jpeg", "gateway-error.jpg", "image/jpeg", lambda _: HTML_PAGE, "rejected",
        ("not a JPEG, PNG or TIFF", "content is text"), "export the image as JPEG, PNG or TIFF",
        ("not a supported image",), "accepted formats are JPEG, PNG, TIFF",
    ),
    Case(
        "truncated-jpeg", "cut.jpg", "image/jpeg", truncated_jpeg, "rejected",
        ("truncated",), "upload the complete original file again",
        ("truncated",), "upload the complete original file again",
    ),
    Case(
        "decompression-bomb-png", "bomb.png", "image/png", lambda _: decompression_bomb_png(), "rejected",
        (f"{BOMB_WIDTH} x {BOMB_HEIGHT}", str(BOMB_WIDTH * BOMB_HEIGHT), "ENDODOC_IMAGE_MAX_PIXELS"),
        "downscale the image",
        (f"{BOMB_WIDTH} x {BOMB_HEIGHT}", "ENDODOC_IMAGE_MAX_PIXELS"), "downscale the image",
    ),
)

ACCEPTED = (
    Case("16-bit-grey-png", "ramp16.png", "image/png", gradient_16_bit_png, "accepted"),
    Case("cmyk-jpeg", "cmyk.jpg", "image/jpeg", cmyk_jpeg, "accepted"),
    Case("palette-png-transparency", "palette.png", "image/png", palette_png_with_transparency, "accepted"),
    Case("exif-rotated-jpeg", "rotated.jpg", "image/jpeg", exif_rotated_jpeg, "accepted"),
    Case("1x1-png", "dot.png", "image/png", one_pixel_png, "accepted"),
    Case("parent-path-filename", "../../../escape-attempt.jpg", "image/jpeg", unrotated_jpeg, "accepted"),
)

ALL_CASES = REJECTED + ACCEPTED


def case_ids(cases: tuple[Case, ...]) -> list[str]:
    return [case.id for case in cases]
