"""Patient data: identifiers in filenames and image metadata reach no log line, vector payload or stored file."""

from __future__ import annotations

import io
import json
import struct
import uuid
from pathlib import Path

import pytest
from PIL import Image

from services.catalog.models import Image as ImageRow
from services.cli import main
from services.db import unit_of_work
from services.runtime import Runtime
from services.settings import Settings
from services.vectors.base import PAYLOAD_KEYS
from tests.api.conftest import create_site, procedure_body
from tests.conftest import class_images
from tests.logging_state import command_logging  # noqa: F401 (fixture)
from tests.security.patient_files import found_needles, patient_files, rejected_patient_file

EMBED_TIMEOUT_S = 120
JPEG_SOS, JPEG_COM, JPEG_APP2, JPEG_APP14 = 0xDA, 0xFE, 0xE2, 0xEE
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_METADATA_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
# TIFF tags that carry text or metadata blocks: description, artist, date, XMP, IPTC, Photoshop, EXIF and GPS.
TIFF_METADATA_TAGS = {270, 315, 306, 700, 33723, 34377, 34665, 34853}


@pytest.fixture
def source_jpeg(labeled_images) -> bytes:
    return class_images(labeled_images, "normal-cecum", 8)[-1].read_bytes()


def jpeg_metadata(data: bytes) -> list[str]:
    """Return the metadata segments (APPn other than JFIF, ICC and Adobe, and COM) before the JPEG's scan."""
    found = []
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        if marker == JPEG_SOS:
            break
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        segment = data[position : position + 2 + length]
        is_icc = marker == JPEG_APP2 and segment[4:16] == b"ICC_PROFILE\x00"
        if marker == JPEG_COM or (0xE1 <= marker <= 0xEF and marker != JPEG_APP14 and not is_icc):
            found.append(f"JPEG segment 0x{marker:02X}")
        position += 2 + length
    return found


def png_metadata(data: bytes) -> list[str]:
    found = []
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        if kind in PNG_METADATA_CHUNKS:
            found.append(f"PNG chunk {kind.decode()}")
        position += 12 + length
    return found


def stored_metadata(data: bytes) -> list[str]:
    """Return every metadata item found in a stored image file, and any patient identifier in its bytes."""
    found = [f"identifier {needle!r}" for needle in found_needles(data)]
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            found += jpeg_metadata(data)
            found += [f"JPEG info {key}" for key in ("comment", "exif", "xmp") if key in image.info]
            found += [f"EXIF tag {tag}" for tag in image.getexif()]
        elif image.format == "PNG":
            found += png_metadata(data)
            found += [f"PNG text {key}" for key in image.text]
            found += [f"EXIF tag {tag}" for tag in image.getexif()]
        elif image.format == "TIFF":
            found += [f"TIFF tag {tag}" for tag in image.tag_v2 if tag in TIFF_METADATA_TAGS]
        else:
            found.append(f"unexpected stored format {image.format}")
    return found


