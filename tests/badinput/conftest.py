"""Bad-input fixtures: the API app of tests/api, a procedure to upload into, and one good image."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.catalog.models import Image as ImageRow
from services.catalog.models import ProcedureKind
from services.catalog.queries import get_or_create_procedure, get_or_create_site
from services.db import unit_of_work
from services.ingest.service import LabeledFile, UploadedFile, add_references
from tests.api.conftest import GALLERY_PER_CLASS, procedure_body
from tests.api.conftest import app_client, client, queue, site_a  # noqa: F401 (fixtures)
from tests.conftest import class_images
from tests.logging_state import command_logging  # noqa: F401 (fixture)

# The API gallery holds the first GALLERY_PER_CLASS images of each class, so the next one is never a reference.
FIRST_IMAGE_OUTSIDE_GALLERY = GALLERY_PER_CLASS


@pytest.fixture
def good_image(labeled_images) -> Path:
    """Return a real caecum JPEG that is not in the reference gallery."""
    return class_images(labeled_images, "normal-cecum", FIRST_IMAGE_OUTSIDE_GALLERY + 1)[-1]


@pytest.fixture
def source_jpeg(labeled_images) -> bytes:
    """Return the real polyp JPEG that the corpus builds its images from."""
    return class_images(labeled_images, "polyp", FIRST_IMAGE_OUTSIDE_GALLERY + 1)[-1].read_bytes()


@pytest.fixture
def procedure_id(client) -> str:  # noqa: F811 (the client fixture imported above)
    response = client.post("/v1/procedures", json=procedure_body("BAD-INPUT-1"))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def stored_blob(runtime, image_id: str) -> bytes:
    """Return the bytes the blob store holds for an image."""
    with unit_of_work(runtime.sessions) as session:
        row = session.get(ImageRow, uuid.UUID(image_id))
        assert row is not None, f"image {image_id} has no catalog row"
        assert row.blob_key is not None, f"image {image_id} has no stored file ({row.status}: {row.error})"
        return runtime.blobs.get(row.blob_key)


def stored_vectors(runtime, image_ids: list[str]) -> dict[str, object]:
    """Return the vector index points of the images under the current model, by image id."""
    images_collection, _ = runtime.collections()
    points = runtime.vectors.retrieve(images_collection, [uuid.UUID(image_id) for image_id in image_ids])
    return {str(point.id): point for point in points}


SERVICE_GALLERY_PER_CLASS = 2


@pytest.fixture
def procedure_uuid(runtime, labeled_images) -> uuid.UUID:
    """Add a small shared gallery (two references each of caecum and polyp) and return a new procedure's id."""
    with unit_of_work(runtime.sessions) as session:
        references = [
            LabeledFile(label, UploadedFile(path.name, path.read_bytes()))
            for label in ("normal-cecum", "polyp")
            for path in class_images(labeled_images, label, SERVICE_GALLERY_PER_CLASS)
        ]
        add_references(session, runtime, None, references)
        site = get_or_create_site(session, "bad-input-site")
        procedure, _ = get_or_create_procedure(
            session, site, "BAD-INPUT-2", ProcedureKind.COLONOSCOPY, "hyperkvasir-lower-gi", datetime.now(UTC)
        )
        return procedure.id
