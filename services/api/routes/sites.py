"""Admin routes: sites and their API keys; and each site's coverage report."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from services.api.auth import PrincipalDep
from services.api.deps import RuntimeDep, SessionDep, site_for
from services.api.errors import ApiError, not_found
from services.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    Page,
    SiteCoveragePublic,
    SiteCreate,
    SitePublic,
)
from services.catalog.keys import issue_api_key, revoke_api_key
from services.catalog.models import ApiKey, Site
from services.coverage.site_report import site_coverage

router = APIRouter(prefix="/v1/sites")


@router.post("", status_code=status.HTTP_201_CREATED, tags=["admin"])
def create_site(body: SiteCreate, principal: PrincipalDep, session: SessionDep) -> SitePublic:
    """Create a site (admin only); 409 when the slug is taken."""
    principal.require_admin()
    if session.scalar(select(Site).where(Site.slug == body.slug)) is not None:
        raise ApiError(409, "conflict", f"site slug {body.slug!r} is already taken")
    site = Site(slug=body.slug, name=body.name)
    session.add(site)
    try:
        session.flush()
    except IntegrityError:
        raise ApiError(409, "conflict", f"site slug {body.slug!r} is already taken") from None
    return SitePublic.model_validate(site)


@router.get("", tags=["admin"])
def list_sites(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[SitePublic]:
    """List sites (admin only), by slug."""
    principal.require_admin()
    total = session.scalar(select(func.count()).select_from(Site)) or 0
    sites = session.scalars(select(Site).order_by(Site.slug).limit(limit).offset(offset))
    return Page[SitePublic](
        items=[SitePublic.model_validate(site) for site in sites], total=total, limit=limit, offset=offset
    )


@router.get("/{site_id}", tags=["sites"])
def get_site(site_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> SitePublic:
    """Return a site: the admin's choice, or the key's own site."""
    return SitePublic.model_validate(site_for(session, principal, site_id))


@router.post("/{site_id}/api-keys", status_code=status.HTTP_201_CREATED, tags=["admin"])
def create_api_key(site_id: uuid.UUID, body: ApiKeyCreate, principal: PrincipalDep, session: SessionDep) -> ApiKeyCreated:
    """Issue an API key for a site (admin only); the secret is shown only in this response."""
    principal.require_admin()
    site = site_for(session, principal, site_id)
    key, secret = issue_api_key(session, site, body.name)
    return ApiKeyCreated(**ApiKeyPublic.model_validate(key).model_dump(), secret=secret)


@router.get("/{site_id}/api-keys", tags=["admin"])
def list_api_keys(site_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> list[ApiKeyPublic]:
    """List a site's API keys without their secrets (admin only)."""
    principal.require_admin()
    site_for(session, principal, site_id)
    keys = session.scalars(select(ApiKey).where(ApiKey.site_id == site_id).order_by(ApiKey.created_at))
    return [ApiKeyPublic.model_validate(key) for key in keys]


@router.delete("/{site_id}/api-keys/{key_id}", tags=["admin"])
def revoke_key(site_id: uuid.UUID, key_id: uuid.UUID, principal: PrincipalDep, session: SessionDep) -> ApiKeyPublic:
    """Revoke a site's API key (admin only); requests with it get 401 from now on."""
    principal.require_admin()
    site_for(session, principal, site_id)
    key = revoke_api_key(session, site_id, key_id)
    if key is None:
        raise not_found("API key", key_id)
    return ApiKeyPublic.model_validate(key)


@router.get("/{site_id}/coverage", tags=["coverage"])
def get_site_coverage(
    site_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    runtime: RuntimeDep,
    date_from: Annotated[datetime | None, Query(alias="from", description="Procedures performed at or after.")] = None,
    date_to: Annotated[datetime | None, Query(alias="to", description="Procedures performed before.")] = None,
) -> SiteCoveragePublic:
    """Report each required landmark's documentation rate over the site's procedures in a date range."""
    site = site_for(session, principal, site_id)
    if date_from is not None and date_to is not None and date_to <= date_from:
        raise ApiError(422, "invalid_value", f"`to` ({date_to.isoformat()}) must be after `from` ({date_from.isoformat()})")
    report = site_coverage(
        session, site.id, date_from, date_to, runtime.model_version, runtime.settings.coverage.min_score
    )
    return SiteCoveragePublic.model_validate(report.as_dict())
