"""Image files that carry a fake patient's name and birth date in their filenames and metadata.

Each file is built in memory from one real endoscopy JPEG. The identifiers sit where
endoscopy exports and cameras put them: EXIF, XMP, IPTC and comments in JPEG, text and
EXIF chunks in PNG, and description, artist and XMP tags in TIFF.
"""

from __future__ import annotations

import io
import struct

from PIL import Image, PngImagePlugin, TiffImagePlugin

PATIENT_NAME = "Kari Nordmann"
BIRTH_DATE = "1957-03-14"
# Every form of the identifiers that a leak could take: name parts and the date as EXIF, ISO and compact text.
NEEDLES = ("Kari", "Nordmann", BIRTH_DATE, "1957:03:14", "19570314", "14.03.1957")
PATIENT_TEXT = f"{PATIENT_NAME}, born {BIRTH_DATE}"

EXIF_ORIENTATION, EXIF_DESCRIPTION, EXIF_ARTIST, EXIF_DATETIME = 0x0112, 0x010E, 0x013B, 0x0132
TIFF_XMP = 700
ROTATE_CLOCKWISE = 6
JPEG_APP13 = 0xED


def patient_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    exif[EXIF_DESCRIPTION] = PATIENT_TEXT
    exif[EXIF_ARTIST] = PATIENT_NAME
    exif[EXIF_DATETIME] = "1957:03:14 08:00:00"
    return exif


def patient_xmp() -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="{PATIENT_NAME}" '
        f'dc:date="{BIRTH_DATE}"/></rdf:RDF></x:xmpmeta>'
    ).encode()


def with_iptc_segment(jpeg: bytes) -> bytes:
    """Insert an APP13 (Photoshop IPTC) segment with the patient's name right after the JPEG's SOI marker."""
    name = PATIENT_NAME.encode()
    record = b"\x1c\x02\x05" + struct.pack(">H", len(name)) + name  # IPTC 2:05 object name
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(record)) + record
    payload = b"Photoshop 3.0\x00" + resource
    segment = bytes([0xFF, JPEG_APP13]) + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def rgb(source: bytes) -> Image.Image:
    with Image.open(io.BytesIO(source)) as image:
        return image.convert("RGB")


def jpeg_with_metadata(source: bytes, orientation: int = 1) -> bytes:
    output = io.BytesIO()
    rgb(source).save(
        output, "JPEG", quality=92, exif=patient_exif(orientation).tobytes(), comment=PATIENT_TEXT.encode(),
        xmp=patient_xmp(),
    )
    return with_iptc_segment(output.getvalue())


def png_with_metadata(source: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", PATIENT_NAME)
    info.add_text("Comment", PATIENT_TEXT, zip=True)
    info.add_itxt("Description", PATIENT_TEXT, lang="no", tkey="Beskrivelse")
    output = io.BytesIO()
    rgb(source).save(output, "PNG", pnginfo=info, exif=patient_exif().tobytes())
    return output.getvalue()


def tiff_with_metadata(source: bytes) -> bytes:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[EXIF_DESCRIPTION] = PATIENT_TEXT
    tags[EXIF_ARTIST] = PATIENT_NAME
    tags[EXIF_DATETIME] = "1957:03:14 08:00:00"
    tags[TIFF_XMP] = patient_xmp()
    output = io.BytesIO()
    rgb(source).save(output, "TIFF", tiffinfo=tags)
    return output.getvalue()


def patient_files(source: bytes) -> list[tuple[str, bytes, str]]:
    """Return (filename, bytes, content type) of accepted images whose names and metadata carry the identifiers."""
    files = [
        (f"{PATIENT_NAME} {BIRTH_DATE} cecum.jpg", jpeg_with_metadata(source), "image/jpeg"),
        ("Nordmann_Kari_19570314_rotated.jpg", jpeg_with_metadata(source, ROTATE_CLOCKWISE), "image/jpeg"),
        (f"kari.nordmann.{BIRTH_DATE}.png", png_with_metadata(source), "image/png"),
        (f"{PATIENT_NAME} 14.03.1957.tif", tiff_with_metadata(source), "image/tiff"),
    ]
    for _, data, _ in files:
        assert PATIENT_NAME.encode() in data, "the builder must put the name into the file"
    return files


def rejected_patient_file() -> tuple[str, bytes, str]:
    """Return a text file named like an image, whose name and content carry the identifiers."""
    return (f"{PATIENT_NAME} {BIRTH_DATE}.jpg", f"Report for {PATIENT_TEXT}\n".encode(), "image/jpeg")


def found_needles(text: str | bytes) -> list[str]:
    """Return the identifiers found in `text`."""
    if isinstance(text, bytes):
        return [needle for needle in NEEDLES if needle.encode() in text]
    return [needle for needle in NEEDLES if needle in text]
