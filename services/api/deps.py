"""Request dependencies: the runtime, the unit of work, and lookups scoped to the caller's site."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.auth import Principal
from services.api.errors import not_found
from services.catalog.models import Image, Prediction, Procedure, Site
from services.db import unit_of_work
from services.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_session(request: Request) -> Iterator[Session]:
    with unit_of_work(get_runtime(request).sessions) as session:
        yield session


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# With scope "function" the session commits when the route returns, before the response is sent.
# FastAPI's default scope "request" (FastAPI 0.163) commits after sending, so a client could act
# on a 201 for a write that is not committed yet, or that then fails to commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def site_for(session: Session, principal: Principal, site_id: uuid.UUID) -> Site:
    """Return the site, or raise 403 for another site's key and 404 when it does not exist."""
    principal.require_site(site_id)
    site = session.get(Site, site_id)
    if site is None:
        raise not_found("site", site_id)
    return site


def procedure_for(session: Session, principal: Principal, procedure_id: uuid.UUID) -> Procedure:
    """Return the procedure, or raise 404 when it does not exist and 403 when it is another site's."""
    procedure = session.get(Procedure, procedure_id)
    if procedure is None:
        raise not_found("procedure", procedure_id)
    principal.require_site(procedure.site_id)
    return procedure


def image_for(session: Session, principal: Principal, image_id: uuid.UUID) -> Image:
    """Return the image, or raise 404 when it does not exist and 403 when it is another site's."""
    image = session.get(Image, image_id)
    if image is None:
        raise not_found("image", image_id)
    principal.require_site(image.procedure.site_id)
    return image


def current_prediction(session: Session, image_id: uuid.UUID, model_version: str) -> Prediction | None:
    return session.scalar(
        select(Prediction).where(Prediction.image_id == image_id, Prediction.model_version == model_version)
    )
