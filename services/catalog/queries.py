"""Catalog reads and writes used by the API, the CLI and the workers. None of them commits."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.catalog.models import Procedure, ProcedureKind, Site
from services.coverage.landmarks import get_landmark_set, landmark_sets

SLUG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class CatalogError(ValueError):
    """A catalog request names an invalid or conflicting value; the message names it and the reason."""


def get_or_create_site(session: Session, slug: str, name: str | None = None) -> Site:
    """Return the site with `slug`, creating it when it does not exist yet."""
    if not SLUG_PATTERN.match(slug):
        raise CatalogError(f"invalid site slug {slug!r}: use 1-64 lowercase letters, digits and hyphens")
    site = session.scalar(select(Site).where(Site.slug == slug))
    if site is None:
        site = Site(slug=slug, name=name or slug)
        session.add(site)
        session.flush()
    return site


def get_or_create_procedure(
    session: Session,
    site: Site,
    external_id: str,
    kind: ProcedureKind,
    landmark_set: str,
    performed_at: datetime,
) -> tuple[Procedure, bool]:
    """Return the site's procedure with `external_id` and whether it was created now.

    An existing procedure must match the requested kind and landmark set.
    """
    landmarks = get_landmark_set(landmark_set)
    if landmarks.procedure_kind != kind.value:
        matching = sorted(code for code, item in landmark_sets().items() if item.procedure_kind == kind.value)
        raise CatalogError(
            f"landmark set {landmark_set!r} is for {landmarks.procedure_kind} procedures, not {kind.value}: "
            f"use one of {', '.join(matching)}"
        )
    procedure = session.scalar(
        select(Procedure).where(Procedure.site_id == site.id, Procedure.external_id == external_id)
    )
    if procedure is not None:
        if procedure.kind != kind or procedure.landmark_set != landmark_set:
            raise CatalogError(
                f"procedure {external_id!r} already exists at site {site.slug!r} as {procedure.kind.value} "
                f"with landmark set {procedure.landmark_set!r}"
            )
        return procedure, False
    procedure = Procedure(
        site_id=site.id,
        external_id=external_id,
        kind=kind,
        landmark_set=landmark_set,
        performed_at=performed_at,
    )
    session.add(procedure)
    session.flush()
    return procedure, True


def parse_uuid(value: str, kind: str) -> uuid.UUID:
    """Parse a UUID given by a user, or raise CatalogError naming the value."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CatalogError(f"invalid {kind} id {value!r}: expected a UUID such as {uuid.UUID(int=0)}") from None
