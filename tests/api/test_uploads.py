"""Uploads: byte and file limits, formats from the bytes, metadata removal and duplicates."""

from __future__ import annotations

import io
import uuid

import pytest
from PIL import Image, PngImagePlugin

from services.api.uploads import check_upload, sniff_format, strip_metadata
from services.catalog.models import Image as ImageRow
from services.db import unit_of_work
from tests.api.conftest import procedure_body, upload_files
from tests.conftest import class_images

EXIF_ORIENTATION = 0x0112
EXIF_MAKE = 0x010F


@pytest.fixture
def procedure_id(client):
    return client.post("/v1/procedures", json=procedure_body()).json()["id"]


def stored_bytes(runtime, image_id) -> bytes:
    with unit_of_work(runtime.sessions) as session:
        row = session.get(ImageRow, uuid.UUID(image_id))
        return runtime.blobs.get(row.blob_key)


def jpeg_with_exif(path, orientation: int) -> bytes:
    picture = Image.open(path).convert("RGB")
    exif = Image.Exif()
    exif[EXIF_MAKE] = "PatientCam 3000"
    exif[EXIF_ORIENTATION] = orientation
    output = io.BytesIO()
    picture.save(output, "JPEG", quality=90, exif=exif.tobytes(), comment=b"patient 12345")
    return output.getvalue()


