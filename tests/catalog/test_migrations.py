"""The Alembic revisions build the same schema as the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.catalog import migrate
from services.catalog.models import Base

TABLES = {
    "sites", "api_keys", "procedures", "images", "predictions", "image_reviews", "reference_images", "alembic_version"
}


def assert_schema_matches_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    assert_schema_matches_models(url)


def test_postgres_upgrade_downgrade_upgrade(postgres_url):
    migrate.upgrade(postgres_url)
    migrate.downgrade(postgres_url, "base")
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == ["alembic_version"]
        enum_types = connection.exec_driver_sql("SELECT typname FROM pg_type WHERE typtype = 'e'").scalars().all()
    engine.dispose()
    assert enum_types == []
    migrate.upgrade(postgres_url)
    assert_schema_matches_models(postgres_url)


def test_plain_postgres_url_uses_psycopg():
    from services.settings import normalise_database_url

    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"
