"""Site API keys: issue, authenticate and revoke. None of these functions commits."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.catalog.models import ApiKey, Site

KEY_PREFIX = "edk_"
# Characters of the secret kept in clear, so operators can tell keys apart in lists and logs.
VISIBLE_PREFIX_LENGTH = 12


def hash_secret(secret: str) -> str:
    """Return the sha256 hex digest of a key; keys are 256-bit random tokens, so no slow hash is needed."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def issue_api_key(session: Session, site: Site, name: str) -> tuple[ApiKey, str]:
    """Create a key for `site` and return it with its secret, which is not stored and cannot be shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(site_id=site.id, name=name, prefix=secret[:VISIBLE_PREFIX_LENGTH], secret_sha256=hash_secret(secret))
    session.add(key)
    session.flush()
    return key, secret


def find_active_key(session: Session, secret: str, touch_older_than: timedelta = timedelta(0)) -> ApiKey | None:
    """Return the unrevoked key whose secret this is, and record its use when the last one is older than given."""
    key = session.scalar(select(ApiKey).where(ApiKey.secret_sha256 == hash_secret(secret)))
    if key is None or key.revoked_at is not None:
        return None
    now = datetime.now(UTC)
    last_used = key.last_used_at
    if last_used is not None and last_used.tzinfo is None:
        last_used = last_used.replace(tzinfo=UTC)  # SQLite returns naive datetimes.
    if last_used is None or now - last_used > touch_older_than:
        key.last_used_at = now
    return key


def revoke_api_key(session: Session, site_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
    """Revoke one of the site's keys; return None when the site has no such key. Revoking twice is harmless."""
    key = session.get(ApiKey, key_id)
    if key is None or key.site_id != site_id:
        return None
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    return key


def is_admin_secret(secret: str, admin_secret: str | None) -> bool:
    """Compare a presented key with the configured admin key in constant time."""
    if not admin_secret:
        return False
    return secrets.compare_digest(secret.encode("utf-8"), admin_secret.encode("utf-8"))
