"""Decoding and validation of uploaded image files into upright RGB Pillow images."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.embedding.errors import InvalidImageError

# Formats accepted from uploads. Pillow also opens formats such as EPS, which runs Ghostscript,
# so only the raster formats that endoscopy systems and cameras write are allowed. Pillow 13
# opens MPO files through its JPEG plugin and rejects "MPO" as a format name here.
ALLOWED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")
# Pillow modes that hold more than 8 bits per sample: 16-bit and 32-bit integers, 32-bit float.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
UINT16_MAX = 65535


def open_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode image file bytes into a fully loaded, EXIF-upright RGB image.

    The declared width x height is checked against `max_pixels` before any pixel is decoded,
    so a decompression bomb costs only its header. With `draft_size`, a JPEG much larger than
    `draft_size` x `draft_size` pixels is decoded at a reduced DCT scale of at least that size,
    which the embedding path uses to save decode time. Raises InvalidImageError.
    """
    if not data:
        raise InvalidImageError("The file is empty (0 bytes): send the file's content.")

    with warnings.catch_warnings():
        # Pillow warns above its own pixel limit. The max_pixels check below decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as error:
            raise InvalidImageError(
                f"The file is not a supported image; accepted formats are {', '.join(ALLOWED_FORMATS)}."
            ) from error
        except Image.DecompressionBombError as error:
            raise InvalidImageError(f"The image is too large to decode ({error}). Downscale the image.") from error
        except (OSError, ValueError, SyntaxError) as error:
            raise InvalidImageError(
                f"The image header is invalid ({error}). Upload the complete original file again."
            ) from error

        width, height = image.size
        if width * height > max_pixels:
            raise InvalidImageError(
                f"The image has {width} x {height} = {width * height} pixels, more than the maximum of "
                f"{max_pixels} (ENDODOC_IMAGE_MAX_PIXELS). Downscale the image, or raise ENDODOC_IMAGE_MAX_PIXELS."
            )
        if width < 1 or height < 1:
            raise InvalidImageError(f"The image has an invalid size of {width} x {height} pixels.")

        if draft_size is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise InvalidImageError(
                f"The image data is truncated or corrupt ({error}). Upload the complete original file again."
            ) from error

    return to_rgb(upright(image))


def upright(image: Image.Image) -> Image.Image:
    """Rotate and flip the image to undo its EXIF orientation tag, and remove the tag."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as error:
        raise InvalidImageError(f"The image EXIF orientation is invalid: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to RGB, compositing transparency onto black.

    16-bit and 32-bit grayscale is scaled to 8 bit instead of clipped, which would turn
    every value above 255 white.
    """
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise InvalidImageError(f"Cannot convert image mode {image.mode} to RGB: {error}") from error


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale I;16 samples by 255/65535, and I or F samples the same way when they exceed 255.

    32-bit integer and float images carry no declared bit depth. Values up to 255 are taken
    as 8-bit, larger ones as 16-bit (the range PNG and TIFF scanners write), clipped to 0..65535.
    """
    samples = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or samples.max(initial=0.0) > 255:
        samples = np.clip(samples, 0, UINT16_MAX) * (255 / UINT16_MAX)
    grey = np.clip(np.rint(samples), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")
