"""Server-rendered pages for clinicians: a procedure's coverage grid and a site overview."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from services.api.auth import KEY_COOKIE, PagePrincipalDep, authenticate
from services.api.deps import RuntimeDep, SessionDep, image_for, procedure_for, site_for
from services.api.errors import ApiError
from services.api.routes.images import reference_for, thumbnail_response
from services.api.routes.procedures import coverage_status
from services.catalog.models import Procedure, Site
from services.coverage.landmarks import get_landmark_set
from services.coverage.report import procedure_coverage
from services.coverage.site_report import landmark_statuses, site_coverage

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")

# Procedures listed under the site overview's rate table; the rates cover the whole range.
SITE_PAGE_PROCEDURES = 200


def _safe_next(target: str | None) -> str:
    """Return a same-site path to go to after signing in; anything else becomes the start page."""
    if not target or not target.startswith("/ui/") or urlsplit(target).netloc or target.startswith("//"):
        return "/ui/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next_path: Annotated[str | None, Query(alias="next")] = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next_path), "signed_in": False})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=3, max_part_size=4096)
    secret = str(form.get("key") or "").strip()
    target = _safe_next(str(form.get("next") or ""))
    try:
        authenticate(request, secret)
    except ApiError as error:
        context = {"next": target, "signed_in": False, "error": error.message}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        KEY_COOKIE, secret, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/ui"
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/ui")
    return response


@router.get("/", response_class=HTMLResponse)
def start_page(request: Request, principal: PagePrincipalDep, session: SessionDep) -> Response:
    if not principal.is_admin:
        return RedirectResponse(f"/ui/sites/{principal.site_id}", status_code=303)
    sites = session.scalars(select(Site).order_by(Site.name)).all()
    return templates.TemplateResponse(request, "sites.html", {"sites": sites, "signed_in": True})


@router.get("/procedures/{procedure_id}", response_class=HTMLResponse)
def coverage_page(
    request: Request, procedure_id: uuid.UUID, principal: PagePrincipalDep, session: SessionDep, runtime: RuntimeDep
) -> Response:
    procedure = procedure_for(session, principal, procedure_id)
    report = procedure_coverage(session, procedure, runtime.model_version, runtime.settings.coverage.min_score)
    context = {
        "procedure": procedure,
        "report": report,
        "landmark_set": get_landmark_set(procedure.landmark_set),
        "documented": sum(1 for item in report.landmarks if item.status == "documented"),
        "signed_in": True,
    }
    return templates.TemplateResponse(request, "coverage.html", context)


def _day_start(value: date | None) -> datetime | None:
    return datetime.combine(value, time.min, tzinfo=UTC) if value is not None else None


@router.get("/sites/{site_id}", response_class=HTMLResponse)
def site_page(
    request: Request,
    site_id: uuid.UUID,
    principal: PagePrincipalDep,
    session: SessionDep,
    runtime: RuntimeDep,
    date_from: Annotated[date | None, Query(alias="from")] = None,
    date_to: Annotated[date | None, Query(alias="to")] = None,
) -> Response:
    site = site_for(session, principal, site_id)
    start, end = _day_start(date_from), _day_start(date_to)
    model_version = runtime.model_version
    min_score = runtime.settings.coverage.min_score
    report = site_coverage(session, site.id, start, end, model_version, min_score)

    query = select(Procedure).where(Procedure.site_id == site.id)
    if start is not None:
        query = query.where(Procedure.performed_at >= start)
    if end is not None:
        query = query.where(Procedure.performed_at < end)
    procedures = list(
        session.scalars(query.order_by(Procedure.performed_at.desc()).limit(SITE_PAGE_PROCEDURES + 1))
    )
    more = len(procedures) > SITE_PAGE_PROCEDURES
    procedures = procedures[:SITE_PAGE_PROCEDURES]
    statuses = landmark_statuses(session, procedures, model_version, min_score)
    context = {
        "site": site,
        "report": report,
        "procedures": [{"procedure": item, "status": coverage_status(statuses[item.id])} for item in procedures],
        "more": more,
        "date_from": date_from.isoformat() if date_from else "",
        "date_to": date_to.isoformat() if date_to else "",
        "signed_in": True,
    }
    return templates.TemplateResponse(request, "site.html", context)


@router.get("/images/{image_id}/thumbnail")
def page_thumbnail(image_id: uuid.UUID, principal: PagePrincipalDep, session: SessionDep, runtime: RuntimeDep) -> Response:
    return thumbnail_response(runtime, image_for(session, principal, image_id), 256)


@router.get("/references/{reference_id}/thumbnail")
def page_reference_thumbnail(
    reference_id: uuid.UUID, principal: PagePrincipalDep, session: SessionDep, runtime: RuntimeDep
) -> Response:
    return thumbnail_response(runtime, reference_for(session, principal, reference_id), 128)
