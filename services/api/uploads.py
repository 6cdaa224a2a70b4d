"""Upload handling: a streamed byte limit, format checks from the bytes, and metadata removal."""

from __future__ import annotations

import codecs
import hashlib
import io
import struct
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from PIL import Image as PILImage
from PIL import ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from services.api.errors import ApiError
from services.catalog.models import Image, ImageStatus
from services.embedding import InvalidImageError, open_image
from services.ingest.service import FileOutcome, UploadedFile, add_images

if TYPE_CHECKING:
    from services.runtime import Runtime

ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF")
EXIF_ORIENTATION_TAG = 0x0112
# JPEG markers kept when metadata is removed: APP0 (JFIF), APP2 only for ICC colour profiles,
# and APP14 (Adobe), because decoders read the colour transform from it. APP1 (EXIF, XMP),
# APP13 (IPTC), the other APPn segments and COM comments are dropped.
JPEG_APP0, JPEG_APP2, JPEG_APP14, JPEG_COM, JPEG_SOS = 0xE0, 0xE2, 0xEE, 0xFE, 0xDA
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG chunks that carry metadata: EXIF, text, compressed and international text, modification time.
PNG_METADATA_CHUNKS = {b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"}


def sniff_format(data: bytes) -> str | None:
    """Return JPEG, PNG or TIFF from the file's first bytes, or None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


async def read_limited_form(request: Request, max_bytes: int, max_files: int, max_fields: int = 10) -> FormData:
    """Parse a multipart body, rejecting it with 413 as soon as it passes `max_bytes`.

    A declared Content-Length over the limit is rejected before any byte is read, and a chunked
    body is counted while it streams, so an oversized upload is never parsed or buffered whole.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            422, "invalid_upload", f"expected a multipart/form-data body, got {content_type or 'no content type'!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(
            413,
            "too_large",
            f"upload of {declared} bytes exceeds the limit of {max_bytes} bytes (ENDODOC_UPLOAD_MAX_BYTES): "
            "send fewer or smaller files per request",
        )

    async def limited_stream() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(
                    413,
                    "too_large",
                    f"upload exceeds the limit of {max_bytes} bytes (ENDODOC_UPLOAD_MAX_BYTES): "
                    "send fewer or smaller files per request",
                )
            yield chunk

    parser = MultiPartParser(
        request.headers, limited_stream(), max_files=max_files, max_fields=max_fields, max_part_size=max_bytes
    )
    try:
        return await parser.parse()
    except MultiPartException as error:
        if "Too many files" in error.message:
            raise ApiError(
                413,
                "too_many_files",
                f"{error.message} (ENDODOC_UPLOAD_MAX_FILES): send at most {max_files} files per request",
                {"max_files": max_files},
            ) from None
        raise ApiError(422, "invalid_upload", f"invalid multipart body: {error.message}") from None


@dataclass(frozen=True)
class CheckedFile:
    """An uploaded file after the checks: its cleaned bytes, or the reason it was rejected."""

    filename: str
    data: bytes
    error: str | None = None


def describe_content(data: bytes) -> str:
    """Say whether unrecognised content is text or binary, without quoting any of it.

    The message is stored and logged, and a text file can hold patient data, so not even
    its first bytes are repeated.
    """
    try:
        # Not final: a character cut at byte 512 is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(data[:512], final=False)
    except UnicodeDecodeError:
        return "its content is in an unknown binary format"
    if all(character.isprintable() or character.isspace() for character in text):
        return "its content is text, such as an HTML error page"
    return "its content is in an unknown binary format"


def check_upload(filename: str, data: bytes, max_pixels: int) -> CheckedFile:
    """Check the format from the bytes, decode the whole image, and return it without metadata."""
    if not data:
        return CheckedFile(filename, data, "the file is empty (0 bytes): send the file's content")
    image_format = sniff_format(data)
    if image_format is None:
        return CheckedFile(
            filename,
            data,
            f"not a JPEG, PNG or TIFF file ({describe_content(data)}): export the image as JPEG, PNG or TIFF",
        )
    try:
        open_image(data, max_pixels=max_pixels)
        cleaned = strip_metadata(data, image_format)
        open_image(cleaned, max_pixels=max_pixels)
    except InvalidImageError as error:
        return CheckedFile(filename, data, f"not a readable image: {error}")
    return CheckedFile(filename, cleaned)


