"""The one place that confines vector queries to a site."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from services.vectors.base import PayloadFilter

# Payload `site_id` of reference images shared by every site.
SHARED_SITE = "shared"


def site_filter(site_id: uuid.UUID, where: PayloadFilter | None = None, *, include_shared: bool = False) -> dict:
    """Return `where` restricted to one site's points (and the shared gallery when asked).

    A `site_id` key already in `where` is replaced, so a caller cannot widen the scope.
    """
    scoped: dict = dict(where or {})
    scoped["site_id"] = [str(site_id), SHARED_SITE] if include_shared else str(site_id)
    return scoped


def payload_site(site_id: uuid.UUID | None) -> str:
    """Return the `site_id` payload value: the site's UUID, or `shared` for no site."""
    return SHARED_SITE if site_id is None else str(site_id)


def is_visible_to(payload: Mapping[str, str], site_id: uuid.UUID) -> bool:
    """Return True when a point belongs to the site or to the shared gallery."""
    return payload.get("site_id") in (str(site_id), SHARED_SITE)
