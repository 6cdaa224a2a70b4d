"""Plain `postgresql://` URLs reach psycopg 3 in both the app and Alembic."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from services.catalog import migrate
from services.db import make_engine
from services.settings import Settings

pytestmark = pytest.mark.postgres


def plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def test_alembic_migrates_plain_postgresql_url(postgres_url: str) -> None:
    migrate.upgrade(plain(postgres_url))

    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    assert revision.isdigit()


def test_settings_resolve_plain_url_to_psycopg(postgres_url: str) -> None:
    settings = Settings(database_url=plain(postgres_url))

    assert settings.resolved_database_url == postgres_url
    engine = make_engine(settings.resolved_database_url)
    assert engine.dialect.driver == "psycopg"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()
