"""Alembic environment: migrates the database named by the endodoc settings."""

from alembic import context

from services.catalog.models import Base
from services.db import make_engine
from services.settings import get_settings, normalise_database_url

config = context.config
database_url = normalise_database_url(config.attributes.get("database_url") or get_settings().resolved_database_url)


def run_migrations_offline() -> None:
    context.configure(url=database_url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
