"""Coverage statuses computed from prediction rows."""

from __future__ import annotations

from datetime import UTC, datetime

from services.catalog.models import Image, ImageStatus, Prediction, ProcedureKind
from services.catalog.queries import get_or_create_procedure, get_or_create_site
from services.coverage.report import procedure_coverage
from services.db import unit_of_work

MODEL = "test-model"


def add_image(session, procedure, number: int, status: ImageStatus, label: str | None = None, score: float = 0.0):
    embedded_under = MODEL if status == ImageStatus.EMBEDDED else None
    image = Image(procedure_id=procedure.id, sha256=f"{number:064x}", status=status, model_version=embedded_under)
    session.add(image)
    session.flush()
    if label is not None:
        session.add(Prediction(image_id=image.id, landmark_code=label, score=score, model_version=MODEL, evidence=[]))
        session.flush()
    return image


def new_procedure(session):
    site = get_or_create_site(session, "report-site")
    procedure, _ = get_or_create_procedure(
        session, site, "COL-1", ProcedureKind.COLONOSCOPY, "hyperkvasir-lower-gi", datetime.now(UTC)
    )
    return procedure


def test_best_image_above_threshold_documents(runtime):
    with unit_of_work(runtime.sessions) as session:
        procedure = new_procedure(session)
        add_image(session, procedure, 1, ImageStatus.EMBEDDED, "normal-cecum", 0.85)
        best = add_image(session, procedure, 2, ImageStatus.EMBEDDED, "normal-cecum", 0.95)
        add_image(session, procedure, 3, ImageStatus.EMBEDDED, "polyp", 1.0)
        report = procedure_coverage(session, procedure, MODEL, min_score=0.8)

    cecum = report.landmarks[0]
    assert cecum.status == "documented"
    assert cecum.image_id == str(best.id)
    assert cecum.score == 0.95
    assert cecum.candidate_image_id is None
    assert report.coverage == 1.0
    assert {item.code: item.count for item in report.observed}["polyp"] == 1


def test_below_threshold_is_missing_with_candidate(runtime):
    with unit_of_work(runtime.sessions) as session:
        procedure = new_procedure(session)
        weak = add_image(session, procedure, 1, ImageStatus.EMBEDDED, "normal-cecum", 0.73)
        add_image(session, procedure, 2, ImageStatus.EMBEDDED, "normal-cecum", 0.6)
        report = procedure_coverage(session, procedure, MODEL, min_score=0.8)

    cecum = report.landmarks[0]
    assert cecum.status == "missing"
    assert cecum.image_id is None
    assert cecum.candidate_image_id == str(weak.id)
    assert cecum.candidate_score == 0.73
    assert report.coverage == 0.0


def test_queued_image_makes_missing_pending(runtime):
    with unit_of_work(runtime.sessions) as session:
        procedure = new_procedure(session)
        add_image(session, procedure, 1, ImageStatus.EMBEDDED, "polyp", 1.0)
        add_image(session, procedure, 2, ImageStatus.QUEUED)
        report = procedure_coverage(session, procedure, MODEL, min_score=0.8)

    assert report.landmarks[0].status == "pending"
    assert report.images == {"queued": 1, "embedded": 1, "failed": 0}


def test_prediction_of_other_model_counts_as_pending(runtime):
    with unit_of_work(runtime.sessions) as session:
        procedure = new_procedure(session)
        add_image(session, procedure, 1, ImageStatus.EMBEDDED, "normal-cecum", 1.0)
        report = procedure_coverage(session, procedure, "another-model", min_score=0.8)

    assert report.landmarks[0].status == "pending"


def test_failed_images_alone_leave_landmark_missing(runtime):
    with unit_of_work(runtime.sessions) as session:
        procedure = new_procedure(session)
        add_image(session, procedure, 1, ImageStatus.FAILED)
        report = procedure_coverage(session, procedure, MODEL, min_score=0.8)

    assert report.landmarks[0].status == "missing"
    assert report.images["failed"] == 1


def test_embedded_without_references_is_missing(runtime):
    # Embedded under the current model with no prediction: the gallery had no references.
    with unit_of_work(runtime.sessions) as session:
        procedure = new_procedure(session)
        add_image(session, procedure, 1, ImageStatus.EMBEDDED)
        report = procedure_coverage(session, procedure, MODEL, min_score=0.8)

    assert report.landmarks[0].status == "missing"