def files_containing_identifiers(root: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            needles = found_needles(path.read_bytes())
            if needles:
                found[str(path.relative_to(root))] = needles
    return found


def upload_patient_files(client, queue, source_jpeg) -> tuple[dict, list[str]]:
    """Upload the patient files and one rejected file to a new site; return its key headers and accepted image ids."""
    site = create_site(client, "privacy-site")
    headers = site.headers
    procedure_id = client.post("/v1/procedures", json=procedure_body("PRIVACY-1"), headers=headers).json()["id"]
    files = [*patient_files(source_jpeg), rejected_patient_file()]
    response = client.post(
        f"/v1/procedures/{procedure_id}/images",
        files=[("files", (name, data, content_type)) for name, data, content_type in files],
        headers=headers,
    )
    assert response.status_code == 202, response.text
    outcomes = response.json()["images"]
    assert [outcome["status"] for outcome in outcomes] == ["queued"] * (len(files) - 1) + ["failed"]
    alone = client.post(
        f"/v1/procedures/{procedure_id}/images", files=[("files", rejected_patient_file())], headers=headers
    )
    assert alone.status_code == 422
    queue.wait_idle(timeout_s=EMBED_TIMEOUT_S)
    return headers, [outcome["image_id"] for outcome in outcomes[:-1]]


def test_logs_and_payloads_carry_no_identifiers(
    app_client, queue, runtime, settings, source_jpeg, command_logging, capfd  # noqa: F811
):
    command_logging("DEBUG")
    headers, image_ids = upload_patient_files(app_client, queue, source_jpeg)
    name, data, content_type = patient_files(source_jpeg)[0]
    search = app_client.post("/v1/search", files={"file": (name, data, content_type)}, headers=headers)
    review = app_client.post(
        f"/v1/images/{image_ids[0]}/reviews", json={"action": "confirm", "reviewer": "dr.hansen"}, headers=headers
    )
    promotion = app_client.post(f"/v1/images/{image_ids[0]}/promote", headers=headers)
    captured = capfd.readouterr()

    assert search.status_code == 200, search.text
    assert review.status_code == 201, review.text
    assert promotion.status_code == 200, promotion.text
    images = [app_client.get(f"/v1/images/{image_id}", headers=headers).json() for image_id in image_ids]
    assert [image["status"] for image in images] == ["embedded"] * len(image_ids)

    log = captured.out + captured.err
    assert "event='images_embedded'" in log  # the capture works, so an empty result below means something
    leaking_lines = [line[:300] for line in log.splitlines() if found_needles(line)]
    assert leaking_lines == [], "\n".join(leaking_lines)

    images_collection, references_collection = runtime.collections()
    points = runtime.vectors.retrieve(images_collection, [uuid.UUID(image_id) for image_id in image_ids])
    points += runtime.vectors.retrieve(references_collection, [uuid.UUID(promotion.json()["reference_id"])])
    assert len(points) == len(image_ids) + 1
    for point in points:
        assert set(point.payload) <= set(PAYLOAD_KEYS)
        assert found_needles(json.dumps(dict(point.payload))) == []
    assert files_containing_identifiers(settings.data_dir) == {}


def test_stored_uploads_carry_no_metadata(app_client, queue, runtime, source_jpeg):
    _, image_ids = upload_patient_files(app_client, queue, source_jpeg)

    found = {}
    for image_id in image_ids:
        with unit_of_work(runtime.sessions) as session:
            row = session.get(ImageRow, uuid.UUID(image_id))
            blob = runtime.blobs.get(row.blob_key)
        found[image_id] = stored_metadata(blob)
    assert found == {image_id: [] for image_id in image_ids}


def test_source_files_carry_metadata(source_jpeg):
    for name, data, _ in patient_files(source_jpeg):
        assert stored_metadata(data), f"{name} has no metadata, so the checks above could not fail"


def test_ingest_command_stores_no_metadata(tmp_path, monkeypatch, command_logging, source_jpeg, capsys):  # noqa: F811
    data_dir = tmp_path / "cli-data"
    monkeypatch.setenv("ENDODOC_DATA_DIR", str(data_dir))
    for variable in ("ENDODOC_DATABASE_URL", "ENDODOC_QDRANT_URL", "ENDODOC_BROKER_URL"):
        monkeypatch.delenv(variable, raising=False)
    folder = tmp_path / "export"
    folder.mkdir()
    for name, data, _ in patient_files(source_jpeg):
        (folder / name).write_bytes(data)

    assert main(["db", "upgrade"]) == 0
    assert main(["ingest", str(folder), "--site", "cli-privacy", "--procedure", "CLI-PRIVACY-1",
                 "--landmark-set", "hyperkvasir-lower-gi"]) == 0
    output = capsys.readouterr()

    assert output.out.count(" embedded") == len(patient_files(source_jpeg)), output.out
    assert found_needles(output.err) == []
    runtime = Runtime(Settings(data_dir=data_dir))
    try:
        with unit_of_work(runtime.sessions) as session:
            blobs = [runtime.blobs.get(row.blob_key) for row in session.query(ImageRow).all()]
    finally:
        runtime.close()
    assert len(blobs) == len(patient_files(source_jpeg))
    assert [stored_metadata(blob) for blob in blobs] == [[] for _ in blobs]
    identifiers = files_containing_identifiers(data_dir)
    assert identifiers == {}
