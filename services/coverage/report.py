"""Coverage of a procedure: which required landmarks are documented, by which image."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from services.catalog.models import Image, ImageStatus, Prediction, Procedure
from services.coverage.landmarks import get_landmark_set

LandmarkStatus = Literal["documented", "missing", "pending"]


@dataclass(frozen=True)
class LandmarkCoverage:
    """One required landmark: documented by its best image, missing, or pending on queued images."""

    code: str
    name: str
    status: LandmarkStatus
    image_id: str | None = None
    score: float | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    # For a landmark that is not documented: the image whose prediction names it with the
    # highest vote share below the threshold, for a reviewer to check.
    candidate_image_id: str | None = None
    candidate_score: float | None = None


@dataclass(frozen=True)
class ObservedClass:
    """A non-required class and how many of the procedure's images were labeled with it."""

    code: str
    name: str
    count: int


@dataclass(frozen=True)
class CoverageReport:
    """Documentation coverage of one procedure under one model version."""

    procedure_id: str
    external_id: str
    landmark_set: str
    model_version: str
    coverage: float
    landmarks: list[LandmarkCoverage]
    observed: list[ObservedClass]
    images: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def awaits_prediction(status: ImageStatus, embedded_under: str | None, predicted: bool, model_version: str) -> bool:
    """Return True when an image will still get a prediction of `model_version`.

    That is a queued image, or one embedded under another model (a reindex will redo it). An
    image embedded under this model without a prediction had no reference images to vote, so
    it is not waiting for anything.
    """
    if status == ImageStatus.QUEUED:
        return True
    return status == ImageStatus.EMBEDDED and not predicted and embedded_under != model_version


def procedure_coverage(
    session: Session, procedure: Procedure, model_version: str, min_score: float
) -> CoverageReport:
    """Build the coverage report of `procedure` from its images' predictions under `model_version`.

    A required landmark is documented by the image whose prediction names it with the highest
    vote share, at least `min_score`. Without such an image it is pending while any image still
    awaits a prediction of this model version (`awaits_prediction`), and missing otherwise.
    """
    landmark_set = get_landmark_set(procedure.landmark_set)
    rows = session.execute(
        select(Image, Prediction)
        .outerjoin(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_version == model_version))
        .where(Image.procedure_id == procedure.id)
        .order_by(Image.created_at, Image.id)
    ).all()

    status_counts = Counter(image.status.value for image, _ in rows)
    waiting = any(awaits_prediction(image.status, image.model_version, prediction is not None, model_version)
                  for image, prediction in rows)
    strongest: dict[str, Prediction] = {}
    label_counts: Counter[str] = Counter()
    for _image, prediction in rows:
        if prediction is None:
            continue
        label_counts[prediction.landmark_code] += 1
        current = strongest.get(prediction.landmark_code)
        if current is None or prediction.score > current.score:
            strongest[prediction.landmark_code] = prediction
    best = {code: prediction for code, prediction in strongest.items() if prediction.score >= min_score}

    landmarks = []
    for landmark in landmark_set.required:
        prediction = best.get(landmark.code)
        if prediction is not None:
            landmarks.append(
                LandmarkCoverage(
                    code=landmark.code,
                    name=landmark.name,
                    status="documented",
                    image_id=str(prediction.image_id),
                    score=round(prediction.score, 4),
                    evidence=list(prediction.evidence),
                )
            )
        else:
            candidate = strongest.get(landmark.code)
            landmarks.append(
                LandmarkCoverage(
                    code=landmark.code,
                    name=landmark.name,
                    status="pending" if waiting else "missing",
                    candidate_image_id=str(candidate.image_id) if candidate is not None else None,
                    candidate_score=round(candidate.score, 4) if candidate is not None else None,
                )
            )

    documented = sum(1 for item in landmarks if item.status == "documented")
    return CoverageReport(
        procedure_id=str(procedure.id),
        external_id=procedure.external_id,
        landmark_set=landmark_set.code,
        model_version=model_version,
        coverage=round(documented / len(landmarks), 4) if landmarks else 1.0,
        landmarks=landmarks,
        observed=[
            ObservedClass(code=landmark.code, name=landmark.name, count=label_counts[landmark.code])
            for landmark in landmark_set.observed
        ],
        images={status.value: status_counts.get(status.value, 0) for status in ImageStatus},
    )


def find_procedure(session: Session, procedure_id: uuid.UUID) -> Procedure | None:
    return session.get(Procedure, procedure_id)