def strip_metadata(data: bytes, image_format: str) -> bytes:
    """Return the image without EXIF, XMP, IPTC, text chunks and comments.

    JPEG and PNG keep their compressed pixel data byte for byte. An image with an EXIF
    orientation other than upright, and every TIFF (whose metadata sits in the same tag
    directory as its layout), is decoded, turned upright and encoded again (JPEG at quality 95,
    TIFF with lossless LZW). Only the first frame of a multi-page TIFF is kept.
    """
    with PILImage.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
        if image_format == "TIFF" or orientation not in (0, 1):
            return _reencode(image, image_format)
    if image_format == "JPEG":
        return _strip_jpeg(data)
    return _strip_png(data)


def _reencode(image: PILImage.Image, image_format: str) -> bytes:
    """Encode the image upright, then strip the output again, because Pillow copies the source's JPEG comment."""
    image.load()
    upright = ImageOps.exif_transpose(image)
    output = io.BytesIO()
    if image_format == "JPEG":
        rgb = upright if upright.mode in ("RGB", "L", "CMYK") else upright.convert("RGB")
        rgb.save(output, "JPEG", quality=95, icc_profile=image.info.get("icc_profile"))
        return _strip_jpeg(output.getvalue())
    if image_format == "TIFF":
        upright.save(output, "TIFF", compression="tiff_lzw")
        return output.getvalue()
    upright.save(output, "PNG", icc_profile=image.info.get("icc_profile"))
    return _strip_png(output.getvalue())


def _strip_jpeg(data: bytes) -> bytes:
    """Copy a JPEG's segments up to the scan, leaving out the metadata ones; the scan is copied as is."""
    output = bytearray(data[:2])
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise InvalidImageError(f"The JPEG segment at byte {position} is invalid.")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == JPEG_SOS:
            output += data[position:]
            return bytes(output)
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        segment = data[position : position + 2 + length]
        is_app = 0xE0 <= marker <= 0xEF
        keep = not (is_app or marker == JPEG_COM) or marker in (JPEG_APP0, JPEG_APP14)
        if marker == JPEG_APP2 and segment[4:16] == b"ICC_PROFILE\x00":
            keep = True
        if keep:
            output += segment
        position += 2 + length
    raise InvalidImageError("The JPEG file has no image scan.")


def _strip_png(data: bytes) -> bytes:
    """Copy a PNG's chunks, leaving out the metadata chunks."""
    output = bytearray(PNG_SIGNATURE)
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunk_type = data[position + 4 : position + 8]
        end = position + 12 + length
        if chunk_type not in PNG_METADATA_CHUNKS:
            output += data[position:end]
        position = end
        if chunk_type == b"IEND":
            return bytes(output)
    raise InvalidImageError("The PNG file has no IEND chunk.")


def record_rejected(session: Session, procedure_id: uuid.UUID, checked: CheckedFile) -> FileOutcome:
    """Record a rejected file as a `failed` image, or return the procedure's image with the same bytes."""
    digest = hashlib.sha256(checked.data).hexdigest()
    existing = session.scalar(select(Image).where(Image.procedure_id == procedure_id, Image.sha256 == digest))
    if existing is not None:
        return FileOutcome(checked.filename, existing.id, existing.status, existing.error, duplicate=True)
    image = Image(procedure_id=procedure_id, sha256=digest, status=ImageStatus.FAILED, error=checked.error)
    session.add(image)
    session.flush()
    return FileOutcome(checked.filename, image.id, image.status, image.error)


def as_uploaded(checked: CheckedFile) -> UploadedFile:
    return UploadedFile(filename=checked.filename, data=checked.data)


def store_files(
    session: Session, runtime: Runtime, procedure_id: uuid.UUID, received: Sequence[tuple[str, bytes]]
) -> list[FileOutcome]:
    """Check (filename, bytes) pairs, record rejected files as `failed` and store the others without metadata."""
    max_pixels = runtime.settings.image_max_pixels
    outcomes = []
    for filename, data in received:
        checked = check_upload(filename, data, max_pixels)
        if checked.error is not None:
            outcomes.append(record_rejected(session, procedure_id, checked))
        else:
            outcomes.extend(add_images(session, runtime, procedure_id, [as_uploaded(checked)]))
    return outcomes