def test_declared_size_over_limit_is_413(client, settings, procedure_id):
    settings.upload_max_bytes = 1000
    response = client.post(
        f"/v1/procedures/{procedure_id}/images", files=[("files", ("big.jpg", b"\xff" * 5000, "image/jpeg"))]
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "1000" in response.json()["error"]["message"]


def test_streamed_body_over_limit_is_413(client, settings, procedure_id):
    settings.upload_max_bytes = 1000
    boundary = "endodoc-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + b"\xff" * 5000 + f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    response = client.post(
        f"/v1/procedures/{procedure_id}/images",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in {key.lower() for key in response.request.headers}
    assert response.status_code == 413


def test_too_many_files_is_413(client, settings, procedure_id, labeled_images):
    settings.upload_max_files = 2
    response = client.post(
        f"/v1/procedures/{procedure_id}/images", files=upload_files(class_images(labeled_images, "polyp", 3))
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_files"


def test_non_multipart_upload_is_422(client, procedure_id):
    response = client.post(f"/v1/procedures/{procedure_id}/images", json={"files": []})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_upload"


def test_formats_other_than_jpeg_png_tiff_fail(client, procedure_id, labeled_images):
    picture = Image.open(class_images(labeled_images, "polyp", 1)[0]).convert("RGB")
    files = []
    for image_format in ("BMP", "GIF", "WEBP"):
        output = io.BytesIO()
        picture.save(output, image_format)
        files.append(("files", (f"image.{image_format.lower()}", output.getvalue(), "image/jpeg")))
    response = client.post(f"/v1/procedures/{procedure_id}/images", files=files)
    assert response.status_code == 422
    outcomes = response.json()["error"]["details"]["images"]
    assert [outcome["status"] for outcome in outcomes] == ["failed"] * 3
    assert all("not a JPEG, PNG or TIFF" in outcome["error"] for outcome in outcomes)


def test_truncated_jpeg_fails_full_decode(client, procedure_id, labeled_images):
    data = class_images(labeled_images, "polyp", 1)[0].read_bytes()
    response = client.post(
        f"/v1/procedures/{procedure_id}/images", files=[("files", ("cut.jpg", data[: len(data) // 2], "image/jpeg"))]
    )
    assert response.status_code == 422
    assert "cut.jpg" in response.json()["error"]["message"]


def test_png_and_tiff_are_accepted(client, procedure_id, labeled_images):
    picture = Image.open(class_images(labeled_images, "polyp", 1)[0]).convert("RGB")
    files = []
    for image_format in ("PNG", "TIFF"):
        output = io.BytesIO()
        picture.save(output, image_format)
        files.append(("files", (f"image.{image_format.lower()}", output.getvalue(), "application/octet-stream")))
    response = client.post(f"/v1/procedures/{procedure_id}/images", files=files)
    assert response.status_code == 202
    assert [outcome["status"] for outcome in response.json()["images"]] == ["queued", "queued"]


def test_stored_jpeg_has_no_exif_or_comment(client, runtime, procedure_id, labeled_images):
    data = jpeg_with_exif(class_images(labeled_images, "polyp", 1)[0], orientation=1)
    assert b"PatientCam" in data
    response = client.post(f"/v1/procedures/{procedure_id}/images", files=[("files", ("a.jpg", data, "image/jpeg"))])
    stored = stored_bytes(runtime, response.json()["images"][0]["image_id"])
    assert b"PatientCam" not in stored
    assert b"patient 12345" not in stored
    assert not Image.open(io.BytesIO(stored)).getexif()
    # Without a rotation the compressed scan is kept byte for byte.
    assert stored[-2000:] == data[-2000:]


def test_rotated_jpeg_is_stored_upright(client, runtime, procedure_id, labeled_images):
    path = class_images(labeled_images, "polyp", 1)[0]
    width, height = Image.open(path).size
    data = jpeg_with_exif(path, orientation=6)  # rotate 90 degrees clockwise to display
    response = client.post(f"/v1/procedures/{procedure_id}/images", files=[("files", ("r.jpg", data, "image/jpeg"))])
    stored = Image.open(io.BytesIO(stored_bytes(runtime, response.json()["images"][0]["image_id"])))
    assert not stored.getexif()
    assert stored.size == (height, width)


def test_png_text_chunks_are_removed():
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "Jane Doe")
    output = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(output, "PNG", pnginfo=info)
    data = output.getvalue()
    cleaned = strip_metadata(data, "PNG")
    assert b"Jane Doe" in data
    assert b"Jane Doe" not in cleaned
    assert Image.open(io.BytesIO(cleaned)).getpixel((0, 0)) == (200, 10, 10)


def test_format_comes_from_bytes_not_name():
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert sniff_format(b"\x89PNG\r\n\x1a\nrest") == "PNG"
    assert sniff_format(b"II*\x00rest") == "TIFF"
    assert sniff_format(b"MM\x00*rest") == "TIFF"
    assert sniff_format(b"BM\x00\x00") is None
    assert sniff_format(b"<?xml") is None


def test_duplicate_returns_existing_image(client, procedure_id, labeled_images):
    paths = class_images(labeled_images, "polyp", 1)
    first = client.post(f"/v1/procedures/{procedure_id}/images", files=upload_files(paths)).json()["images"][0]
    again = client.post(f"/v1/procedures/{procedure_id}/images", files=upload_files(paths)).json()["images"][0]
    assert again["image_id"] == first["image_id"]
    assert again["duplicate"] is True
    listed = client.get(f"/v1/procedures/{procedure_id}/images").json()
    assert listed["total"] == 1


def test_client_filename_is_never_a_path(client, runtime, settings, procedure_id, labeled_images):
    data = class_images(labeled_images, "polyp", 1)[0].read_bytes()
    response = client.post(
        f"/v1/procedures/{procedure_id}/images", files=[("files", ("../../../escape.jpg", data, "image/jpeg"))]
    )
    assert response.status_code == 202
    assert response.json()["images"][0]["filename"] == "../../../escape.jpg"
    assert not list(settings.data_dir.parent.rglob("escape.jpg"))


def test_thumbnail_is_small_jpeg(client, procedure_id, labeled_images):
    upload = client.post(
        f"/v1/procedures/{procedure_id}/images", files=upload_files(class_images(labeled_images, "polyp", 1))
    )
    image_id = upload.json()["images"][0]["image_id"]
    response = client.get(f"/v1/images/{image_id}/thumbnail?size=128")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) == 128
    assert client.get(f"/v1/images/{image_id}/thumbnail?size=100").status_code == 422


@pytest.mark.parametrize(
    ("content", "kind"),
    [(b"DOE^JANE 1950-01-01 referral letter", "text"), (b"JANE\x00\x01\xff\xfe" * 4, "binary")],
)
def test_rejection_of_unknown_content_quotes_none_of_it(content, kind):
    checked = check_upload("scan.jpg", content, max_pixels=1_000_000)

    assert checked.error is not None and kind in checked.error
    assert "JANE" not in checked.error
    assert content[:8].hex() not in checked.error
