"""Procedure routes: create, get, list with filters, and coverage."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.api.auth import Principal, PrincipalDep
from services.api.deps import RuntimeDep, SessionDep, procedure_for
from services.api.errors import ApiError
from services.api.schemas import CoveragePublic, CoverageStatus, Page, ProcedureCreate, ProcedurePublic
from services.catalog.models import Procedure, ProcedureKind, Site
from services.catalog.queries import get_or_create_procedure
from services.coverage.report import procedure_coverage
from services.coverage.site_report import LandmarkStatus, is_complete, landmark_statuses

router = APIRouter(prefix="/v1/procedures")


def coverage_status(statuses: dict[str, LandmarkStatus]) -> CoverageStatus:
    """Summarise a procedure's landmark statuses as complete, pending or incomplete."""
    if is_complete(statuses):
        return "complete"
    if any(value == "pending" for value in statuses.values()):
        return "pending"
    return "incomplete"


def _creation_site(session: Session, principal: Principal, slug: str | None) -> Site:
    if slug is None:
        if principal.is_admin:
            raise ApiError(422, "invalid_value", "the admin key must name the procedure's site: set `site`")
        site = session.get(Site, principal.site_id)
    else:
        site = session.scalar(select(Site).where(Site.slug == slug))
        if site is None:
            if not principal.is_admin:
                raise ApiError(403, "forbidden", f"this API key cannot create procedures at site {slug!r}")
            raise ApiError(404, "not_found", f"site {slug!r} not found: create it with POST /v1/sites")
    assert site is not None
    principal.require_site(site.id)
    return site


@router.post("", status_code=status.HTTP_201_CREATED, tags=["procedures"])
def create_procedure(body: ProcedureCreate, principal: PrincipalDep, session: SessionDep) -> ProcedurePublic:
    """Create a procedure, or return the site's existing one with the same external id."""
    site = _creation_site(session, principal, body.site)
    procedure, _ = get_or_create_procedure(
        session, site, body.external_id, body.kind, body.landmark_set, body.performed_at
    )
    return ProcedurePublic.model_validate(procedure)


@router.get("", tags=["procedures"])
def list_procedures(
    principal: PrincipalDep,
    session: SessionDep,
    runtime: RuntimeDep,
    site_id: Annotated[uuid.UUID | None, Query(description="Required with the admin key.")] = None,
    kind: ProcedureKind | None = None,
    date_from: Annotated[datetime | None, Query(alias="from", description="Performed at or after.")] = None,
    date_to: Annotated[datetime | None, Query(alias="to", description="Performed before.")] = None,
    coverage: Annotated[CoverageStatus | None, Query(description="Keep procedures with this coverage status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[ProcedurePublic]:
    """List the site's procedures, newest first, with their coverage status."""
    scope = principal.scope_site(site_id)
    query = select(Procedure).where(Procedure.site_id == scope)
    if kind is not None:
        query = query.where(Procedure.kind == kind)
    if date_from is not None:
        query = query.where(Procedure.performed_at >= date_from)
    if date_to is not None:
        query = query.where(Procedure.performed_at < date_to)
    query = query.order_by(Procedure.performed_at.desc(), Procedure.id)
    model_version = runtime.model_version
    min_score = runtime.settings.coverage.min_score

    if coverage is None:
        total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
        page = list(session.scalars(query.limit(limit).offset(offset)))
        statuses = landmark_statuses(session, page, model_version, min_score)
    else:
        # The coverage status comes from predictions, not from a column, so every candidate is
        # classified before the page is cut.
        candidates = list(session.scalars(query))
        statuses = landmark_statuses(session, candidates, model_version, min_score)
        matching = [item for item in candidates if coverage_status(statuses[item.id]) == coverage]
        total = len(matching)
        page = matching[offset : offset + limit]

    items = [
        ProcedurePublic.model_validate(procedure).model_copy(
            update={"coverage_status": coverage_status(statuses[procedure.id])}
        )
        for procedure in page
    ]
    return Page[ProcedurePublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{procedure_id}", tags=["procedures"])
def get_procedure(procedure_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> ProcedurePublic:
    """Return one procedure."""
    return ProcedurePublic.model_validate(procedure_for(session, principal, procedure_id))


@router.get("/{procedure_id}/coverage", tags=["coverage"])
def get_coverage(
    procedure_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, runtime: RuntimeDep
) -> CoveragePublic:
    """Report each required landmark as documented (best image, score, supporting references), missing or pending."""
    procedure = procedure_for(session, principal, procedure_id)
    report = procedure_coverage(session, procedure, runtime.model_version, runtime.settings.coverage.min_score)
    return CoveragePublic.model_validate(report.as_dict())
