"""Ingestion on the embedded stack: real images, the real `lite` model, SQLite and qdrant-edge."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from services.catalog.models import Image, ImageStatus, Prediction, ProcedureKind
from services.catalog.queries import CatalogError, get_or_create_procedure, get_or_create_site
from services.coverage.report import procedure_coverage
from services.db import unit_of_work
from services.ingest.service import LabeledFile, UploadedFile, add_images, add_references, embed_images
from services.vectors import collection_name
from tests.conftest import class_images

CLASSES = ("normal-cecum", "polyp", "bbps-2-3")


def upload(path) -> UploadedFile:
    return UploadedFile(filename=path.name, data=path.read_bytes())


def make_gallery(runtime, root, classes, per_class=20):
    """Add `per_class` reference images of each class to a new site's gallery; return the site id."""
    with unit_of_work(runtime.sessions) as session:
        site = get_or_create_site(session, "test-site")
        files = [
            LabeledFile(label, upload(path)) for label in classes for path in class_images(root, label, per_class)
        ]
        add_references(session, runtime, site, files)
        return site.id


@pytest.fixture
def gallery(runtime, labeled_images):
    return make_gallery(runtime, labeled_images, CLASSES)


def new_procedure(runtime, site_id, external_id="proc-1"):
    with unit_of_work(runtime.sessions) as session:
        site = get_or_create_site(session, "test-site")
        assert site.id == site_id
        procedure, _ = get_or_create_procedure(
            session, site, external_id, ProcedureKind.COLONOSCOPY, "hyperkvasir-lower-gi", datetime.now(UTC)
        )
        return procedure.id


def test_bad_file_fails_and_batch_goes_on(runtime, gallery, labeled_images):
    procedure_id = new_procedure(runtime, gallery)
    good = [upload(path) for path in class_images(labeled_images, "polyp", 22)[20:22]]
    bad = UploadedFile(filename="notes.jpg", data=b"<html>not an image</html>")
    with unit_of_work(runtime.sessions) as session:
        outcomes = add_images(session, runtime, procedure_id, [good[0], bad, good[1]])

    assert [outcome.status for outcome in outcomes] == [ImageStatus.QUEUED, ImageStatus.FAILED, ImageStatus.QUEUED]
    assert "not a readable image" in outcomes[1].error
    with unit_of_work(runtime.sessions) as session:
        assert embed_images(session, runtime, [outcome.image_id for outcome in outcomes]) == 2
    with unit_of_work(runtime.sessions) as session:
        statuses = dict(session.execute(select(Image.id, Image.status)).all())
    assert statuses[outcomes[0].image_id] == ImageStatus.EMBEDDED
    assert statuses[outcomes[1].image_id] == ImageStatus.FAILED
    assert statuses[outcomes[2].image_id] == ImageStatus.EMBEDDED


def test_duplicate_upload_stays_single(runtime, gallery, labeled_images):
    procedure_id = new_procedure(runtime, gallery)
    file = upload(class_images(labeled_images, "normal-cecum", 21)[20])
    with unit_of_work(runtime.sessions) as session:
        first = add_images(session, runtime, procedure_id, [file])
    with unit_of_work(runtime.sessions) as session:
        second = add_images(session, runtime, procedure_id, [file])
    assert second[0].duplicate
    assert second[0].image_id == first[0].image_id

    image_ids = [first[0].image_id]
    for _ in range(2):
        with unit_of_work(runtime.sessions) as session:
            embed_images(session, runtime, image_ids)
    # An embedded image is re-embedded only for another model version.
    with unit_of_work(runtime.sessions) as session:
        assert embed_images(session, runtime, image_ids) == 0
        assert session.scalar(select(func.count()).select_from(Image)) == 1
        assert session.scalar(select(func.count()).select_from(Prediction)) == 1
    images_collection = collection_name("images", runtime.model_version)
    assert runtime.vectors.count(images_collection) == 1


