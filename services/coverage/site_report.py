"""Coverage across many procedures: per-procedure landmark status in bulk, and a site's documentation rates."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from services.catalog.models import Image, Prediction, Procedure
from services.coverage.landmarks import get_landmark_set
from services.coverage.report import LandmarkStatus, awaits_prediction


def landmark_statuses(
    session: Session, procedures: Sequence[Procedure], model_version: str, min_score: float
) -> dict[uuid.UUID, dict[str, LandmarkStatus]]:
    """Return the status of each required landmark of each procedure, from one query.

    The rules are those of `procedure_coverage`: documented by a prediction with a score of at
    least `min_score`, else pending while an image waits for a prediction of `model_version`,
    else missing.
    """
    if not procedures:
        return {}
    rows = session.execute(
        select(Image.procedure_id, Image.status, Image.model_version, Prediction.landmark_code, Prediction.score)
        .outerjoin(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_version == model_version))
        .where(Image.procedure_id.in_([procedure.id for procedure in procedures]))
    ).all()

    documented: dict[uuid.UUID, set[str]] = defaultdict(set)
    waiting: set[uuid.UUID] = set()
    for procedure_id, status, embedded_under, landmark_code, score in rows:
        if awaits_prediction(status, embedded_under, landmark_code is not None, model_version):
            waiting.add(procedure_id)
        if landmark_code is not None and score >= min_score:
            documented[procedure_id].add(landmark_code)

    statuses = {}
    for procedure in procedures:
        otherwise: LandmarkStatus = "pending" if procedure.id in waiting else "missing"
        statuses[procedure.id] = {
            landmark.code: "documented" if landmark.code in documented[procedure.id] else otherwise
            for landmark in get_landmark_set(procedure.landmark_set).required
        }
    return statuses


def is_complete(statuses: dict[str, LandmarkStatus]) -> bool:
    """Return True when every required landmark is documented."""
    return all(status == "documented" for status in statuses.values())


@dataclass(frozen=True)
class ProcedureRef:
    """A procedure that does not document a landmark yet: `missing`, or `pending` on queued images."""

    id: str
    external_id: str
    performed_at: str
    status: LandmarkStatus


@dataclass
class LandmarkRate:
    """How many of the site's procedures in range document one required landmark."""

    code: str
    name: str
    procedures: int = 0
    documented: int = 0
    pending: int = 0
    rate: float | None = None
    undocumented: list[ProcedureRef] = field(default_factory=list)


@dataclass
class LandmarkSetCoverage:
    """The landmark rates of the site's procedures that use one landmark set."""

    landmark_set: str
    name: str
    procedures: int
    complete_procedures: int
    landmarks: list[LandmarkRate]


@dataclass(frozen=True)
class SiteCoverageReport:
    """Documentation rates of one site's procedures performed in [date_from, date_to)."""

    site_id: str
    date_from: str | None
    date_to: str | None
    model_version: str
    procedures: int
    landmark_sets: list[LandmarkSetCoverage]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def site_coverage(
    session: Session,
    site_id: uuid.UUID,
    date_from: datetime | None,
    date_to: datetime | None,
    model_version: str,
    min_score: float,
) -> SiteCoverageReport:
    """Report, per landmark set and required landmark, the share of procedures that document it.

    `rate` is documented procedures over all procedures of the set in range, so a pending
    landmark lowers it until its images are embedded. `pending` counts the waiting ones.
    """
    query = select(Procedure).where(Procedure.site_id == site_id)
    if date_from is not None:
        query = query.where(Procedure.performed_at >= date_from)
    if date_to is not None:
        query = query.where(Procedure.performed_at < date_to)
    procedures = list(session.scalars(query.order_by(Procedure.performed_at, Procedure.id)))
    statuses = landmark_statuses(session, procedures, model_version, min_score)

    by_set: dict[str, list[Procedure]] = defaultdict(list)
    for procedure in procedures:
        by_set[procedure.landmark_set].append(procedure)

    sets = []
    for code in sorted(by_set):
        landmark_set = get_landmark_set(code)
        members = by_set[code]
        rates = [LandmarkRate(code=landmark.code, name=landmark.name) for landmark in landmark_set.required]
        for procedure in members:
            for rate in rates:
                status = statuses[procedure.id][rate.code]
                rate.procedures += 1
                if status == "documented":
                    rate.documented += 1
                    continue
                if status == "pending":
                    rate.pending += 1
                rate.undocumented.append(
                    ProcedureRef(str(procedure.id), procedure.external_id, procedure.performed_at.isoformat(), status)
                )
        for rate in rates:
            rate.rate = round(rate.documented / rate.procedures, 4) if rate.procedures else None
        sets.append(
            LandmarkSetCoverage(
                landmark_set=code,
                name=landmark_set.name,
                procedures=len(members),
                complete_procedures=sum(1 for procedure in members if is_complete(statuses[procedure.id])),
                landmarks=rates,
            )
        )
    return SiteCoverageReport(
        site_id=str(site_id),
        date_from=date_from.isoformat() if date_from is not None else None,
        date_to=date_to.isoformat() if date_to is not None else None,
        model_version=model_version,
        procedures=len(procedures),
        landmark_sets=sets,
    )
