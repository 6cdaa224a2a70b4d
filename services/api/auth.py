"""API key authentication and the site scope of each request.

Clients send `Authorization: Bearer KEY`. The browser pages also accept the key from the
`endodoc_key` cookie that the sign-in form sets. The JSON API ignores that cookie, so a page
from another origin cannot make a signed-in browser call it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.errors import ApiError
from services.catalog.keys import find_active_key, is_admin_secret
from services.db import unit_of_work

logger = structlog.get_logger(__name__)

KEY_COOKIE = "endodoc_key"
# `last_used_at` is written at most this often per key, so reads do not turn into writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)

bearer = HTTPBearer(auto_error=False, description="A site API key, or the admin key.")


@dataclass(frozen=True)
class Principal:
    """The sender of a request: the admin, or one site through one of its keys."""

    is_admin: bool
    site_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    def require_site(self, site_id: uuid.UUID) -> None:
        """Raise 403 unless the request may access `site_id` (the admin may access every site)."""
        if self.is_admin or self.site_id == site_id:
            return
        raise ApiError(403, "forbidden", f"this API key belongs to site {self.site_id} and cannot access site {site_id}")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ApiError(403, "forbidden", "this route needs the admin key (ENDODOC_ADMIN_API_KEY)")

    def scope_site(self, requested: uuid.UUID | None) -> uuid.UUID:
        """Return the site a site-wide query runs on: the key's own site, or the one the admin names."""
        if self.is_admin:
            if requested is None:
                raise ApiError(422, "invalid_value", "the admin key must name a site: pass site_id")
            return requested
        assert self.site_id is not None
        if requested is not None:
            self.require_site(requested)
        return self.site_id


def authenticate(request: Request, secret: str | None) -> Principal:
    """Return the principal of a key, or raise 401."""
    if not secret:
        header = request.headers.get("authorization", "").strip()
        if header and not header.lower().startswith("bearer "):
            # The header's value is a secret: name only its form, never repeat it.
            raise ApiError(
                401, "unauthorized", "the Authorization header lacks the `Bearer ` prefix: send `Authorization: Bearer KEY`"
            )
        raise ApiError(401, "unauthorized", "missing API key: send the header `Authorization: Bearer KEY`")
    settings = request.app.state.runtime.settings
    admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key is not None else None
    if is_admin_secret(secret, admin):
        return Principal(is_admin=True)

    # The key lookup commits on its own, so no request transaction holds a write lock meanwhile.
    with unit_of_work(request.app.state.runtime.sessions) as session:
        key = find_active_key(session, secret, touch_older_than=LAST_USED_RESOLUTION)
        if key is None:
            logger.info("api_key_rejected", path=request.url.path)
            raise ApiError(401, "unauthorized", "invalid or revoked API key: ask the administrator for a new one")
        return Principal(is_admin=False, site_id=key.site_id, api_key_id=key.id)


def api_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Authenticate a JSON API request by its bearer key."""
    return authenticate(request, credentials.credentials if credentials is not None else None)


def page_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Authenticate a browser page by its bearer key or the sign-in cookie."""
    secret = credentials.credentials if credentials is not None else request.cookies.get(KEY_COOKIE)
    return authenticate(request, secret)


PrincipalDep = Annotated[Principal, Depends(api_principal)]
PagePrincipalDep = Annotated[Principal, Depends(page_principal)]