def test_cecum_image_documents_the_cecum(runtime, gallery, labeled_images):
    procedure_id = new_procedure(runtime, gallery)
    files = [upload(path) for path in class_images(labeled_images, "normal-cecum", 24)[20:24]]
    with unit_of_work(runtime.sessions) as session:
        outcomes = add_images(session, runtime, procedure_id, files)
    with unit_of_work(runtime.sessions) as session:
        embed_images(session, runtime, [outcome.image_id for outcome in outcomes])
        procedure = session.get_one(Image, outcomes[0].image_id).procedure
        report = procedure_coverage(session, procedure, runtime.model_version, min_score=0.5)

    cecum = report.landmarks[0]
    assert cecum.code == "normal-cecum"
    assert cecum.status == "documented"
    assert cecum.image_id in {str(outcome.image_id) for outcome in outcomes}
    assert cecum.evidence[0]["label"] == "normal-cecum"
    assert report.coverage == 1.0


def test_cecum_pending_then_missing_without_cecum_images(runtime, labeled_images):
    # No cecum references, so no image can document the cecum once embedded.
    site_id = make_gallery(runtime, labeled_images, ("polyp", "bbps-2-3"))
    procedure_id = new_procedure(runtime, site_id)
    files = [upload(path) for path in class_images(labeled_images, "polyp", 24)[20:24]]
    with unit_of_work(runtime.sessions) as session:
        outcomes = add_images(session, runtime, procedure_id, files)
    with unit_of_work(runtime.sessions) as session:
        procedure = session.get_one(Image, outcomes[0].image_id).procedure
        pending = procedure_coverage(session, procedure, runtime.model_version, min_score=0.5)
    with unit_of_work(runtime.sessions) as session:
        embed_images(session, runtime, [outcome.image_id for outcome in outcomes])
        procedure = session.get_one(Image, outcomes[0].image_id).procedure
        done = procedure_coverage(session, procedure, runtime.model_version, min_score=0.5)

    assert pending.landmarks[0].status == "pending"
    assert done.landmarks[0].status == "missing"
    assert done.coverage == 0.0
    assert {item.code: item.count for item in done.observed}["polyp"] >= 3


def test_unknown_reference_label_is_rejected_before_storing(runtime, labeled_images):
    file = upload(class_images(labeled_images, "polyp", 1)[0])
    with unit_of_work(runtime.sessions) as session:
        with pytest.raises(CatalogError, match="'not-a-landmark'"):
            add_references(session, runtime, None, [LabeledFile("not-a-landmark", file)])
    assert not runtime.settings.resolved_blob_dir.exists() or not any(runtime.settings.resolved_blob_dir.rglob("*"))


def test_failed_embedding_is_retried_on_reupload(runtime, gallery, labeled_images):
    procedure_id = new_procedure(runtime, gallery)
    file = upload(class_images(labeled_images, "polyp", 25)[24])
    with unit_of_work(runtime.sessions) as session:
        image_id = add_images(session, runtime, procedure_id, [file])[0].image_id
    # As if the embedding had failed while the vector store was unavailable.
    with unit_of_work(runtime.sessions) as session:
        image = session.get_one(Image, image_id)
        image.status = ImageStatus.FAILED
        image.error = "embedding failed: VectorIndexError: store locked"

    with unit_of_work(runtime.sessions) as session:
        outcome = add_images(session, runtime, procedure_id, [file])[0]
    assert outcome.duplicate
    assert outcome.status == ImageStatus.QUEUED
    assert outcome.error is None
    with unit_of_work(runtime.sessions) as session:
        assert embed_images(session, runtime, [image_id]) == 1


def test_unreadable_file_stays_failed_on_reupload(runtime, gallery):
    procedure_id = new_procedure(runtime, gallery)
    bad = UploadedFile(filename="notes.jpg", data=b"plain text")
    for _ in range(2):
        with unit_of_work(runtime.sessions) as session:
            outcome = add_images(session, runtime, procedure_id, [bad])[0]
        assert outcome.status == ImageStatus.FAILED
